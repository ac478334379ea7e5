"""The recorder, on small throwaway snippets."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import pytest

from conftest import ROOT, file_as_cuda, run_recorder
from tools import environment, snippets

GOOD = '''# %% setup
import warnings
import matplotlib.pyplot as plt
answer = 21
print("first cell")

# %% chart
warnings.warn("a warning, kept apart")
print(answer * 2)
plt.plot([1, 2, 3], [2, 4, 8])
plt.title("growth")
plt.xlabel("step")
plt.ylabel("value")
plt.show()
'''


@pytest.fixture
def project(tmp_path):
    """A snippets folder with one good snippet, and an empty outputs folder."""
    (tmp_path / "snippets").mkdir()
    (tmp_path / "snippets" / "demo.py").write_text(GOOD)
    return tmp_path


def record(project, *args):
    return run_recorder("--device", "cpu", "--snippets", str(project / "snippets"), "--out",
                        str(project / "outputs"), *args)


def recording(project, name="demo", device="cpu"):
    return json.loads((project / "outputs" / device / f"{name}.json").read_text())


def test_cells_are_split_and_share_one_namespace(project):
    process = record(project)
    assert process.returncode == 0, process.stderr
    cells = recording(project)["cells"]
    assert [c["name"] for c in cells] == ["setup", "chart"]
    assert cells[0]["stdout"] == "first cell\n"
    assert cells[1]["stdout"] == "42\n"           # 'answer' came from the first cell
    assert cells[1]["warnings"] == ["UserWarning: a warning, kept apart"]
    assert "warning" not in cells[1]["stdout"]
    assert all(c["seconds"] >= 0 and c["peak_memory_bytes"] > 1_000_000 for c in cells)


def test_figures_are_captured_as_png_with_a_description(project):
    record(project)
    cells = recording(project)["cells"]
    assert cells[0]["figures"] == []
    assert cells[1]["figures"] == ["outputs/cpu/demo/chart-1.png"]
    assert cells[1]["figure_descriptions"] == ["growth: value against step"]
    png = (project / "outputs" / "cpu" / "demo" / "chart-1.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000


def test_figures_are_stored_losslessly_in_fewer_bytes_than_matplotlib_writes():
    """The recorder's figure holds exactly the pixels of matplotlib's own PNG (at the recorder's 200 dpi), as RGB or
    a palette (an opaque figure needs no alpha channel), in fewer bytes."""
    import numpy as np
    from PIL import Image
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        (folder / "s.py").write_text(GOOD.replace("plt.show()", "plt.gcf().savefig(r'%s', dpi=200, "
                                                  "bbox_inches='tight')\nplt.show()" % (folder / "plain.png")))
        process = subprocess.run([sys.executable, "-m", "tools.run_cells", str(folder / "s.py"),
                                  str(folder / "r.json"), str(folder / "figures")],
                                 cwd=ROOT, capture_output=True, text=True)
        assert process.returncode == 0, process.stderr
        plain, stored = folder / "plain.png", folder / "figures" / "chart-1.png"
        with Image.open(plain) as a, Image.open(stored) as b:
            assert b.mode in ("RGB", "P") and a.size == b.size
            assert (np.asarray(a.convert("RGBA")) == np.asarray(b.convert("RGBA"))).all()
        assert stored.stat().st_size < plain.stat().st_size


def test_environment_stamp_and_hash(project):
    record(project)
    data = recording(project)
    assert data["snippet"] == "snippets/demo.py"
    assert data["sha256"] == hashlib.sha256((project / "snippets" / "demo.py").read_bytes()).hexdigest()
    env = data["environment"]
    assert env["device"] == "cpu" and env["cuda"] is None
    for library in environment.LIBRARIES:
        assert env[library] == metadata.version(library)
    assert env["python"] == ".".join(map(str, sys.version_info[:3]))
    assert env["device_name"] == environment.cpu_name() and env["recorded_at"].startswith("20")
    assert isinstance(env["load_per_cpu"], float) and env["load_per_cpu"] >= 0    # how busy the machine was
    assert env["load_per_cpu"] == round(env["load_per_cpu"], 2)
    assert "load_per_cpu" not in environment.KEY_FIELDS                           # shown, never makes it stale
    assert data["seconds"] > 0


def test_current_recording_is_skipped_unless_forced(project):
    record(project)
    before = (project / "outputs" / "cpu" / "demo.json").read_bytes()
    again = record(project)
    assert again.returncode == 0 and "demo: current on cpu, skipped" in again.stdout
    assert (project / "outputs" / "cpu" / "demo.json").read_bytes() == before
    forced = record(project, "--force")
    assert forced.returncode == 0 and "demo: recorded on cpu" in forced.stdout


def test_check_lists_missing_stale_and_orphan_recordings(project):
    check = record(project, "--check")
    assert check.returncode == 1 and "demo (cpu): no recording" in check.stdout
    record(project)
    assert record(project, "--check").returncode == 0
    path = project / "snippets" / "demo.py"
    path.write_text(GOOD.replace("answer = 21", "answer = 20"))
    check = record(project, "--check")
    assert check.returncode == 1
    assert "demo (cpu): stale: demo.py changed" in check.stdout
    assert "python -m tools.record --device cpu demo" in check.stdout
    assert "demo: recorded on cpu" in record(project).stdout
    assert recording(project)["cells"][1]["stdout"] == "40\n"
    path.rename(project / "snippets" / "renamed.py")
    record(project)
    check = record(project, "--check")
    assert check.returncode == 1 and "demo (cpu): recording without a snippet" in check.stdout


def test_failing_cell_names_snippet_and_cell_and_keeps_old_recording(project):
    record(project)
    before = (project / "outputs" / "cpu" / "demo.json").read_bytes()
    figure = (project / "outputs" / "cpu" / "demo" / "chart-1.png").read_bytes()
    (project / "snippets" / "demo.py").write_text(GOOD.replace("print(answer * 2)", "print(answer / 0)"))
    process = record(project)
    assert process.returncode == 1
    assert "demo.py, cell 'chart' raised" in process.stderr
    assert "ZeroDivisionError" in process.stderr and "line 9" in process.stderr   # the line in the snippet file
    assert (project / "outputs" / "cpu" / "demo.json").read_bytes() == before
    assert (project / "outputs" / "cpu" / "demo" / "chart-1.png").read_bytes() == figure
    assert not [p for p in (project / "outputs" / "cpu").iterdir() if p.name.startswith(".")]   # no scratch left


def test_a_snippet_that_exits_fails(project):
    (project / "snippets" / "quits.py").write_text("# %% setup\nimport sys\nsys.exit('no data')\n")
    process = record(project, "quits")
    assert process.returncode == 1 and "quits.py, cell 'setup' raised" in process.stderr
    assert "SystemExit: no data" in process.stderr
    assert not (project / "outputs" / "cpu" / "quits.json").exists()


def test_unknown_name_and_missing_gpu_are_refused(project):
    unknown = record(project, "nope")
    assert unknown.returncode == 2 and "no snippet named nope" in unknown.stderr
    if environment.cuda_device_name() is None:
        cuda = run_recorder("--device", "cuda", "--snippets", str(project / "snippets"), "--out",
                            str(project / "outputs"))
        assert cuda.returncode == 2 and "no CUDA GPU" in cuda.stderr


@pytest.mark.parametrize("text, message", [
    ("print(1)\n# %% setup\n", "code before the first"),
    ("# %%\nprint(1)\n", "needs a name"),
    ("# %% Setup Cell\nprint(1)\n", "needs a name"),
    ("# %% a\nx = 1\n# %% a\ny = 2\n", "cell names used twice: a"),
])
def test_cell_parser_rejects_bad_markers(tmp_path, text, message):
    path = tmp_path / "bad.py"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        snippets.cells(path)


def test_cell_parser_keeps_line_numbers(tmp_path):
    path = tmp_path / "ok.py"
    path.write_text(GOOD)
    cells = snippets.cells(path)
    assert [(c.name, c.first_line) for c in cells] == [("setup", 2), ("chart", 8)]
    assert cells[0].source.endswith('print("first cell")')


def test_notebook_is_made_from_the_recording_and_kept_in_step(project):
    import nbformat
    record(project)
    path = project / "notebooks" / "demo.ipynb"
    notebook = nbformat.read(path, as_version=4)
    install, *code = [c for c in notebook.cells if c.cell_type == "code"]
    assert install.metadata["title"] == "install" and install.source.startswith("%pip install -q torchsummary==")
    assert f"torchinfo=={metadata.version('torchinfo')}" in install.source and not install.outputs   # for Colab
    assert [c.metadata["title"] for c in code] == ["setup", "chart"]
    assert code[0].source == snippets.cells(project / "snippets" / "demo.py")[0].source
    assert code[1].outputs[0]["text"] == "42\n"
    figure = code[1].outputs[2]["data"]
    assert 'alt="growth: value against step"' in figure["text/html"] and "base64," in figure["text/html"]
    assert not any(c.get("execution_count") for c in code)
    assert code[1].outputs[1] == {"output_type": "stream", "name": "stderr",      # warnings are outputs too
                                  "text": "UserWarning: a warning, kept apart\n"}
    assert "Not recorded on a GPU yet" in notebook.cells[0].source
    path.write_text(path.read_text().replace("42", "43"))          # a hand edit makes it stale
    check = record(project, "--check")
    assert check.returncode == 1 and "demo (cpu): stale: demo.ipynb does not match the recording" in check.stdout
    assert "demo: current, notebook rewritten" in record(project).stdout
    assert record(project, "--check").returncode == 0


def test_a_cuda_recording_sits_beside_the_cpu_one_and_the_notebook_prefers_it(project):
    import nbformat
    record(project)
    cpu_before = (project / "outputs" / "cpu" / "demo.json").read_bytes()
    file_as_cuda(project / "outputs", "demo")
    assert "demo: current, notebook rewritten" in record(project).stdout     # the notebook follows the GPU set
    notebook = nbformat.read(project / "notebooks" / "demo.ipynb", as_version=4)
    assert notebook.cells[0].source.startswith("*Outputs recorded on GPU · NVIDIA H200")
    assert "Also recorded on CPU" in notebook.cells[0].source
    assert record(project, "--check").returncode == 0
    record(project, "--force")                                                # a CPU run leaves the CUDA set
    assert (project / "outputs" / "cuda" / "demo.json").exists()
    assert recording(project, device="cuda")["environment"]["device_name"] == "NVIDIA H200"
    assert recording(project)["environment"]["device"] == "cpu"
    assert (project / "outputs" / "cpu" / "demo.json").read_bytes() != cpu_before          # re-recorded


FIELDS = [(field, value) for field, value in [
    ("device", "cuda"), ("torch", "2.13.0"), ("torchvision", "0.28.0"), ("torchsummary", "1.5.0"),
    ("torchinfo", "1.7.2"), ("numpy", "2.3.0"), ("matplotlib", "3.10.0"),
    ("device_name", "Intel Xeon"), ("cuda", "12.8"), ("python", "3.11.99"), ("platform", "Linux-5.4-other-kernel"),
    ("load_per_cpu", 3.75), ("recorded_at", "2020-01-01T00:00:00+00:00")]]


@pytest.mark.parametrize("field, value", FIELDS, ids=[f for f, _ in FIELDS])
def test_check_plain_record_and_strict_build_agree_on_every_environment_field(project, field, value):
    """Change one field of the stamp: --check, a plain run (its --dry-run plan, and the run itself for the fields
    that make it stale) and the site hook agree, and exactly the KEY_FIELDS decide."""
    from tools import recordings
    from tools.record import write_notebook
    record(project)
    data = recording(project)
    data["environment"][field] = value
    (project / "outputs" / "cpu" / "demo.json").write_text(json.dumps(data))
    write_notebook(project / "snippets" / "demo.py", project / "outputs")   # the stamp is in the notebook too
    stale = field in environment.KEY_FIELDS
    check = record(project, "--check")
    plan = record(project, "--dry-run")
    problems = recordings.problems(project / "snippets", project / "outputs")
    assert (check.returncode == 1) == stale, check.stdout
    assert ("would record demo on cpu" in plan.stdout) == stale, plan.stdout
    assert bool(problems) == stale                                    # what the hook warns about in a build
    if stale:
        assert field in check.stdout and field in plan.stdout
        ran = record(project)
        assert "demo: recorded on cpu" in ran.stdout
        assert recording(project)["environment"][field] != value
    else:
        assert "demo: current on cpu, skipped" in record(project).stdout


def test_cells_run_as_plain_python_without_the_recorders_future_imports(project):
    """tools.run_cells has `from __future__ import annotations`; a snippet's cells must not inherit it."""
    (project / "snippets" / "plain.py").write_text("# %% setup\ndef f(x: int):\n    return x\nprint(f.__annotations__)\n")
    assert record(project, "plain").returncode == 0
    assert recording(project, "plain")["cells"][0]["stdout"] == "{'x': <class 'int'>}\n"


def test_missing_mnist_fails_the_lesson_tests_with_a_fix(tmp_path):
    """Without MNIST under LESSON_DATA, the tests that need the recorded lesson stop at once and say how to fix it."""
    env = dict(os.environ, LESSON_DATA=str(tmp_path / "empty"))
    process = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                              "tests/test_lesson_data_models.py"], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=120)
    assert process.returncode != 0
    assert "MNIST not found" in process.stdout and "Fix: set LESSON_DATA to a folder that holds MNIST/raw" in process.stdout


