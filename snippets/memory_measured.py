# %% setup
# Memory measured at each phase of one training step (model loaded, batch moved,
# forward, backward, optimizer step) for SGD and Adam at batch 64 and 1024, beside the
# arithmetic, plus what autograd really saves for backward. On CUDA the numbers come
# from PyTorch's allocator; on the CPU (which has no allocator statistics) they are
# counted from tensor sizes. Bytes are exact; KiB and MiB are 1024-based.
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


# %% saved-tensors
def forward_recording_saved(model, images, labels):
    """Forward + loss while recording every tensor autograd saves for backward:
    (the operation that made it or None, shape, dtype, storage address, bytes)."""
    saved = []

    def pack(t):
        made_by = t.grad_fn.name().removesuffix("Backward0") if t.grad_fn else None
        storage = t.untyped_storage()
        saved.append(
            (made_by, tuple(t.shape), t.dtype, storage.data_ptr(), storage.nbytes())
        )
        return t.detach()  # t itself would keep a saved output alive in a cycle

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        output = model(images)
        loss = criterion(output, labels)
    return output, loss, saved


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


torch.manual_seed(0)
model = MLP().to(device)
images, labels = mnist_images.to(device), mnist_labels.to(device)
output, loss, saved = forward_recording_saved(model, images, labels)
saved_by = who_saved(loss)
distinct = len({ptr for *_, ptr, _ in saved})
n_saved = len(saved)
print(
    f"Batch 1024: autograd saved {n_saved} tensors for backward, in {distinct} storages"
)
print("(each storage once; under it, the backward nodes that keep it):")
print(f"  {'what it is':<26} {'shape':<12} {'dtype':<14} {'storage bytes':>13}")
storages = classify(model, images, labels, saved)
for ptr, (what, shape, dtype, size, _) in storages.items():
    print(f"  {what:<26} {str(shape):<12} {str(dtype):<14} {size:>13,}")
    print(f"      saved by {', '.join(saved_by.get(ptr, ['?']))}")
new_bytes = sum(size for *_, size, known in storages.values() if not known)
kib = new_bytes / 1024
print(f"New memory autograd keeps at batch 1024: {new_bytes:,} bytes = {kib:.2f} KiB")
print("(the lesson counts 512 KiB = 524,288 bytes: the layer1 output)")
say(
    "Why: layer1's matmul saves its input, a view of the batch (no new memory; it "
    "skips its weight because the batch needs no gradient). ReLU saves its output, "
    "and layer2 saves that same tensor as its input, plus a view of its weight (a "
    "parameter). Cross-entropy is log_softmax + nll_loss: log_softmax saves its output "
    "(1024 x 10 floats), nll_loss saves it again, the labels and a 4-byte total "
    "weight. The layer1 output before ReLU is saved by nobody and is freed as soon as "
    "ReLU has run; the logits are kept only by our variable."
)
del output, loss, saved, model, images, labels  # free them before the measurements

# %% phases
OPTIMIZERS = {
    "SGD": lambda ps: optim.SGD(ps, lr=0.01),
    "Adam": lambda ps: optim.Adam(ps, lr=1e-3),
}


