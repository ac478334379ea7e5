# %% setup
# Setup the cells below need: imports, the device, the MLP, two real MNIST batches.
# Memory over two full training steps of the MNIST MLP, event by event (model loaded,
# batch to the device, forward, backward, optimizer step, zero_grad), for SGD and Adam
# at batch 1024 on real MNIST batches. On CUDA the bytes are PyTorch's
# torch.cuda.memory_allocated() after each event; on the CPU, which has no allocator
# counter, they are counted from the tensors alive at that moment. Bytes are exact;
# MiB are 1024-based.
import contextlib
import gc
import io
import os
import re
import socket
import sys
import textwrap

import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.optim as optim
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

# MNIST is read from ./data, as in the lesson, unless LESSON_DATA names another folder.
DATA_ROOT = os.environ.get("LESSON_DATA", "./data")
torch.manual_seed(0)
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
gpu_name = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
print(f"Device: {device}" + gpu_name)


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
    here = [t for t in tensors if t is not None and t.device.type == device.type]
    return sum(t.numel() * t.element_size() for t in here)


def say(text):
    """Print a long sentence wrapped at 88 columns."""
    print(textwrap.fill(text, width=88))


normalize = transforms.Normalize((0.1307,), (0.3081,))
transform = transforms.Compose([transforms.ToTensor(), normalize])
train_dataset = load_mnist(True, transform)
loader = DataLoader(train_dataset, batch_size=1024, shuffle=False)
batches = [batch for batch, _ in zip(loader, range(2))]  # two real batches, on the host
criterion = nn.CrossEntropyLoss()
if (
    device.type == "cuda"
):  # warm-up: cuBLAS's workspaces are allocated before we measure
    warm = MLP().to(device)
    images, labels = batches[0][0][:64].to(device), batches[0][1][:64].to(device)
    criterion(warm(images), labels).backward()
    del warm, images, labels
    torch.cuda.synchronize()
images, labels = batches[0]
print(f"Two batches of {images.shape[0]} MNIST images:")
print(f"images {tuple(images.shape)} float32, labels {tuple(labels.shape)} int64")

# %% events
# Measuring code: two training steps per optimizer, memory recorded after each event.
OPTIMIZERS = {
    "SGD": lambda ps: optim.SGD(ps, lr=0.01),
    "Adam": lambda ps: optim.Adam(ps, lr=1e-3),
}
STEP_EVENTS = ("batch to device", "forward", "backward", "optimizer step", "zero_grad")
EVENTS = ["start", "model loaded", "optimizer created"]
EVENTS += [f"{step}: {event}" for step in (1, 2) for event in STEP_EVENTS]


def allocator_log():
    """(tensor allocations, new cudaMalloc segments) in the allocator's recorded
    history, or None."""
    try:
        traces = torch.cuda.memory._snapshot()["device_traces"]
        trace = traces[torch.cuda.current_device()]
    except Exception as error:  # a private API: it may change between releases
        problem = f"{type(error).__name__}: {error}"
        say(f"(the allocator's history could not be read: {problem})")
        return None
    actions = [entry["action"] for entry in trace]
    return actions.count("alloc"), actions.count("segment_alloc")