def test_a_local_version_label_is_not_another_version():
    """torch 2.11.0+cu130 (the GPU machine's) is the pinned 2.11.0; the stamp keeps the full string."""
    pins = environment.pinned(environment.PINS_FILES["cuda"])
    stamp = {"device": "cuda", **pins, "torch": pins["torch"] + "+cu130"}
    assert environment.key_differences(stamp, "cuda") == []
    assert environment.key_differences({**stamp, "torch": "2.10.0+cu128"}, "cuda") == [
        f"torch 2.10.0+cu128, pinned {pins['torch']}"]
    assert environment.key_differences({**stamp, "device": "cpu"}, "cuda")[0] == "device cpu, expected cuda"


def test_each_device_class_is_judged_by_its_own_pins(project):
    """The CUDA set answers to requirements-gpu.txt and the CPU set to requirements-lesson.txt: a GPU stamp with the
    GPU machine's versions is current, the same versions in the CPU set are stale, and the message names the file."""
    record(project)
    file_as_cuda(project / "outputs", "demo")
    record(project)                                                           # the notebook follows the GPU set
    assert record(project, "--check").returncode == 0
    cuda = recording(project, device="cuda")
    assert cuda["environment"]["torch"].endswith("+cu130")                     # shown in full
    data = recording(project)
    data["environment"]["torch"] = cuda["environment"]["torch"]
    (project / "outputs" / "cpu" / "demo.json").write_text(json.dumps(data))
    check = record(project, "--check")
    assert check.returncode == 1
    assert (f"demo (cpu): stale: recorded with torch {cuda['environment']['torch']}, pinned "
            f"{environment.pinned(environment.PINS_FILES['cpu'])['torch']} (requirements-lesson.txt)") in check.stdout


