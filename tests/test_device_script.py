"""scripts/device-record.sh run, as the GPU machine runs it, but on the CPU, in a throwaway copy of the project with
three tiny snippets: one good, one that raises, one that hangs past its 5 s limit. No wheels are carried (the
folder is missing) and no MNIST: the current interpreter has what the recorder needs. About 20 s."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = "scripts/device-record.sh"
SNIPPETS = {
    "zz_good": "# %% hello\nprint('hello from the device run')\n",
    "zz_fail": "# %% boom\nraise RuntimeError('a planned failure')\n",
    "zz_hang": "# %% forever\nimport time\n\ntime.sleep(600)\n",
}


@pytest.fixture(scope="module")
def device_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("device")
    project, out, bin_dir = base / "project", base / "out", base / "bin"
    ignore = shutil.ignore_patterns("__pycache__")
    for folder in ("tools", "scripts"):
        shutil.copytree(ROOT / folder, project / folder, ignore=ignore)
    for name in ("requirements-gpu.txt", "requirements-lesson.txt"):
        shutil.copy(ROOT / name, project / name)
    (project / "snippets").mkdir()
    for name, text in SNIPPETS.items():
        (project / "snippets" / f"{name}.py").write_text(text)
    bin_dir.mkdir()                                  # `python3` there is this interpreter, as on the GPU machine
    (bin_dir / "python3").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "python3").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("LESSON_DATA", "PYTHONPATH")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", OUT=str(out), DEVICE="cpu", SNIPPET_TIMEOUT="5",
               RUN_DEADLINE="100", WHEELS_DIR=str(base / "no-wheels"), SITE_DIR=str(base / "site"),
               DATA_DIR=str(base / "data"))
    started = time.perf_counter()
    process = subprocess.run(["bash", SCRIPT, "run"], cwd=project, env=env, capture_output=True, text=True,
                             timeout=150)
    return project, out, process, time.perf_counter() - started


def test_script_parses():
    for script in ("scripts/device-record.sh", "scripts/rehearse-device-run.sh"):
        process = subprocess.run(["bash", "-n", script], cwd=ROOT, capture_output=True, text=True)
        assert process.returncode == 0, process.stderr


def test_good_snippet_is_recorded_and_packed(device_run):
    project, out, process, seconds = device_run
    assert process.returncode == 1, process.stdout + process.stderr      # 1: not every snippet was recorded
    with tarfile.open(out / "recordings.tar.gz") as archive:
        names = archive.getnames()
        recording = json.load(archive.extractfile("docs/outputs/cpu/zz_good.json"))
    assert recording["cells"][0]["stdout"] == "hello from the device run\n"
    assert "docs/notebooks/zz_good.ipynb" in names
    assert not any(Path(name).name.startswith(".") for name in names), names   # no scratch folders packed
    assert not [p for p in (project / "docs" / "outputs" / "cpu").iterdir() if p.name.startswith(".")]
    assert seconds < 90


def test_failure_and_timeout_are_listed(device_run):
    project, out, process, _ = device_run
    table = (out / "summary.txt").read_text().split(" snippet(s): ")[0]       # the table, above the totals
    rows = {line.split()[0]: line for line in table.splitlines() if line.startswith("zz_")}
    assert rows["zz_good"].split()[1] == "ok"
    assert "FAILED 1" in rows["zz_fail"]
    assert "TIMEOUT" in rows["zz_hang"]
    summary = (out / "summary.txt").read_text()
    assert "python3 -m tools.record --check" in summary and "zz_fail" in summary.split("--check")[1]
    log = (out / "record.log").read_text()
    assert "a planned failure" in log and "=== zz_hang: TIMEOUT" in log
    leftover = subprocess.run(["pgrep", "-f", f"{project}/snippets/zz_hang.py"], capture_output=True, text=True)
    assert leftover.stdout == "", "the hanging snippet's process outlived its timeout"


def test_preflight_and_out_folder(device_run):
    _, out, process, _ = device_run
    preflight = (out / "preflight.txt").read_text()
    for line in ("import torch ", "import nbformat ", "versions: ", "cuda tensor: skipped", "savefig (Agg): ok",
                 "wheels: none in", "MNIST: warning"):
        assert line in preflight, line
    entries = list(out.iterdir())
    assert len(entries) <= 8 and all(p.is_file() for p in entries), entries
    assert {p.name for p in entries} >= {"preflight.txt", "record.log", "summary.txt", "recordings.tar.gz"}
