# %% setup
# Mixed precision with torch.autocast: which parts of a training step's memory shrink
# and which do not, measured part by part for one Adam step at batch 1024 on real MNIST
# images, and the loss over a few steps beside plain float32.
# Autocast runs chosen operations (matrix multiplies) in a 16-bit type: bfloat16 on the
# CPU; on CUDA bfloat16 where the GPU supports it, else float16 (with a GradScaler).
# The parts are counted tensor bytes on both devices: parameters, batch, gradients and
# Adam's state from the tensors themselves, and what autograd saves for backward through
# torch.autograd.graph.saved_tensors_hooks, each storage once. On CUDA the allocator's
# memory_allocated() also measures what the forward pass added.
import contextlib
import io
import os
import re
import socket
import sys
import textwrap

import matplotlib.pyplot as plt
import torch
from torch import nn, optim
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

DATA_ROOT = os.environ.get("LESSON_DATA", "./data")  # the lesson's ./data by default
torch.manual_seed(0)
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
print(f"Device: {device}" + gpu)
ALLOCATOR = device.type == "cuda"  # the CUDA caching allocator counts every byte
if device.type == "cuda" and not torch.cuda.is_bf16_supported():
    AMP_DTYPE = torch.float16  # older GPUs: float16, which needs a GradScaler
else:
    AMP_DTYPE = torch.bfloat16
AMP = str(AMP_DTYPE).removeprefix("torch.")


def say(text):
    """Print a long sentence in lines of at most 88 characters."""
    print(textwrap.fill(text, 88, break_on_hyphens=False))


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


def dtype_name(t):
    return str(t.dtype).removeprefix("torch.")


def storage_bytes(tensors):
    """Bytes of the distinct storages of some tensors."""
    sizes = {
        t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors
    }
    return sum(sizes.values())


def cuda_memory():
    """Bytes allocated now: the CUDA caching allocator's counter, one for the whole
    process."""
    torch.cuda.synchronize()
    return torch.cuda.memory_allocated()


BATCH, TRAIN_STEPS, TRAIN_BATCH = 1024, 50, 128
transform = transforms.Compose(
    [transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))]
)
train_dataset = load_mnist(True, transform)
images, labels = next(iter(DataLoader(train_dataset, batch_size=BATCH)))
train_loader = DataLoader(
    Subset(train_dataset, range(TRAIN_STEPS * TRAIN_BATCH)), batch_size=TRAIN_BATCH
)
train_batches = list(train_loader)  # the same batches, in the same order, for both
criterion = nn.CrossEntropyLoss()
if ALLOCATOR:  # warm-up: cuBLAS's workspaces are allocated once, up front
    for enabled in (False, True):
        with torch.autocast(device.type, dtype=AMP_DTYPE, enabled=enabled):
            warm = MLP().to(device)
            criterion(warm(images[:64].to(device)), labels[:64].to(device)).backward()
    del warm
print(f"Autocast's 16-bit type here: {AMP}")
print(f"Batch: the first {BATCH} MNIST training images, {tuple(images.shape)} float32")


# %% parts
RUNS = {  # name: (autocast on, batch cast to the 16-bit type on the device)
    "float32": (False, False),
    "autocast": (True, False),
    "cast batch": (True, True),
}


def one_step(use_autocast, cast_batch):
    """One Adam step from the same weights. Returns {(part, dtype): bytes} and the
    bytes the forward pass added (CUDA: the allocator; CPU: counted)."""
    torch.manual_seed(0)
    model = MLP().to(device)
    optimizer = optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(  # only float16 needs it; disabled, it does nothing
        device.type, enabled=use_autocast and AMP_DTYPE == torch.float16
    )
    x, y = images.to(device), labels.to(device)
    if cast_batch:
        x = x.to(AMP_DTYPE)
    params = list(model.parameters())
    known = {t.untyped_storage().data_ptr() for t in [*params, x, y]}
    saved = {}  # (part, dtype) -> {storage address: bytes}

    def pack(t):
        """Sort each tensor autograd saves into a part, by what it is."""
        ptr = t.untyped_storage().data_ptr()
        if ptr not in known:  # the parameters and the batch are counted as such
            if t.shape == x.flatten(1).shape:
                part = "saved: copy of the batch"
            elif any(sorted(t.shape) == sorted(p.shape) for p in params):
                part = "saved: copies of weights"
            else:
                part = "saved: layer outputs"
            saved.setdefault((part, dtype_name(t)), {})[ptr] = (
                t.untyped_storage().nbytes()
            )
        return t.detach()  # t itself could keep a saved output alive in a cycle

    if ALLOCATOR:
        before = cuda_memory()
    hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
    amp = torch.autocast(device.type, dtype=AMP_DTYPE, enabled=use_autocast)
    with hooks, amp:
        output = model(x)
        loss = criterion(output, y)
    if ALLOCATOR:
        forward_added = cuda_memory() - before
    else:
        forward_added = sum(sum(s.values()) for s in saved.values())
        forward_added += storage_bytes([output, loss])
    scaler.scale(loss).backward()
    grads = [p.grad for p in params]
    scaler.step(optimizer)
    scaler.update()
    state = [
        v
        for s in optimizer.state.values()
        for v in s.values()
        if torch.is_tensor(v) and v.device.type == device.type  # CUDA: step on host
    ]
    parts = {("parameters", dtype_name(p)): 0 for p in params}
    for p in params:
        parts["parameters", dtype_name(p)] += storage_bytes([p])
    parts["batch: images", dtype_name(x)] = storage_bytes([x])
    parts["batch: labels", dtype_name(y)] = storage_bytes([y])
    for (part, dtype), sizes in sorted(saved.items()):
        parts[part, dtype] = sum(sizes.values())
    parts["gradients", dtype_name(grads[0])] = storage_bytes(grads)
    parts["Adam's state", dtype_name(state[0])] = storage_bytes(state)
    return parts, forward_added