def measure_step(optimizer_name, batch_size):
    """One training step, phase by phase: counted tensor bytes (and on CUDA the
    allocator's figures)."""
    if ALLOCATOR:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    baseline = cuda_memory()[0] if ALLOCATOR else 0
    rows = []

    def record(phase, counted):
        if ALLOCATOR:
            allocated, peak, reserved = cuda_memory()
            rows.append(
                (phase, counted, allocated - baseline, peak - baseline, reserved)
            )
        else:
            rows.append((phase, counted))

    torch.manual_seed(0)
    model = MLP().to(device)
    params = nbytes(model.parameters())
    record("model loaded", params)
    optimizer = OPTIMIZERS[optimizer_name](model.parameters())
    images = mnist_images[:batch_size].to(device)
    labels = mnist_labels[:batch_size].to(device)
    batch = nbytes([images, labels])
    record("batch moved", params + batch)
    optimizer.zero_grad()
    output, loss, saved = forward_recording_saved(model, images, labels)
    storages = classify(model, images, labels, saved).values()
    activations = sum(size for *_, size, known in storages if not known)
    del saved, storages  # our record must not keep the saved tensors alive
    kept = nbytes([output, loss])  # logits and loss: our variables keep them alive
    record("forward", params + batch + activations + kept)
    loss.backward()  # frees the saved tensors, creates the gradients
    grads = nbytes(p.grad for p in model.parameters())
    record("backward", params + grads + batch + kept)
    optimizer.step()  # the optimizer state appears at the first step
    state = [
        v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)
    ]
    state = nbytes(state)
    record("optimizer step", params + grads + state + batch + kept)
    parts = dict(params=params, grads=grads, state=state, batch=batch)
    parts.update(activations=activations, kept=kept)
    return rows, parts, baseline


# %% table
results = {}
for optimizer_name in OPTIMIZERS:
    for batch_size in (64, 1024):
        rows, parts, baseline = measure_step(optimizer_name, batch_size)
        results[optimizer_name, batch_size] = (rows, parts)
        print(f"{optimizer_name}, batch {batch_size}")
        if ALLOCATOR:
            say(
                f"(CUDA allocator; already allocated before this step: {baseline:,} "
                "bytes, e.g. cuBLAS's workspace; 'allocated' and 'peak' below are "
                "above that)",
                indent="  ",
            )
            print(f"  {'phase':<15} {'counted bytes':>14} {'allocated':>14}", end="")
            print(f" {'peak':>14} {'reserved':>14}")
            for phase, counted, allocated, peak, reserved in rows:
                print(f"  {phase:<15} {counted:>14,} {allocated:>14,}", end="")
                print(f" {peak:>14,} {reserved:>14,}")
        else:
            print("  (CPU: counted from tensor sizes, not an allocator)")
            print(f"  {'phase':<15} {'counted bytes':>14} {'KiB':>10}")
            for phase, counted in rows:
                print(f"  {phase:<15} {counted:>14,} {counted / 1024:>10.1f}")
        first = f"parameters {parts['params']:,} | gradients {parts['grads']:,}"
        first += f" | optimizer state {parts['state']:,}"
        then = f"batch {parts['batch']:,} | saved activations {parts['activations']:,}"
        then += f" | logits + loss {parts['kept']:,}"
        print(f"  parts: {first}\n         {then}")


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


if ALLOCATOR:
    say(allocator_note([row for rows, _ in results.values() for row in rows]))

# %% summary
cpu_note = " - CPU: counted from tensor sizes, not an allocator"
print("Summary (bytes)" + ("" if ALLOCATOR else cpu_note))
heads = [("params", "+ grads"), ("opt.", "state"), ("batch", "data")]
heads += [("saved", "activations"), ("after", "forward"), ("after", "step")]
heads += [("CUDA", "peak")] if ALLOCATOR else []
widths = (10, 10, 11, 13, 11, 11, 11)
print(f"{'optimizer':<11}" + "".join(f"{a:>{w}}" for (a, _), w in zip(heads, widths)))
print(f"{'batch':>11}" + "".join(f"{b:>{w}}" for (_, b), w in zip(heads, widths)))
for (optimizer_name, batch_size), (rows, parts) in results.items():
    sizes = [parts["params"] + parts["grads"], parts["state"], parts["batch"]]
    sizes += [parts["activations"], rows[2][1], rows[4][1]]
    sizes += [max(r[3] for r in rows)] if ALLOCATOR else []
    cols = "".join(f"{n:>{w},}" for n, w in zip(sizes, widths))
    print(f"{optimizer_name:<5}{batch_size:>6}{cols}")


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


say(biggest_items(1024, results["Adam", 1024][1]))
