"""The memory calculator's Python reference (tools/memory_calc.py): against the shared test vectors, against the
figures the committed recordings print, against what torch really allocates, and on bad input."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tools import memory_calc as mc

ROOT = Path(__file__).resolve().parent.parent
VECTORS = json.loads(mc.VECTORS.read_text(encoding="utf-8"))
MNIST, CIFAR = [784, 128, 10], [3072, 128, 10]


def cell(snippet: str, name: str) -> str:
    recording = json.loads((ROOT / "docs" / "outputs" / "cpu" / f"{snippet}.json").read_text(encoding="utf-8"))
    return next(c["stdout"] for c in recording["cells"] if c["name"] == name)


def printed(text: str, pattern: str) -> int:
    """The first number the pattern's group 1 captures in a recording's output, as an int."""
    match = re.search(pattern, text, re.M | re.S)
    assert match, f"the recording no longer prints {pattern!r}:\n{text}"
    return int(match[1].replace(",", ""))


def part(layers, batch, name, **kw) -> int:
    return sum(mc.estimate(layers, batch, **kw)[name])


# --- The shared vectors -----------------------------------------------------------------------------------------------

def test_the_committed_vectors_are_what_the_reference_writes_now():
    assert mc.VECTORS.read_text(encoding="utf-8") == mc.vectors_text(), \
        "tests/memory_calc_vectors.json is stale: run python -m tools.memory_calc --write-vectors"


def test_the_vectors_cover_the_lessons_models_batches_dtypes_optimizers_and_modes():
    seen = {(c["input"]["layers"], c["input"]["batch"], c["input"]["dtype"], c["input"]["optimizer"],
             c["input"]["mode"]) for c in VECTORS["cases"]}
    for layers in ("784, 128, 10", "3072, 128, 10"):
        for batch in ("64", "1024"):
            for dtype in mc.ITEMSIZE:
                for optimizer in mc.OPTIMIZERS:
                    for mode in mc.MODES:
                        assert (layers, batch, dtype, optimizer, mode) in seen
    assert len(VECTORS["cases"]) > 72 and len(VECTORS["errors"]) >= 30


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: "|".join(c["input"].values())[:60])
def test_reference_reproduces_every_vector(case):
    given = case["input"]
    shown = mc.report(mc.parse_layers(given["layers"]), mc.parse_batch(given["batch"]), given["dtype"],
                      given["optimizer"], given["mode"])
    assert shown == case["expected"]
    rows = shown["rows"]
    assert rows["total"]["bytes"] == sum(rows[p]["bytes"] for p in mc.PARTS)
    assert rows["total"]["bytes"] <= rows["total_blocks"]["bytes"]
    for cells in rows.values():
        for text in cells.values():
            assert "NaN" not in str(text) and "Infinity" not in str(text)


@pytest.mark.parametrize("error", VECTORS["errors"], ids=lambda e: f"{e['field']}:{e['input'][:30]!r}")
def test_reference_rejects_every_bad_input_with_the_vectors_message(error):
    parse = mc.parse_layers if error["field"] == "layers" else mc.parse_batch
    with pytest.raises(ValueError) as raised:
        parse(error["input"])
    assert str(raised.value) == error["message"]
    assert "NaN" not in error["message"] and "Infinity" not in error["message"]


# --- The formulas against the recordings ------------------------------------------------------------------------------

def test_parameters_and_gradients_as_recorded():
    models = cell("memory_arithmetic", "models")
    assert sum(mc.estimate(MNIST, 64)["parameters"]) // 4 == printed(models, r"MNIST MLP:.*?total\s+([\d,]+) param")
    assert sum(mc.estimate(CIFAR, 64)["parameters"]) // 4 == printed(models, r"CIFAR-10 MLP:.*?total\s+([\d,]+) param")
    # each tensor as listed: layer1.weight, layer1.bias, layer2.weight, layer2.bias
    listed = [int(n.replace(",", "")) * 4 for n in re.findall(r"^\s+layer\d\.\w+\s+shape \([\d, ]+\)\s+([\d,]+) values",
                                                             models, re.M)]
    assert listed == mc.estimate(MNIST, 64)["parameters"] + mc.estimate(CIFAR, 64)["parameters"]

    text = cell("memory_arithmetic", "parameters-gradients")
    line = re.search(r"^MNIST MLP parameters \(float32\)\s+([\d,]+) bytes =\s+([\d.]+) KiB =\s+([\d.]+) MiB", text, re.M)
    params = part(MNIST, 64, "parameters")
    assert (line[1], line[2], line[3]) == (mc.group(params), mc.kib(params), mc.mib(params)) == ("407,080", "397.54",
                                                                                                   "0.388")
    for batch in (64, 1024):
        for optimizer in mc.OPTIMIZERS:
            assert part(MNIST, batch, "gradients", optimizer=optimizer) == printed(text, r"^their gradients.*?([\d,]+) bytes")
    both = part(MNIST, 64, "parameters") + part(MNIST, 64, "gradients")
    assert both == printed(text, r"^parameters \+ gradients\s+([\d,]+) bytes") == 814_160

    cifar = cell("memory_arithmetic", "cifar")
    assert part(CIFAR, 64, "parameters") == printed(cifar, r"^parameters \(float32\)\s+([\d,]+) bytes") == 1_578_536
    assert part(CIFAR, 64, "gradients") == printed(cell("memory_arithmetic", "exercise-cifar-optimizers"),
                                                   r"^CIFAR-10 MLP gradients\s+([\d,]+) bytes")


def test_optimizer_state_as_recorded_without_adams_step_counters():
    text = cell("memory_arithmetic", "optimizer-state")
    assert part(MNIST, 64, "optimizer_state", optimizer="sgd") == printed(text, r"^SGD: optimizer\.state.*?\s([\d,]+) bytes") == 0
    assert part(MNIST, 64, "optimizer_state", optimizer="sgd-momentum") == printed(
        text, r"^SGD with momentum: optimizer\.state.*?\s([\d,]+) bytes") == 407_080
    adam = mc.estimate(MNIST, 64, optimizer="adam")["optimizer_state"]
    exp_avg, exp_avg_sq = printed(text, r"exp_avg\s+on \w+:\s+([\d,]+) bytes"), printed(text, r"exp_avg_sq\s+on \w+:\s+([\d,]+)")
    assert sum(adam) == exp_avg + exp_avg_sq == 814_160
    steps = printed(text, r"step\s+on \w+:\s+([\d,]+) bytes")
    tensors = len(mc.estimate(MNIST, 64)["parameters"])
    assert steps == tensors * 4 == 16                                         # the counters the calculator leaves out
    assert sum(adam) + steps == printed(text, r"^Adam: optimizer\.state.*?\s([\d,]+) bytes") == 814_176
    cifar = cell("memory_arithmetic", "exercise-cifar-optimizers")
    assert part(CIFAR, 64, "optimizer_state", optimizer="adam") == printed(
        cifar, r"^CIFAR-10 MLP, Adam .*?buffers only\s+([\d,]+) bytes") == 3_157_072
    assert part(CIFAR, 64, "optimizer_state", optimizer="sgd-momentum") == printed(
        cifar, r"^CIFAR-10 MLP, SGD with momentum\s+([\d,]+) bytes") == 1_578_536


def test_data_batch_as_recorded():
    text = cell("memory_arithmetic", "data-batch")
    images, labels = mc.estimate(MNIST, 64)["batch"]
    line = re.search(r"^a batch of 64 images\s+([\d,]+) bytes =\s+([\d.]+) KiB =\s+([\d.]+) MiB", text, re.M)
    assert (line[1], line[2], line[3]) == (mc.group(images), mc.kib(images), mc.mib(images)) == ("200,704", "196.00",
                                                                                                   "0.191")
    line = re.search(r"^its 64 labels \(int64\)\s+([\d,]+) bytes =\s+([\d.]+) KiB =\s+([\d.]+) MiB", text, re.M)
    assert (line[1], line[2], line[3]) == (mc.group(labels), mc.kib(labels), mc.mib(labels)) == ("512", "0.50", "0.000")
    assert images + labels == printed(text, r"^batch of 64, images \+ labels\s+([\d,]+) bytes") == 201_216
    for mode in mc.MODES:                                                     # inference keeps the labels too
        assert part(MNIST, 64, "batch", mode=mode) == 201_216
    assert mc.estimate(CIFAR, 64)["batch"][0] == printed(cell("memory_arithmetic", "cifar"),
                                                         r"^a batch of 64 images\s+([\d,]+) bytes") == 786_432


def test_saved_activations_as_recorded_tensor_by_tensor():
    text = cell("memory_measured", "saved-tensors")
    new = sorted(int(n.replace(",", "")) for n in re.findall(r"^\s+NEW: .*?\s([\d,]+)  \w+\.\w+", text, re.M))
    saved = mc.estimate(MNIST, 1024)["saved_activations"]
    assert sorted(saved) == new == [4, 40_960, 524_288]
    line = re.search(r"New memory autograd keeps at batch 1024: ([\d,]+) bytes = ([\d.]+) KiB", text)
    assert (line[1], line[2]) == (mc.group(sum(saved)), mc.kib(sum(saved))) == ("565,252", "552.00")
    activations = cell("memory_arithmetic", "activations")         # the lesson's layer-1 output: the ReLU output's size
    assert saved[0] == printed(activations, r"^layer1 output at batch 1024 \(1024, 128\)\s+([\d,]+) bytes")
    assert saved[1] == printed(activations, r"^logits at batch 1024 \(1024, 10\)\s+([\d,]+) bytes")


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("batch", [64, 1024])
def test_every_part_of_the_phase_table_as_recorded(optimizer, batch):
    text = cell("memory_measured", "summary")
    name = {"sgd": "SGD", "adam": "Adam"}[optimizer]
    row = re.search(rf"^{name} +{batch}((?: +[\d,]+)+)$", text, re.M)[1]
    keys = ("parameters", "gradients", "optimizer state", "batch", "saved activations", "logits + loss")
    recorded = dict(zip(keys, (int(n.replace(",", "")) for n in row.split())))
    parts = {p: part(MNIST, batch, p, optimizer=optimizer) for p in mc.PARTS}
    counters = 16 if optimizer == "adam" else 0                        # Adam's step counters: recorded, not counted
    assert recorded["parameters"] == parts["parameters"] == 407_080
    assert recorded["gradients"] == parts["gradients"] == 407_080
    assert recorded["optimizer state"] == parts["optimizer_state"] + counters
    assert recorded["batch"] == parts["batch"]
    assert recorded["saved activations"] == parts["saved_activations"] == {64: 35_332, 1024: 565_252}[batch]


@pytest.mark.parametrize("batch", [64, 1024])
def test_the_recorded_peak_follows_from_the_parts(batch):
    """The peak of two Adam steps (estimators.py): the total less what is not alive at the peak's event, plus the
    logits and loss and Adam's step counters, which the calculator does not count. The page says so."""
    text = cell("estimators", "measured")
    line = re.search(rf"^batch {batch}: peak memory of a training step ([\d,]+) bytes\s.*?at '([^']+)'\n"
                     r"((?:  .*\n?)*)", text, re.M)
    peak, event = int(line[1].replace(",", "")), line[2]
    logits_and_loss = printed(line[3], r"logits and loss ([\d,]+)")
    assert logits_and_loss == batch * 10 * 4 + 4
    parts = {p: part(MNIST, batch, p, optimizer="adam") for p in mc.PARTS}
    total = sum(parts.values())
    gone = {"1: optimizer step": "saved_activations", "2: forward": "gradients"}[event]   # freed by backward / zero_grad
    assert total - parts[gone] + logits_and_loss + 16 == peak == {64: 1_832_116, 1024: 5_046_928}[batch]


