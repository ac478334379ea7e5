"""The GPU-memory snippets: on the CPU they fall back, say so, and still print exact counted bytes."""
from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import cell_output, prose


def test_gpu_overhead_falls_back_on_the_cpu_and_says_so(recorded):
    rec = recorded("gpu_overhead")
    setup = prose(cell_output(rec, "setup"))
    assert "No CUDA device: the CUDA context, cuBLAS workspace and caching allocator exist only on a GPU" in setup
    assert "The MLP's parameters: 407,080 bytes in 4 tensors" in cell_output(rec, "model")
    assert "the two storages hold exactly 1 and 513 bytes" in prose(cell_output(rec, "block-rounding"))
    assert cell_output(rec, "adds-up").splitlines()[0].split() == ["step", "RSS", "(bytes)", "change"]


def test_gpu_overhead_allocator_cell_has_a_labelled_cpu_fallback(recorded):
    text = cell_output(recorded("gpu_overhead"), "cache-released-under-pressure")
    assert text.strip() == "CPU fallback: no caching allocator, so nothing to measure here."   # the prose explains


def test_gpu_overhead_allocator_cell_releases_the_cache_without_empty_cache():
    """The CUDA branch, read statically (no GPU here): a limit, a freed block, a bigger one, no empty_cache."""
    source = (Path(__file__).resolve().parent.parent / "snippets" / "gpu_overhead.py").read_text()
    cell = source[source.index("# %% cache-released-under-pressure"):]
    calls = [node.func.attr for node in ast.walk(ast.parse(cell))
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)]
    assert "empty_cache" not in calls
    assert calls.count("set_per_process_memory_fraction") == 2 and "set_per_process_memory_fraction(1.0)" in cell
    assert "6 * LIMIT_ABOVE // 10, 7 * LIMIT_ABOVE // 10" in cell       # 0.6 + 0.7 of the limit: over it together
    assert '"num_alloc_retries"' in cell and '"num_device_free"' in cell
    assert not re.search(r"never shrinks|empty_cache\(\) is needed|keep .* apart", source)


def test_memory_timeline_over_two_steps(recorded):
    rec = recorded("memory_timeline")
    table = cell_output(rec, "timeline")
    assert "(CPU: counted bytes, not an allocator)" in table
    rows = {m[0].strip(): (int(m[1].replace(",", "")), int(m[2].replace(",", "")))
            for m in re.findall(r"^([a-z0-9:_ ]+?)\s{2,}([\d,]+)\s+([\d,]+)$", table, re.M)}
    assert rows["model loaded"] == (407_080, 407_080)
    assert rows["optimizer created"] == (407_080, 407_080)                      # Adam's state is lazy
    sgd_step, adam_step = rows["1: optimizer step"]
    assert adam_step - sgd_step == 814_176                                        # Adam's state appears
    assert rows["1: backward"][0] - rows["1: zero_grad"][0] == 407_080            # gradients set to None
    assert rows["2: optimizer step"][1] - rows["2: backward"][1] == 0             # and Adam adds nothing more
    assert rows["2: zero_grad"] == rows["1: zero_grad"]                           # steady state after step one
    highest = max(rows.items(), key=lambda item: item[1][1])                      # Adam's highest point
    assert highest[0] == "2: forward" and highest[1][1] > rows["1: forward"][1]
    assert (f"Adam's highest point: {highest[1][1]:,} bytes at '2: forward'. That is the peak memory of a "
            f"training step (counted tensor bytes)") in prose(table)
    chart = next(c for c in rec["cells"] if c["name"] == "chart")
    assert chart["figures"] and "Memory over two training steps" in chart["figure_descriptions"][0]


def test_estimators_against_counted_bytes(recorded):
    rec = recorded("estimators")
    summary = cell_output(rec, "torchsummary-estimate")
    assert "Estimated Total Size (MB): 1.09" in summary and "by its formula exactly: 1,145,384 bytes" in summary
    assert "by its formula exactly: 12,219,944 bytes" in summary
    info = cell_output(rec, "torchinfo-estimate")
    assert "0.678504 MB = 678,504 bytes" in info and "4.748904 MB = 4,748,904 bytes" in info
    measured = prose(cell_output(rec, "measured"))
    assert ("Peak memory of a training step, counted tensor bytes: parameters, gradients, Adam's state, batch, "
            "logits, loss, and what autograd saved for backward") in measured
    assert "batch 64: peak memory of a training step 1,832,116 bytes (counted tensor bytes), at '1: optimizer " \
           "step'" in measured                                          # gradients and Adam's state together
    assert "batch 1024: peak memory of a training step 5,046,928 bytes (counted tensor bytes), at '2: " \
           "forward'" in measured                                        # activations on top of Adam's state
    compare = cell_output(rec, "compare")
    assert "peak (counted bytes)" in compare
    assert re.search(r"^\s+64\s+1,145,384\s+678,504\s+1,832,116\s+1\.60\s+2\.70$", compare, re.M)
    assert re.search(r"^\s+1024\s+12,219,944\s+4,748,904\s+5,046,928\s+0\.41\s+1\.06$", compare, re.M)


def test_gpu_overhead_nested_boxes_cpu_fallback_says_so(recorded):
    """Without a GPU the nested boxes are drawn from the CPU fallback's own numbers, and the title says so."""
    rec = recorded("gpu_overhead")
    cell = next(c for c in rec["cells"] if c["name"] == "nested-boxes")
    assert len(cell["figures"]) == 1
    alt = cell["figure_descriptions"][0]
    assert alt.startswith("CPU fallback (no GPU): tensors ⊂ process RSS ⊂ machine")
    assert "On a GPU: allocated ⊂ reserved ⊂ nvidia-smi ⊂ device" in alt
    sizes = [int(n.replace(",", "")) for n in re.findall(r"([\d,]+) bytes$", cell["stdout"], re.M)]
    assert len(sizes) == 3 and sizes == sorted(sizes)                   # each box inside the next
    # the 4-byte first tensor; parameters, gradients and Adam's two buffers; images, labels and logits of batch
    # 1024; the loss; the 1- and 513-byte tensors; Adam's four step counters
    assert sizes[0] == 4 + 4 * 407_080 + 1024 * (784 * 4 + 8 + 10 * 4) + 4 + 1 + 513 + 16 == 4_889_274
    assert re.search(r"Drawn with (areas to scale|sides on a log scale, areas not to scale)", cell["stdout"])
