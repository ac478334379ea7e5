# %% setup
# What torchsummary and torchinfo estimate for the MNIST MLP at batch 64 and 1024,
# against the peak memory of a training step with Adam, and what each estimate counts
# and leaves out. The peak memory of a training step: the largest total of tensor bytes
# alive at one moment over two training steps (as memory_timeline.py shows). On CUDA
# the allocator's reading, max_memory_allocated above what was allocated before; on the
# CPU, which has no allocator counter: tensor bytes counted after each event.
# Bytes are exact; MiB are 1024-based, MB 10^6 bytes.
import contextlib
import gc
import io
import os
import re
import socket
import sys
import textwrap

import torch
import torch.nn as nn
import torch.optim as optim
import torchinfo
import torchsummary
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

# MNIST is read from ./data, as in the lesson, unless LESSON_DATA names another folder.
DATA_ROOT = os.environ.get("LESSON_DATA", "./data")
torch.manual_seed(0)
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
gpu_name = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
print(f"Device: {device}" + gpu_name)
ALLOCATOR = device.type == "cuda"  # the CUDA caching allocator counts every byte


MNIST_FILES = {  # what torchvision unpacks into MNIST/raw: name and size in bytes
    "train-images-idx3-ubyte": 47_040_016,
    "train-labels-idx1-ubyte": 60_008,
    "t10k-images-idx3-ubyte": 7_840_016,
    "t10k-labels-idx1-ubyte": 10_008,
}


def load_mnist(train, transform):
    """MNIST from DATA_ROOT, downloaded there if it is missing. If that fails: one
    sentence saying why (torchvision's own reason, or which file is damaged) and exit
    status 1, never a traceback."""
    socket.setdefaulttimeout(10)  # never hang on a dead network
    printed = io.StringIO()  # torchvision prints what each mirror answered
    try:
        with contextlib.redirect_stdout(printed):
            return datasets.MNIST(
                root=DATA_ROOT, train=train, download=True, transform=transform
            )
    except Exception as error:  # whatever it is, the reader gets one sentence
        sys.exit(mnist_failure(error, printed.getvalue()))


def mnist_failure(error, printed):
    """The sentence for a failed load_mnist: a damaged file in MNIST/raw, or why the
    download failed, in torchvision's words."""
    raw = os.path.join(os.path.abspath(DATA_ROOT), "MNIST", "raw")
    paths = {name: os.path.join(raw, name) for name in MNIST_FILES}
    have = {name: os.path.getsize(p) for name, p in paths.items() if os.path.exists(p)}
    wrong = [name for name, size in have.items() if size != MNIST_FILES[name]]
    if wrong:  # a file cut short or replaced
        first = wrong[0]
        return (
            f"MNIST in {raw} is damaged ({first} has {have[first]:,} bytes, not "
            f"{MNIST_FILES[first]:,}), and torchvision never downloads over a file "
            f"that exists: delete {first} and run again."
        )
    if len(have) == len(MNIST_FILES):  # all there, with their sizes, yet unreadable
        what = f"{type(error).__name__}: {str(error).splitlines()[0]}"
        return (
            f"MNIST in {raw} could not be read ({what}): delete that folder and run "
            "again to download it afresh."
        )
    reasons = re.findall(r"(?:got:|trying next\):)\s*\n(.+)", f"{printed}\n{error}")
    why = "; ".join(dict.fromkeys(r.strip() for r in reasons))
    why = why or f"{type(error).__name__}: {str(error).splitlines()[0]}"
    return (
        f"MNIST is not in {raw} and could not be downloaded ({why}). Copy the four "
        "MNIST files there, or set LESSON_DATA to a folder that holds MNIST/raw."
    )


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()
        self.layer1 = nn.Linear(784, 128)
        self.relu = nn.ReLU()
        self.layer2 = nn.Linear(128, 10)

    def forward(self, x):
        return self.layer2(self.relu(self.layer1(self.flatten(x))))


