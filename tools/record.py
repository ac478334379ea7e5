"""Record what each snippet prints and draws:  python -m tools.record [--device auto|cpu|cuda] [--force] [NAME ...]

Each snippet runs in its own fresh process (``tools.run_cells``), cell by cell. The recording goes to
``docs/outputs/<device>/<name>.json`` with its figures under ``docs/outputs/<device>/<name>/``, stamped with the
snippet's sha256 and the environment; recording on a GPU adds or refreshes the CUDA set and never touches the CPU
set. A recording that is current (``tools.recordings.problems``: the same definition that ``--check`` and the site
build use) is skipped unless ``--force``. ``--check`` runs nothing: it lists every recording that needs re-running
and exits 1 if there is one. ``--dry-run`` lists what this command would record, and runs nothing.

The stamp records how busy the machine was when a snippet's recording started (``load_per_cpu``). A snippet with
timing cells (a cell that calls ``time.perf_counter``) recorded on a busy machine, above ``BUSY`` load per CPU, gets a
warning first: its timings will be slower and noisier than on a quiet machine.
"""
from __future__ import annotations

import argparse
import ast
import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tools import environment, notebooks, recordings, snippets


BUSY = 0.5  # load per CPU above which a snippet's timings are not a quiet machine's


class CellFailed(Exception):
    pass


def calls_perf_counter(source: str) -> bool:
    """Whether code calls ``time.perf_counter()`` (or a ``perf_counter`` imported from time); a mention in a comment
    or a string does not count."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return "perf_counter(" in source
    calls = [node.func for node in ast.walk(tree) if isinstance(node, ast.Call)]
    return any((isinstance(f, ast.Attribute) and f.attr == "perf_counter"
                and isinstance(f.value, ast.Name) and f.value.id == "time")
               or (isinstance(f, ast.Name) and f.id == "perf_counter") for f in calls)


def timing_cells(path: Path) -> list[str]:
    """The names of the snippet's cells that read the clock with time.perf_counter: its timing cells."""
    return [cell.name for cell in snippets.cells(path) if calls_perf_counter(cell.source)]


def load_warning(path: Path, load: float | None) -> str | None:
    """What to say before recording ``path`` at ``load`` per CPU: a warning when it has timing cells and the machine
    is busier than ``BUSY``, else None."""
    if load is None or load <= BUSY:
        return None
    timed = timing_cells(path)
    if not timed:
        return None
    return (f"warning: {path.stem} has timing cells ({', '.join(timed)}) and this machine is busy: load per CPU "
            f"{load:.2f} (1-minute load average over {os.cpu_count()} CPUs, snippets recorded just before included), "
            f"above {BUSY}. Its timings will be slower and noisier than on a quiet machine; the stamp records the "
            f"load. Record it again when the machine is quiet to publish timings a reader can trust.")


