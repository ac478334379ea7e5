"""Shared fixtures. The whole lesson is recorded once per test session, on the CPU, into a temporary folder, and the
site is built once; with pytest-xdist's workers (pytest.ini: ``-n auto``) the first worker that needs either makes
it and the others wait for it and use the same folder (``once``)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def _env_tag(loader, node):
    """MkDocs' ``!ENV [NAME, default]`` in mkdocs.yml, read by the tests' yaml.safe_load as the variable's value or
    its default, as MkDocs reads it."""
    names = loader.construct_sequence(node) if isinstance(node, yaml.SequenceNode) else [loader.construct_scalar(node)]
    *variables, default = names if len(names) > 1 else [*names, None]
    return next((os.environ[name] for name in variables if name in os.environ), default)


yaml.SafeLoader.add_constructor("!ENV", _env_tag)
os.environ.setdefault("LESSON_DATA", str(ROOT.parent / "shared" / "data"))
if os.environ.get("PYTEST_XDIST_WORKER"):     # each worker's torch (and the snippets it starts) on its share of CPUs
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1)
                                                     // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))))
os.environ.setdefault("NO_MKDOCS_2_WARNING", "1")


# The test files that take longest, longest first (seconds in a run on two cores): the recording, which the first
# of them waits for, and the crawl start at once, and the short files left at the end keep both workers busy until
# the last test. Every other file follows in its usual order.
SLOWEST_FIRST = ["test_lesson_fit.py",          # about 200 s, most of it the recording of the whole lesson
                 "test_browser.py",             # about 200 s: the crawl at 1280 px
                 "test_site.py",                # 85 s
                 "test_cuda_bookkeeping.py",    # 90 s
                 "test_snippet_rules.py",       # 70 s
                 "test_recorder.py",            # 70 s
                 "test_calculator_browser.py",  # 55 s
                 "test_layout.py",              # 40 s: the 390 px pass
                 "test_build_speed.py"]         # 30 s


def pytest_collection_modifyitems(items):
    rank = {name: place for place, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))      # stable: each file keeps its tests' order


def once(tmp_path_factory, worker_id: str, name: str, make) -> Path:
    """``make(folder)`` once per test session, however many xdist workers ask: the first makes it under a lock in
    the session's shared temporary folder, the others wait for the lock and find it made. An exception in ``make``
    is raised in the worker that called it (and the next worker tries again)."""
    if worker_id == "master":                          # no xdist: a folder of this process's own
        folder = tmp_path_factory.mktemp(name)
        make(folder)
        return folder
    from filelock import FileLock
    shared = tmp_path_factory.getbasetemp().parent
    folder, done = shared / name, shared / f"{name}.done"
    with FileLock(str(shared / f"{name}.lock")):
        if not done.exists():
            folder.mkdir(exist_ok=True)
            make(folder)
            done.touch()
    return folder


def run_recorder(*args: str, cwd: Path = ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tools.record", *args], cwd=cwd, capture_output=True, text=True,
                          env=env or os.environ.copy())


@pytest.fixture(scope="session")
def lesson_outputs(tmp_path_factory, worker_id) -> Path:
    """Every snippet of the lesson recorded afresh on the CPU with the real MNIST, as many at once as there are CPUs;
    the folder of recordings.
    With LESSON_RECORDED=FOLDER (a folder holding cpu/NAME.json, such as docs/outputs) those are used instead:
    quicker while editing one snippet, never what CI does."""
    data = Path(os.environ["LESSON_DATA"])
    if not (data / "MNIST" / "raw").is_dir():
        pytest.fail(
            f"MNIST not found: the tests looked for {(data / 'MNIST' / 'raw').resolve()} "
            f"(LESSON_DATA={os.environ['LESSON_DATA']}). Fix: set LESSON_DATA to a folder that holds MNIST/raw, "
            "e.g. LESSON_DATA=../shared/data, or let the snippets download MNIST into ./data once (needs the "
            "internet): LESSON_DATA=./data .venv/bin/python snippets/mnist_samples.py, then run the tests with "
            "LESSON_DATA=./data (bash .ci/run uses ./data when ../shared/data is absent).",
            pytrace=False)
    if os.environ.get("LESSON_RECORDED"):  # a folder of recordings made already (e.g. docs/outputs), reused
        return Path(os.environ["LESSON_RECORDED"]).resolve()

    def record(out: Path) -> None:
        process = run_recorder("--device", "cpu", "--force", "--jobs", str(os.cpu_count() or 1), "--out", str(out))
        assert process.returncode == 0, process.stdout + process.stderr
    return once(tmp_path_factory, worker_id, "outputs", record)


@pytest.fixture(scope="session")
def recorded(lesson_outputs):
    """recorded(name) → that snippet's fresh recording (dict)."""
    import json

    def load(name: str) -> dict:
        return json.loads((lesson_outputs / "cpu" / f"{name}.json").read_text(encoding="utf-8"))
    return load


