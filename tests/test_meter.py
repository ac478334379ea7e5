"""MemoryMeter (tools/helpers/meter.py), the memory meter the chapter 6 snippets carry: what it counts around a plain
loop on the CPU, byte for byte; that it leaves nothing behind; and on CUDA (the stand-in allocator of
tests/cuda_standin.py) that its peak is the one read while the block ran, whatever resets the counter later."""
from __future__ import annotations

import sys

import pytest
import torch
from torch import nn, optim
from torch.multiprocessing.reductions import StorageWeakRef

from conftest import ROOT

HELPER = ROOT / "tools" / "helpers" / "meter.py"


def meter_class(allocator: bool):
    """The helper's MemoryMeter, defined as a snippet defines it, with ALLOCATOR set."""
    namespace = {"torch": torch, "StorageWeakRef": StorageWeakRef, "ALLOCATOR": allocator}
    exec(compile(HELPER.read_text(encoding="utf-8"), str(HELPER), "exec"), namespace)
    return namespace["MemoryMeter"]


def small_step(MemoryMeter, batches=2, size=8):
    """A plain accumulation loop over `batches` batches of `size`, on a 5 -> 3 linear model with Adam."""
    torch.manual_seed(0)
    model, criterion = nn.Linear(5, 3), nn.CrossEntropyLoss()
    optimizer = optim.Adam(model.parameters(), lr=1e-3)
    data = [(torch.randn(size, 5), torch.randint(0, 3, (size,))) for _ in range(batches)]
    with MemoryMeter(model, criterion, optimizer=optimizer) as meter:
        for x, y in data:
            output = model(x)
            loss = criterion(output, y)
            (loss / batches).backward()
        optimizer.step()
        optimizer.zero_grad()
    return meter, model, optimizer


def test_the_cpu_count_of_a_step_is_its_tensors_bytes():
    """At the optimizer step: parameters, gradients, Adam's two buffers and step counters, both batches (inputs and
    labels: the list holds them), the last output and the last loss, each storage once."""
    meter, model, optimizer = small_step(meter_class(False))
    params = (5 * 3 + 3) * 4
    batch = 8 * 5 * 4 + 8 * 8                                     # the inputs (float32) and labels (int64)
    expected = params + params + 2 * params + 2 * 4 + 2 * batch + 8 * 3 * 4 + 4
    assert meter.peak() == (expected, "optimizer step")
    labels = [label for label, _ in meter.readings]
    assert labels[0] == "start" and labels[-1] == "end"
    assert labels[1:-2] == ["forward", "loss", "backward"] * 2 and labels[-2] == "optimizer step"
    assert dict(meter.readings)["start"] == params


def test_it_leaves_no_hook_behind():
    meter, model, optimizer = small_step(meter_class(False))
    assert not model._forward_hooks and not model._forward_pre_hooks
    assert not optimizer._optimizer_step_post_hooks
    count = meter.saved_count
    model(torch.randn(2, 5)).sum().backward()                   # outside the block: not seen
    assert meter.saved_count == count


def test_saved_leaves_out_the_parameters_and_the_batch():
    """What autograd saves beyond the parameters and the batch: under no_grad nothing; in training the log-softmax
    output (the loss's) and its total weight, while the batch and the labels it also saves are left out."""
    MemoryMeter = meter_class(False)
    model, criterion = nn.Linear(5, 3), nn.CrossEntropyLoss()
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    with MemoryMeter(model, criterion, x, y) as meter, torch.no_grad():
        criterion(model(x), y)
    assert meter.saved == {} and meter.saved_count == 0
    with MemoryMeter(model, criterion, x, y) as meter:
        criterion(model(x), y).backward()
    assert sorted(meter.saved.values()) == [4, 8 * 3 * 4]
    assert sorted(meter.saved_as.values(), key=str) == [((), torch.float32), ((8, 3), torch.float32)]
    assert meter.saved_count > len(meter.saved)


def test_layers_reads_each_layer_forward_and_backward():
    MemoryMeter = meter_class(False)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    with MemoryMeter(model, nn.CrossEntropyLoss(), layers=True) as meter:
        nn.CrossEntropyLoss()(model(torch.randn(8, 5)), torch.randint(0, 3, (8,))).backward()
    labels = [label for label, _ in meter.readings]
    assert labels[:4] == ["start", "0", "1", "2"] and "1 backward" in labels and labels[-2:] == ["backward", "end"]


def test_zero_counts_from_there_on():
    MemoryMeter = meter_class(False)
    model = nn.Linear(5, 3)
    with MemoryMeter(model) as meter:
        meter.zero()
        assert meter.now() == 0
        keep = model(torch.randn(8, 5))  # its graph keeps the input for the weight's gradient
        assert meter.now() == 8 * 5 * 4 + 8 * 3 * 4
    assert keep.shape == (8, 3)


def test_on_cuda_the_peak_is_read_in_the_block_and_kept():
    """Under the stand-in allocator: the peak covers what was freed between readings (the saved activations), and
    no reset_peak_memory_stats() after the block changes it (the bug two copies of the old Meter had)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from cuda_standin import StandIn
    standin, real = StandIn(), {n: getattr(torch.cuda, n) for n in StandIn.NAMES}
    try:
        standin.patch(torch.cuda)
        with standin:
            meter, model, _ = small_step(meter_class(True))
            peak = meter.peak()
            torch.cuda.reset_peak_memory_stats()
            assert meter.peak() == peak
            assert peak[0] >= max(b for _, b in meter.readings) > 0
            assert peak[1] in {label for label, _ in meter.readings}
    finally:
        for name, function in real.items():
            setattr(torch.cuda, name, function)


@pytest.mark.parametrize("snippet", ["grad_accumulation", "inference_memory", "mixed_precision"])
def test_the_snippets_carry_it_word_for_word(snippet):
    from tools import shared
    names, block = shared.helper_block(HELPER)
    assert names == {"MemoryMeter"}
    assert block in (ROOT / "snippets" / f"{snippet}.py").read_text(encoding="utf-8")
