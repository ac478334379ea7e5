"""Run one snippet cell by cell in one namespace, in this (fresh) process, and write what each cell produced.

    python -m tools.run_cells SNIPPET RESULT.json FIGURE_DIR [FIGURE_PREFIX]

FIGURE_PREFIX is how the recording names the figures' folder relative to docs/ (default ``outputs/<name>``).

The recorder starts this in a new process per snippet. Per cell it captures stdout, stderr and warnings apart, every
open matplotlib figure (saved as PNG at 200 dpi, recompressed losslessly by oxipng, then closed), seconds, and peak
memory: the CUDA allocator's peak when the snippet uses CUDA, otherwise the process's peak resident memory, sampled.
Exit status 1 when a cell raises; the result then names the cell and holds the traceback.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path

from tools import snippets

os.environ.setdefault("MPLBACKEND", "Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import oxipng  # noqa: E402  (pyoxipng)

plt.show = lambda *args, **kwargs: None  # figures are saved after each cell instead


class RssPeak:
    """Highest resident memory of this process while the block runs (Linux /proc, sampled every 2 ms)."""

    def __init__(self):
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.peak = 0
        self._stop = threading.Event()

    def _read(self) -> int:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * self.page

    def _sample(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._read())

    def __enter__(self):
        self.peak = self._read()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._read())


def _cuda_in_use():
    torch = sys.modules.get("torch")
    return torch if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized() else None


def _describe(figure) -> str:
    """Alt text from what the figure says about itself: titles and axis labels."""
    parts = [figure.get_suptitle()]
    for axes in figure.axes:
        title, x, y = axes.get_title(), axes.get_xlabel(), axes.get_ylabel()
        if title or x or y:
            parts.append(f"{title or 'chart'}" + (f": {y} against {x}" if x and y else ""))
    return "; ".join(p for p in parts if p) or "figure"


def run_cell(cell: snippets.Cell, namespace: dict, filename: str, figure_dir: Path, prefix: str) -> dict:
    code = compile("\n" * (cell.first_line - 1) + cell.source + "\n", filename, "exec", dont_inherit=True)
    stdout, stderr = io.StringIO(), io.StringIO()
    torch = _cuda_in_use()
    if torch:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    with RssPeak() as rss, warnings.catch_warnings(record=True) as caught, \
            contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        warnings.simplefilter("always")
        error = None
        try:
            exec(code, namespace)
        except BaseException:  # SystemExit too: a snippet that exits has failed as a recording
            error = traceback.format_exc()
    seconds = time.perf_counter() - started
    torch = _cuda_in_use()
    figures, descriptions = [], []
    for index, number in enumerate(plt.get_fignums(), start=1):
        figure = plt.figure(number)
        path = figure_dir / f"{cell.name}-{index}.png"
        png = io.BytesIO()
        figure.savefig(png, format="png", dpi=200, bbox_inches="tight")
        # the same pixels in fewer bytes (oxipng: RGBA without transparency to RGB, better filters and deflate)
        path.write_bytes(oxipng.optimize_from_memory(png.getvalue(), level=2))
        figures.append(f"{prefix}/{path.name}")
        descriptions.append(_describe(figure))
        plt.close(figure)
    return {
        "name": cell.name,
        "stdout": stdout.getvalue(),
        "stderr": stderr.getvalue(),
        "warnings": [f"{w.category.__name__}: {w.message}" for w in caught],
        "figures": figures,
        "figure_descriptions": descriptions,
        "seconds": round(seconds, 3),
        "peak_memory_bytes": int(torch.cuda.max_memory_allocated()) if torch else rss.peak,
        "peak_memory_kind": "cuda max_memory_allocated" if torch else "process resident memory (RSS)",
        "error": error,
    }


def main(snippet: str, result_path: str, figure_dir: str, prefix: str | None = None) -> int:
    path = Path(snippet).resolve()
    figures = Path(figure_dir)
    figures.mkdir(parents=True, exist_ok=True)
    namespace = {"__name__": "__main__", "__file__": str(path)}
    sys.argv = [str(path)]
    results = []
    for cell in snippets.cells(path):
        result = run_cell(cell, namespace, str(path), figures, prefix or f"outputs/{path.stem}")
        results.append(result)
        if result["error"]:
            break
    torch = sys.modules.get("torch")
    summary = {"cells": results, "cuda": torch.version.cuda if torch else None,
               "cuda_used": bool(torch and torch.cuda.is_available())}
    Path(result_path).write_text(json.dumps(summary), encoding="utf-8")
    return 1 if results[-1]["error"] else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