def test_other_versions_are_recorded_stamped_as_they_are_with_a_warning(project, monkeypatch, capsys):
    """A reader whose versions differ from the pins is not refused: the recording is made and stamped with what ran,
    and the warning says which pins the published set needs and what --check will say."""
    from tools import record as recorder
    pins = project / "requirements-lesson.txt"
    pins.write_text(environment.PINS_FILES["cpu"].read_text().replace(
        f"torch=={environment.installed('torch')}", "torch==9.9.9"))
    monkeypatch.setitem(environment.PINS_FILES, "cpu", pins)
    args = ["--device", "cpu", "--snippets", str(project / "snippets"), "--out", str(project / "outputs")]
    assert recorder.main(args) == 0
    out, err = capsys.readouterr()
    assert "demo: recorded on cpu" in out
    assert err.count(f"torch {environment.installed('torch')}, pinned 9.9.9") == 2       # before and after
    assert "pip install -r requirements-lesson.txt" in err and "--check" in err
    assert recording(project)["environment"]["torch"] == environment.installed("torch")
    assert recorder.main([*args, "--check"]) == 1
    assert "pinned 9.9.9 (requirements-lesson.txt)" in capsys.readouterr().out


def test_a_killed_recorders_scratch_folder_is_ignored_by_git():
    """record_one writes into docs/outputs/<device>/.<name>-XXXX/ first; one left by a killed run is never
    committed."""
    for device in environment.DEVICES:
        scratch = f"docs/outputs/{device}/.grad_accumulation-k2j4x9/result.json"
        ignored = subprocess.run(["git", "check-ignore", "-q", scratch], cwd=ROOT)
        assert ignored.returncode == 0, scratch
    kept = subprocess.run(["git", "check-ignore", "-q", "docs/outputs/cuda/grad_accumulation.json"], cwd=ROOT)
    assert kept.returncode == 1