def cell_output(recording: dict, cell: str) -> str:
    for entry in recording["cells"]:
        if entry["name"] == cell:
            return entry["stdout"]
    raise AssertionError(f"{recording['snippet']} has no cell {cell!r}: {[c['name'] for c in recording['cells']]}")


def all_output(recording: dict) -> str:
    return "".join(entry["stdout"] for entry in recording["cells"])


def prose(text: str) -> str:
    """Printed text with line breaks and runs of spaces as single spaces: a sentence that a snippet wraps to fit 88
    columns reads as one line again."""
    return " ".join(text.split())


@pytest.fixture(scope="session")
def site(tmp_path_factory, worker_id) -> Path:
    """The site built strictly from the committed recordings (torch unimportable during the build).

    LESSON_SITE=<folder> uses an already built site instead, to iterate on the browser tests quickly.
    """
    from site_build import build
    if os.environ.get("LESSON_SITE"):
        return Path(os.environ["LESSON_SITE"])

    def make(site_dir: Path) -> None:
        process = build(ROOT, site_dir)
        assert process.returncode == 0, process.stderr[-5000:]
    return once(tmp_path_factory, worker_id, "site", make)


GPU_STAMP = {   # what the GPU machine's stamp holds beyond the pins: a local version label, its Python, its CUDA
    "device": "cuda", "device_name": "NVIDIA H200", "cuda": "13.0", "python": "3.12.3",
    "platform": "Linux-6.18.44-fc-v236-gpu-x86_64-with-glibc2.39"}


def file_as_cuda(outputs: Path, name: str) -> dict:
    """File a copy of the CPU recording in ``outputs`` as the CUDA one the GPU machine makes (for tests on machines
    without a GPU): its stamp as a real one would read there (the versions of requirements-gpu.txt, torch with its
    '+cu130' build label, Python 3.12), its figures and its device line."""
    import json
    import shutil

    from tools import environment
    data = json.loads((outputs / "cpu" / f"{name}.json").read_text(encoding="utf-8"))
    pins = environment.pinned(environment.PINS_FILES["cuda"])
    data["environment"].update({library: pins[library] for library in environment.LIBRARIES})
    data["environment"].update(GPU_STAMP, torch=pins["torch"] + "+cu130")
    for cell in data["cells"]:
        cell["figures"] = [f.replace("outputs/cpu/", "outputs/cuda/") for f in cell["figures"]]
        cell["stdout"] = cell["stdout"].replace("Device: cpu", "Device: cuda (NVIDIA H200)")
    (outputs / "cuda").mkdir(exist_ok=True)
    (outputs / "cuda" / f"{name}.json").write_text(json.dumps(data), encoding="utf-8")
    if (outputs / "cpu" / name).is_dir():
        shutil.copytree(outputs / "cpu" / name, outputs / "cuda" / name)
    return data


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]


@pytest.fixture(scope="session")
def browser():
    """Debian's Chromium driven by Playwright, one per test process (Playwright's sync API allows one at a time),
    shared by every browser test. Playwright hides scrollbars in headless Chromium; they are shown, so that tests
    see them as a reader does."""
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does this)")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                             ignore_default_args=["--hide-scrollbars"])
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def server(site):
    """The built site, served under its published path (site_build.serve)."""
    from site_build import serve
    url, httpd = serve(site)
    yield url
    httpd.shutdown()
