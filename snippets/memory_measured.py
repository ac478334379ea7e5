# %% setup
# Setup the cells below need: imports, the device, the model, MNIST's first 1024
# images, and the byte counters. On CUDA the numbers also come from PyTorch's
# allocator; on the CPU (no allocator statistics) they are counted from tensor sizes.
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
from torch.nn.modules.module import (
    register_module_forward_hook,
    register_module_forward_pre_hook,
)
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)
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


def say(text, indent=""):
    """Print a long sentence wrapped at 88 columns."""
    print(textwrap.fill(text, 88, initial_indent=indent, subsequent_indent=indent))


def cuda_memory():
    """(allocated, the most allocated since the last reset, reserved), in bytes: the
    CUDA caching allocator's counters, one set for the whole process."""
    torch.cuda.synchronize()
    return (
        torch.cuda.memory_allocated(),
        torch.cuda.max_memory_allocated(),
        torch.cuda.memory_reserved(),
    )


def fresh_baseline():
    """On CUDA: free the cache, set the peak back and return what is allocated now
    (the baseline the phases are measured above); on the CPU: 0."""
    if not ALLOCATOR:
        return 0
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    return cuda_memory()[0]


normalize = transforms.Normalize((0.1307,), (0.3081,))
transform = transforms.Compose([transforms.ToTensor(), normalize])
train_dataset = load_mnist(True, transform)
first_1024 = DataLoader(train_dataset, batch_size=1024, shuffle=False)
mnist_images, mnist_labels = next(iter(first_1024))  # real MNIST
criterion = nn.CrossEntropyLoss()
if ALLOCATOR:  # warm-up: the first matmul allocates cuBLAS's workspace
    warm = MLP().to(device)
    loss = criterion(warm(mnist_images[:64].to(device)), mnist_labels[:64].to(device))
    loss.backward()
    del warm, loss
    torch.cuda.synchronize()


# %% saved-helpers
# Helpers the next cell needs: sort what autograd saved into storages, say what each
# is and which backward node keeps it, and print that table
def classify(model, images, labels, saved):
    """For each unique saved storage: what it is and whether it is new memory (not a
    parameter or the batch)."""
    known = {
        p.untyped_storage().data_ptr(): f"parameter {name}"
        for name, p in model.named_parameters()
    }
    known[images.untyped_storage().data_ptr()] = "input images (the batch)"
    known[labels.untyped_storage().data_ptr()] = "labels (the batch)"
    unique = {}  # storage address -> (what, shape, dtype, bytes, already counted?)
    for made_by, shape, dtype, ptr, size in saved:
        if ptr not in unique:
            new = f"NEW: {made_by} output" if made_by else "NEW: made in the loss"
            unique[ptr] = (known.get(ptr, new), shape, dtype, size, ptr in known)
    return unique