def test_the_load_per_cpu_is_the_load_average_over_the_cpus(monkeypatch):
    monkeypatch.setattr(os, "getloadavg", lambda: (3.0, 2.0, 1.0))
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert environment.load_per_cpu() == 0.38                                  # 3.0 / 8, rounded to 2 decimals
    assert environment.stamp("cpu")["load_per_cpu"] == 0.38
    assert environment.stamp("cpu", load=0.07)["load_per_cpu"] == 0.07            # measured as the recording began

    def no_load_average():
        raise OSError("no load average here")
    monkeypatch.setattr(os, "getloadavg", no_load_average)
    assert environment.load_per_cpu() is None


TIMED = '''# %% setup
import time
# time.perf_counter() in a comment is not a timing
print("no timing here, time.perf_counter() in a string neither")

# %% timed
def clock():
    return time.perf_counter()


start = clock()
print("timed")
'''


def test_timing_cells_are_the_cells_that_call_perf_counter(tmp_path):
    from tools.record import calls_perf_counter, timing_cells
    (tmp_path / "timed.py").write_text(TIMED)
    assert timing_cells(tmp_path / "timed.py") == ["timed"]                   # a call inside a function counts
    assert calls_perf_counter("from time import perf_counter\nt = perf_counter()")
    assert not calls_perf_counter("import time\nt = time.time()  # time.perf_counter()")
    assert timing_cells(ROOT / "snippets" / "checkpointing.py") == ["time"]


