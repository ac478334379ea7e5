# %% setup
# Setup the cells below need: imports, the device, MNIST, the byte counters
# (tensor_bytes, show, optimizer_state_bytes) and one_step. Bytes are exact
# (numel() * element_size()); KiB and MiB are 1024-based.
import contextlib
import io
import os
import re
import socket
import sys

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


normalize = transforms.Normalize((0.1307,), (0.3081,))
transform = transforms.Compose([transforms.ToTensor(), normalize])
train_dataset = load_mnist(True, transform)  # real images for the data-batch cell


def tensor_bytes(tensors):
    """Exact bytes of some tensors: number of elements times bytes per element."""
    return sum(t.numel() * t.element_size() for t in tensors)


def show(label, n):
    """One line: exact bytes, then KiB and MiB (1024-based)."""
    print(f"{label:<44}{n:>10,} bytes = {n / 1024:>8.2f} KiB = {n / 2**20:.3f} MiB")


def optimizer_state_bytes(optimizer):
    """Bytes of every tensor the optimizer keeps in optimizer.state, by state name
    and device."""
    totals = {}
    for state in optimizer.state.values():
        for key, value in state.items():
            if torch.is_tensor(value):
                where = (key, value.device.type)
                totals[where] = totals.get(where, 0) + tensor_bytes([value])
    return totals


def one_step(model, optimizer, batch_size=64):
    """One training step on random images: creates the gradients and, at the
    optimizer's first step, its state."""
    images = torch.randn(batch_size, *model.input_shape, device=device)
    labels = torch.randint(0, 10, (batch_size,), device=device)
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(images), labels).backward()
    optimizer.step()


# %% models
# The lesson's two MLPs from chapter 2 (MNIST and CIFAR-10), which the cells below use
class MLP(nn.Module):  # the lesson's MNIST model: 1x28x28 -> 784 -> 128 -> 10
    input_shape = (1, 28, 28)

    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()
        self.layer1 = nn.Linear(784, 128)
        self.relu = nn.ReLU()
        self.layer2 = nn.Linear(128, 10)

    def forward(self, x):
        return self.layer2(self.relu(self.layer1(self.flatten(x))))


class CifarMLP(nn.Module):  # the same MLP for CIFAR-10: 3x32x32 -> 3072 -> 128 -> 10
    input_shape = (3, 32, 32)

    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()
        self.layer1 = nn.Linear(3072, 128)
        self.relu = nn.ReLU()
        self.layer2 = nn.Linear(128, 10)

    def forward(self, x):
        return self.layer2(self.relu(self.layer1(self.flatten(x))))


model = MLP().to(device)
cifar_model = CifarMLP().to(device)
for name, m in [("MNIST MLP", model), ("CIFAR-10 MLP", cifar_model)]:
    print(f"{name}:")
    for pname, p in m.named_parameters():
        shape, each = str(tuple(p.shape)), f"{p.element_size()} bytes ({p.dtype})"
        print(f"  {pname:<15} shape {shape:<11} {p.numel():>9,} values x {each}")
    total = sum(p.numel() for p in m.parameters())
    print(f"  {'total':<15} {'':<17} {total:>9,} parameters")

# %% parameters-gradients
param_bytes = tensor_bytes(model.parameters())
# A gradient has its parameter's shape and dtype: run one backward and measure them.
model(torch.randn(64, 1, 28, 28, device=device)).sum().backward()
grad_bytes = tensor_bytes(p.grad for p in model.parameters())
show("MNIST MLP parameters (float32)", param_bytes)
show("their gradients (after one backward)", grad_bytes)
show("parameters + gradients", param_bytes + grad_bytes)

# %% optimizer-state
OPTIMIZERS = {
    "SGD": lambda params: optim.SGD(params, lr=0.01),
    "SGD with momentum": lambda params: optim.SGD(params, lr=0.01, momentum=0.9),
    "Adam": lambda params: optim.Adam(params, lr=1e-3),
}
state_parts = {}  # optimizer -> {(state name, device): bytes}
for name, make_optimizer in OPTIMIZERS.items():
    m = MLP().to(device)
    optimizer = make_optimizer(m.parameters())
    one_step(m, optimizer)  # the state is created lazily, at the first step
    state_parts[name] = optimizer_state_bytes(optimizer)
    show(f"{name}: optimizer.state", sum(state_parts[name].values()))
    for (key, where), n in sorted(state_parts[name].items()):
        print(f"    {key:<15} on {where}: {n:>9,} bytes")