def test_the_inference_total_and_what_it_says_it_leaves_out_make_the_recorded_no_grad_peak():
    """inference_memory.py's no_grad peak at batch 1000 (counted bytes) is the calculator's inference total plus the
    two layer outputs its detail line says are not counted (layer1's output and its ReLU output, alive together)."""
    text = cell("inference_memory", "measure")
    peak = printed(text, r"^torch\.no_grad\(\)\s+0\s+0\s+[\d,]+\s+([\d,]+)")
    report = mc.report(MNIST, 1000, "float32", "sgd", "inference")
    left_out = 2 * 1000 * 128 * 4
    assert report["rows"]["total"]["bytes"] + left_out == peak == 4_575_080
    assert "Not counted" in report["rows"]["saved_activations"]["detail"]
    assert "2 × 1,000 × 128 values × 4 bytes" in report["rows"]["saved_activations"]["detail"]


def test_block_rounding():
    assert [mc.blocks(n) for n in (0, 1, 4, 511, 512, 513, 1024, 1025)] == [0, 512, 512, 512, 512, 1024, 1024, 1536]
    rows = mc.report(MNIST, 64, optimizer="adam")["rows"]
    # layer2.bias (40 bytes) and the total weight (4 bytes) each take a whole block; nothing else is rounded:
    # parameters, gradients, two Adam buffers -> 4 x (512 - 40); the total weight 512 - 4
    assert rows["total_blocks"]["bytes"] - rows["total"]["bytes"] == 4 * 472 + 508


