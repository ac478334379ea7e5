"""What the chapter 'When the batch does not fit' stands on, read from fresh CPU recordings: accumulation, autocast,
inference, the growing-memory bug, checkpointing and the CPU's answer to an out-of-memory error."""
from __future__ import annotations

import re

import pytest

from conftest import cell_output

FIT = ["grad_accumulation", "mixed_precision", "inference_memory", "memory_leak", "checkpointing", "oom_reading"]
BYTES = r"([\d,]+)"


def number(text: str) -> int:
    return int(text.replace(",", ""))


def search(pattern: str, text: str) -> re.Match:
    found = re.search(pattern, text, re.M)
    assert found, f"no {pattern!r} in:\n{text}"
    return found


@pytest.mark.parametrize("name", FIT)
def test_cpu_recordings_say_how_they_measured_and_print_short_lines(recorded, name):
    rec = recorded(name)
    text = "".join(cell["stdout"] for cell in rec["cells"])
    assert text.startswith("Device: cpu\n")
    assert "CUDA allocator" not in text
    if name != "oom_reading":
        assert "counted tensor bytes" in text
    long = [line for line in text.splitlines() if len(line) > 88]
    assert not long, long
    for cell in rec["cells"]:
        assert not cell["stderr"] and not cell["warnings"], (cell["name"], cell["stderr"], cell["warnings"])
    charts = [cell for cell in rec["cells"] if cell["name"] == "chart"]
    assert name == "oom_reading" or (charts and charts[0]["figures"])


def test_accumulated_gradients_equal_the_full_batch_within_the_printed_tolerance(recorded):
    compare = cell_output(recorded("grad_accumulation"), "compare")
    found = search(r"^Largest difference ([\d.e+-]+), tolerance ([\d.e+-]+) \(absolute\): (.+)$", compare)
    worst, tolerance = float(found[1]), float(found[2])
    assert 0 <= worst <= tolerance <= 1e-5 and found[3] == "equal within the tolerance"
    rows = re.findall(r"^(layer\d\.(?:weight|bias))\s+\([\d, ]+\)\s+([\d.e+-]+)\s+([\d.e+-]+)$", compare, re.M)
    assert [r[0] for r in rows] == ["layer1.weight", "layer1.bias", "layer2.weight", "layer2.bias"]
    assert max(float(r[2]) for r in rows) == pytest.approx(worst, rel=0.06)      # printed with 2 digits
    assert all(float(r[1]) > 100 * tolerance for r in rows)                      # the gradients are not ~0
    unweighted = cell_output(recorded("grad_accumulation"), "exercise-no-weight")
    assert unweighted.strip() == "Without weighting each loss by 1/16: gradients 16.00 times too large"


def test_accumulation_peaks_with_micro_batches_of_128(recorded):
    """The exercise's answer: 8 micro-batches of 128 peak at the optimizer step, with the batch of 128 instead of 64."""
    text = cell_output(recorded("grad_accumulation"), "exercise-micro-128")
    peak = number(search(rf"^8 micro-batches of 128\s+{BYTES}  optimizer step$", text)[1])
    assert peak == 3 * 407_080 + 407_080 + 16 + 128 * (784 * 4 + 8) + 128 * 10 * 4 + 4


def test_uneven_micro_batches_need_each_loss_weighted_by_its_share(recorded):
    """1000 images in micro-batches of 64: the last holds 40. Dividing by the number of micro-batches is then not
    the full batch's gradient; weighting each loss by n / 1000 is."""
    text = cell_output(recorded("grad_accumulation"), "uneven")
    assert "1000 images: 16 micro-batches, 15 of 64 and one of 40" in text
    by_count = search(r"^loss / 16  \(the number of micro-batches\)\s+([\d.e+-]+)  (.+)$", text)
    by_share = search(r"^loss \* n / 1000  \(each batch's share\)\s+([\d.e+-]+)  (.+)$", text)
    assert float(by_count[1]) > 1e-4 and by_count[2] == "NOT equal within 1e-06"
    assert float(by_share[1]) <= 1e-6 and by_share[2] == "equal within 1e-06"


def accumulation_namespace() -> dict:
    """The namespace of grad_accumulation.py after its setup, one-update and compare cells (run here, on the CPU)."""
    import contextlib
    import io

    from tools import snippets
    path = snippets.SNIPPETS_DIR / "grad_accumulation.py"
    namespace = {"__name__": "__main__", "__file__": str(path)}
    with contextlib.redirect_stdout(io.StringIO()):
        for cell in snippets.cells(path):
            exec(compile(cell.source, str(path), "exec"), namespace)
            if cell.name == "compare":
                return namespace
    raise AssertionError("grad_accumulation.py has no compare cell")