results = {run: one_step(*flags) for run, flags in RUNS.items()}
ORDER = ["parameters", "batch: images", "batch: labels", "saved: layer outputs"]
ORDER += ["saved: copy of the batch", "saved: copies of weights"]
ORDER += ["gradients", "Adam's state"]
rows = sorted({key for parts, _ in results.values() for key in parts})
rows.sort(key=lambda key: ORDER.index(key[0]))  # stable: dtypes stay sorted
print(f"cast batch: autocast, with the batch cast to {AMP} on the device first")
print(f"{'part (counted tensor bytes)':<27} {'dtype':<9}", end="")
print("".join(f"{run:>14}" for run in RUNS))
for part, dtype in rows:
    cells = [results[run][0].get((part, dtype)) for run in RUNS]
    print(f"{part:<27} {dtype:<9}", end="")
    print("".join(f"{'-' if c is None else f'{c:,}':>14}" for c in cells))
forward_label = "allocator" if ALLOCATOR else "counted"  # fits the dtype column
print(f"{'forward pass added':<27} {forward_label:<9}", end="")
print("".join(f"{results[run][1]:>14,}" for run in RUNS))


def total(run, part):
    """Bytes of a part in a run, all dtypes together."""
    return sum(b for (p, _), b in results[run][0].items() if p == part)


outputs32, outputs16 = (
    total(r, "saved: layer outputs") for r in ("float32", "autocast")
)
print(
    f"Saved layer outputs: {outputs16:,} bytes under autocast against {outputs32:,} in "
    f"float32 ({outputs16 / outputs32:.2f}x)"
)
same = all(
    total("float32", part) == total(run, part)
    for run in RUNS
    for part in ("parameters", "gradients", "Adam's state")
)
print(f"Parameters, gradients and Adam's state unchanged under autocast: {same}")
copy = total("autocast", "saved: copy of the batch")


def copies_text(amp, copy, cast_copy, weights):
    """What autocast saved in copies (bytes): of the batch, with a float32 batch and
    with the batch cast first, and of the weights."""
    if not copy:
        batch = f"Autocast saved no {amp} copy of the batch"
    elif not cast_copy:
        batch = (
            f"Autocast also saved a {amp} copy of the batch for layer1's backward, "
            f"{copy:,} bytes, which the cast batch avoids"
        )
    else:
        batch = (
            f"Autocast also saved a {amp} copy of the batch for layer1's backward, "
            f"{copy:,} bytes, and so did the cast batch, {cast_copy:,} bytes"
        )
    if weights:
        return f"{batch}, and {amp} copies of weights, {weights:,} bytes."
    return f"{batch}, and no copies of weights."


cast_copy = total("cast batch", "saved: copy of the batch")
weights = total("autocast", "saved: copies of weights")
say(copies_text(AMP, copy, cast_copy, weights))
images32, images16 = (total(r, "batch: images") for r in ("float32", "cast batch"))
print(f"The batch's images: {images32:,} bytes in float32, {images16:,} in {AMP}")


# %% training
def train(use_autocast):
    """TRAIN_STEPS Adam steps from the same weights on the same batches; the losses."""
    torch.manual_seed(0)
    model = MLP().to(device)
    optimizer = optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(
        device.type, enabled=use_autocast and AMP_DTYPE == torch.float16
    )
    losses = []
    for x, y in train_batches:
        x, y = x.to(device), y.to(device)
        with torch.autocast(device.type, dtype=AMP_DTYPE, enabled=use_autocast):
            loss = criterion(model(x), y)
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        losses.append(loss.item())
    return losses


losses = {"float32": train(False), f"autocast ({AMP})": train(True)}
print(f"Training loss over {TRAIN_STEPS} Adam steps at batch {TRAIN_BATCH}:")
print(f"{'step':>5}" + "".join(f"{run:>22}" for run in losses) + f"{'difference':>14}")
for step in (1, 10, 20, 30, 40, 50):
    a, b = (run[step - 1] for run in losses.values())
    print(f"{step:>5}{a:>22.4f}{b:>22.4f}{b - a:>+14.4f}")

# %% chart
KiB = 1024
fig = plt.figure(figsize=(7, 6.6), layout="constrained")
upper, lower = fig.subfigures(2, 1, height_ratios=[3, 2])  # each panel its full width
top, bottom = upper.subplots(), lower.subplots()
labels_ = [f"{part} ({dtype})" for part, dtype in rows]
height = 0.8 / len(RUNS)
for index, run in enumerate(RUNS):
    values = [results[run][0].get(key, 0) / KiB for key in rows]
    positions = [r + (index - 1) * height for r in range(len(rows))]
    top.barh(positions, values, height=height, label=run)
top.set_yticks(range(len(rows)), labels_)
top.invert_yaxis()
top.set_xlabel("KiB (counted tensor bytes)")
top.set_ylabel("part of a training step")
top.set_title(f"Memory by part, one Adam step at batch {BATCH}")
top.legend()
for (run, values), style in zip(losses.items(), ("-", "--")):
    bottom.plot(range(1, TRAIN_STEPS + 1), values, style, linewidth=2, label=run)
bottom.set_xlabel("training step")
bottom.set_ylabel("training loss")
bottom.set_title(f"Loss, float32 vs autocast ({AMP}), batch {TRAIN_BATCH}")
bottom.legend()
bottom.grid(True, alpha=0.3)
plt.show()