def test_formatting_is_exact_and_rounds_half_up():
    assert mc.group(0) == "0" and mc.group(1_984_001_592_000_004) == "1,984,001,592,000,004"
    assert mc.fixed(5, 1000, 2) == "0.01" and mc.fixed(15, 1000, 2) == "0.02" and mc.fixed(25, 1000, 2) == "0.03"
    assert mc.kib(1023) == "1.00" and mc.kib(5) == "0.00" and mc.kib(6) == "0.01"           # 0.0048.. / 0.0058..
    assert mc.mib(2**20 * 1234 + 2**19) == "1,234.500" and mc.kib(2**60) == "1,125,899,906,842,624.00"


# --- The formulas against torch ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("layers, dtype, optimizer", [
    (MNIST, "float32", "adam"), (CIFAR, "bfloat16", "sgd-momentum"), ([784, 512, 256, 10], "float16", "adam"),
    ([20, 7], "float32", "sgd-momentum"), ([30, 16, 16, 16, 3], "bfloat16", "sgd")])
def test_every_tensor_as_torch_allocates_it(layers, dtype, optimizer):
    """Build the MLP in torch, run one real training step with the saved-tensor hooks on, and compare every tensor
    with the reference: parameters, gradients, optimizer buffers (without step counters), and what autograd saves
    that is new memory."""
    torch = pytest.importorskip("torch")
    nn = torch.nn
    modules = [nn.Flatten()]
    for i, (n_in, n_out) in enumerate(zip(layers, layers[1:])):
        modules += [nn.Linear(n_in, n_out)] + ([nn.ReLU()] if i < len(layers) - 2 else [])
    model = nn.Sequential(*modules).to(getattr(torch, dtype))
    batch = 32
    images = torch.randn(batch, layers[0]).to(getattr(torch, dtype))
    labels = torch.randint(0, layers[-1], (batch,))
    known = {t.untyped_storage().data_ptr() for t in (*model.parameters(), images, labels)}
    new = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in known:
            new[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = nn.functional.cross_entropy(model(images), labels)
    make = {"sgd": lambda p: torch.optim.SGD(p, lr=0.01), "adam": lambda p: torch.optim.Adam(p),
            "sgd-momentum": lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9)}[optimizer]
    opt = make(model.parameters())
    loss.backward()
    opt.step()
    expected = mc.estimate(layers, batch, dtype, optimizer)
    nbytes = lambda t: t.numel() * t.element_size()  # noqa: E731
    assert [nbytes(p) for p in model.parameters()] == expected["parameters"]
    assert [nbytes(p.grad) for p in model.parameters()] == expected["gradients"]
    state = [nbytes(v) for p in model.parameters() for k, v in opt.state[p].items() if k != "step"]
    assert sorted(state) == sorted(expected["optimizer_state"])
    assert [nbytes(images), nbytes(labels)] == expected["batch"]
    assert sorted(new.values()) == sorted(expected["saved_activations"])
    with torch.no_grad():                                   # inference: nothing is saved for backward
        new.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            nn.functional.cross_entropy(model(images), labels)
    assert not new and mc.estimate(layers, batch, dtype, optimizer, "inference")["saved_activations"] == []