def nbytes(tensors):
    """Exact bytes of some tensors on `device` (Adam's step counters stay on the CPU
    for a CUDA model)."""
    on_device = [t for t in tensors if t.device.type == device.type]
    return sum(t.numel() * t.element_size() for t in on_device)


def say(text, first="", rest=None):
    """Print a long sentence wrapped at 88 columns, its lines indented."""
    print(
        textwrap.fill(text, 88, initial_indent=first, subsequent_indent=rest or first)
    )


MiB, MB = 2**20, 10**6
BATCHES = (64, 1024)
normalize = transforms.Normalize((0.1307,), (0.3081,))
transform = transforms.Compose([transforms.ToTensor(), normalize])
train_dataset = load_mnist(True, transform)
first_images = DataLoader(train_dataset, batch_size=2 * max(BATCHES), shuffle=False)
mnist_images, mnist_labels = next(iter(first_images))  # two batches of the largest
criterion = nn.CrossEntropyLoss()
model = MLP().to(device)  # the model both estimators look at
param_bytes = nbytes(model.parameters())
count = sum(p.numel() for p in model.parameters())
print(f"The MLP: {count:,} parameters = {param_bytes:,} bytes (float32)")
if ALLOCATOR:  # warm-up: cuBLAS's workspaces are allocated before we measure
    images, labels = mnist_images[:64].to(device), mnist_labels[:64].to(device)
    criterion(model(images), labels).backward()
    model.zero_grad()
    del images, labels
    torch.cuda.synchronize()

# %% torchsummary-estimate
SIZES = "Input size|Forward/backward pass size|Params size|Estimated Total Size"
LINE = re.compile(rf"^({SIZES}) \(MB\): ([0-9.]+)$", re.M)


