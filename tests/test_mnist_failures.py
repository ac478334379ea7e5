"""Data failures end in one sentence that says what happened, within seconds, never a traceback: a mirror that
refuses (HTTP 403), a file in MNIST/raw cut short (no network: tests/test_snippet_rules.py, for every snippet). Every MNIST snippet carries the same loader
(tools/helpers/mnist.py, copied in by python -m tools.shared)."""
from __future__ import annotations

import ast
import os
import socketserver
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from conftest import ROOT
from tools import shared, snippets

RAW = Path(os.environ["LESSON_DATA"]) / "MNIST" / "raw"


def run(name: str, data: Path, proxy: str | None = None) -> tuple[subprocess.CompletedProcess, float]:
    env = dict(os.environ, LESSON_DATA=str(data), MPLBACKEND="Agg")
    for key in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "no_proxy", "NO_PROXY"):
        env.pop(key, None)
    if proxy:   # every download goes through it: a closed port, or a server that answers 403
        env.update(http_proxy=proxy, https_proxy=proxy)
    started = time.perf_counter()
    process = subprocess.run([sys.executable, str(ROOT / "snippets" / f"{name}.py")], env=env, cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
    return process, time.perf_counter() - started


def one_sentence(process: subprocess.CompletedProcess) -> str:
    assert process.returncode == 1, process.stdout + process.stderr
    assert "Traceback" not in process.stderr
    lines = process.stderr.strip().splitlines()
    assert len(lines) == 1, process.stderr
    return lines[0]


@pytest.fixture
def refusing_proxy():
    class Refuse(BaseHTTPRequestHandler):
        def refuse(self):
            self.send_response(403)
            self.send_header("Content-Length", "0")
            self.end_headers()
        do_GET = do_HEAD = do_CONNECT = refuse

        def log_message(self, *args):
            pass
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_refusing_mirror_is_named_with_its_http_status(tmp_path, refusing_proxy):
    process, seconds = run("mnist_samples", tmp_path, proxy=refusing_proxy)
    sentence = one_sentence(process)
    assert "HTTP Error 403: Forbidden" in sentence and "connect to the internet" not in sentence
    assert seconds < 30


@pytest.mark.parametrize("cut", ["t10k-images-idx3-ubyte", "train-labels-idx1-ubyte"])
def test_a_file_cut_short_is_named_with_what_to_delete(tmp_path, cut):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in shared_names():
        (raw / name).symlink_to(RAW / name)
    (raw / cut).unlink()
    (raw / cut).write_bytes((RAW / cut).read_bytes()[:1000])
    process, _ = run("mnist_samples", tmp_path, proxy="http://127.0.0.1:9")
    sentence = one_sentence(process)
    assert f"({cut} has 1,000 bytes, not " in sentence
    assert f"delete {cut} and run again" in sentence


def shared_names() -> list[str]:
    """The four file names of MNIST_FILES in tools/helpers/mnist.py."""
    tree = ast.parse((shared.HELPERS_DIR / "mnist.py").read_text())
    files = next(n for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "MNIST_FILES")
    return list(ast.literal_eval(files.value))


def test_every_mnist_snippet_loads_through_the_one_loader():
    """Each snippet that reads MNIST does it only inside load_mnist, and every copy equals tools/helpers/mnist.py."""
    users = []
    for path in snippets.find():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        calls = {id(node) for node in ast.walk(tree)
                 if isinstance(node, ast.Attribute) and node.attr == "MNIST"}
        if not calls:
            continue
        users.append(path.stem)
        loader = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "load_mnist")
        inside = {id(node) for node in ast.walk(loader) if isinstance(node, ast.Attribute) and node.attr == "MNIST"}
        assert calls == inside, path.name
    assert len(users) >= 15
    assert shared.differences() == []


def test_the_copy_tool_puts_back_an_edited_copy(tmp_path):
    folder = tmp_path / "snippets"
    folder.mkdir()
    original = (ROOT / "snippets" / "mnist_samples.py").read_text()
    (folder / "mnist_samples.py").write_text(original.replace("never hang on a dead network", "edited"))
    assert shared.differences(folder) == ["mnist_samples.py: mnist.py"]
    names, block = shared.helper_block(shared.HELPERS_DIR / "mnist.py")
    assert shared.copied((folder / "mnist_samples.py").read_text(), names, block) == original
