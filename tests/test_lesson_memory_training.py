"""What the memory, batch-size and training snippets print, recorded afresh on the CPU with the real MNIST."""
from __future__ import annotations

import ast
import contextlib
import io
import math
import re
from pathlib import Path

import pytest

from conftest import cell_output, prose


def numbers(text: str) -> list[int]:
    return [int(n.replace(",", "")) for n in re.findall(r"\d[\d,]*", text)]


def test_memory_arithmetic_exact_bytes(recorded):
    rec = recorded("memory_arithmetic")
    assert "total                               101,770 parameters" in cell_output(rec, "models")
    pg = cell_output(rec, "parameters-gradients")
    assert re.search(r"parameters \(float32\)\s+407,080 bytes =\s+397.54 KiB", pg)
    assert re.search(r"parameters \+ gradients\s+814,160 bytes", pg)
    state = cell_output(rec, "optimizer-state")
    assert re.search(r"^SGD: optimizer.state\s+0 bytes", state, re.M)
    assert re.search(r"^SGD with momentum: optimizer.state\s+407,080 bytes", state, re.M)
    assert re.search(r"^Adam: optimizer.state\s+814,176 bytes", state, re.M)
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
    optimizers = cell_output(rec, "exercise-cifar-optimizers")
    assert re.search(r"CIFAR-10 MLP gradients\s+1,578,536 bytes", optimizers)
    assert re.search(r"^CIFAR-10 MLP, Adam\s+3,157,088 bytes", optimizers, re.M)
    assert re.search(r"^CIFAR-10 MLP, SGD with momentum\s+1,578,536 bytes", optimizers, re.M)
    assert re.search(r"parameters in bfloat16\s+203,540 bytes", cell_output(rec, "exercise-bfloat16"))


def test_memory_arithmetic_parts_chart(recorded):
    """Five parts for SGD and Adam at batch 64 and 1024, all computed; what autograd saves is measured."""
    cell = next(c for c in recorded("memory_arithmetic")["cells"] if c["name"] == "parts-chart")
    rows = {(line.split()[0], int(line.split()[1])): numbers(line)[1:] for line in cell["stdout"].splitlines()
            if line.split() and line.split()[0] in ("SGD", "Adam")}
    data = {64: 64 * (3136 + 8), 1024: 1024 * (3136 + 8)}          # images float32 + labels int64
    saved = {64: 35_332, 1024: 565_252}                              # ReLU and log-softmax outputs + 4 bytes
    for (name, batch), (params, grads, state, batch_bytes, activations, total) in rows.items():
        assert (params, grads, batch_bytes, activations) == (407_080, 407_080, data[batch], saved[batch])
        assert state == (814_176 if name == "Adam" else 0)
        assert total == params + grads + state + batch_bytes + activations
    assert set(rows) == {("SGD", 64), ("Adam", 64), ("SGD", 1024), ("Adam", 1024)}
    assert len(cell["figures"]) == 1
    assert cell["figure_descriptions"][0].startswith("MNIST MLP: the five memory parts of a training step")


def test_memory_measured_counts_what_autograd_keeps(recorded):
    rec = recorded("memory_measured")
    saved = cell_output(rec, "saved-tensors")
    assert re.search(r"NEW: Relu output\s+\(1024, 128\).*524,288", saved)
    assert re.search(r"NEW: LogSoftmax output\s+\(1024, 10\).*40,960", saved)
    assert "New memory autograd keeps at batch 1024: 565,252 bytes" in saved   # 524,288 + 40,960 + 4
    table = cell_output(rec, "table")
    assert table.count("(CPU: from tensor sizes, not an allocator)") == 1
    phases = {line[:15].strip(): numbers(line[15:]) for line in table.splitlines()[2:]}
    assert list(phases) == ["batch moved", "forward", "backward", "optimizer step"]
    for column in (0, 1):                                # SGD 64, SGD 1024 beside Adam 64, Adam 1024
        sgd, adam = [values[column] for values in phases.values()], [values[column + 2] for values in phases.values()]
        assert sgd[:3] == adam[:3] and adam[3] - sgd[3] == 814_176   # after the step, Adam holds its state more
    assert phases["forward"] == [646_192, 4_232_752] * 2
    summary = cell_output(rec, "summary")
    rows = {(line.split()[0], int(line.split()[1])): numbers(line)[1:] for line in summary.splitlines()
            if line.split() and line.split()[0] in ("SGD", "Adam")}
    assert set(rows) == {("SGD", 64), ("SGD", 1024), ("Adam", 64), ("Adam", 1024)}
    for batch in (64, 1024):
        sgd, adam = rows["SGD", batch], rows["Adam", batch]
        assert sgd[:2] == adam[:2] == [407_080, 407_080] and sgd[2] == 0 and adam[2] == 814_176
        assert sgd[3:] == adam[3:]
    assert rows["SGD", 1024][4] == 565_252
    exercise = cell_output(rec, "exercise-batch-256")
    assert "batch 256: saved activations 141,316 bytes" in exercise    # 256 x (512 + 40) + 4


