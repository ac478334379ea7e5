# %% setup
# Memory arithmetic for the lesson's MLPs: parameters, gradients, optimizer state, a
# data batch and activations, every figure computed from real tensors
# (numel() * element_size()), never typed in. Bytes are exact; KiB and MiB are
# 1024-based. The last cells set the lesson's rounded figures beside the exact ones and
# draw the five parts of a training step for SGD and Adam at batch 64 and 1024.
import contextlib
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


normalize = transforms.Normalize((0.1307,), (0.3081,))
transform = transforms.Compose([transforms.ToTensor(), normalize])
train_dataset = load_mnist(True, transform)  # real images for the data-batch cell


def tensor_bytes(tensors):
    """Exact bytes of some tensors: number of elements times bytes per element."""
    return sum(t.numel() * t.element_size() for t in tensors)


def show(label, n):
    """One line: exact bytes, then KiB and MiB (1024-based)."""
    print(f"{label:<44}{n:>10,} bytes = {n / 1024:>8.2f} KiB = {n / 2**20:.3f} MiB")


# %% models
class MLP(nn.Module):  # the lesson's MNIST model: 1x28x28 -> 784 -> 128 -> 10
    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()
        self.layer1 = nn.Linear(784, 128)
        self.relu = nn.ReLU()
        self.layer2 = nn.Linear(128, 10)

    def forward(self, x):
        return self.layer2(self.relu(self.layer1(self.flatten(x))))


class CifarMLP(nn.Module):  # the same MLP for CIFAR-10: 3x32x32 -> 3072 -> 128 -> 10
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
# A gradient has exactly its parameter's shape and dtype; backward creates them, so
# make them for real.
model(torch.randn(64, 1, 28, 28, device=device)).sum().backward()
grad_bytes = tensor_bytes(p.grad for p in model.parameters())
show("MNIST MLP parameters (float32)", param_bytes)
show("their gradients (after one backward)", grad_bytes)
show("parameters + gradients", param_bytes + grad_bytes)


# %% optimizer-state
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


dummy_images = torch.randn(64, 1, 28, 28, device=device)
dummy_labels = torch.randint(0, 10, (64,), device=device)
optimizer_bytes = {}
print("optimizer.state after one step (each optimizer creates it at its first step):")
for name, make in [
    ("SGD", lambda ps: optim.SGD(ps, lr=0.01)),
    ("SGD with momentum", lambda ps: optim.SGD(ps, lr=0.01, momentum=0.9)),
    ("Adam", lambda ps: optim.Adam(ps, lr=1e-3)),
]:
    m = MLP().to(device)
    optimizer = make(m.parameters())
    optimizer.zero_grad()
    nn.functional.cross_entropy(m(dummy_images), dummy_labels).backward()
    optimizer.step()  # state is created lazily, at the first step
    parts = optimizer_state_bytes(optimizer)
    optimizer_bytes[name] = sum(parts.values())
    show(f"{name}: optimizer.state", optimizer_bytes[name])
    for (key, where), n in sorted(parts.items()):
        print(f"    {key:<15} on {where}: {n:>9,} bytes")
adam_buffers = optimizer_bytes["Adam"] - 16
assert adam_buffers == 2 * param_bytes
assert optimizer_bytes["SGD with momentum"] == param_bytes
print("Adam keeps two buffers per parameter (exp_avg, exp_avg_sq):")
print(
    f"2 x {param_bytes:,} = {2 * param_bytes:,} bytes, plus one 0-dimensional float32"
)
print("'step' counter per parameter tensor: 4 tensors x 4 bytes = 16 bytes.")
print("(Unless Adam is 'capturable' or 'fused', PyTorch keeps those step counters on")
print("the CPU even for a CUDA model.)")

# %% data-batch
image, label = train_dataset[0]
images, labels = next(iter(DataLoader(train_dataset, batch_size=64, shuffle=False)))
images, labels = images.to(device), labels.to(device)
print(f"one image: shape {tuple(image.shape)}, {image.dtype}")
print(f"a batch: images {tuple(images.shape)} {images.dtype}, ", end="")
print(f"labels {tuple(labels.shape)} {labels.dtype}")
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
print("What autograd really keeps for backward is a little more: the parts-chart cell")
print("below measures it (memory_measured.py shows every saved tensor).")


# %% lesson-vs-exact
def matches(lesson_figure, exact):
    """Does `exact` round to the lesson's figure at the lesson's number of significant
    digits?"""
    digits = len(str(lesson_figure).replace(".", "").strip("0"))
    return float(f"{exact:.{digits}g}") == lesson_figure


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
print("The lesson's own script divides by 1024*1024 and prints 'MB': those are MiB,")
print(textwrap.fill(f"and its {script} are right. {prose_text(neither)}", 84))