@pytest.mark.parametrize("load, warned", [(0.93, True), (0.5, False), (0.12, False), (None, False)])
def test_recording_timing_cells_on_a_busy_machine_warns_first(project, monkeypatch, capsys, load, warned):
    """Above 0.5 load per CPU, a snippet with timing cells is recorded after a warning on stderr that names it, the
    load and what it does to its timings; the stamp records the load measured as its recording began. A snippet
    without timing cells is recorded without a warning, whatever the load."""
    from tools import record as recorder
    (project / "snippets" / "timed.py").write_text(TIMED)
    monkeypatch.setattr(environment, "load_per_cpu", lambda: load)
    args = ["--device", "cpu", "--snippets", str(project / "snippets"), "--out", str(project / "outputs")]
    assert recorder.main(args) == 0
    out, err = capsys.readouterr()
    assert "timed: recorded on cpu" in out and "demo: recorded on cpu" in out
    assert ("warning: timed has timing cells (timed)" in err) == warned, err
    assert "demo" not in err                                                  # no timing cells: no warning
    if warned:
        assert "load per CPU 0.93" in err and "slower and noisier than on a quiet machine" in err
        assert "timings recorded on a busy machine (load per CPU above 0.5): timed (0.93)" in err   # again, at the end
    assert recording(project, "timed")["environment"]["load_per_cpu"] == load
    assert recording(project)["environment"]["load_per_cpu"] == load


def test_jobs_record_snippets_at_once_each_in_its_own_process(project):
    """--jobs 3: two snippets that each sleep 2 s run at the same time, in separate processes (their sleeps overlap),
    every recording and notebook is written, and a failing snippet fails the run by name."""
    for name in ("one", "two"):
        (project / "snippets" / f"{name}.py").write_text(
            "# %% setup\nimport os, time\nstart = time.time()\ntime.sleep(2)\n"
            "print(os.getpid(), start, time.time())\n")
    (project / "snippets" / "bad.py").write_text("# %% setup\nraise ValueError('bad on purpose')\n")
    process = record(project, "--jobs", "3", "one", "two", "bad")
    assert process.returncode == 1 and "failed: bad" in process.stdout, process.stdout + process.stderr
    (pid1, start1, end1), (pid2, start2, end2) = (recording(project, name)["cells"][0]["stdout"].split()
                                                  for name in ("one", "two"))
    assert pid1 != pid2
    assert float(start1) < float(end2) and float(start2) < float(end1)       # the two sleeps overlapped
    assert (project / "notebooks" / "one.ipynb").exists() and (project / "notebooks" / "two.ipynb").exists()