def torchsummary_estimate(batch_size):
    """torchsummary's four size lines, as printed (its "MB" is MiB), captured from its
    print-out."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        torchsummary.summary(model, (1, 28, 28), batch_size, device=device.type)
    return {name: float(value) for name, value in LINE.findall(printed.getvalue())}


def torchsummary_formula(batch_size):
    """The same estimate in exact bytes, by torchsummary's own rule: 4 bytes a number;
    input, 2 x the output of every module it hooks (all but the model itself),
    parameters once."""
    outputs = []
    modules = [m for m in model.modules() if m is not model]
    hooks = [
        m.register_forward_hook(lambda m, i, o: outputs.append(o.numel()))
        for m in modules
    ]
    with torch.no_grad():
        model(torch.zeros(batch_size, 1, 28, 28, device=device))
    for hook in hooks:
        hook.remove()
    params = sum(p.numel() for p in model.parameters())
    return batch_size * 784 * 4, 2 * sum(outputs) * 4, params * 4


def in_mib(printed, exact):
    """Is a printed "MB" figure these exact bytes in MiB, to its 2 decimals?"""
    return f"{exact / MiB:.2f}" == f"{printed:.2f}"


def summary_text(total, exact):
    """torchsummary's printed total (its "MB") against its formula in bytes: its "MB"
    is MiB if the formula in MiB is what it printed."""
    if not in_mib(total, exact):
        return (
            f"  its 'MB' is not this formula's MiB: it printed {total:.2f}, the "
            f"formula gives\n  {exact:,} bytes = {exact / MiB:.4f} MiB"
        )
    rounding = round(MiB * 0.005)
    return (
        f"  its 'MB' is MiB: {total:.2f} MiB = {round(total * MiB):,} bytes (+/- "
        f"{rounding:,}: it prints 2 decimals);\n  by its formula exactly: {exact:,} "
        f"bytes = {exact / MiB:.4f} MiB"
    )


summary_bytes, summary_outputs, summary_printed = {}, {}, {}
for batch_size in BATCHES:
    lines = torchsummary_estimate(batch_size)
    data, summary_outputs[batch_size], params = torchsummary_formula(batch_size)
    exact = summary_bytes[batch_size] = data + summary_outputs[batch_size] + params
    print(f"torchsummary, batch {batch_size}:")
    for name, value in lines.items():
        print(f"  {name} (MB): {value:.2f}")
    summary_printed[batch_size] = lines["Estimated Total Size"]
    print(summary_text(summary_printed[batch_size], exact))


# %% torchinfo-estimate
def in_mb(printed, exact):
    """Is a printed "MB" figure these exact bytes in 10^6 bytes, to its 2 decimals?"""
    return f"{exact / MB:.2f}" == f"{printed:.2f}"


def linear_outputs_doubled(batch_size):
    """Twice the float32 outputs of the two Linear layers (128 and 10 a sample)."""
    return 2 * (batch_size * 128 + batch_size * 10) * 4


def info_text(printed, total):
    """torchinfo's printed total (its MB) against total_input + total_output_bytes +
    total_param_bytes: its MB is 10^6 bytes if that sum in 10^6 bytes is what it
    printed."""
    if not in_mb(printed, total):
        return (
            f"  its MB is not 10^6 bytes of these parts: they add up to {total:,} bytes"
        )
    return f"  its MB is 10^6 bytes: {total / MB:.6f} MB = {total:,} bytes"


def outputs_text(batch_size, counted):
    """torchinfo's total_output_bytes against twice the outputs of the two Linear
    layers, float32."""
    doubled = linear_outputs_doubled(batch_size)
    formula = f"2 x ({batch_size} x 128 + {batch_size} x 10) x 4"
    if counted != doubled:
        return (
            f"torchinfo's total_output_bytes at batch {batch_size}: {counted:,}, not\n"
            f"{formula} = {doubled:,}:\nnot just the outputs of the two Linear layers, "
            "doubled"
        )
    return (
        f"torchinfo's total_output_bytes at batch {batch_size} = {formula} = "
        f"{doubled:,}:\nonly the outputs of layers that have parameters (the two "
        "Linear layers), doubled"
    )


info_bytes, info_outputs, info_printed = {}, {}, {}
for batch_size in BATCHES:
    shape = (batch_size, 1, 28, 28)
    stats = torchinfo.summary(model, input_size=shape, device=device, verbose=0)
    table = str(stats).splitlines()
    line = next(row for row in table if row.startswith("Estimated Total Size"))
    info_printed[batch_size] = float(line.rsplit(":", 1)[1])
    total = stats.total_input + stats.total_output_bytes + stats.total_param_bytes
    info_bytes[batch_size], info_outputs[batch_size] = total, stats.total_output_bytes
    data = batch_size * 784 * 4
    header = stats.total_input - data
    print(f"torchinfo, batch {batch_size}: {line}")
    print(info_text(info_printed[batch_size], total))
    inputs = f"total_input {stats.total_input:,}"
    print(f"  = {inputs} (the input's {data:,} data bytes + {header} bytes of a Python")
    print("    object: sys.getsizeof of its storage)")
    print(f"    + total_output_bytes {stats.total_output_bytes:,}")
    print(f"    + total_param_bytes {stats.total_param_bytes:,}")
print(outputs_text(64, info_outputs[64]))

# %% measured
# The measured figure is the peak memory of a training step, the same quantity that
# batch_size_search.py and batch_size_effects.py measure: two training steps with Adam
# from a fresh model, here on the first two MNIST batches of each size.
if ALLOCATOR:
    PEAK_LABEL = "CUDA allocator peak above baseline"
    COUNTED = (
        "max_memory_allocated() over the two steps, minus what was allocated "
        "before them (the model the estimators looked at, cuBLAS's workspaces)"
    )
else:
    PEAK_LABEL = "counted tensor bytes"
    COUNTED = (
        "parameters, gradients, Adam's state, batch, logits, loss, and what "
        "autograd saved for backward, each storage once, after each event"
    )


def counted_bytes(tensors, saved):
    """CPU: bytes of the distinct storages of `tensors`, plus the storages autograd
    saved for backward that are not among them."""
    sizes = {
        t.untyped_storage().data_ptr(): t.numel() * t.element_size()
        for t in tensors
        if t is not None
    }
    sizes.update((ptr, n) for ptr, n in saved.items() if ptr not in sizes)
    return sum(sizes.values())


def cuda_memory():
    """(bytes allocated now, the most allocated since the last reset): the CUDA
    caching allocator's counters, one set for the whole process."""
    torch.cuda.synchronize()
    return torch.cuda.memory_allocated(), torch.cuda.max_memory_allocated()