# %% cifar
cifar_params = tensor_bytes(cifar_model.parameters())
cifar_image = torch.zeros(3, 32, 32)  # CIFAR-10 is never downloaded: only its shape
cifar_model(cifar_image.unsqueeze(0).to(device)).sum().backward()
cifar_count = sum(p.numel() for p in cifar_model.parameters())
print(f"CIFAR-10 MLP: {cifar_count:,} parameters")
show("parameters (float32)", cifar_params)
show("gradients", tensor_bytes(p.grad for p in cifar_model.parameters()))
show("Adam state (2 buffers, no step counters)", 2 * cifar_params)
show("one CIFAR-10 image 3x32x32 (float32)", tensor_bytes([cifar_image]))
show("a batch of 64 images", 64 * tensor_bytes([cifar_image]))
with torch.no_grad():
    cifar_hidden = cifar_model.layer1(torch.zeros(1024, 3072, device=device))
shape = tuple(cifar_hidden.shape)
show(f"layer1 output at batch 1024 {shape}", tensor_bytes([cifar_hidden]))
layer1 = sum(p.numel() for p in cifar_model.layer1.parameters())  # weights and bias
share = layer1 / cifar_count
print(f"layer1 holds {share:.1%} of the parameters: the input width (3072 vs 784)")
print("drives the size.")


# %% parts-chart
# The five parts of a training step's memory, for SGD and Adam at batch 64 and 1024:
# parameters, gradients and optimizer state from the cells above; a real MNIST batch
# (images + labels); and the activations autograd saves for backward, measured with
# saved_tensors_hooks, each storage once, leaving out the batch and the parameters
# (counted as parts of their own), as memory_measured.py does.
plt.rcParams["font.size"] = 10


def saved_activation_bytes(images, labels):
    """Bytes of the new storages autograd saves in one forward pass with the loss."""
    saved = {}  # storage address -> bytes

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t.detach()  # t itself would keep a saved output alive in a cycle

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = nn.functional.cross_entropy(model(images), labels)
    counted = [*model.parameters(), images, labels]  # parts of their own
    known = {t.untyped_storage().data_ptr() for t in counted}
    del loss  # the graph and the saved tensors are freed with it
    return sum(n for ptr, n in saved.items() if ptr not in known)


PARTS = [
    "parameters",
    "gradients",
    "optimizer state",
    "data batch",
    "saved activations",
]
parts = {}  # (optimizer, batch size) -> bytes of each part
for size in (64, 1024):
    loader = DataLoader(train_dataset, batch_size=size, shuffle=False)
    batch_images, batch_labels = (t.to(device) for t in next(iter(loader)))
    data = tensor_bytes([batch_images, batch_labels])
    saved = saved_activation_bytes(batch_images, batch_labels)
    for name in ("SGD", "Adam"):
        state = optimizer_bytes[name]
        parts[name, size] = [param_bytes, grad_bytes, state, data, saved]

print(
    f"{'optimizer':<10}{'batch':>5}{'parameters':>12}{'gradients':>11}"
    f"{'opt. state':>12}{'data batch':>12}{'saved act.':>12}{'sum':>11}"
)
for (name, size), values in parts.items():
    cols = "".join(f"{v:>{w},}" for v, w in zip(values, (12, 11, 12, 12, 12)))
    print(f"{name:<10}{size:>5}{cols}{sum(values):>11,}")
print("(bytes; the five parts are never all alive at one moment: the gradients appear")
print("at backward, when the saved activations are freed, so a step's peak is lower)")

fig, ax = plt.subplots(figsize=(7, 5), layout="constrained")
bars = [f"{name}, batch {size}" for name, size in parts]
left = [0.0] * len(bars)
colours = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:red"]
for index, (part, colour) in enumerate(zip(PARTS, colours)):
    widths = [values[index] / 2**20 for values in parts.values()]
    ax.barh(bars, widths, left=left, color=colour, label=part)
    left = [a + b for a, b in zip(left, widths)]
for y, values in enumerate(parts.values()):
    ax.text(left[y] + 0.05, y, f"{sum(values):,} bytes", va="center")
ax.set_xlim(0, max(left) * 1.4)
ax.invert_yaxis()  # the first bar on top
ax.set_xlabel("MiB (2^20 bytes), the parts added up")
ax.set_ylabel("optimizer, batch size")
fig.legend(loc="outside lower center", ncols=3)
ax.set_title("Counted from tensors; the parts are never all alive at once", size=10)
fig.suptitle("MNIST MLP: the five memory parts of a training step")
plt.show()