def two_steps(optimizer_name, log=False):
    """Run two training steps; return the bytes in use after each event of EVENTS, and
    the allocator's log."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.synchronize()
    baseline = torch.cuda.memory_allocated() if device.type == "cuda" else 0
    timeline, logs = [], [allocator_log()] if log else []
    model = optimizer = images = labels = output = loss = None
    saved = {}  # storage address -> bytes, of what autograd keeps for backward

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t.detach()  # t itself would keep a saved output alive in a cycle

    def record():
        if device.type == "cuda":
            torch.cuda.synchronize()
            timeline.append(torch.cuda.memory_allocated() - baseline)
            return
        tensors = [images, labels, output, loss]  # CPU: count what exists now
        if model is not None:
            tensors += [*model.parameters(), *(p.grad for p in model.parameters())]
        if optimizer is not None:
            state = optimizer.state.values()
            tensors += [v for s in state for v in s.values() if torch.is_tensor(v)]
        counted = {t.untyped_storage().data_ptr() for t in tensors if t is not None}
        extra = sum(n for ptr, n in saved.items() if ptr not in counted)
        timeline.append(nbytes(tensors) + extra)

    record()  # start
    torch.manual_seed(0)
    model = MLP().to(device)
    record()  # model loaded
    optimizer = OPTIMIZERS[optimizer_name](model.parameters())
    record()  # optimizer created
    for cpu_images, cpu_labels in batches:
        images, labels = cpu_images.to(device), cpu_labels.to(device)
        record()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            output = model(images)
            loss = criterion(output, labels)
        record()  # forward
        loss.backward()
        saved.clear()
        record()  # backward frees what autograd saved
        optimizer.step()
        record()
        optimizer.zero_grad()
        record()  # set_to_none=True: the gradients are freed
        if log:
            logs.append(allocator_log())
    return timeline, logs


history = False
if device.type == "cuda":
    try:
        torch.cuda.memory._record_memory_history(max_entries=100000, stacks="python")
        history = True
    except Exception as error:
        say(
            "The allocator's history is not available here "
            f"({type(error).__name__}: {error}); continuing with memory_allocated() "
            "alone."
        )
else:
    print("CPU: no allocator history; bytes are counted from the live tensors.")


def history_text(optimizer_name, logs):
    """What the allocator's log says about the two steps: step 2 reuses the cached
    blocks only if it asked CUDA for no new segment."""
    (a0, s0), (a1, s1), (a2, s2) = logs
    return (
        f"{optimizer_name}: the allocator served {a1 - a0} tensor allocations from "
        f"the model's creation to the end of step 1 and {a2 - a1} in step 2; it "
        f"asked CUDA for new memory (a cudaMalloc'd segment) {s1 - s0} times, then "
        f"{s2 - s1} times" + (": step 2 reuses the cached blocks" if s2 == s1 else "")
    )


timelines = {}
for optimizer_name in OPTIMIZERS:
    timelines[optimizer_name], logs = two_steps(optimizer_name, log=history)
    if history and None not in logs:
        say(history_text(optimizer_name, logs))
if history:
    torch.cuda.memory._record_memory_history(enabled=None)  # stop recording

# %% timeline
# Prints the two timelines side by side, and Adam's highest point (formatting only).
if device.type == "cuda":
    unit = "bytes: memory_allocated above the start"
else:
    unit = "CPU: counted bytes, not an allocator"
print(f"({unit})")
print(f"{'event':<22} {'SGD':>12} {'Adam':>12}")
for index, event in enumerate(EVENTS):
    sgd, adam = timelines["SGD"][index], timelines["Adam"][index]
    print(f"{event:<22} {sgd:>12,} {adam:>12,}")
highest = max(range(len(EVENTS)), key=lambda i: timelines["Adam"][i])
top = f"{timelines['Adam'][highest]:,} bytes at '{EVENTS[highest]}'"
if device.type == "cpu":
    say(
        f"Adam's highest point: {top}. That is the peak memory of a training step "
        "(counted tensor bytes)."
    )
else:
    say(
        f"Adam's highest memory_allocated at an event: {top} (the peak memory of a "
        "training step is max_memory_allocated(), which sees between events too)."
    )

# %% chart
# Plotting code: the two timelines as a step chart, each level held to the next event.
MiB = 2**20
plt.rcParams["font.size"] = 10
fig, ax = plt.subplots(figsize=(7, 5), layout="constrained")
steps = [*range(len(EVENTS)), len(EVENTS) - 0.5]  # each level holds until the next
for name, style in (("SGD", "-"), ("Adam", "--")):
    mib = [b / MiB for b in timelines[name]]
    ax.step(steps, mib + mib[-1:], style, where="post", label=name, lw=2)
ax.set_xticks(range(len(EVENTS)), EVENTS, rotation=50, ha="right", size=9)
ax.set_xlabel("event")
if device.type == "cuda":
    ax.set_ylabel("memory_allocated above the start (MiB)")
    ax.set_title("Memory over two training steps")
else:
    ax.set_ylabel("memory in use (MiB, counted tensor bytes)")
    ax.set_title("Memory over two training steps (CPU: counted tensor bytes)")
ax.grid(True, axis="y", alpha=0.3)
ax.legend()
plt.show()

# %% exercise-momentum
# Answer: the same two steps with SGD and momentum=0.9, beside plain SGD.
OPTIMIZERS["SGD momentum"] = lambda ps: optim.SGD(ps, lr=0.01, momentum=0.9)
momentum, _ = two_steps("SGD momentum")
highest = max(range(len(EVENTS)), key=lambda i: momentum[i])
print(f"SGD with momentum: highest {momentum[highest]:,} bytes at '{EVENTS[highest]}'")
print(f"plain SGD:         highest {max(timelines['SGD']):,} bytes")
print(f"at the end, momentum holds {momentum[-1] - timelines['SGD'][-1]:,} bytes more")
