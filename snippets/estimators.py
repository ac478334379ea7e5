# %% setup
# Setup the cells below need: imports, the device, the MLP, the first MNIST batches.
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

# %% estimate-helpers
# Helpers the cells below need: each library's estimate, captured and rebuilt in bytes.
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


# %% torchsummary-estimate
summary_bytes, summary_outputs, summary_printed = {}, {}, {}
for batch_size in BATCHES:
    lines = torchsummary_estimate(batch_size)  # what torchsummary.summary printed
    data, summary_outputs[batch_size], params = torchsummary_formula(batch_size)
    exact = summary_bytes[batch_size] = data + summary_outputs[batch_size] + params
    print(f"torchsummary, batch {batch_size}:")
    for name, value in lines.items():
        print(f"  {name} (MB): {value:.2f}")
    summary_printed[batch_size] = lines["Estimated Total Size"]
    print(summary_text(summary_printed[batch_size], exact))
    parts = f"input {data:,} + forward/backward {summary_outputs[batch_size]:,}"
    print(f"  = {parts} + params {params:,}")

# %% torchinfo-estimate
info_bytes, info_outputs, info_printed = {}, {}, {}
for batch_size in BATCHES:
    shape = (batch_size, 1, 28, 28)
    stats = torchinfo.summary(model, input_size=shape, device=device, verbose=0)
    table = str(stats).splitlines()
    line = next(row for row in table if row.startswith("Estimated Total Size"))
    info_printed[batch_size] = float(line.rsplit(":", 1)[1])
    total = stats.total_input + stats.total_output_bytes + stats.total_param_bytes
    info_bytes[batch_size], info_outputs[batch_size] = total, stats.total_output_bytes
    header = stats.total_input - batch_size * 784 * 4  # sys.getsizeof's object header
    print(f"torchinfo, batch {batch_size}: {line}")
    print(info_text(info_printed[batch_size], total))
    print(f"  = total_input {stats.total_input:,} (data + {header} bytes of header)")
    print(f"    + total_output_bytes {stats.total_output_bytes:,}")
    print(f"    + total_param_bytes {stats.total_param_bytes:,}")
print(outputs_text(64, info_outputs[64]))

# %% measured
# Measuring code: the peak memory of a training step at each batch, and its parts.
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


class StepMemory:
    """The peak memory of the training steps run inside `with`, measured around them:
    the loop itself stays a plain training loop.
    CUDA: the caching allocator's counters. Cached blocks are given back first, so that
    every measurement starts from the same reserved memory, and the peaks are reset:
    .peak is max_memory_allocated() above `baseline` (default: what is allocated when
    the `with` starts); max_memory_reserved() is then this measurement's own.
    CPU, which has no such counters: watch() hooks count the bytes of the parameters,
    gradients, optimizer state, batch, logits, loss and what autograd saved for
    backward (each storage once) after each event: forward with the loss (the loss's
    forward hook), backward (the optimizer's step pre-hook) and the optimizer step (its
    post-hook). Moving the batch and zero_grad are not counted: neither is ever the
    peak, the forward adds to the first and the second only frees. .peak is the most
    bytes, .event the first event that had them (None on CUDA)."""

    def __init__(self, baseline=None):
        self.baseline, self.counts, self.hooks = baseline, [], []
        self.peak = self.event = self.saving = None

    def __enter__(self):
        if ALLOCATOR:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()  # to measure, not to recover (see above)
            if self.baseline is None:
                self.baseline = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        return self

    def watch(self, model, criterion, optimizer):
        """CPU: count the bytes alive after each event of these three's steps."""
        if ALLOCATOR:
            return  # the allocator counts every byte by itself
        self.model, self.optimizer, self.step = model, optimizer, 0
        self.images = self.labels = self.output = self.loss = None
        self.saved = {}  # storage address -> bytes, what autograd saved for backward
        self.hooks = [
            model.register_forward_pre_hook(self.batch_arrived),
            criterion.register_forward_hook(self.loss_computed),
            optimizer.register_step_pre_hook(self.backward_done),
            optimizer.register_step_post_hook(self.stepped),
        ]
        self.saving = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self.saving.__enter__()

    def pack(self, t):
        self.saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t.detach()  # t itself would keep a saved output alive in a cycle

    def batch_arrived(self, model, args):
        self.step, self.images = self.step + 1, args[0]

    def loss_computed(self, criterion, args, loss):
        self.output, self.labels, self.loss = args[0], args[1], loss
        self.count("forward")  # with the loss

    def backward_done(self, optimizer, args, kwargs):
        self.saved.clear()  # backward frees what autograd saved
        self.count("backward")

    def stepped(self, optimizer, args, kwargs):
        self.count("optimizer step")

    def count(self, event):
        params = list(self.model.parameters())
        state = self.optimizer.state.values()
        tensors = [
            *params,
            *(p.grad for p in params),
            *(v for s in state for v in s.values() if torch.is_tensor(v)),
            self.images,
            self.labels,
            self.output,
            self.loss,
        ]
        sizes = {  # each storage once
            t.untyped_storage().data_ptr(): t.numel() * t.element_size()
            for t in tensors
            if t is not None
        }
        sizes.update((ptr, n) for ptr, n in self.saved.items() if ptr not in sizes)
        self.counts.append((sum(sizes.values()), f"{self.step}: {event}"))

    def __exit__(self, *exception):
        for hook in self.hooks:
            hook.remove()
        if self.saving is not None:
            self.saving.__exit__(*exception)
        if ALLOCATOR:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.baseline
        elif self.counts:
            self.peak, self.event = max(self.counts, key=lambda c: c[0])  # the first
        return False


def training_step_peak(batches, baseline=None):
    """Peak memory of a training step: the most tensor bytes alive at one moment over
    two plain training steps with Adam, from a fresh model; StepMemory measures them.
    Returns (bytes, the event of the CPU peak or None on CUDA)."""
    with StepMemory(baseline) as memory:  # CUDA: from here, the model included
        torch.manual_seed(0)
        model = MLP().to(device)
        criterion = nn.CrossEntropyLoss()
        optimizer = optim.Adam(model.parameters(), lr=1e-3)
        memory.watch(model, criterion, optimizer)  # CPU: hooks that count bytes
        for images, labels in batches:
            images, labels = images.to(device), labels.to(device)
            output = model(images)
            loss = criterion(output, labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    return memory.peak, memory.event


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
# The estimates and the measured peak side by side (formatting only).
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


summary_ok = all(in_mib(summary_printed[b], summary_bytes[b]) for b in BATCHES)
info_ok = all(
    in_mb(info_printed[b], info_bytes[b])
    and info_outputs[b] == linear_outputs_doubled(b)
    for b in BATCHES
)
say(legend(summary_ok, info_ok))


# %% exercise-wider
# Answer: torchsummary on the same MLP with 256 hidden units instead of 128.
wider = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
printed = io.StringIO()
with contextlib.redirect_stdout(printed):
    torchsummary.summary(wider.to(device), (1, 28, 28), 64, device=device.type)
print(next(row for row in printed.getvalue().splitlines() if "Params size" in row))
count = sum(p.numel() for p in wider.parameters())
print(
    f"{count:,} parameters x 4 bytes = {4 * count:,} bytes = {4 * count / MiB:.4f} MiB"
)

# %% exercise-batch-256
# Answer: torchinfo's forward/backward part (total_output_bytes) at batch 256.
stats = torchinfo.summary(model, input_size=(256, 1, 28, 28), device=device, verbose=0)
print(f"torchinfo at batch 256: total_output_bytes {stats.total_output_bytes:,}")
