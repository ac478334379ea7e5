# %% setup
# Setup the cells below need: imports, the device, MNIST as two tensors on the device,
# the model, one training step, the meter of a training step's peak memory, and the
# helpers the tables use.
# MNIST is preprocessed once into tensors on the device, so that the timings measure
# training, not image decoding.
import contextlib
import io
import math
import os
import re
import socket
import statistics
import sys
import time

import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.optim as optim
from torchvision import datasets

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


def to_device_tensors(dataset):
    """The whole dataset as two device tensors; the same values as ToTensor() +
    Normalize((0.1307,), (0.3081,))."""
    images = (dataset.data.float() / 255 - 0.1307) / 0.3081  # (N, 28, 28) float32
    return images.unsqueeze(1).to(device), dataset.targets.to(device)  # (N, 1, 28, 28)


train_images, train_labels = to_device_tensors(load_mnist(True, None))
test_images, test_labels = to_device_tensors(load_mnist(False, None))
train, test = tuple(train_images.shape), tuple(test_images.shape)
print(f"train {train}, test {test} on {train_images.device}")


def train_step(model, optimizer, images, labels):
    optimizer.zero_grad()
    loss = nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()
    return loss


def sync():
    if device.type == "cuda":
        torch.cuda.synchronize()  # GPU work is asynchronous: wait, then read a clock


def first_batches(batch_size):
    """The first two training batches of this size, in host memory as a DataLoader
    gives them: the peak counts moving them to the device."""
    return [
        (
            train_images[i * batch_size : (i + 1) * batch_size].cpu().clone(),
            train_labels[i * batch_size : (i + 1) * batch_size].cpu().clone(),
        )
        for i in range(2)
    ]


def spread(values):
    """Half the range from the lowest to the highest value, in % of their median."""
    return 100 * (max(values) - min(values)) / 2 / statistics.median(values)


def last_doubling_text(runs, before, last):
    """The median's change over the last doubling, and whether the timings overlap."""
    change = 100 * (statistics.median(runs[last]) / statistics.median(runs[before]) - 1)
    if min(runs[last]) > max(runs[before]):
        verdict = f"every timing at {last} is faster than every timing at {before}"
    elif max(runs[last]) < min(runs[before]):
        verdict = f"every timing at {last} is slower than every timing at {before}"
    else:
        verdict = "the timings of the two batch sizes overlap"
    median = f"median samples/s {change:+.0f}%"
    return f"Last doubling, {before} -> {last}: {median};\n{verdict}."


def accuracy_text(accuracy, epochs):
    """The best batch size, and whether every bigger one ends lower."""
    best = max(accuracy, key=accuracy.get)
    larger = [b for b in sorted(accuracy) if b >= best]
    text = f"Best after {epochs} epochs: batch {best} ({accuracy[best]:.2%})"
    if len(larger) > 1 and all(
        accuracy[a] > accuracy[b] for a, b in zip(larger, larger[1:])
    ):
        lowest = f"{accuracy[larger[-1]]:.2%} at batch {larger[-1]}"
        text += f";\nevery bigger batch ends lower, down to {lowest}"
    return text + "."


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


# %% timing
BATCH_SIZES = [2**k for k in range(4, 13)]  # 16 ... 4096
TIMED_SAMPLES = 16384  # per batch size and timing, and at least 4 steps
REPEATS = 5  # timings of each batch size: the median, and how far they spread