def who_saved(loss):
    """Walk the backward graph: which node keeps which saved tensor (by storage)."""
    names, stack, seen = {}, [loss.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for attr in dir(node):
            value = getattr(node, attr) if attr.startswith("_saved_") else None
            if torch.is_tensor(value):
                ptr = value.untyped_storage().data_ptr()
                names.setdefault(ptr, []).append(f"{node.name()}.{attr[7:]}")
        stack.extend(f for f, _ in node.next_functions)
    return names


def print_saved(model, images, labels, saved, loss):
    """Each saved storage once: what it is, its shape, dtype and bytes, who keeps it;
    then the new memory."""
    distinct = len({ptr for *_, ptr, _ in saved})
    print(
        f"Batch {len(images)}: autograd saved {len(saved)} tensors, in {distinct}",
        end="",
    )
    print(" storages")
    print(f"  {'what it is':<25} {'shape':<12} {'bytes':>9}  saved by (backward node)")
    saved_by = who_saved(loss)
    storages = classify(model, images, labels, saved)
    for ptr, (what, shape, _, size, _) in storages.items():
        nodes = ", ".join(saved_by.get(ptr, ["?"])).replace("Backward0", "")
        print(f"  {what:<25} {str(shape):<12} {size:>9,}  {nodes}")
    new = sum(size for *_, size, known in storages.values() if not known)
    print(f"New memory autograd keeps at batch {len(images)}: ", end="")
    print(f"{new:,} bytes = {new / 1024:.2f} KiB")


# %% saved-tensors
saved = []  # every tensor autograd saves: (made by, shape, dtype, storage, bytes)


def pack(t):  # autograd calls this each time it saves a tensor for backward
    made_by = t.grad_fn.name().removesuffix("Backward0") if t.grad_fn else None
    storage = t.untyped_storage()
    saved.append(
        (made_by, tuple(t.shape), t.dtype, storage.data_ptr(), storage.nbytes())
    )
    return t.detach()  # t itself would keep a saved output alive in a cycle


torch.manual_seed(0)
model = MLP().to(device)
images, labels = mnist_images.to(device), mnist_labels.to(device)
with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
    output = model(images)
    loss = criterion(output, labels)
print_saved(model, images, labels, saved, loss)
del output, loss, model, images, labels  # free them before the next cells


# %% phases
# StepMeter, which the next cells need: a context manager that measures a training
# step from outside, through hooks. Also the tables it prints, and the optimizers.
OPTIMIZERS = {
    "SGD": lambda params: optim.SGD(params, lr=0.01),
    "Adam": lambda params: optim.Adam(params, lr=1e-3),
}


class StepMeter:
    """Measures one training step at four moments its hooks see: the model's forward
    begins ('batch moved'), the loss module returns ('forward'), optimizer.step()
    begins ('backward') and ends ('optimizer step'). It counts the bytes of the
    tensors alive then, part by part (saved_tensors_hooks finds what autograd saves);
    on CUDA it also reads the allocator's counters."""

    PHASES = ("batch moved", "forward", "backward", "optimizer step")

    def __enter__(self):
        self.baseline = fresh_baseline()
        self.parts, self.cuda, self.saved, self.known = {}, {}, {}, set()
        self.depth, self.seen_model = 0, False
        self.hooks = contextlib.ExitStack()
        for handle in (
            register_module_forward_pre_hook(self.module_starts),
            register_module_forward_hook(self.module_returns),
            register_optimizer_step_pre_hook(self.step_starts),
            register_optimizer_step_post_hook(self.step_ends),
        ):
            self.hooks.callback(handle.remove)
        saving = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self.hooks.enter_context(saving)
        return self

    def __exit__(self, *error):
        self.hooks.close()
        p = self.parts
        fixed = p["params"] + p["batch"]
        counted = {
            "batch moved": fixed,
            "forward": fixed + p["activations"] + p["kept"],
            "backward": fixed + p["grads"] + p["kept"],
            "optimizer step": fixed + p["grads"] + p["state"] + p["kept"],
        }
        self.rows = [(ph, counted[ph], *self.cuda.get(ph, ())) for ph in self.PHASES]

    def read(self, phase):
        if ALLOCATOR:
            allocated, peak, reserved = cuda_memory()
            base = self.baseline
            self.cuda[phase] = (allocated - base, peak - base, reserved)

    def pack(self, t):
        storage = t.untyped_storage()
        self.saved[storage.data_ptr()] = storage.nbytes()  # each storage once
        return t.detach()

    def module_starts(self, module, args):
        self.depth += 1
        if self.depth == 1 and not self.seen_model:  # the model, called on the batch
            self.seen_model = True
            params = list(module.parameters())
            self.known |= {t.untyped_storage().data_ptr() for t in [*params, args[0]]}
            self.parts["params"], self.parts["batch"] = nbytes(params), nbytes(args)
            self.read("batch moved")

    def module_returns(self, module, args, output):
        self.depth -= 1
        if self.depth == 0 and torch.is_tensor(output) and output.dim() == 0:  # loss
            logits, labels = args
            self.known.add(labels.untyped_storage().data_ptr())
            self.parts["batch"] += nbytes([labels])
            new = [n for ptr, n in self.saved.items() if ptr not in self.known]
            self.parts["activations"] = sum(new)
            self.parts["kept"] = nbytes([logits, output])  # held by the step's names
            self.read("forward")

    def step_starts(self, optimizer, args, kwargs):
        params = [p for group in optimizer.param_groups for p in group["params"]]
        self.parts["grads"] = nbytes(p.grad for p in params if p.grad is not None)
        self.read("backward")

    def step_ends(self, optimizer, args, kwargs):
        state = [v for s in optimizer.state.values() for v in s.values()]
        self.parts["state"] = nbytes(v for v in state if torch.is_tensor(v))
        self.read("optimizer step")


def allocator_note(rows):
    """What the CUDA columns of `rows` (phase, counted, allocated, peak, reserved)
    show against the counted bytes, in words that fit them."""
    counted, allocated, peak = ([row[k] for row in rows] for k in (1, 2, 3))
    pairs = list(zip(counted, allocated))
    if all(a >= c for c, a in pairs) and any(a > c for c, a in pairs):
        first = (
            "On CUDA 'allocated' is above 'counted' because the allocator rounds "
            "every tensor up to a multiple of 512 bytes"
        )
    elif all(a == c for c, a in pairs):
        first = "On CUDA 'allocated' equals 'counted' at every phase"
    else:
        first = "On CUDA 'allocated' is below 'counted' at some phase"
    if any(p > a for a, p in zip(allocated, peak)):
        return (
            f"{first}; 'peak' is higher still because of temporaries, such as the "
            "layer1 output before ReLU (freed as soon as ReLU has run) and the buffers "
            "Adam's step uses while it updates."
        )
    return f"{first}; 'peak' is never above 'allocated': no temporary was seen."


def print_phases(results):
    """The phase table: on the CPU one column of counted bytes per run; on CUDA a
    block per run with the allocator's figures above the baseline beside them."""
    if not ALLOCATOR:
        print("counted bytes at each phase (CPU: from tensor sizes, not an allocator)")
        runs = [f"{name} {size}" for name, size in results]
        print(f"{'phase':<15}" + "".join(f"{run:>12}" for run in runs))
        for i, phase in enumerate(StepMeter.PHASES):
            counts = "".join(f"{m.rows[i][1]:>12,}" for m in results.values())
            print(f"{phase:<15}{counts}")
        return
    for (name, size), meter in results.items():
        print(f"{name}, batch {size} (CUDA allocator, above {meter.baseline:,} bytes)")
        print(f"  {'phase':<15} {'counted bytes':>14} {'allocated':>14}", end="")
        print(f" {'peak':>14} {'reserved':>14}")
        for phase, counted, allocated, peak, reserved in meter.rows:
            print(f"  {phase:<15} {counted:>14,} {allocated:>14,}", end="")
            print(f" {peak:>14,} {reserved:>14,}")
    say(allocator_note([row for m in results.values() for row in m.rows]))


# %% table
def train_one_step(make_optimizer, batch_size):
    """A fresh model, one ordinary training step on the first MNIST images."""
    torch.manual_seed(0)
    model = MLP().to(device)
    optimizer = make_optimizer(model.parameters())
    images = mnist_images[:batch_size].to(device)
    labels = mnist_labels[:batch_size].to(device)
    optimizer.zero_grad()
    output = model(images)
    loss = criterion(output, labels)
    loss.backward()
    optimizer.step()


results = {}  # (optimizer, batch size) -> what the meter saw
for name, make_optimizer in OPTIMIZERS.items():
    for batch_size in (64, 1024):
        with StepMeter() as meter:  # measures through hooks, around the step
            train_one_step(make_optimizer, batch_size)
        results[name, batch_size] = meter
print_phases(results)


# %% summary
# The parts of each run side by side, and which part is the biggest
def biggest_items(batch_size, parts):
    """Which part of an Adam step at this batch size is the biggest, and Adam's state
    against the saved activations, in words that fit the numbers."""
    names = {
        "params": "the parameters",
        "grads": "the gradients",
        "state": "Adam's state",
        "batch": "the input batch",
        "activations": "what autograd keeps for backward",
        "kept": "the logits and loss",
    }
    top = max(names, key=lambda k: parts[k])
    ties = [names[k] for k in names if parts[k] == parts[top]]
    if len(ties) > 1:
        first = f"{' and '.join(ties)} tie for the biggest item ({parts[top]:,} bytes)"
    else:
        verb = "are" if top in ("params", "grads", "kept") else "is"
        first = f"{ties[0]} ({parts[top]:,} bytes) {verb} the biggest item"
    state, saved = parts["state"], parts["activations"]
    if state > saved:
        second = (
            f"Adam's state ({state:,}) outweighs all the activations autograd keeps "
            f"({saved:,})"
        )
    elif state < saved:
        second = (
            f"all the activations autograd keeps ({saved:,}) outweigh Adam's state "
            f"({state:,})"
        )
    else:
        second = (
            f"Adam's state and the activations autograd keeps weigh the same "
            f"({state:,})"
        )
    return f"At batch {batch_size} {first}; {second}."


KEYS = ["params", "grads", "state", "batch", "activations", "kept"]
heads = [("", "params"), ("", "grads"), ("opt.", "state")]
heads += [("batch", "data"), ("saved", "act."), ("logits", "+ loss")]
heads += [("CUDA", "peak")] if ALLOCATOR else []
print(f"{'optimizer':<11}" + "".join(f"{a:>11}" for a, _ in heads))
print(f"{'batch':>11}" + "".join(f"{b:>11}" for _, b in heads))
for (name, size), meter in results.items():
    sizes = [meter.parts[k] for k in KEYS]
    sizes += [max(row[3] for row in meter.rows)] if ALLOCATOR else []
    print(f"{name:<5}{size:>6}" + "".join(f"{n:>11,}" for n in sizes))
say(biggest_items(1024, results["Adam", 1024].parts))

# %% exercise-batch-256
with StepMeter() as meter:
    train_one_step(OPTIMIZERS["Adam"], 256)
print(f"batch 256: saved activations {meter.parts['activations']:,} bytes")
print_phases({("Adam", 256): meter})