def training_step_peak(batches, baseline=None):
    """Peak memory of a training step: the largest total of tensor bytes alive at one
    moment over two training steps with Adam, from a fresh model.
    CUDA: max_memory_allocated() above `baseline` (default: what is allocated now).
    CPU: bytes counted after each event (batch to device, forward with the loss,
    backward, optimizer step, zero_grad).
    Returns (bytes, the event of the CPU peak or None on CUDA)."""
    if ALLOCATOR:
        if baseline is None:
            baseline = cuda_memory()[0]
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    model = MLP().to(device)
    optimizer = optim.Adam(model.parameters(), lr=1e-3)
    images = labels = output = loss = None
    saved, counts = {}, []  # saved: storage address -> bytes

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t.detach()  # t itself would keep a saved output alive in a cycle

    def count(event):
        if not ALLOCATOR:
            params = list(model.parameters())
            state = [
                v
                for s in optimizer.state.values()
                for v in s.values()
                if torch.is_tensor(v)
            ]
            tensors = [
                *params,
                *(p.grad for p in params),
                *state,
                images,
                labels,
                output,
                loss,
            ]
            counts.append((counted_bytes(tensors, saved), event))

    for step, (images, labels) in enumerate(batches, start=1):
        images, labels = images.to(device), labels.to(device)
        count(f"{step}: batch to device")
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            output = model(images)
            loss = criterion(output, labels)
        count(f"{step}: forward")  # with the loss
        loss.backward()
        saved.clear()  # backward frees what autograd saved
        count(f"{step}: backward")
        optimizer.step()
        count(f"{step}: optimizer step")
        optimizer.zero_grad()  # set_to_none=True: the gradients are freed
        count(f"{step}: zero_grad")
    if ALLOCATOR:
        return cuda_memory()[1] - baseline, None
    return max(counts, key=lambda c: c[0])  # the first event with the most bytes


def mnist_batches(batch_size):
    """The first two MNIST batches of this size, in host memory, each its own tensor."""
    return [
        (
            mnist_images[i * batch_size : (i + 1) * batch_size].clone(),
            mnist_labels[i * batch_size : (i + 1) * batch_size].clone(),
        )
        for i in range(2)
    ]


def forward_saving(model, images, labels):
    """Forward + loss, noting every storage autograd saves for backward (address ->
    bytes)."""
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t.detach()  # t itself would keep a saved output alive in a cycle

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        output = model(images)
        loss = criterion(output, labels)
    return output, loss, saved


def parts_of_a_step(batch_size):
    """The exact bytes of each part of one Adam step (not all alive at one time)."""
    torch.manual_seed(0)
    net = MLP().to(device)
    optimizer = optim.Adam(net.parameters(), lr=1e-3)
    (images, labels), _ = mnist_batches(batch_size)
    images, labels = images.to(device), labels.to(device)
    output, loss, saved = forward_saving(net, images, labels)
    params = list(net.parameters())
    known = {
        t.untyped_storage().data_ptr() for t in [*params, images, labels, output, loss]
    }
    activations = sum(n for ptr, n in saved.items() if ptr not in known)
    del saved
    loss.backward()
    optimizer.step()
    state = nbytes(
        v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)
    )
    return dict(
        params=nbytes(params),
        grads=nbytes(p.grad for p in params),
        state=state,
        batch=nbytes([images, labels]),
        activations=activations,
        kept=nbytes([output, loss]),
    )