def samples_per_second(batch_size):
    """Samples per second over the timed steps of a fresh model, and how many steps
    were timed."""
    torch.manual_seed(0)
    model = MLP().to(device)
    optimizer = optim.Adam(model.parameters(), lr=1e-3)
    order = torch.randperm(len(train_labels)).to(device)
    steps = 2 + max(4, TIMED_SAMPLES // batch_size)
    batches = [order[i * batch_size : (i + 1) * batch_size] for i in range(steps)]
    for idx in batches[:2]:  # warm-up: the first steps allocate the Adam state
        train_step(model, optimizer, train_images[idx], train_labels[idx])
    sync()
    start = time.perf_counter()
    for idx in batches[2:]:
        train_step(model, optimizer, train_images[idx], train_labels[idx])
    sync()  # wait for the GPU before reading the clock
    seconds = time.perf_counter() - start
    return (len(batches) - 2) * batch_size / seconds, len(batches) - 2


# %% throughput
samples_per_second(BATCH_SIZES[0])  # discarded: first-call set-up (cuBLAS...)
runs, steps = {batch_size: [] for batch_size in BATCH_SIZES}, {}
for _ in range(REPEATS):  # in turns, so that a busy moment hits every batch size
    for batch_size in BATCH_SIZES:
        per_second, steps[batch_size] = samples_per_second(batch_size)
        runs[batch_size].append(per_second)
header = f"{'batch':>6} {'steps':>5} {'samples/s':>10} {'±':>6}"
print(f"{header} {'peak bytes':>13} {'MiB':>8}")
speed = {}
for batch_size in BATCH_SIZES:
    per_second = statistics.median(runs[batch_size])
    peak, event = training_step_peak(first_batches(batch_size))
    speed[batch_size] = (per_second, peak)
    where = f"   peak at '{event}'" if event else ""
    timing = f"{per_second:>10,.0f} {spread(runs[batch_size]):>5.1f}%"
    sizes = f"{peak:>13,} {peak / 2**20:>8.2f}"
    print(f"{batch_size:>6} {steps[batch_size]:>5} {timing} {sizes}{where}")
print(last_doubling_text(runs, *BATCH_SIZES[-2:]))

# %% accuracy
EPOCHS, ACCURACY_BATCH_SIZES = 2, [16, 64, 256, 1024, 4096]


def train_and_test(batch_size, lr=1e-3):
    """Test accuracy after EPOCHS epochs from the same start, and the steps taken."""
    torch.manual_seed(0)
    model = MLP().to(device)
    optimizer = optim.Adam(model.parameters(), lr=lr)
    shuffle = torch.Generator().manual_seed(0)
    steps = 0
    for _ in range(EPOCHS):
        order = torch.randperm(len(train_labels), generator=shuffle).to(device)
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            train_step(model, optimizer, train_images[idx], train_labels[idx])
            steps += 1
    model.eval()
    with torch.no_grad():
        right = model(test_images).argmax(dim=1) == test_labels
    return right.float().mean().item(), steps


print(f"{'batch':>6} {'steps/epoch':>11} {'total steps':>11} {'test accuracy':>14}")
accuracy = {}
for batch_size in ACCURACY_BATCH_SIZES:
    accuracy[batch_size], steps = train_and_test(batch_size)
    per_epoch = math.ceil(len(train_labels) / batch_size)
    print(f"{batch_size:>6} {per_epoch:>11} {steps:>11} {accuracy[batch_size]:>14.2%}")
print(accuracy_text(accuracy, EPOCHS))

# %% chart
# The chart of the three measurements, in three panels one above the other (for phones)
plt.rcParams["font.size"] = 10
fig, axes = plt.subplots(3, 1, figsize=(7, 9), layout="constrained")
axes[0].plot(BATCH_SIZES, [speed[b][0] for b in BATCH_SIZES], "o-")
axes[0].set_ylabel("training samples per second")
axes[0].yaxis.set_major_formatter("{x:,.0f}")
axes[0].set_title("Throughput")
peaks = [speed[b][1] / 2**20 for b in BATCH_SIZES]
axes[1].plot(BATCH_SIZES, peaks, "o-", color="darkorange")
axes[1].set_ylabel("peak memory (MiB)")
axes[1].set_title("Peak memory of a training step")
accuracies = [100 * accuracy[b] for b in ACCURACY_BATCH_SIZES]
axes[2].plot(ACCURACY_BATCH_SIZES, accuracies, "o-", color="green")
axes[2].set_ylabel("test accuracy (%)")
axes[2].set_title(f"Test accuracy after {EPOCHS} epochs")
for ax in axes:
    ax.set_xscale("log", base=2)
    ax.set_xticks(BATCH_SIZES, [str(b) for b in BATCH_SIZES])
    ax.set_xlabel("batch size (log scale)")
    ax.grid(True, alpha=0.3)
fig.suptitle(f"Batch size on {device.type.upper()}: MNIST MLP, Adam lr 1e-3")
plt.show()

# %% exercise-lr-4096
# Batch 4096 with a ten times larger learning rate: the same 30 steps, longer ones.
for lr in (1e-3, 1e-2):
    right, steps = train_and_test(4096, lr)
    print(f"batch 4096, Adam lr {lr:g}: {steps} steps, test accuracy {right:.2%}")