@pytest.mark.parametrize("effective, micro", [(1000, 64), (100, 7), (37, 10), (50, 50), (513, 256), (64, 1)])
def test_accumulation_with_shares_equals_the_full_batch_for_any_split(effective, micro, accumulation):
    """The snippet's own update and comparison, with other sizes: each loss times n / effective gives the full
    batch's gradients within the snippet's tolerance, however the last micro-batch falls."""
    from torch.utils.data import DataLoader, Subset
    ns = accumulation
    images = Subset(ns["images_used"].dataset, range(effective))
    reference, _ = ns["one_update"](DataLoader(images, batch_size=effective), lambda n: 1)
    shared, _ = ns["one_update"](DataLoader(images, batch_size=micro), lambda n: n / effective)
    assert ns["largest_difference"](reference, shared) <= ns["TOLERANCE"]
    if effective % micro:                                            # the simple rule fails on an uneven split
        count = -(-effective // micro)
        divided, _ = ns["one_update"](DataLoader(images, batch_size=micro), lambda n: 1 / count)
        assert ns["largest_difference"](reference, divided) > ns["TOLERANCE"]


@pytest.fixture(scope="module")
def accumulation():
    return accumulation_namespace()


def test_accumulation_peaks_below_the_full_batch(recorded):
    update = cell_output(recorded("grad_accumulation"), "peaks")
    full = number(search(rf"^one batch of 1024\s+{BYTES}  optimizer step$", update)[1])
    micro = number(search(rf"^16 micro-batches of 64\s+{BYTES}  optimizer step$", update)[1])
    assert micro < full
    # Both at Adam's first step: parameters, gradients, Adam's state (+16 bytes of step counters), the last batch
    # (float32 images and int64 labels), and the logits and loss of the last forward pass.
    fixed = 3 * 407_080 + 407_080 + 16
    assert full == fixed + 1024 * (784 * 4 + 8) + 1024 * 10 * 4 + 4
    assert micro == fixed + 64 * (784 * 4 + 8) + 64 * 10 * 4 + 4 == 1_832_116
    assert f"Accumulation: {micro / full:.2f} of the full batch's peak, {full - micro:,} bytes less" in update


def parts_table(text: str) -> dict[tuple[str, str], list[int | None]]:
    rows = {}
    for line in text.splitlines():
        value = r"\s+(-|[\d,]+)"
        found = re.match(rf"^(\S.*?)\s{{2,}}(float32|bfloat16|float16|int64|counted){value * 3}$", line)
        if found:
            rows[found[1], found[2]] = [None if v == "-" else number(v) for v in found.group(3, 4, 5)]
    return rows


def test_autocast_shrinks_activations_and_leaves_parameters_gradients_and_adam_unchanged(recorded):
    rec = recorded("mixed_precision")
    assert "Autocast's 16-bit type here: bfloat16" in cell_output(rec, "setup")
    parts = cell_output(rec, "parts")
    assert re.search(r"^part \(counted tensor bytes\)\s+dtype\s+float32\s+autocast\s+cast batch$", parts, re.M)
    rows = parts_table(parts)
    for part, size in (("parameters", 407_080), ("gradients", 407_080), ("Adam's state", 814_176)):
        assert rows[part, "float32"] == [size] * 3, part
        assert not any(p == part and d != "float32" for p, d in rows)
    f32, f16 = rows["saved: layer outputs", "float32"], rows["saved: layer outputs", "bfloat16"]
    assert f32[0] == 565_252 and f16[0] is None                     # float32: ReLU and log-softmax outputs
    assert f16[1] == f16[2] == 1024 * 128 * 2                         # the ReLU output, now bfloat16
    autocast_outputs = f32[1] + f16[1]
    assert autocast_outputs < f32[0]
    assert (f"Saved layer outputs: {autocast_outputs:,} bytes under autocast against {f32[0]:,} in float32 "
            f"({autocast_outputs / f32[0]:.2f}x)") in parts
    assert rows["batch: images", "float32"][:2] == [1024 * 784 * 4] * 2
    assert rows["batch: images", "bfloat16"] == [None, None, 1024 * 784 * 2]
    assert rows["saved: copy of the batch", "bfloat16"] == [None, 1024 * 784 * 2, None]
    added = rows["forward pass added", "counted"]
    assert added[2] < added[0] < added[1]                               # the copy of the batch, measured
    assert "Parameters, gradients and Adam's state unchanged under autocast: True" in parts


def test_autocast_saves_the_batch_copy_the_relu_output_and_a_weight_in_16_bits(recorded):
    """The exercise's answer: each tensor autograd saved under autocast (float32 batch), shape and dtype."""
    text = cell_output(recorded("mixed_precision"), "exercise-saved-dtypes")
    saved = re.findall(r"^(\([\d, ]*\))\s+(\w+)$", text, re.M)
    assert sorted(saved) == sorted([("(1024, 784)", "bfloat16"), ("(1024, 128)", "bfloat16"),
                                    ("(1024, 128)", "bfloat16"), ("(128, 10)", "bfloat16"),
                                    ("(1024, 10)", "float32"), ("(1024, 10)", "float32"),
                                    ("(1024,)", "int64"), ("()", "float32")])


def test_autocast_loss_follows_float32(recorded):
    training = cell_output(recorded("mixed_precision"), "training")
    rows = re.findall(r"^\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([+-][\d.]+)$", training, re.M)
    assert [int(r[0]) for r in rows] == [1, 10, 20, 30, 40, 50]
    for _, full, mixed, difference in rows:
        assert float(difference) == pytest.approx(float(mixed) - float(full), abs=1.1e-4)
        assert abs(float(difference)) < 0.05
    assert float(rows[-1][1]) < float(rows[0][1]) / 2                  # it trained


def test_inference_saves_nothing_for_backward(recorded):
    rec = recorded("inference_memory")
    table = cell_output(rec, "measure")
    rows = {m[0]: m[1:] for m in re.findall(
        rf"^(training|torch\.no_grad\(\)|torch\.inference_mode\(\))\s+{BYTES}\s+(\d+)\s+{BYTES}\s+{BYTES}\s+(.+)$",
        table, re.M)}
    assert set(rows) == {"training", "torch.no_grad()", "torch.inference_mode()"}
    saved, tensors, after_loss, peak, _ = rows["training"]
    assert number(saved) == 1000 * (128 + 10) * 4 + 4 and int(tensors) > 0   # ReLU, log-softmax, total weight
    for mode in ("torch.no_grad()", "torch.inference_mode()"):
        assert number(rows[mode][0]) == 0 and int(rows[mode][1]) == 0
        assert number(after_loss) - number(rows[mode][2]) == number(saved)
        assert number(rows[mode][3]) <= number(peak)
    assert re.search(r"^torch\.inference_mode\(\)\s+output requires_grad=False is_inference=True$", table, re.M)
    assert re.search(r"^torch\.no_grad\(\)\s+output requires_grad=False is_inference=False$", table, re.M)
    why = cell_output(rec, "why-1000")
    eval_peak = number(search(rf"^Peak, evaluating it \(no_grad\):\s+{BYTES} bytes", why)[1])
    assert eval_peak == number(rows["torch.no_grad()"][3])
    assert number(search(rf"of which the batch itself:\s+{BYTES} bytes", why)[1]) == 1000 * (784 * 4 + 8)
    assert "Evaluation kept nothing for backward; the batch is most of its peak (69%)" in why
    big = cell_output(rec, "exercise-batch-2000")
    # the exercise's answer: the parameters, the batch of 2000, layer1's output and the ReLU's output
    assert f"no_grad): {407_080 + 2000 * (784 * 4 + 8) + 2 * 2000 * 128 * 4:,} bytes" in big
    assert "RuntimeError: Inference tensors cannot be saved for backward" in cell_output(rec, "inference-tensor")


def test_the_tensor_sum_grows_every_step_and_item_stays_flat(recorded):
    rec = recorded("memory_leak")
    leak_text, flat_text = cell_output(rec, "tensor-sum"), cell_output(rec, "item")
    assert "The mean loss is a Tensor" in leak_text and "The mean loss is a float" in flat_text
    assert re.search(r"^step\s+total_loss \+= loss\s+\+= loss\.item\(\)\s+\(counted tensor bytes\)$", flat_text, re.M)
    table = re.findall(rf"^\s+(\d+)\s+{BYTES}\s+{BYTES}$", flat_text, re.M)
    rows = [(int(step), number(grows), number(stays)) for step, grows, stays in table]
    assert [r[0] for r in rows] == list(range(1, 11))
    leak, flat = [r[1] for r in rows], [r[2] for r in rows]
    per_step = 1000 * (784 * 4 + 8) + 1000 * (128 + 10) * 4 + 4    # the batch and what autograd saved
    assert {b - a for a, b in zip(leak, leak[1:])} == {per_step}
    assert set(flat) == {leak[0]}
    assert f"In use after step 1: {leak[0]:,} bytes; after step 10: {leak[-1]:,}" in leak_text
    assert f"Growth per step with the tensor sum: {per_step:,} bytes every step (counted tensor bytes)" in leak_text
    assert "Growth per step with .item(): 0 bytes every step (counted tensor bytes)" in flat_text
    training = cell_output(rec, "training")
    rows = re.findall(rf"^training step\s+(\d+):\s+{BYTES} bytes \(counted tensor bytes\),\s+(\d+) graph nodes$",
                      training, re.M)
    assert len(rows) == 4 and len({number(r[1]) for r in rows}) == 1   # backward frees the saved tensors
    nodes = [int(r[2]) for r in rows]
    assert nodes == sorted(nodes) and nodes[-1] > nodes[0]             # but the graph keeps growing


def test_checkpointing_saves_activation_memory(recorded):
    rec = recorded("checkpointing")
    block = number(search(rf"^One block's output at batch 512: {BYTES} bytes", cell_output(rec, "model"))[1])
    assert block == 512 * 1024 * 4
    memory = cell_output(rec, "memory")
    kept = {m[0]: number(m[1]) for m in re.findall(rf"^(\S.*?)\s+{BYTES} bytes =\s+[\d.]+ MiB$", memory, re.M)}
    assert list(kept) == ["no checkpointing", "every block", "runs of 4 blocks", "runs of 8 blocks"]
    logits_and_loss = 512 * 10 * 4 + 4
    assert kept["no checkpointing"] == 8 * block + logits_and_loss == kept["every block"]
    assert kept["runs of 4 blocks"] == 2 * block + logits_and_loss
    assert kept["runs of 8 blocks"] == block + logits_and_loss
    saving = kept["no checkpointing"] - kept["runs of 4 blocks"]
    assert f"Runs of 4 blocks keep {saving:,} bytes less than no checkpointing" in memory
    exercise = cell_output(rec, "exercise-runs-of-2")
    assert f"runs of 2 blocks: {4 * block + logits_and_loss:,} bytes kept for backward" in exercise
    assert f"= 4 block outputs + {logits_and_loss:,} bytes" in exercise


def test_checkpointing_prints_both_times_and_their_ratio(recorded):
    """No speed threshold: timings belong to the machine. The printed ratio must be the printed times divided."""
    timing = cell_output(recorded("checkpointing"), "time")
    plain = float(search(r"^no checkpointing\s+([\d.]+) ms a step \(median of 7\)$", timing)[1])
    checkpointed = float(search(r"^runs of 4 blocks\s+([\d.]+) ms a step \(median of 7\)$", timing)[1])
    ratio = float(search(r"^Ratio: ([\d.]+) \(runs of 4 blocks / no checkpointing\)$", timing)[1])
    assert plain > 0 and checkpointed > 0
    assert ratio == pytest.approx(checkpointed / plain, abs=0.0051)


def test_oom_reading_says_plainly_what_the_cpu_has_instead(recorded):
    rec = recorded("oom_reading")
    provoke = cell_output(rec, "provoke")
    assert provoke.startswith(f"Holding {2**30:,} bytes, then asking for {2**60:,} more:\nRuntimeError: ")
    assert re.search(r"tried to\s+allocate\s+1152921504606846976\s+bytes", provoke)
    explain = cell_output(rec, "explain")
    assert re.search(rf"^requested\s+{2**60:,} bytes$", explain, re.M)
    assert "absent: capacity, free, this_process, allowed, allocated, reserved_unallocated\n" in explain
    assert explain.endswith("cause: no allocator numbers: the message names only the request\n")
    summary = cell_output(rec, "summary")
    rss = {m[0]: number(m[1]) for m in re.findall(rf"^(RSS [^\d]+?)(?: of [\d,]+ bytes)?\s+{BYTES} bytes$",
                                                     summary, re.M)}
    assert set(rss) == {"RSS before", "RSS holding a tensor", "RSS after del"}
    assert rss["RSS holding a tensor"] - rss["RSS before"] >= 256 * 2**20 * 0.9   # the tensor's pages are there
    assert f"The RSS grew by {rss['RSS holding a tensor'] - rss['RSS before']:,} bytes" in summary
    assert cell_output(rec, "snapshot").startswith("No snapshot")
    assert cell_output(rec, "reset") == "Nothing to reset on the CPU: no limit was set.\n"
