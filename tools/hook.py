"""MkDocs hook: expand ``<!-- cell: SNIPPET/CELL -->`` markers into the cell's code, recorded output, figures and stamp.

It reads snippet files and recordings only: building the site never runs a snippet and never imports torch.
A missing or stale recording, or a marker naming a cell that does not exist, is a warning, so
``mkdocs build --strict`` fails, naming the snippet and the command that fixes it.

Other markers: ``<!-- computation-times -->`` (a table of every cell's seconds and peak memory) and
``<!-- recorded-hardware -->`` (which machines produced the outputs).
"""
from __future__ import annotations

import logging
import posixpath
import re
import sys
from pathlib import Path

from mkdocs.structure.files import File

# MkDocs loads this file by path; make its package importable however mkdocs was started.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tools import notebook_pages, recordings, snippets  # noqa: E402

log = logging.getLogger("mkdocs.hooks.lesson")
CELL_MARKER = re.compile(r"^<!--[ \t]*cell:[ \t]*(?P<snippet>[\w-]+)/(?P<cell>[a-z][a-z0-9-]*)"
                         r"(?P<flags>(?:[ \t]+[a-z-]+)*)[ \t]*-->[ \t]*$", re.MULTILINE)
TABLE_MARKERS = {"computation-times", "recorded-hardware"}
TABLE_MARKER = re.compile(r"^<!--[ \t]*(?P<table>[a-z-]+)[ \t]*-->[ \t]*$", re.MULTILINE)
FLAGS = {"no-code", "no-output"}
_stale: dict[str, str] = {}


def on_files(files, config):
    """Check every recording once per build, and publish the snippet files so readers can download them."""
    _stale.clear()
    for problem in recordings.problems():
        _stale[problem.name] = str(problem)
        log.warning("Recording %s", problem)
    for path in snippets.find():
        files.append(File(f"snippets/{path.name}", str(snippets.ROOT), config["site_dir"],
                          config["use_directory_urls"]))
    return files


def _relative(page, target: str) -> str:
    return posixpath.relpath(target, posixpath.dirname(page.file.src_uri) or ".")


def stamp(recording: dict, page) -> str:
    env, snippet = recording["environment"], recording["snippet"]
    name = Path(snippet).stem
    return (f"Recorded on **{env['device_name']}** ({env['device']}) · torch {env['torch']} · "
            f"{env['recorded_at'][:10]} · [{snippet}]({_relative(page, snippet)}) · "
            f"[notebook]({_relative(page, f'notebooks/{name}.ipynb')})\n{{: .cell-stamp }}")


def fence(text: str, language: str, title: str) -> str:
    ticks = "`" * max(3, max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    return f'{ticks}{language} title="{title}"\n{text.rstrip()}\n{ticks}'


def render_cell(snippet_name: str, cell_name: str, flags: set[str], page) -> str:
    path = snippets.SNIPPETS_DIR / f"{snippet_name}.py"
    where = f"{page.file.src_uri}: <!-- cell: {snippet_name}/{cell_name} -->"
    if not path.exists():
        log.warning("%s names a snippet that does not exist (%s)", where, path)
        return f'!!! failure "Missing snippet"\n    `{snippet_name}` does not exist.'
    cell = next((c for c in snippets.cells(path) if c.name == cell_name), None)
    if cell is None or flags - FLAGS:
        log.warning("%s: no cell %r in %s, or unknown flags %s", where, cell_name, path.name, flags - FLAGS or "")
        return f'!!! failure "Missing cell"\n    `{snippet_name}/{cell_name}` does not exist.'
    recording = recordings.load(snippet_name)
    if snippet_name in _stale or recording is None:
        return (f'!!! failure "Stale or missing recording"\n    {_stale.get(snippet_name, "no recording")}\n\n'
                + fence(cell.source, "python", f"{path.name} · {cell.name}"))
    result = next(r for r in recording["cells"] if r["name"] == cell_name)
    parts = [] if "no-code" in flags else [fence(cell.source, "python", f"{path.name} · {cell.name}")]
    if "no-output" not in flags:
        if result["stdout"]:
            parts.append(fence(result["stdout"], "text", "Output"))
        for figure, description in zip(result["figures"], result["figure_descriptions"]):
            parts.append(f"![{description}]({_relative(page, figure)}){{ loading=lazy }}")
    parts.append(stamp(recording, page))
    return "\n\n".join(parts)


def _all_recordings():
    for path in snippets.find():
        recording = recordings.load(path.stem)
        if recording:
            yield path.stem, recording


def computation_times(page) -> str:
    rows = ["| Snippet | Cell | Seconds | Peak memory (MiB) | Measured as | Device |", "|---|---|--:|--:|---|---|"]
    for name, recording in _all_recordings():
        env = recording["environment"]
        rows.append(f"| [{name}]({_relative(page, f'notebooks/{name}.ipynb')}) | **whole file** "
                    f"| **{recording['seconds']:.2f}** | | | {env['device_name']} |")
        for cell in recording["cells"]:
            rows.append(f"| | {cell['name']} | {cell['seconds']:.3f} | {cell['peak_memory_bytes'] / 2**20:,.1f} "
                        f"| {cell['peak_memory_kind']} | |")
    total = sum(r["seconds"] for _, r in _all_recordings())
    return "\n".join(rows) + f"\n\nAll snippets together: **{total:.1f} s**, each in its own fresh process."


def recorded_hardware(page) -> str:
    machines: dict[tuple, list[str]] = {}
    for name, recording in _all_recordings():
        env = recording["environment"]
        key = (env["device_name"], env["device"], env["torch"], env["torchvision"], env["cuda"] or "—",
               env["python"], env["recorded_at"][:10])
        machines.setdefault(key, []).append(name)
    rows = ["| Device | Kind | torch | torchvision | CUDA | Python | Recorded | Snippets |", "|---|---|---|---|---|---|---|---|"]
    rows += [f"| {' | '.join(key)} | {len(names)} |" for key, names in machines.items()]
    return "\n".join(rows)


def on_post_page(output, page, config):
    """Notebook pages: only the stylesheet rules they use, and keyboard-scrollable code boxes."""
    return notebook_pages.slim(output) if page.file.src_uri.startswith("notebooks/") else output


def on_page_markdown(markdown, page, config, files):
    markdown = CELL_MARKER.sub(
        lambda m: render_cell(m["snippet"], m["cell"], set(m["flags"].split()), page), markdown)

    def table(match):
        if match["table"] not in TABLE_MARKERS:
            return match.group(0)
        return computation_times(page) if match["table"] == "computation-times" else recorded_hardware(page)
    return TABLE_MARKER.sub(table, markdown)