# --- Bad input --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layers, batch, kw", [
    ([], 64, {}), ([784], 64, {}), ([784, 0, 10], 64, {}), ([784, -128, 10], 64, {}), ([784, 12.5, 10], 64, {}),
    ([784, float("nan"), 10], 64, {}), ([784, float("inf"), 10], 64, {}), ([784, "128", 10], 64, {}),
    ([784, True, 10], 64, {}), ([784, 10**15, 10], 64, {}), ([10] * 101, 64, {}), ("784, 128, 10", 64, {}),
    (None, 64, {}), (MNIST, 0, {}), (MNIST, -1, {}), (MNIST, 6.4, {}), (MNIST, float("nan"), {}), (MNIST, "64", {}),
    (MNIST, 10**15, {}), (MNIST, 64, {"dtype": "float64"}), (MNIST, 64, {"dtype": "int8"}),
    (MNIST, 64, {"optimizer": "rmsprop"}), (MNIST, 64, {"mode": "eval"})])
def test_bad_values_raise_value_error(layers, batch, kw):
    with pytest.raises(ValueError):
        mc.estimate(layers, batch, **kw)
    with pytest.raises(ValueError):
        mc.report(layers, batch, **kw)


@pytest.mark.parametrize("text", ["", "0", "-5", "12.5", "NaN", "nan", "inf", "Infinity", "abc", "1e15", "1e3",
                                  "1000000000000000", "784", "784, 128, 1_0", "٧٨٤, 10", "784\u00a0128, 10"])
def test_bad_layer_text_raises_value_error(text):
    with pytest.raises(ValueError):
        mc.parse_layers(text)


@pytest.mark.parametrize("text", ["", " ", "0", "-1", "6.4", "NaN", "Infinity", "1e15", "1000001", "64.0", "٦٤"])
def test_bad_batch_text_raises_value_error(text):
    with pytest.raises(ValueError):
        mc.parse_batch(text)


def test_the_limits_are_the_largest_accepted():
    assert mc.parse_layers(", ".join(["1000000"] * 100)) == [1_000_000] * 100
    assert mc.parse_batch("1000000") == 1_000_000
    rows = mc.report([1_000_000] * 100, 1_000_000, "float32", "adam")["rows"]
    params = 99 * (10**12 + 10**6) * 4
    # parameters, gradients, two Adam buffers; images, labels; 98 ReLU outputs, the log_softmax output, the weight
    assert rows["total"]["bytes"] == 4 * params + 10**12 * 4 + 8 * 10**6 + 98 * 10**12 * 4 + 10**12 * 4 + 4
    assert rows["total"]["text"] == "1,984,001,592,000,004"        # the largest figure the page can show