# The peak memory of a training step at batch B, on the CPU, by hand: the largest count over two Adam steps.
# Small batches peak at the first optimizer step (parameters, gradients, Adam's state, batch, logits, loss);
# large ones at the second forward (parameters, Adam's state, batch, saved activations, logits, loss).
PARAMS, ADAM_STATE = 407_080, 814_176           # Adam: two moment buffers + four 4-byte step counters


def peak_by_hand(batch: int) -> int:
    batch_bytes = batch * (784 * 4 + 8)         # images float32 + labels int64
    logits_loss = batch * 10 * 4 + 4
    at_step = 2 * PARAMS + ADAM_STATE + batch_bytes + logits_loss
    saved = batch * (128 * 4 + 10 * 4) + 4      # ReLU output, log-softmax output, nll_loss's total weight
    at_second_forward = PARAMS + ADAM_STATE + batch_bytes + saved + logits_loss
    return max(at_step, at_second_forward)


def search_trials(text: str) -> list[tuple[int, int | None, str]]:
    """(batch, peak bytes or None, verdict) for each row of a printed search table."""
    rows = re.findall(r"^\s+\d+\s+([\d,]+)\s+([\d,]+|\?)\s{3}(.+)$", text, re.M)
    return [(int(b.replace(",", "")), None if m == "?" else int(m.replace(",", "")), v) for b, m, v in rows]