# %% data-batch
image, label = train_dataset[0]
images, labels = next(iter(DataLoader(train_dataset, batch_size=64)))
images, labels = images.to(device), labels.to(device)
show("one MNIST image (float32)", tensor_bytes([image]))
show("a batch of 64 images", tensor_bytes([images]))
show("its 64 labels (int64)", tensor_bytes([labels]))
show("batch of 64, images + labels", tensor_bytes([images, labels]))

# %% activations
with torch.no_grad():
    batch_1024 = torch.randn(1024, 1, 28, 28, device=device)
    hidden = model.layer1(model.flatten(batch_1024))  # the first layer's output
    logits = model.layer2(model.relu(hidden))
show(f"layer1 output at batch 1024 {tuple(hidden.shape)}", tensor_bytes([hidden]))
show(f"logits at batch 1024 {tuple(logits.shape)}", tensor_bytes([logits]))


# %% parts-helpers
# Helpers the parts chart below needs: the first MNIST batch of a size, the bytes
# autograd saves in a forward pass (saved_tensors_hooks), and the table and chart.
plt.rcParams["font.size"] = 10
PARTS = [
    "parameters",
    "gradients",
    "optimizer state",
    "data batch",
    "saved activations",
]


def first_batch(size):
    """The first `size` MNIST images and labels, on the device."""
    loader = DataLoader(train_dataset, batch_size=size, shuffle=False)
    return [t.to(device) for t in next(iter(loader))]


def saved_activation_bytes(model, images, labels):
    """Bytes of the new storages autograd saves in one forward pass with the loss,
    each storage once, leaving out the batch and the parameters (parts of their
    own)."""
    saved = {}  # storage address -> bytes

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t.detach()  # t itself would keep a saved output alive in a cycle

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = nn.functional.cross_entropy(model(images), labels)
    counted = [*model.parameters(), images, labels]
    known = {t.untyped_storage().data_ptr() for t in counted}
    del loss  # the graph and the saved tensors are freed with it
    return sum(n for ptr, n in saved.items() if ptr not in known)


def print_parts(parts):
    """The five parts of each run, in bytes, and their sum."""
    heads = ["optimizer", "batch", "parameters", "gradients", "opt. state"]
    heads += ["data batch", "saved act.", "sum"]
    widths = (-10, 5, 12, 11, 12, 12, 12, 11)
    print(
        "".join(f"{h:{'<' if w < 0 else '>'}{abs(w)}}" for h, w in zip(heads, widths))
    )
    for (name, size), values in parts.items():
        cols = "".join(f"{v:>{w},}" for v, w in zip(values, widths[2:]))
        print(f"{name:<10}{size:>5}{cols}{sum(values):>11,}")


def draw_parts(parts):
    """One stacked bar per run: the five parts, in MiB, added up."""
    fig, ax = plt.subplots(figsize=(7, 3.2), layout="constrained")
    bars = [f"{name}, batch {size}" for name, size in parts]
    left = [0.0] * len(bars)
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:red"]
    for index, (part, colour) in enumerate(zip(PARTS, colours)):
        widths = [values[index] / 2**20 for values in parts.values()]
        ax.barh(bars, widths, left=left, color=colour, label=part)
        left = [a + b for a, b in zip(left, widths)]
    ax.set_xlim(0, max(left) * 1.05)
    ax.invert_yaxis()  # the first bar on top
    ax.set_xlabel("MiB (2^20 bytes), the parts added up")
    ax.set_ylabel("optimizer, batch size")
    fig.legend(loc="outside lower center", ncols=3)
    fig.suptitle("MNIST MLP: the five memory parts of a training step")
    plt.show()


# %% parts-chart
# The five parts for SGD and Adam at batch 64 and 1024, from the cells above
parts = {}  # (optimizer, batch size) -> bytes of each of the five parts
for size in (64, 1024):
    batch_images, batch_labels = first_batch(size)
    data = tensor_bytes([batch_images, batch_labels])
    saved = saved_activation_bytes(model, batch_images, batch_labels)
    for name in ("SGD", "Adam"):
        state = sum(state_parts[name].values())
        parts[name, size] = [param_bytes, grad_bytes, state, data, saved]
print_parts(parts)
draw_parts(parts)

