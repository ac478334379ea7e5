"""A Jupyter notebook made from a snippet's cells and one of its recordings (nothing is executed).

The notebook carries the CUDA recording's outputs where the snippet has one, else the CPU recording's; its first
cell says which, and names the other recording when there is one.
"""
from __future__ import annotations

import base64
import html
from pathlib import Path

import nbformat

from tools import environment, recordings, snippets

NOTEBOOKS_DIR = snippets.ROOT / "docs" / "notebooks"


def stamp_text(recording: dict, others: dict[str, dict] | None = None, language: str = "en") -> str:
    """The notebook's first cell: where and when its outputs were recorded, and what else recorded them (markdown;
    ``language`` 'zh' for the Chinese edition's notebook pages)."""
    env = recording["environment"]
    rest = [r["environment"] for device, r in (others or {}).items() if device != env["device"]]
    if language == "zh":
        text = (f"输出录制于 {environment.label(env)}，torch {env['torch']}，{env['recorded_at'][:10]}，"
                f"来自 `{recording['snippet']}`。")
        if rest:
            text += "另有 " + "、".join(environment.label(e) for e in rest) + " 上的录制：章节页面两者都显示。"
        elif env["device"] == "cpu":
            text += "还没有在 GPU 上录制：在有 CUDA 的机器上运行 `python -m tools.record --device cuda` 即可。"
        return text
    text = (f"Outputs recorded on {environment.label(env)} with torch {env['torch']}, "
            f"{env['recorded_at'][:10]}, from `{recording['snippet']}`.")
    if rest:
        text += " Also recorded on " + ", ".join(environment.label(e) for e in rest) + \
            ": the chapter page shows both."
    elif env["device"] == "cpu":
        text += " Not recorded on a GPU yet: on a machine with CUDA, `python -m tools.record --device cuda` does it."
    return text


def outputs_of(result: dict, outputs_dir: Path) -> list:
    """A recorded cell's stdout, then what it printed to stderr or warned, then its figures, as notebook outputs."""
    outputs = []
    if result.get("stdout"):
        outputs.append(nbformat.v4.new_output("stream", name="stdout", text=result["stdout"]))
    errors = result.get("stderr", "") + "".join(f"{w}\n" for w in result.get("warnings", []))
    if errors:
        outputs.append(nbformat.v4.new_output("stream", name="stderr", text=errors))
    for figure, description in zip(result.get("figures", []), result.get("figure_descriptions", [])):
        data = base64.b64encode(recordings.figure_file(figure, outputs_dir).read_bytes()).decode()
        outputs.append(nbformat.v4.new_output("display_data", data={
            "text/html": f'<img src="data:image/png;base64,{data}" alt="{html.escape(description)}">',
            "text/plain": description}))
    return outputs


def colab_cell() -> nbformat.NotebookNode:
    """A first code cell that installs what Google Colab lacks (torch, torchvision, numpy and matplotlib are there),
    at the versions the lesson pins; elsewhere it installs nothing new. One line, and no output of its own."""
    pins = environment.pinned(environment.PINS_FILES["cpu"])  # the same in both sets
    return nbformat.v4.new_code_cell(
        f"%pip install -q torchsummary=={pins['torchsummary']} torchinfo=={pins['torchinfo']}  # for Colab",
        metadata={"title": "install"})


def build(snippet: Path, recording: dict, outputs_dir: Path = recordings.OUTPUTS_DIR,
          all_recordings: dict[str, dict] | None = None) -> nbformat.NotebookNode:
    """One code cell per snippet cell, carrying ``recording``'s stdout, stderr, warnings and figures (PNG with alt
    text). ``all_recordings`` (device → recording) lets the first cell name the other recordings."""
    recorded = {cell["name"]: cell for cell in recording["cells"]}
    cells = [nbformat.v4.new_markdown_cell(f"*{stamp_text(recording, all_recordings)}*"), colab_cell()]
    for cell in snippets.cells(snippet):
        outputs = outputs_of(recorded.get(cell.name, {}), outputs_dir)
        cells.append(nbformat.v4.new_code_cell(cell.source, outputs=outputs, metadata={"title": cell.name}))
    notebook = nbformat.v4.new_notebook(cells=cells, metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"}})
    for index, cell in enumerate(notebook.cells):   # stable ids: the same recording gives the same bytes
        cell["id"] = f"{snippet.stem.replace('_', '-')}-{index}"
    return notebook


def text(notebook: nbformat.NotebookNode) -> str:
    return nbformat.writes(notebook) + "\n"


def path_for(name: str, notebooks_dir: Path = NOTEBOOKS_DIR) -> Path:
    return Path(notebooks_dir) / f"{name}.ipynb"