say(f"Peak memory of a training step, {PEAK_LABEL}: {COUNTED}")
measured, kept_by_autograd = {}, {}
for batch_size in BATCHES:
    peak, event = training_step_peak(mnist_batches(batch_size))
    measured[batch_size] = peak
    parts = parts_of_a_step(batch_size)
    kept_by_autograd[batch_size] = parts["activations"]
    where = f", at '{event}'" if event else ""
    print(f"batch {batch_size}: peak memory of a training step {peak:,} bytes")
    print(f"  ({PEAK_LABEL}){where}")
    first = f"parameters {parts['params']:,} + gradients {parts['grads']:,}"
    print(f"  parts: {first} + Adam state {parts['state']:,}")
    saved = f"saved activations {parts['activations']:,} (until backward)"
    print(f"    + batch {parts['batch']:,} + {saved}")
    print(f"    + logits and loss {parts['kept']:,}")
if not ALLOCATOR:
    say(
        "(the parts are never all alive together: gradients appear at backward, when "
        "the saved activations are freed, and go at zero_grad)",
        "  ",
    )
gc.collect()

# %% compare
kind = "peak (CUDA allocator)" if ALLOCATOR else "peak (counted bytes)"
print(f"{'batch':>5} {'torchsummary':>13} {'torchinfo':>10} {kind:>22}", end="")
print(f" {'peak/summary':>13} {'peak/info':>10}")
for batch_size in BATCHES:
    m, summary, info = (
        measured[batch_size],
        summary_bytes[batch_size],
        info_bytes[batch_size],
    )
    print(f"{batch_size:>5} {summary:>13,} {info:>10,} {m:>22,}", end="")
    print(f" {m / summary:>13.2f} {m / info:>10.2f}")


def legend(summary_ok, info_ok):
    """What the table's columns are; the units each prints, where its totals showed
    them."""
    if summary_ok:
        summary = (
            "exact bytes of its own formula (it prints MiB labelled 'MB', 2 decimals)"
        )
    else:
        summary = "exact bytes of the formula above"
    info = "total_input + total_output_bytes + total_param_bytes"
    info += " (it prints 10^6-byte MB)" if info_ok else ""
    return f"(bytes) torchsummary: {summary}; torchinfo: {info}."


def what_each_counts(summary_ok, info_ok):
    """How each estimator counts, for those whose printed totals the formulas above
    gave at every batch size."""
    if summary_ok:
        summary = (
            "torchsummary: the input (4 bytes a number) + twice the output of every "
            "module it hooks (Flatten, Linear, ReLU, Linear: 784 + 128 + 128 + 10 "
            "numbers a sample; Flatten's output is a view of the input and costs "
            "nothing) + the parameters once, at 4 bytes each."
        )
    else:
        summary = (
            "torchsummary: not the formula above, which does not give what it printed."
        )
    if info_ok:
        info = (
            "torchinfo: the input (sys.getsizeof of its storage: data + a Python "
            "object header) + twice the outputs of the layers that have parameters "
            "only (Linear 128 + 10 numbers a sample; ReLU and Flatten are skipped) + "
            "the parameters once, at their real element size."
        )
    else:
        info = "torchinfo: not the sum above, which does not give what it printed."
    return [summary, info]


summary_ok = all(in_mib(summary_printed[b], summary_bytes[b]) for b in BATCHES)
info_ok = all(
    in_mb(info_printed[b], info_bytes[b])
    and info_outputs[b] == linear_outputs_doubled(b)
    for b in BATCHES
)
say(legend(summary_ok, info_ok))
print("What each counts:")
for text in what_each_counts(summary_ok, info_ok):
    say(text, "  ", "    ")
say(
    "What both leave out: the parameters' gradients (their x2 is for the layer "
    "outputs, not the weights), the optimizer's state (Adam: 2 x the parameters), the "
    "labels, and on a GPU the CUDA context, cuBLAS's workspace and the allocator's "
    "rounding to 512-byte blocks and its cached segments.",
    "",
    "  ",
)
b = max(BATCHES)
say(
    f"Their 'forward/backward pass' part at batch {b}: torchsummary "
    f"{summary_outputs[b]:,} bytes, torchinfo {info_outputs[b]:,}; what autograd "
    f"really keeps for backward: {kept_by_autograd[b]:,} bytes (ReLU's output, the "
    "log-softmax output and a 4-byte weight total; layer1's output before ReLU is "
    "freed as soon as ReLU has run).",
    "",
    "  ",
)
