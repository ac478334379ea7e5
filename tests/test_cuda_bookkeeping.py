"""The snippets' CUDA bookkeeping, run on the CPU against a stand-in for the CUDA allocator's counters
(tests/cuda_standin.py: one global peak that any reset_peak_memory_stats() sets back, the recorder's reset before
every cell included, reserved memory in segments, a memory fraction that raises OutOfMemoryError).

The stand-in counts every tensor an operator makes, host ones too (all but a DataLoader's work to assemble a batch),
so its bytes are not a GPU's: these tests check when peaks are taken and what they are compared with, not the
numbers the GPU tab will show."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, prose

SNIPPETS = ROOT / "snippets"


def run_standin(name: str, tmp_path: Path, probes: dict[str, str] | None = None,
                last: str | None = None, fewer: dict[str, str] | None = None) -> tuple[dict[str, str], dict]:
    """({cell: stdout}, the stand-in's counters and probes) for snippets/<name>.py run with its allocator switch on,
    all its cells or up to the cell named ``last``, a timing's repeats made ``fewer`` ({line: replacement});
    fails with the traceback of a cell that raised."""
    result, probe_file, fewer_file = (tmp_path / f"{name}{end}.json" for end in ("", "-probes", "-fewer"))
    probe_file.write_text(json.dumps(probes or {}))
    fewer_file.write_text(json.dumps(fewer or {}))
    process = subprocess.run([sys.executable, str(ROOT / "tests" / "cuda_standin.py"), str(SNIPPETS / f"{name}.py"),
                              str(result), str(probe_file), last or "", str(fewer_file)], cwd=ROOT,
                             capture_output=True, text=True, env=dict(os.environ, MPLBACKEND="Agg"), timeout=600)
    assert process.returncode == 0, process.stderr[-3000:]
    cells = json.loads(result.read_text())
    *ran, standin = cells
    failed = [c for c in ran if c["error"]]
    assert not failed, f"cell '{failed[0]['name']}' raised under the stand-in:\n{failed[0]['error'][-2500:]}"
    return {c["name"]: c["stdout"] for c in ran}, standin


def test_the_standin_counts_like_the_allocator():
    """Rounding to 512 bytes, one global peak reset from anywhere, reserved memory that stays cached, a fraction
    that limits reserved memory, with a retry after freeing the cache before OutOfMemoryError."""
    import torch
    sys.path.insert(0, str(ROOT / "tests"))
    from cuda_standin import MiB, StandIn
    standin, real = StandIn(), {n: getattr(torch.cuda, n) for n in StandIn.NAMES}
    try:
        standin.patch(torch.cuda)
        with standin:
            a = torch.empty(1, dtype=torch.uint8)
            assert torch.cuda.memory_allocated() == 512 and torch.cuda.memory_reserved() == 2 * MiB
            b = torch.empty(3 * MiB, dtype=torch.uint8)
            assert torch.cuda.memory_allocated() == 512 + 3 * MiB
            del b
            assert torch.cuda.memory_allocated() == 512 and torch.cuda.max_memory_allocated() == 512 + 3 * MiB
            assert torch.cuda.memory_reserved() == 22 * MiB                    # freed, still cached
            torch.cuda.reset_peak_memory_stats()
            assert torch.cuda.max_memory_allocated() == 512
            torch.cuda.set_per_process_memory_fraction(30 * MiB / torch.cuda.mem_get_info()[1])
            c = torch.empty(25 * MiB, dtype=torch.uint8)                         # fits after the cache is freed
            assert torch.cuda.memory_stats()["num_alloc_retries"] == 1
            with pytest.raises(torch.cuda.OutOfMemoryError):
                torch.empty(20 * MiB, dtype=torch.uint8)
            assert torch.cuda.memory_stats()["num_ooms"] == 1 and c.numel() and a.numel()
            assert torch.cuda.memory_stats()["allocation.all.current"] == 2
    finally:
        for name, function in real.items():
            setattr(torch.cuda, name, function)


def test_the_standin_counts_a_dataloaders_batch_and_not_the_host_work_that_made_it():
    """Each image's transform makes a 4 MiB tensor on the host; a GPU's allocator never sees it. The batch the loader
    returns is counted, as its copy on the GPU would be, and the peak is the batch's."""
    import torch
    from torch.utils.data import DataLoader, Dataset
    sys.path.insert(0, str(ROOT / "tests"))
    from cuda_standin import MiB, StandIn, rounded

    class Images(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, index):
            work = torch.ones(MiB, dtype=torch.float32) * index               # 4 MiB of host work per image
            return work[:256].clone()

    standin = StandIn()
    iterator = iter(DataLoader(Images(), batch_size=4))
    with standin:
        batch = standin.host(type(iterator).__next__)(iterator)
        before = standin.peak_allocated
        work = torch.ones(MiB, dtype=torch.float32)                            # an operator outside a loader counts
    assert batch.shape == (4, 256) and before == standin.allocated - rounded(work.nbytes) == rounded(batch.nbytes)
    assert standin.peak_allocated == rounded(batch.nbytes) + rounded(work.nbytes)


def test_grad_accumulation_stores_each_peak_when_it_is_measured(tmp_path):
    """Each update's peak is read while the update runs (MemoryMeter reads the peak counter at every reading): no
    later meter and no per-cell reset can change it. (Read at the end, as before, it was what was allocated when the
    'peaks' cell began: 0 on a GPU, a ZeroDivisionError, or a false ratio.)"""
    out, standin = run_standin("grad_accumulation", tmp_path, {
        "highest_event": "[max(b for _, b in m.readings) for m in (full_meter, micro_meter)]",
        "peaks": "[m.peak()[0] for m in (full_meter, micro_meter)]"})
    assert standin["resets"] >= 4                      # the per-cell resets happened
    (full_high, micro_high), (full_peak, micro_peak) = standin["probes"].values()
    assert full_peak >= full_high > 0 and micro_peak >= micro_high > 0
    assert micro_peak < full_peak
    rows = dict(re.findall(r"^(one batch of 1024|16 micro-batches of 64)\s+([\d,]+)", out["peaks"], re.M))
    assert [int(v.replace(",", "")) for v in rows.values()] == [full_peak, micro_peak]
    assert f"Accumulation: {micro_peak / full_peak:.2f} of the full batch's peak" in out["peaks"]


def test_inference_memory_reads_the_peaks_it_printed(tmp_path):
    """The training and no_grad peaks in the last cells are the ones measured in 'measure', not what the allocator
    says after later resets."""
    out, standin = run_standin("inference_memory", tmp_path, {
        "peaks": "{mode: r[0].peak()[0] for mode, r in results.items()}",
        "highest_event": "{mode: max(b for _, b in r[0].readings) for mode, r in results.items()}"})
    peaks, highest = standin["probes"]["peaks"], standin["probes"]["highest_event"]
    for mode, peak in peaks.items():
        assert peak >= highest[mode] > 0, mode
    table = {m[0]: int(m[1].replace(",", "")) for m in
             re.findall(r"^(training|torch\.no_grad\(\)|torch\.inference_mode\(\))\s+[\d,]+\s+\d+\s+[\d,]+\s+([\d,]+)",
                        out["measure"], re.M)}
    assert table == peaks
    assert peaks["training"] > peaks["torch.no_grad()"]
    why = prose(out["why-1000"])
    assert f"Peak, training the batch of 1000: {peaks['training']:,} bytes" in why
    assert f"Peak, evaluating it (no_grad): {peaks['torch.no_grad()']:,} bytes" in why
    assert f"Training needs {peaks['training'] / peaks['torch.no_grad()']:.2f}x" in why


def test_batch_size_search_budgets_reserved_memory_and_reports_it(tmp_path):
    """set_per_process_memory_fraction limits reserved memory, so the search's limit is built from the reserved
    baseline and each trial reports max_memory_reserved() beside the allocated peak: no trial fails below the
    budget, every trial that fits is within it, and a trial's reading does not depend on what earlier trials left
    cached. The baseline names the allocator's real memory_stats key (allocation.all.current)."""
    out, standin = run_standin("batch_size_search", tmp_path, {
        "budget": "BUDGET_BYTES",
        "trials": "[(t.batch, t.fits, t.peak, t.reserved) for t in result.trials]",
        "alone": "trial(1024, BUDGET_BYTES).reserved",
        "after_a_big_one": "(trial(16384, BUDGET_BYTES), trial(1024, BUDGET_BYTES).reserved)[1]"})
    trial_cell = prose(out["trial"])
    assert re.search(r"allocated in \d+ blocks, [\d,]+ bytes reserved", trial_cell), trial_cell
    budget, trials = standin["probes"]["budget"], standin["probes"]["trials"]
    fitting = [t for t in trials if t[1]]
    failing = [t for t in trials if not t[1]]
    assert fitting and failing and standin["num_ooms"] > 0                  # real out-of-memory errors
    assert all(reserved <= budget and allocated <= reserved for _, _, allocated, reserved in fitting)
    assert max(t[0] for t in fitting) < min(t[0] for t in failing)          # the search's boundary is clean
    assert standin["probes"]["alone"] == standin["probes"]["after_a_big_one"]
    header = out["search"].splitlines()[0].split()
    assert header[:5] == ["trial", "batch", "peak", "bytes", "reserved"]
    assert "Outcome: found the largest batch" in prose(out["search"])


def number(text: str) -> int:
    return int(text.replace(",", ""))


def test_checkpointing_reads_each_peak_right_after_its_step(tmp_path):
    """Each grouping's peak of the step is read as soon as its backward is done, above the baseline its own Meter
    took when it reset the peak: at least what the forward pass kept for backward, and at least the parameters'
    bytes (backward ends with every gradient). The rows print those stored numbers, the peak under its own header."""
    out, standin = run_standin("checkpointing", tmp_path, {
        "kept": "[[label, *values] for label, values in kept.items()]",
        "parameter_bytes": "sum(p.numel() * p.element_size() for p in model.parameters())"})
    kept = {label: (kept_bytes, peak) for label, kept_bytes, peak in standin["probes"]["kept"]}
    for label, (kept_bytes, peak) in kept.items():
        assert peak >= kept_bytes > 0 and peak >= standin["probes"]["parameter_bytes"], label
    longer_runs = [kept[label][0] for label in ("no checkpointing", "runs of 4 blocks", "runs of 8 blocks")]
    assert longer_runs == sorted(longer_runs, reverse=True) and len(set(longer_runs)) == 3
    assert kept["every block"][0] == kept["no checkpointing"][0]
    rows = re.findall(r"^(\S.*?)\s+([\d,]+) bytes = +[\d.]+ MiB +([\d,]+) bytes$", out["memory"], re.M)
    assert {label: (number(a), number(b)) for label, a, b in rows} == kept
    header, *lines = out["memory"].splitlines()
    assert header.endswith("peak of the step")
    assert {len(line) for line in lines[:len(kept)]} == {len(header)}, "the peak's header ends where its numbers do"
    plain, best = kept["no checkpointing"][0], kept["runs of 4 blocks"][0]
    assert f"Runs of 4 blocks keep {plain - best:,} bytes less than no checkpointing ({best / plain:.2f}" \
        in out["memory"]


def test_estimators_compare_the_peak_they_measured(tmp_path):
    """The training step's peak is read when its two steps end, above what was allocated before them: at least the
    parameters, gradients and Adam's state, which all exist at the optimizer step. The comparison table prints that
    stored peak and its ratios to the two estimates."""
    out, standin = run_standin("estimators", tmp_path, {
        "measured": "measured", "summary": "summary_bytes", "info": "info_bytes"})
    measured, summary, info = ({int(b): v for b, v in standin["probes"][k].items()}
                               for k in ("measured", "summary", "info"))
    parts = {int(b): sum(map(number, found)) for b, *found in re.findall(
        r"^batch (\d+): .*\n.*\n  parts: parameters ([\d,]+) \+ gradients ([\d,]+) \+ Adam state ([\d,]+)$",
        out["measured"], re.M)}
    assert parts.keys() == measured.keys() == {64, 1024}
    for batch, peak in measured.items():
        assert f"batch {batch}: peak memory of a training step {peak:,} bytes" in out["measured"]
        assert peak >= parts[batch] > 0, batch
    assert "(CUDA allocator peak above baseline)" in out["measured"]
    assert "the parts are never all alive together" not in out["measured"]      # the CPU's note
    assert "peak (CUDA allocator)" in out["compare"].splitlines()[0]
    table = re.findall(r"^ *(\d+) +([\d,]+) +([\d,]+) +([\d,]+) +([\d.]+) +([\d.]+)$", out["compare"], re.M)
    assert [int(row[0]) for row in table] == [64, 1024]
    for batch, s, i, m, per_summary, per_info in table:
        batch, m = int(batch), number(m)
        assert (number(s), number(i), m) == (summary[batch], info[batch], measured[batch])
        assert (per_summary, per_info) == (f"{m / summary[batch]:.2f}", f"{m / info[batch]:.2f}")


def test_batch_size_effects_prints_the_peak_of_each_batch_size(tmp_path):
    """Each batch size's peak is read when its two training steps end and stored with its speed: it grows with the
    batch and is never below the parameters, gradients and Adam's two moments of the fresh model (4 x its
    parameters' bytes), all alive at the optimizer step. (The accuracy cell, which measures no memory, is not run.)"""
    out, standin = run_standin("batch_size_effects", tmp_path, {
        "peaks": "[[b, speed[b][1]] for b in BATCH_SIZES]",
        "parameter_bytes": "sum(p.numel() * p.element_size() for p in MLP().parameters())"}, last="throughput",
        fewer={"REPEATS = 5  # timings of each batch size: the median, and how far they spread": "REPEATS = 1",
               "TIMED_SAMPLES = 16384  # per batch size and timing, and at least 4 steps": "TIMED_SAMPLES = 64"})
    peaks = dict(standin["probes"]["peaks"])
    assert list(peaks.values()) == sorted(peaks.values())
    assert min(peaks.values()) >= 4 * standin["probes"]["parameter_bytes"] > 0
    table = re.findall(r"^ *(\d+) +\d+ +[\d,]+ +[\d.]+% +([\d,]+) +([\d.]+)$", out["throughput"], re.M)
    assert {int(b): number(p) for b, p, _ in table} == peaks
    assert all(mib == f"{peaks[int(b)] / 2**20:.2f}" for b, _, mib in table)
    assert "peak at" not in out["throughput"]                               # CUDA: no event, the allocator's peak


def test_memory_measured_stores_the_allocator_at_each_phase(tmp_path):
    """One reset as each StepMeter is entered, the counters read and stored by its hooks at every phase: a phase's
    peak is at least what is allocated then and never below an earlier phase's; Adam's step allocates at least its
    state, SGD's nothing. The tables and the summary's CUDA peak (the most of any phase) print those stored
    numbers."""
    out, standin = run_standin("memory_measured", tmp_path, {
        "rows": "[[o, b, [list(r) for r in m.rows]] for (o, b), m in results.items()]",
        "state": "[m.parts['state'] for m in results.values()]"}, last="summary")
    runs = standin["probes"]["rows"]
    assert [(o, b) for o, b, _ in runs] == [("SGD", 64), ("SGD", 1024), ("Adam", 64), ("Adam", 1024)]
    printed = re.findall(r"^  ([a-z ]+?) +([\d,]+) +([\d,]+) +([\d,]+) +([\d,]+)$", out["table"], re.M)
    assert [[phase, *map(number, values)] for phase, *values in printed] == [row for *_, rows in runs
                                                                              for row in rows]
    summary = {(o, int(b)): number(peak) for o, b, peak in re.findall(
        r"^(SGD|Adam) +(\d+)(?: +[\d,]+){6} +([\d,]+)$", out["summary"], re.M)}
    for (optimizer, batch, rows), state in zip(runs, standin["probes"]["state"]):
        phases = [row[0] for row in rows]
        assert phases == ["batch moved", "forward", "backward", "optimizer step"]
        allocated, peaks = [row[2] for row in rows], [row[3] for row in rows]
        assert all(p >= a > 0 for a, p in zip(allocated, peaks)) and peaks == sorted(peaks), (optimizer, batch)
        step_allocated = allocated[3] - allocated[2]
        assert step_allocated >= state > 0 if optimizer == "Adam" else step_allocated == state == 0
        assert summary[optimizer, batch] == max(peaks)


def test_memory_leak_shows_each_step_keeping_its_batch(tmp_path):
    """memory_allocated() above the Meter's baseline, read after every step: with the tensor sum memory grows by the
    same amount every step, at least the step's batch; with .item() it does not grow; in training it does not grow
    by as much as one batch of 64 images. The printed numbers are the stored ones."""
    out, standin = run_standin("memory_leak", tmp_path, {
        "leak": "leak", "flat": "flat", "history": "history", "batch": "batch"})
    leak, flat, history, batch = (standin["probes"][k] for k in ("leak", "flat", "history", "batch"))
    growth = {b - a for a, b in zip(leak, leak[1:])}
    assert len(growth) == 1 and growth.pop() >= batch > 0
    assert len(set(flat)) == 1 and 0 < flat[0] <= leak[0]
    assert f"In use after step 1: {leak[0]:,} bytes; after step {len(leak)}: {leak[-1]:,}" in out["tensor-sum"]
    rows = re.findall(r"^ *(\d+) +([\d,]+) +([\d,]+)$", out["item"], re.M)
    assert [(number(a), number(b)) for _, a, b in rows] == list(zip(leak, flat))
    assert "Growth per step with .item(): 0 bytes every step (CUDA allocator)" in out["item"]
    grew = history[-1][0] - history[1][0]
    assert 0 <= grew < 64 * 784 * 4
    assert f"(steps 2-{len(history)}: +{grew:,} bytes)" in prose(out["training"])


def test_mixed_precision_forward_pass_holds_what_autograd_saved(tmp_path):
    """What the allocator says the forward pass added (read before and right after it) holds at least every saved
    tensor it counted, and autocast with a float32 batch adds at least the 16-bit copy of the batch more than
    autocast with the batch cast first. The row prints those numbers in the table's own columns."""
    out, standin = run_standin("mixed_precision", tmp_path, {
        "added": "{run: r[1] for run, r in results.items()}",
        "saved": "{run: sum(b for (p, _), b in r[0].items() if p.startswith('saved:')) for run, r in results.items()}",
        "copy": "total('autocast', 'saved: copy of the batch')"})
    added, saved, copy = (standin["probes"][k] for k in ("added", "saved", "copy"))
    assert list(added) == ["float32", "autocast", "cast batch"]
    for run in added:
        assert added[run] >= saved[run] > 0, run
    assert added["autocast"] - added["cast batch"] >= copy > 0
    lines = out["parts"].splitlines()
    header = next(line for line in lines if line.startswith("part (counted tensor bytes)"))
    row = next(line for line in lines if line.startswith("forward pass added"))
    assert [number(n) for n in row.split()[-3:]] == list(added.values())
    assert len(row) == len(header), "the forward pass's numbers stand in the runs' columns"


def pack_hooks_returning_their_argument() -> list[str]:
    """'file:line' of every pack hook in snippets/ (a function named pack, or the first argument of a
    saved_tensors_hooks call) that returns its tensor argument itself."""
    import ast
    found = []
    for path in sorted(SNIPPETS.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        hooked = {node.args[0].id for node in ast.walk(tree) if isinstance(node, ast.Call) and node.args
                  and getattr(node.func, "attr", "") == "saved_tensors_hooks" and isinstance(node.args[0], ast.Name)}
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and (node.name == "pack" or node.name in hooked):
                tensor = node.args.args[-1].arg
                found += [f"{path.name}:{r.lineno}" for r in ast.walk(node) if isinstance(r, ast.Return)
                          and isinstance(r.value, ast.Name) and r.value.id == tensor]
    return found


def test_a_pack_hook_that_returns_its_tensor_keeps_a_saved_output_alive():
    """Why the snippets' pack hooks return t.detach(): autograd saves relu's output; a hook that hands back that
    very tensor (which points to its grad_fn, which holds the saved tensor) makes a reference cycle, so the output
    outlives its graph until the garbage collector runs: on CUDA an inflated baseline."""
    import gc

    import torch
    from torch.multiprocessing.reductions import StorageWeakRef

    def freed_with_its_graph(pack) -> bool:
        x = torch.randn(256, 256, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y = torch.relu(x)
        weak = StorageWeakRef(y.untyped_storage())
        del y
        return weak.expired()

    gc.disable()
    try:
        assert freed_with_its_graph(lambda t: t.detach())
        assert not freed_with_its_graph(lambda t: t)
    finally:
        gc.enable()
        gc.collect()


def test_no_snippet_pack_hook_returns_its_tensor():
    assert pack_hooks_returning_their_argument() == []


def test_the_allocator_history_records_python_stacks_only():
    """C++ stacks make a snapshot slow to symbolise: every _record_memory_history call that starts recording asks
    for stacks='python'."""
    import ast
    calls = [(path.name, node) for path in sorted(SNIPPETS.glob("*.py"))
             for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
             if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "_record_memory_history"]
    starting = [(name, node) for name, node in calls
                if not any(k.arg == "enabled" and isinstance(k.value, ast.Constant) and k.value.value is None
                           for k in node.keywords)]
    assert {name for name, _ in starting} == {"memory_timeline.py", "oom_reading.py"}
    for name, node in starting:
        stacks = {k.arg: k.value.value for k in node.keywords if isinstance(k.value, ast.Constant)}.get("stacks")
        assert stacks == "python", f"{name}:{node.lineno}"


def test_float_results_are_compared_with_a_named_tolerance_not_asserted_against_a_literal():
    """A float compared with a bare literal in an assert (assert diff < 1e-5) stops the whole recording wherever
    the last bits differ (another kernel, TF32 on): compare with a named TOLERANCE and print the verdict."""
    import ast
    found = []
    for path in sorted(SNIPPETS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Assert) and isinstance(node.test, ast.Compare):
                literals = [c for c in [node.test.left, *node.test.comparators]
                            if isinstance(c, ast.Constant) and isinstance(c.value, float)]
                if literals:
                    found.append(f"{path.name}:{node.lineno}")
    assert found == []
    for name in ("dataloaders", "fast_path"):
        assert re.search(r"^TOLERANCE = ", (SNIPPETS / f"{name}.py").read_text(), re.M), name