def test_batch_size_search_doubles_then_bisects_to_a_budget_stop(recorded):
    rec = recorded("batch_size_search")
    setup, search = cell_output(rec, "setup"), cell_output(rec, "search")
    budget = numbers(re.search(r"Memory budget: ([\d,]+) bytes", setup).group(1))[0]
    assert "Double from 16 (up to a cap of 65,536), then bisect." in setup
    assert "peak memory of a training step, counted tensor bytes" in prose(search.splitlines()[0])
    assert cell_output(rec, "trial").strip() == ""                       # the CPU has no baseline to print
    trials = search_trials(search)
    sizes = [t[0] for t in trials]
    first_fail = next(i for i, t in enumerate(trials) if not t[2].startswith("fits"))
    assert sizes[:first_fail + 1] == [16 * 2 ** i for i in range(first_fail + 1)]          # doubling from 16
    assert all(v.startswith("over budget (counted, no real OOM)") for _, _, v in trials
               if not v.startswith("fits"))
    assert all((m <= budget) == v.startswith("fits") for _, m, v in trials)              # the budget decides
    assert all(m == peak_by_hand(b) for b, m, _ in trials)                                 # the peak, exactly
    outcome = re.search(r"Outcome: found the largest batch: ([\d,]+) fits, ([\d,]+) does not", prose(search))
    best, failed = (int(g.replace(",", "")) for g in outcome.groups())
    assert best == max(b for b, _, v in trials if v.startswith("fits"))
    assert failed == min(b for b, _, v in trials if not v.startswith("fits"))
    assert sizes[first_fail - 1] < best < sizes[first_fail]                                # bisection went on
    assert failed - best <= max(16, best // 64)
    assert next(c for c in rec["cells"] if c["name"] == "chart")["figures"]


def test_batch_size_search_fits_its_line_to_the_two_largest_fitting_peaks(recorded):
    trials = search_trials(cell_output(recorded("batch_size_search"), "search"))
    search = cell_output(recorded("batch_size_search"), "line")
    line = re.search(r"line through the peaks at ([\d,]+) and ([\d,]+): ([\d,.]+) bytes per sample \+ "
                     r"([\d,]+) bytes fixed", prose(search))
    b0, b1 = (int(g.replace(",", "")) for g in line.groups()[:2])
    per_sample, fixed = float(line.group(3).replace(",", "")), int(line.group(4).replace(",", ""))
    fitting = sorted((b, m) for b, m, v in trials if v.startswith("fits"))
    assert [b0, b1] == [b for b, _ in fitting[-2:]]                    # the two largest fitting trials
    for b, m in fitting[-2:]:
        assert fixed + per_sample * b == m                              # the line goes through both peaks
    # At those sizes the peak is the second forward: parameters + Adam's state + two 4-byte scalars fixed;
    # image + label + saved ReLU and log-softmax outputs + logits per sample. The gradients are not in it.
    assert per_sample == 784 * 4 + 8 + 128 * 4 + 10 * 4 + 10 * 4 == 3736
    assert fixed == PARAMS + ADAM_STATE + 8
    assert "Both peaks are at '2: forward'" in prose(search)


def test_batch_size_search_ends_cleanly_for_tiny_budgets(recorded):
    """The small-budgets cell: nothing fits, only the start size fits, the cap is reached; each says why."""
    rec = recorded("batch_size_search")
    text = cell_output(rec, "small-budgets")
    peaks = re.search(r"batch 16: ([\d,]+) bytes; batch 32: ([\d,]+) bytes", text)
    p16, p32 = (int(g.replace(",", "")) for g in peaks.groups())
    assert (p16, p32) == (peak_by_hand(16), peak_by_hand(32))
    blocks = [prose(block) for block in re.split(r"^(?=budget )", text, flags=re.M)[1:]]   # a case, wrapped
    cases = [re.fullmatch(r"budget ([\d,]+) bytes \((.+?)\), cap ([\d,]+): (\d+) trials? -> ([A-Z ]+): (.*)", block)
             .groups() for block in blocks]
    assert len(cases) == 3, text
    (b1, _, cap1, n1, o1, m1), (b2, _, cap2, n2, o2, m2), (b3, _, cap3, n3, o3, m3) = cases
    assert int(b1.replace(",", "")) == p16 // 2 and o1 == "NOTHING FITS" and n1 == "1"
    assert m1.startswith(f"not even the start size, 16, fits: its peak, {p16:,} bytes, is over the budget")
    assert m1.endswith("no trial fits: no line to fit")
    assert p16 <= int(b2.replace(",", "")) < p32 and o2 == "ONLY THE START SIZE FITS" and n2 == "2"
    assert m2.startswith("16 fits, 32 does not") and m2.endswith("no line can be fitted from one point")
    assert cap3 == "256" and o3 == "REACHED THE CAP" and n3 == "5"      # 16, 32, 64, 128, 256
    assert "every size tried fits, up to 256" in m3 and "line through the peaks at 128 and 256" in m3


def snippet_cells(name: str) -> dict[str, str]:
    text = (Path(__file__).resolve().parent.parent / "snippets" / f"{name}.py").read_text(encoding="utf-8")
    return dict(re.findall(r"^# %% ([a-z][a-z0-9-]*)\n(.*?)(?=^# %% |\Z)", text, re.M | re.S))


@pytest.fixture(scope="module")
def search_namespace():
    """batch_size_search.py's setup and trial cells, and the definitions of its search cell, run on the CPU."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    cells = snippet_cells("batch_size_search")
    namespace: dict = {"__name__": "batch_size_search"}
    available = torch.cuda.is_available
    torch.cuda.is_available = lambda: False                            # the CPU branch, on any machine
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(cells["setup"], "setup", "exec", dont_inherit=True), namespace)
            exec(compile(cells["trial"], "trial", "exec", dont_inherit=True), namespace)
            tree = ast.parse(cells["search"])
            tree.body = [node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))]
            exec(compile(tree, "search", "exec", dont_inherit=True), namespace)
    finally:
        torch.cuda.is_available = available
    show, plt.show = plt.show, lambda *args, **kwargs: None             # the chart cell calls plt.show()
    yield namespace
    plt.show = show
    plt.close("all")


def test_search_outcomes_called_directly(search_namespace):
    search, fitted_line = search_namespace["search"], search_namespace["fitted_line"]
    nothing = search(0)
    assert nothing.outcome == "nothing fits" and nothing.largest is None and nothing.first_failing == 16
    assert [t.batch for t in nothing.trials] == [16] and fitted_line(nothing) is None
    only = search(peak_by_hand(16))                                     # exactly the start size's peak: it fits
    assert only.outcome == "only the start size fits" and (only.largest, only.first_failing) == (16, 32)
    assert fitted_line(only) is None
    capped = search(2**40, cap=16)                                      # one trial, and it is the cap
    assert capped.outcome == "reached the cap" and capped.largest == 16 and capped.first_failing is None
    assert fitted_line(capped) is None and search_namespace["line_text"](capped).endswith("from one point")
    found = search(peak_by_hand(100), cap=256)                          # 16 32 64 (128) 96 (112): resolution 16
    assert found.outcome == "found the largest batch" and (found.largest, found.first_failing) == (96, 112)
    assert peak_by_hand(found.largest) <= found.budget < peak_by_hand(found.first_failing)
    per_sample, fixed, (b0, b1) = fitted_line(found)
    assert (b0, b1) == (64, 96) and fixed + per_sample * 64 == peak_by_hand(64)
    assert fixed + per_sample * 96 == peak_by_hand(96)
    with pytest.raises(ValueError):
        search(2**40, start=32, cap=16)


def test_search_chart_copes_with_every_outcome(search_namespace):
    import matplotlib.pyplot as plt
    chart = snippet_cells("batch_size_search")["chart"]
    for budget, cap in ((0, 65536), (peak_by_hand(16), 65536), (2**40, 16)):
        namespace = dict(search_namespace, result=search_namespace["search"](budget, cap=cap))
        exec(compile(chart, "chart", "exec", dont_inherit=True), namespace)
        assert plt.gcf().legends                                         # below the chart, for a phone
        plt.close("all")


def test_batch_size_search_empties_the_cache_only_to_measure():
    """The allocator frees its cache and retries by itself after an out-of-memory error: the search never calls
    empty_cache() to recover. It calls it only before a measurement (each trial, and the baseline), so that every
    trial starts from the same reserved memory; the fraction is reset afterwards."""
    source = (Path(__file__).resolve().parent.parent / "snippets" / "batch_size_search.py").read_text()
    tree = ast.parse(source)
    where = {node.name: [c.func.attr for c in ast.walk(node) if isinstance(c, ast.Call)
                         and isinstance(c.func, ast.Attribute)] for node in ast.walk(tree)
             if isinstance(node, ast.FunctionDef)}
    assert "empty_cache" in where["__enter__"]                          # StepMemory's, before a measurement
    assert "empty_cache" not in where["trial"] and "empty_cache" not in where["search"]
    calls = [node.func.attr for node in ast.walk(tree)
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)]
    assert calls.count("set_per_process_memory_fraction") == 2          # the budget, and back to 1.0
    assert "set_per_process_memory_fraction(1.0)" in source and "except torch.cuda.OutOfMemoryError" in source
    assert "frees its" in source and "cached blocks that are not split" in source      # the comment says why


def test_one_peak_across_snippets(recorded):
    """The same quantity, the same bytes: the search, batch_size_effects, estimators and the timeline."""
    search = {b: m for b, m, _ in search_trials(cell_output(recorded("batch_size_search"), "search"))}
    effects = {int(r[0]): int(r[3].replace(",", "")) for r in throughput_rows(recorded("batch_size_effects"))}
    compare = cell_output(recorded("estimators"), "compare")
    estimators = {int(b): int(m.replace(",", "")) for b, m in
                  re.findall(r"^\s+(\d+)\s+[\d,]+\s+[\d,]+\s+([\d,]+)\s+[\d.]+\s+[\d.]+$", compare, re.M)}
    timeline = cell_output(recorded("memory_timeline"), "timeline")
    highest = int(re.search(r"Adam's highest point: ([\d,]+) bytes at '2: forward'", prose(timeline)).group(1)
                  .replace(",", ""))
    assert set(estimators) == {64, 1024}
    for batch in (64, 1024):
        assert search[batch] == effects[batch] == estimators[batch] == peak_by_hand(batch)
    assert highest == search[1024]                                      # the timeline runs at batch 1024
    assert peak_by_hand(64) == 1_832_116 and peak_by_hand(1024) == 5_046_928


def test_training_loop_learns(recorded):
    rec = recorded("training_loop")
    assert "train: 60,000 images in 938 batches of 64 (the last one has 32)" in cell_output(rec, "data")
    epochs = re.findall(r"^\s+(\d)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)%", cell_output(rec, "loop"), re.M)
    assert [e[0] for e in epochs] == ["1", "2"]
    losses = [float(e[1]) for e in epochs]
    assert losses[1] < losses[0]
    assert float(epochs[-1][3]) > 95.0
    median, fastest, slowest, count = re.search(r"^Seconds per epoch, training and test: median ([\d.]+) "
                                                r"\(([\d.]+) to ([\d.]+)\) over (\d) epochs$",
                                                cell_output(rec, "times"), re.M).groups()
    assert int(count) == 2 and float(fastest) <= float(median) <= float(slowest)            # the epochs' timings
    assert float(median) == pytest.approx((float(fastest) + float(slowest)) / 2, abs=0.101)  # the median of two
    sgd = re.findall(r"^SGD lr 1e-3, epoch (\d): train loss ([\d.]+), test accuracy ([\d.]+)%$",
                     cell_output(rec, "exercise-sgd"), re.M)
    assert [e[0] for e in sgd] == ["1", "2"] and float(sgd[-1][2]) < float(epochs[-1][3])   # SGD learns slower
    assert next(c for c in rec["cells"] if c["name"] == "chart")["figures"]


def throughput_rows(rec: dict) -> list[tuple[str, ...]]:
    """(batch, steps timed, median samples/s, peak bytes, ± spread in %) of each row."""
    rows = re.findall(r"^\s+(\d+)\s+(\d+)\s+([\d,]+)\s+([\d.]+)%\s+([\d,]+)\s+[\d.]+(?:   peak at '.+')?$",
                      cell_output(rec, "throughput"), re.M)
    return [(batch, steps, speed, peak, spread) for batch, steps, speed, spread, peak in rows]


def test_batch_size_effects(recorded):
    rec = recorded("batch_size_effects")
    throughput = cell_output(rec, "throughput")
    assert throughput.splitlines()[0].split() == ["batch", "steps", "samples/s", "±", "peak", "bytes", "MiB"]
    rows = throughput_rows(rec)
    assert [int(r[0]) for r in rows] == [16 * 2 ** i for i in range(9)]        # 16 … 4096
    peaks = [int(r[3].replace(",", "")) for r in rows]
    assert peaks == [peak_by_hand(int(r[0])) for r in rows]                    # the peak over two steps
    assert peaks == sorted(peaks) and peaks[0] == 1_679_284
    assert all(float(r[4]) >= 0 for r in rows)                                  # the spread of the 5 timings
    speed = {int(r[0]): int(r[2].replace(",", "")) for r in rows}
    change, verdict = re.search(r"^Last doubling, 2048 -> 4096: median samples/s ([+-]\d+)%;\n(.+)\.$",
                                throughput, re.M).groups()
    assert int(change) == round(100 * (speed[4096] / speed[2048] - 1))
    assert verdict in ("every timing at 4096 is faster than every timing at 2048",
                       "every timing at 4096 is slower than every timing at 2048",
                       "the timings of the two batch sizes overlap")
    accuracy = re.findall(r"^\s+(\d+)\s+(\d+)\s+(\d+)\s+([\d.]+)%", cell_output(rec, "accuracy"), re.M)
    for batch, per_epoch, total, _ in accuracy:
        assert int(per_epoch) == math.ceil(60000 / int(batch)) and int(total) == 2 * int(per_epoch)
    assert len(accuracy) >= 4 and all(float(a[3]) > 80 for a in accuracy)
    assert len(next(c for c in rec["cells"] if c["name"] == "chart")["figures"]) == 1


def test_fast_path_reports_its_measured_ratio_at_the_same_accuracy(recorded):
    """The printed ratio is the two measured times divided (how large it is depends on the machine and its load:
    benchmarks/record_lesson.py reports it; a test does not time anything)."""
    rec = recorded("fast_path")
    compare = cell_output(rec, "compare")
    ratio = float(re.search(r"fast path is ([\d.]+)x faster", compare).group(1))
    slow, slow_min, slow_max = map(float, re.search(r"^DataLoader \+ transforms\s+([\d.]+)\s+([\d.]+)-([\d.]+) ",
                                                    compare, re.M).groups())
    fast, fast_min, fast_max = map(float, re.search(r"^tensors on the device\s+([\d.]+)\s+([\d.]+)-([\d.]+) ",
                                                    compare, re.M).groups())
    assert "5 runs of each path: median and fastest-slowest seconds" in compare
    assert slow_min <= slow <= slow_max and fast_min <= fast <= fast_max
    assert ratio == pytest.approx(slow / fast, rel=0.08)       # both times are printed rounded to 0.01 s
    lowest, highest = map(float, re.search(r"from ([\d.]+)x to ([\d.]+)x taking any run", compare).groups())
    assert lowest <= ratio <= highest
    assert lowest == pytest.approx(slow_min / fast_max, rel=0.08) and highest == pytest.approx(slow_max / fast_min,
                                                                                                 rel=0.08)
    lesson = re.search(r"^DataLoader loop: ([\d.]+) s \(([\d.]+) to ([\d.]+) s\) for 1 epoch",
                       cell_output(rec, "lesson-loop"), re.M)
    assert lesson and float(lesson[1]) == pytest.approx(slow, abs=0.06)
    difference = float(re.search(r"accuracy difference: ([\d.]+) percentage points", compare).group(1))
    assert difference < 1.0
    assert float(re.search(r"DataLoader loop: .* test accuracy ([\d.]+)%", cell_output(rec, "lesson-loop")).group(1)) > 95
