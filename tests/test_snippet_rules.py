"""Snippets are plain, self-contained files that follow the rules in snippets/README.md, and fail clearly offline."""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tools import snippets

ALLOWED = {"torch", "torchvision", "torchsummary", "torchinfo", "matplotlib", "numpy"} | set(sys.stdlib_module_names)
SNIPPETS = snippets.find()
NEEDS_MNIST = [p for p in SNIPPETS if "load_mnist(" in p.read_text()]


def test_the_whole_lesson_is_there():
    assert {p.stem for p in SNIPPETS} == {
        "image_tensors", "preprocessing", "mnist_samples", "mnist_mlp", "cifar_mlp", "dataloaders",
        "memory_arithmetic", "memory_measured", "batch_size_search", "training_loop", "batch_size_effects",
        "fast_path", "gpu_overhead", "memory_timeline", "estimators", "grad_accumulation", "mixed_precision",
        "inference_memory", "memory_leak", "checkpointing", "oom_reading"}


@pytest.mark.parametrize("path", SNIPPETS, ids=lambda p: p.stem)
def test_imports_only_public_libraries(path):
    tree = ast.parse(path.read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= ALLOWED, f"{path.name} imports {imported - ALLOWED}"
    assert not any(isinstance(n, ast.ImportFrom) and n.level for n in ast.walk(tree)), "relative import"


@pytest.mark.parametrize("path", SNIPPETS, ids=lambda p: p.stem)
def test_cells_and_device_line(path):
    cells = snippets.cells(path)
    assert cells[0].name == "setup" and len(cells) >= 2
    assert 'torch.device("cuda" if torch.cuda.is_available() else "cpu")' in cells[0].source
    assert 'print(f"Device: {device}"' in cells[0].source


@pytest.mark.parametrize("path", NEEDS_MNIST, ids=lambda p: p.stem)
def test_mnist_comes_from_lesson_data_with_download(path):
    text = path.read_text()
    assert 'os.environ.get("LESSON_DATA", "./data")' in text
    assert re.search(r"datasets\.MNIST\(\s*root=DATA_ROOT", text) and "download=True" in text
    assert "CIFAR10(" not in text


@pytest.mark.parametrize("path", NEEDS_MNIST, ids=lambda p: p.stem)
def test_without_data_or_network_one_clear_sentence(path, tmp_path):
    """No MNIST where LESSON_DATA points and no network (proxies to a closed local port): one sentence, exit 1."""
    env = dict(os.environ, LESSON_DATA=str(tmp_path / "nowhere"), http_proxy="http://127.0.0.1:9",
               https_proxy="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9",
               MPLBACKEND="Agg")
    process = subprocess.run([sys.executable, str(path)], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=120)
    assert process.returncode == 1
    lines = process.stderr.strip().splitlines()
    assert len(lines) == 1, process.stderr
    assert lines[0].startswith(f"MNIST is not in {tmp_path / 'nowhere'}/MNIST/raw and could not be downloaded")
    assert "(<urlopen error [Errno 111] Connection refused>)" in lines[0]                # torchvision's reason
    assert lines[0].endswith("or set LESSON_DATA to a folder that holds MNIST/raw.")
    assert "Traceback" not in process.stdout


def test_runs_as_a_plain_script_from_another_directory(tmp_path):
    """A reader's way: python path/to/snippet.py, from anywhere, no recorder involved."""
    env = dict(os.environ, MPLBACKEND="Agg")
    process = subprocess.run([sys.executable, str(snippets.SNIPPETS_DIR / "dataloaders.py")], cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr
    assert process.stdout.startswith("Device: ")
    assert "(64, 1, 28, 28)" in process.stdout


RUFF = Path(sys.executable).parent / "ruff"      # requirements-dev.txt pins it; ruff.toml configures it


def run_ruff(*args: str) -> subprocess.CompletedProcess:
    assert RUFF.exists(), f"ruff not found beside {sys.executable}: pip install -r requirements-dev.txt"
    return subprocess.run([str(RUFF), *args, str(snippets.SNIPPETS_DIR)], cwd=snippets.ROOT,
                          capture_output=True, text=True)


def test_snippets_are_formatted_by_ruff():
    process = run_ruff("format", "--check", "--diff")
    assert process.returncode == 0, "run: ruff format snippets\n" + process.stdout + process.stderr


def test_snippets_pass_ruff_check():
    process = run_ruff("check", "--no-fix", "--output-format", "concise")
    assert process.returncode == 0, process.stdout + process.stderr


@pytest.mark.parametrize("path", SNIPPETS, ids=lambda p: p.stem)
def test_no_line_is_longer_than_88_columns(path):
    """Code, comments and docstrings alike: a chapter shows about 80 columns of code at 1280 px."""
    long = [f"{path.name}:{number}: {len(line)} columns"
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
            if len(line) > 88]
    assert not long, "\n".join(long)