# %% cifar
# The same counts for the CIFAR-10 MLP (the cells above, with the bigger model)
cifar_params = tensor_bytes(cifar_model.parameters())
cifar_image = torch.zeros(3, 32, 32)  # CIFAR-10 is never downloaded: only its shape
cifar_count = sum(p.numel() for p in cifar_model.parameters())
print(f"CIFAR-10 MLP: {cifar_count:,} parameters")
show("parameters (float32)", cifar_params)
show("one CIFAR-10 image 3x32x32 (float32)", tensor_bytes([cifar_image]))
show("a batch of 64 images", 64 * tensor_bytes([cifar_image]))
with torch.no_grad():
    cifar_hidden = cifar_model.layer1(torch.zeros(1024, 3072, device=device))
shape = tuple(cifar_hidden.shape)
show(f"layer1 output at batch 1024 {shape}", tensor_bytes([cifar_hidden]))
layer1 = sum(p.numel() for p in cifar_model.layer1.parameters())  # weights and bias
print(f"layer1 holds {layer1 / cifar_count:.1%} of the parameters")


# %% lesson-vs-exact
# The errata table: each figure the lesson states beside the exact bytes of the cells
# above, in KiB and kB, with a verdict
def matches(lesson_figure, exact):
    """Does `exact` round to the lesson's figure at the lesson's number of significant
    digits?"""
    digits = len(str(lesson_figure).replace(".", "").strip("0"))
    return float(f"{exact:.{digits}g}") == lesson_figure


adam = state_parts["Adam"]
adam_buffers = sum(n for (key, _), n in adam.items() if key != "step")
rows = [
    ("parameters", 403, param_bytes),
    ("gradients", 403, grad_bytes),
    ("parameters + gradients", 806, param_bytes + grad_bytes),
    ("Adam state (2 buffers)", 806, adam_buffers),
    ("one image", 3, tensor_bytes([image])),
    ("batch of 64 images", 192, tensor_bytes([images])),
    ("layer1 output, batch 1024", 512, tensor_bytes([hidden])),
]
VERDICTS = {
    (True, True): "right as KiB and kB",  # e.g. ~3: rounding hides the difference
    (True, False): "right as KiB",
    (False, True): "right as kB",
    (False, False): "neither KiB nor kB",
}
head = f"{'lesson':>7}{'exact bytes':>12}{'binary':>11}{'decimal':>10}"


def prose_text(neither):
    """What the table says of the lesson's prose figures: those that are neither KiB
    nor kB (each once), or that all are one or the other."""
    if not neither:
        return "Each of its prose figures is right as KiB or as kB."
    figures = list(dict.fromkeys(neither))
    listed = ", ".join(str(figure) for figure in figures)
    if len(figures) == 1:
        return f"Its prose figure ({listed} 'KB') is neither KiB nor kB."
    return f"Its prose figures ({listed} 'KB') are neither KiB nor kB."


print(f"{'item':<26}{head}  verdict")
neither = []
for item, said, exact in rows:
    verdict = VERDICTS[matches(said, exact / 1024), matches(said, exact / 1000)]
    sizes = f"{exact / 1024:>7.1f} KiB{exact / 1000:>7.1f} kB"
    print(f"{item:<26}{f'~{said} KB':>7}{exact:>12,}{sizes}  {verdict}")
    if verdict == VERDICTS[False, False]:
        neither.append(said)
script = " / ".join(f"{exact / 2**20:.2f}" for _, _, exact in rows[:3] + rows[5:6])
print(f"the lesson's script, bytes / 1024**2 ('MB'): {script}")
print(prose_text(neither))

# %% exercise-cifar-optimizers
cifar_model(torch.zeros(64, 3, 32, 32, device=device)).sum().backward()
show("CIFAR-10 MLP gradients", tensor_bytes(p.grad for p in cifar_model.parameters()))
for name in ("Adam", "SGD with momentum"):
    m = CifarMLP().to(device)
    optimizer = OPTIMIZERS[name](m.parameters())
    one_step(m, optimizer)
    state = optimizer_state_bytes(optimizer)
    show(f"CIFAR-10 MLP, {name}", sum(state.values()))
    for (key, where), n in sorted(state.items()):
        print(f"    {key:<15} on {where}: {n:>9,} bytes")
    buffers = sum(n for (key, _), n in state.items() if key != "step")
    print(f"    {'buffers only':<15} {'':<7} {buffers:>9,} bytes (no step counters)")

# %% exercise-bfloat16
half = MLP().to(device, torch.bfloat16)
show("MNIST MLP parameters in bfloat16", tensor_bytes(half.parameters()))
show("a batch of 64 images in bfloat16", tensor_bytes([images.to(torch.bfloat16)]))