def record_one(path: Path, device: str, outputs_dir: Path, load: float | None = None,
               threads: int | None = None) -> dict:
    """Run one snippet in a fresh process and write its ``device`` recording; raises CellFailed, leaving the old
    one intact. ``load``: the load per CPU as the recording starts, for the stamp (default: measured now).
    ``threads``: the CPU threads torch may use in it (OMP_NUM_THREADS; default: torch's own choice, every CPU)."""
    if load is None:
        load = environment.load_per_cpu()
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONHASHSEED="0", PYTHONUNBUFFERED="1")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    device_dir = Path(outputs_dir) / device
    device_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=device_dir, prefix=f".{path.stem}-") as scratch:
        result_file, figure_dir = Path(scratch) / "result.json", Path(scratch) / path.stem
        started = time.perf_counter()
        process = subprocess.run(
            [sys.executable, "-m", "tools.run_cells", str(path), str(result_file), str(figure_dir),
             f"outputs/{device}/{path.stem}"],
            cwd=snippets.ROOT, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if not result_file.exists():
            raise CellFailed(f"{path.name}: the cell runner died (exit {process.returncode}):\n{process.stderr}")
        result = json.loads(result_file.read_text(encoding="utf-8"))
        failed = result["cells"][-1] if result["cells"] and result["cells"][-1]["error"] else None
        if failed:
            tail = failed["stdout"][-2000:]
            raise CellFailed(f"{path.name}, cell '{failed['name']}' raised:\n{failed['error']}"
                             + (f"\nits output ended with:\n{tail}" if tail else ""))
        if device == "cuda" and not result["cuda_used"]:
            raise CellFailed(f"{path.name}: recorded for cuda, but torch in the snippet saw no CUDA device")
        for cell in result["cells"]:
            del cell["error"]
        recording = {
            "snippet": f"snippets/{path.name}",
            "sha256": snippets.sha256(path),
            "environment": environment.stamp(device, result["cuda"], load),
            "seconds": round(seconds, 2),
            "cells": result["cells"],
        }
        target_dir = device_dir / path.stem
        shutil.rmtree(target_dir, ignore_errors=True)
        if any(figure_dir.iterdir()):
            figure_dir.rename(target_dir)
        staged = Path(scratch) / "recording.json"
        staged.write_text(json.dumps(recording, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(staged, recordings.path_for(path.stem, device, outputs_dir))
    write_notebook(path, outputs_dir)
    return recording


def write_notebook(path: Path, outputs_dir: Path) -> None:
    """(Re)write the snippet's notebook from its preferred recording (CUDA if there is one, else CPU)."""
    everything = recordings.load_all(path.stem, outputs_dir)
    recording = next(iter(everything.values()))
    target = notebooks.path_for(path.stem, recordings.notebooks_dir(outputs_dir))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(notebooks.text(notebooks.build(path, recording, outputs_dir, everything)), encoding="utf-8")


def version_warning(device: str) -> str | None:
    """What a reader needs to know before recording here with versions other than the ones pinned for ``device``'s
    published set, or None when this environment has them. Recording goes on either way: the stamp says what ran."""
    differences = environment.key_differences(environment.stamp(device), device)
    if not differences:
        return None
    pins = environment.pins_name(device)
    return (f"warning: this environment differs from {pins}, the pins of the published {device} recordings "
            f"({'; '.join(differences)}). Recording anyway: each recording is stamped with the versions that ran, "
            f"and `python -m tools.record --check` and `mkdocs build --strict` will list them as stale until they "
            f"are recorded with the pinned versions (pip install -r {pins}) or {pins} pins what you have.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.record", description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help="snippet names (file stems); default: all")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--force", action="store_true", help="record even when the recording is current")
    parser.add_argument("--check", action="store_true", help="run nothing; exit 1 if a recording is stale/missing")
    parser.add_argument("--dry-run", action="store_true", help="list what would be recorded; run nothing")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="record N snippets at once, each in its own process with its share of the CPUs for "
                             "torch's threads, the longest first (default 1; timings recorded with N > 1 are not for "
                             "publishing: the snippets share the CPUs)")
    parser.add_argument("--snippets", type=Path, default=snippets.SNIPPETS_DIR, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=recordings.OUTPUTS_DIR, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    found = recordings.problems(args.snippets, args.out)
    if args.check:
        for problem in found:
            print(problem)
        print(f"{len(found)} recording(s) need re-running" if found else "all recordings are current")
        return 1 if found else 0

    try:
        device = environment.resolve(args.device)
        paths = snippets.find(args.snippets, args.names)
    except (RuntimeError, KeyError) as error:
        print(f"error: {error.args[0]}", file=sys.stderr)
        return 2
    mine = {p.name for p in found if p.device == device and p.kind == "recording"}
    notebook_only = {p.name for p in found if p.kind == "notebook"} - mine
    todo = [p for p in paths if args.force or p.stem in mine
            or (device != recordings.REQUIRED and not recordings.path_for(p.stem, device, args.out).exists())]
    elsewhere = [p for p in found if p.device != device and p.kind == "recording"
                 and p.name in {q.stem for q in paths}]
    if args.dry_run:
        for path in todo:
            why = [p.reason for p in found if p.name == path.stem and p.device == device] or ["--force"]
            print(f"would record {path.stem} on {device}: {'; '.join(why)}")
        for problem in elsewhere:
            print(f"cannot record here: {problem}")
        print(f"{len(todo)} snippet(s) would be recorded on {device}")
        return 0
    other_versions = todo and version_warning(device)
    if other_versions:
        print(other_versions, file=sys.stderr)
    failures, busy_timings, started = [], [], time.perf_counter()
    for path in paths:
        if path not in todo:
            if path.stem in notebook_only:
                write_notebook(path, args.out)
                print(f"{path.stem}: current, notebook rewritten")
            else:
                print(f"{path.stem}: current on {device}, skipped")

    def record(path: Path) -> None:
        load = environment.load_per_cpu()
        busy = load_warning(path, load)
        if busy:
            print(busy, file=sys.stderr)
            busy_timings.append(f"{path.stem} ({load:.2f})")
        try:
            recording = record_one(path, device, args.out, load, threads)
        except CellFailed as error:
            failures.append(path.stem)
            print(f"{path.stem}: FAILED — {error}", file=sys.stderr)
            return
        print(f"{path.stem}: recorded on {device} in {recording['seconds']:.1f} s", flush=True)

    threads = None
    if args.jobs > 1:
        # Each process gets its share of the CPUs (torch would start a thread per CPU in each, and N processes would
        # fight over them), and the longest snippets start first, so that no long one is left running alone at
        # the end: how long each took last time, from this folder's recordings or else the published ones.
        if "OMP_NUM_THREADS" not in os.environ:
            threads = max(1, (os.cpu_count() or 1) // args.jobs)

        def last_seconds(path: Path) -> float:
            found = recordings.load(path.stem, device, args.out) or recordings.load(path.stem, device)
            return found["seconds"] if found else 0.0
        todo.sort(key=last_seconds, reverse=True)
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:   # each runs a subprocess
        for future in [pool.submit(record, path) for path in todo]:
            future.result()
    failures.sort(key=[p.stem for p in todo].index)
    for problem in elsewhere:
        print(f"needs another machine: {problem}")
    print(f"{len(paths)} snippet(s), {time.perf_counter() - started:.1f} s"
          + (f"; failed: {', '.join(failures)}" if failures else ""))
    if other_versions:
        print(other_versions, file=sys.stderr)
    if busy_timings:
        print(f"warning: timings recorded on a busy machine (load per CPU above {BUSY}): "
              f"{', '.join(busy_timings)}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
