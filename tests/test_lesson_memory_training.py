"""What the memory, batch-size and training snippets print, recorded afresh on the CPU with the real MNIST."""
from __future__ import annotations

import math
import re

from conftest import cell_output


def numbers(text: str) -> list[int]:
    return [int(n.replace(",", "")) for n in re.findall(r"\d[\d,]*", text)]


def test_memory_arithmetic_exact_bytes(recorded):
    rec = recorded("memory_arithmetic")
    assert "total                               101,770 parameters" in cell_output(rec, "models")
    pg = cell_output(rec, "parameters-gradients")
    assert re.search(r"parameters \(float32\)\s+407,080 bytes =\s+397.54 KiB", pg)
    assert re.search(r"parameters \+ gradients\s+814,160 bytes", pg)
    state = cell_output(rec, "optimizer-state")
    assert re.search(r"SGD: optimizer.state after one step\s+0 bytes", state)
    assert re.search(r"SGD with momentum: optimizer.state after one step\s+407,080 bytes", state)
    assert re.search(r"Adam: optimizer.state after one step\s+814,176 bytes", state)
    assert re.search(r"step\s+on cpu:\s+16 bytes", state)
    batch = cell_output(rec, "data-batch")
    assert re.search(r"one MNIST image \(float32\)\s+3,136 bytes", batch)
    assert re.search(r"a batch of 64 images\s+200,704 bytes =\s+196.00 KiB", batch)
    assert re.search(r"its 64 labels \(int64\)\s+512 bytes", batch)
    assert re.search(r"layer1 output at batch 1024 \(1024, 128\)\s+524,288 bytes", cell_output(rec, "activations"))
    verdicts = cell_output(rec, "lesson-vs-exact")
    assert re.search(r"parameters\s+~403 KB\s+407,080 .* neither KiB nor kB", verdicts)
    assert re.search(r"batch of 64 images\s+~192 KB\s+200,704 .* neither KiB nor kB", verdicts)
    assert re.search(r"layer1 output, batch 1024\s+~512 KB\s+524,288 .* right as KiB", verdicts)
    cifar = cell_output(rec, "cifar")
    assert "394,634 parameters" in cifar and "1,578,536 bytes" in cifar and "12,288 bytes" in cifar


def test_memory_measured_counts_what_autograd_keeps(recorded):
    rec = recorded("memory_measured")
    saved = cell_output(rec, "saved-tensors")
    assert re.search(r"NEW: Relu output\s+\(1024, 128\).*524,288", saved)
    assert re.search(r"NEW: LogSoftmax output\s+\(1024, 10\).*40,960", saved)
    assert "New memory autograd keeps at batch 1024: 565,252 bytes" in saved   # 524,288 + 40,960 + 4
    table = cell_output(rec, "table")
    assert table.count("(CPU: counted from tensor sizes, not an allocator)") == 4
    summary = cell_output(rec, "summary")
    rows = {(line.split()[0], int(line.split()[1])): numbers(line)[1:] for line in summary.splitlines()
            if line.split() and line.split()[0] in ("SGD", "Adam")}
    assert set(rows) == {("SGD", 64), ("SGD", 1024), ("Adam", 64), ("Adam", 1024)}
    for batch in (64, 1024):
        sgd, adam = rows["SGD", batch], rows["Adam", batch]
        assert sgd[0] == adam[0] == 814_160 and sgd[1] == 0 and adam[1] == 814_176
        assert adam[-1] - sgd[-1] == 814_176             # after the step, Adam holds exactly its state more
    assert rows["SGD", 1024][3] == 565_252


def test_batch_size_search_doubles_then_bisects_to_a_budget_stop(recorded):
    rec = recorded("batch_size_search")
    budget = numbers(re.search(r"Memory budget: ([\d,]+) bytes", cell_output(rec, "setup")).group(1))[0]
    trials = [(int(b.replace(",", "")), int(m.replace(",", "")), verdict) for b, m, verdict in
              re.findall(r"batch\s+([\d,]+)\s+([\d,]+) bytes\s+(fits|over budget.*)", cell_output(rec, "search"))]
    sizes = [t[0] for t in trials]
    first_fail = next(i for i, t in enumerate(trials) if t[2] != "fits")
    assert sizes[:first_fail + 1] == [16 * 2 ** i for i in range(first_fail + 1)]          # doubling from 16
    assert all(t[2].startswith("over budget (CPU: measured bytes") for t in trials if t[2] != "fits")
    assert all((m <= budget) == (v == "fits") for _, m, v in trials)                       # the budget decides
    best = int(re.search(r"Largest batch found: ([\d,]+)", cell_output(rec, "search")).group(1).replace(",", ""))
    assert best == max(b for b, _, v in trials if v == "fits")
    assert all(b > best for b, _, v in trials if v != "fits")
    assert sizes[first_fail - 1] < best < sizes[first_fail]                                # bisection went on
    assert rec["cells"][-1]["figures"]


def test_training_loop_learns(recorded):
    rec = recorded("training_loop")
    assert "train: 60,000 images in 938 batches of 64 (the last one has 32)" in cell_output(rec, "data")
    epochs = re.findall(r"^\s+(\d)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)%", cell_output(rec, "loop"), re.M)
    assert [e[0] for e in epochs] == ["1", "2"]
    losses = [float(e[1]) for e in epochs]
    assert losses[1] < losses[0]
    assert float(epochs[-1][3]) > 95.0
    assert rec["cells"][-1]["figures"]


def test_batch_size_effects(recorded):
    rec = recorded("batch_size_effects")
    rows = re.findall(r"^\s+(\d+)\s+(\d+)\s+([\d,]+)\s+([\d,]+)\s+[\d.]+$", cell_output(rec, "throughput"), re.M)
    assert [int(r[0]) for r in rows] == [16 * 2 ** i for i in range(9)]        # 16 … 4096
    peaks = [int(r[3].replace(",", "")) for r in rows]
    assert peaks == sorted(peaks) and peaks[0] == 1_688_120                    # same bytes as the search measured
    accuracy = re.findall(r"^\s+(\d+)\s+(\d+)\s+(\d+)\s+([\d.]+)%", cell_output(rec, "accuracy"), re.M)
    for batch, per_epoch, total, _ in accuracy:
        assert int(per_epoch) == math.ceil(60000 / int(batch)) and int(total) == 2 * int(per_epoch)
    assert len(accuracy) >= 4 and all(float(a[3]) > 80 for a in accuracy)
    assert len(rec["cells"][-1]["figures"]) == 1


def test_fast_path_is_faster_at_the_same_accuracy(recorded):
    rec = recorded("fast_path")
    compare = cell_output(rec, "compare")
    ratio = float(re.search(r"fast path is ([\d.]+)x faster", compare).group(1))
    assert ratio > 2
    difference = float(re.search(r"accuracy difference: ([\d.]+) percentage points", compare).group(1))
    assert difference < 1.0
    assert float(re.search(r"DataLoader loop: .* test accuracy ([\d.]+)%", cell_output(rec, "lesson-loop")).group(1)) > 95
