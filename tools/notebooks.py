"""A Jupyter notebook made from a snippet's cells and its recording (nothing is executed)."""
from __future__ import annotations

import base64
import html
from pathlib import Path

import nbformat

from tools import recordings, snippets

NOTEBOOKS_DIR = snippets.ROOT / "docs" / "notebooks"


def stamp_text(recording: dict) -> str:
    env = recording["environment"]
    return (f"Outputs recorded on {env['device_name']} ({env['device']}) with torch {env['torch']}, "
            f"{env['recorded_at'][:10]}, from `{recording['snippet']}`.")


def build(snippet: Path, recording: dict, outputs_dir: Path = recordings.OUTPUTS_DIR) -> nbformat.NotebookNode:
    """One code cell per snippet cell, carrying the recorded stdout and figures (PNG with alt text)."""
    recorded = {cell["name"]: cell for cell in recording["cells"]}
    cells = [nbformat.v4.new_markdown_cell(f"*{stamp_text(recording)}*")]
    for cell in snippets.cells(snippet):
        outputs = []
        result = recorded.get(cell.name, {"stdout": "", "figures": [], "figure_descriptions": []})
        if result["stdout"]:
            outputs.append(nbformat.v4.new_output("stream", name="stdout", text=result["stdout"]))
        for figure, description in zip(result["figures"], result["figure_descriptions"]):
            data = base64.b64encode(recordings.figure_file(figure, outputs_dir).read_bytes()).decode()
            outputs.append(nbformat.v4.new_output("display_data", data={
                "text/html": f'<img src="data:image/png;base64,{data}" alt="{html.escape(description)}">',
                "text/plain": description}))
        code = nbformat.v4.new_code_cell(cell.source, outputs=outputs, metadata={"title": cell.name})
        cells.append(code)
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
