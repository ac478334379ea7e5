# %% setup
# Inference vs training memory: the same MNIST MLP on the same batch of 1000 test
# images (the lesson's test batch) in training (forward, loss, backward), under
# torch.no_grad() and under torch.inference_mode(): what autograd saves for backward
# and the peak memory of each.
# On CUDA the peak is the allocator's max_memory_allocated() above what was allocated
# before. On the CPU, which has no allocator counter, it is counted tensor bytes after
# each layer and each step: parameters, batch, every layer's output, loss, gradients and
# what autograd saved for backward, each storage once and only while it exists.
# The model is untrained: memory depends on shapes, not on what the weights learned.
import contextlib
import io
import os
import re
import socket
import sys
import textwrap

import matplotlib.pyplot as plt
import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

DATA_ROOT = os.environ.get("LESSON_DATA", "./data")  # the lesson's ./data by default
torch.manual_seed(0)
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
print(f"Device: {device}" + gpu)
ALLOCATOR = device.type == "cuda"  # the CUDA caching allocator counts every byte
METHOD = "CUDA allocator" if ALLOCATOR else "counted tensor bytes"


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


def cuda_memory():
    """(bytes allocated now, the most allocated since the last reset): the CUDA
    caching allocator's counters, one set for the whole process."""
    torch.cuda.synchronize()
    return torch.cuda.memory_allocated(), torch.cuda.max_memory_allocated()


class Meter:
    """Memory from its creation on, after each check(event).
    CUDA: memory_allocated() and max_memory_allocated() above what was allocated at
    the start; the peak is read at every check and kept, because any later
    reset_peak_memory_stats() (another Meter, a notebook cell) sets it back.
    CPU: the bytes of the storages shown to see() (and, through pack(), of those
    autograd saves for backward) that still exist, each storage once; a weak
    reference to each storage tells whether it has been freed."""

    def __init__(self):
        self.storages, self.events = {}, []  # address -> (weak reference, bytes)
        self.highest = 0  # CUDA: the peak so far, stored as it is measured
        if ALLOCATOR:
            self.baseline = cuda_memory()[0]
            torch.cuda.reset_peak_memory_stats()

    def see(self, *tensors):
        for t in tensors:
            if t is not None:
                storage = t.untyped_storage()
                known = self.storages.get(storage.data_ptr())
                if known is None or known[0].expired():
                    weak = StorageWeakRef(storage)
                    self.storages[storage.data_ptr()] = (weak, storage.nbytes())

    def check(self, event):
        if ALLOCATOR:
            now, peak = cuda_memory()
            self.highest = max(self.highest, peak - self.baseline)
            self.events.append((event, now - self.baseline))
        else:
            live = (n for weak, n in self.storages.values() if not weak.expired())
            self.events.append((event, sum(live)))

    def peak(self):
        """(bytes, event): on CUDA the allocator's peak up to the last check, between
        events too."""
        if ALLOCATOR:
            return self.highest, "-"
        event, peak = max(self.events, key=lambda e: e[1])
        return peak, event


transform = transforms.Compose(
    [transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))]
)
test_loader = DataLoader(load_mnist(False, transform), batch_size=1000, shuffle=False)
images, labels = next(iter(test_loader))  # the lesson's test batch: 1000 images
criterion = nn.CrossEntropyLoss()
if ALLOCATOR:  # warm-up: cuBLAS's workspaces are allocated once, up front
    warm = MLP().to(device)
    criterion(warm(images[:64].to(device)), labels[:64].to(device)).backward()
    del warm
print(f"The first test batch: images {tuple(images.shape)} float32, labels int64")
print(f"Memory: {METHOD}")

# %% measure
MODES = {
    "training": contextlib.nullcontext,
    "torch.no_grad()": torch.no_grad,
    "torch.inference_mode()": torch.inference_mode,
}


def run(mode):
    """The model on the batch in one mode: forward and loss, and in training also
    backward. Returns (bytes saved for backward beyond parameters and batch, number of
    tensors saved, meter, the output)."""
    meter = Meter()
    torch.manual_seed(0)
    model = MLP().to(device)
    meter.see(*model.parameters())

    def after_layer(module, args, out):
        meter.see(out)
        meter.check(names[module])
        if out.requires_grad:  # and again when backward reaches this output

            def in_backward(grad):
                meter.see(grad)
                meter.check(f"{names[module]} backward")

            out.register_hook(in_backward)

    names = {layer: n for n, layer in model.named_children()}
    for layer in names:
        layer.register_forward_hook(after_layer)
    x, y = images.to(device), labels.to(device)
    meter.see(x, y)
    meter.check("batch to device")
    known = {t.untyped_storage().data_ptr() for t in [*model.parameters(), x, y]}
    saved, count = {}, [0]

    def pack(t):
        count[0] += 1
        meter.see(t)
        ptr = t.untyped_storage().data_ptr()
        if ptr not in known:
            saved[ptr] = t.untyped_storage().nbytes()
        return t.detach()  # t itself could keep a saved output alive in a cycle

    hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
    with MODES[mode](), hooks:
        output = model(x)
        loss = criterion(output, y)
    meter.see(loss)
    meter.check("loss")
    saved_bytes = sum(saved.values())  # backward frees these
    if mode == "training":
        loss.backward()
        meter.see(*(p.grad for p in model.parameters()))
        meter.check("backward")
    return saved_bytes, count[0], meter, output


results = {mode: run(mode) for mode in MODES}
at = "" if ALLOCATOR else "  at"
print(f"{'mode':<23} {'saved':>10}{'tensors':>8}{'after loss':>12}{'peak':>12}{at}")
for mode, (saved_bytes, count, meter, _) in results.items():
    peak, event = meter.peak()
    after_loss = dict(meter.events)["loss"]
    where = "" if ALLOCATOR else f"  {event}"
    print(f"{mode:<23} {saved_bytes:>10,}{count:>8}{after_loss:>12,}{peak:>12,}{where}")
say(
    f"(bytes, {METHOD}; saved: what autograd saved for backward beyond the "
    f"parameters and the batch, and how many tensors it saved)"
)
for mode, (*_, output) in results.items():
    print(
        f"{mode:<23} output requires_grad={output.requires_grad!s:<5} "
        f"is_inference={output.is_inference()}"
    )

# %% why-1000
train_peak = results["training"][2].peak()[0]
eval_peak = results["torch.no_grad()"][2].peak()[0]
batch_bytes = images.nbytes + labels.nbytes
param_bytes = sum(p.nbytes for p in MLP().parameters())
print(f"Peak, training the batch of {len(images)}: {train_peak:>11,} bytes ({METHOD})")
print(f"Peak, evaluating it (no_grad):    {eval_peak:>11,} bytes ({METHOD})")
print(f"  of which the batch itself:      {batch_bytes:>11,} bytes (images and labels)")
print(f"  and the parameters:             {param_bytes:>11,} bytes")
print(f"Training needs {train_peak / eval_peak:.2f}x the memory of evaluation here")


def why_fine(size, eval_saved, eval_peak, batch_bytes):
    """Why the test batch is fine, as far as the measured numbers say: whether no_grad
    kept anything for backward, and whether the batch is most of evaluation's peak."""
    if eval_saved:
        kept = (
            f"Under no_grad autograd still saved {eval_saved:,} bytes for backward "
            f"here: evaluating the batch of {size} keeps more than the batch, the "
            "parameters and the layer outputs of the moment."
        )
    else:
        kept = (
            f"Why the lesson's test batch of {size} is fine: under no_grad nothing is "
            "kept for backward, so evaluation holds the batch, the parameters and at "
            "most two layer outputs at a time, and frees them before the next batch."
        )
    if 2 * batch_bytes > eval_peak:
        share = f"Most of its {eval_peak:,} bytes are the batch itself."
    else:
        share = (
            f"The batch itself, {batch_bytes:,} bytes, is not most of its "
            f"{eval_peak:,}."
        )
    return f"{kept} {share}"


eval_saved = results["torch.no_grad()"][0]
say(why_fine(len(images), eval_saved, eval_peak, batch_bytes))

# %% inference-tensor
with torch.inference_mode():
    features = torch.relu(images.to(device).flatten(1))  # made in inference_mode
layer = nn.Linear(784, 10).to(device)
try:
    layer(features).sum().backward()  # autograd would have to save `features`
except RuntimeError as error:
    say(f"RuntimeError: {error}")
copied = features.clone()
print(f"features.clone() is a normal tensor: is_inference={copied.is_inference()}")

# %% chart
MiB = 2**20
fig, ax = plt.subplots(figsize=(7, 3.8))
for (mode, (*_, meter, _output)), style in zip(results.items(), ("-", "--", ":")):
    values = [b / MiB for _, b in meter.events]
    ax.plot(range(len(values)), values, style, marker="o", label=mode)
events = [event for event, _ in results["training"][2].events]  # the longest list
ax.set_xticks(range(len(events)), events, rotation=35, ha="right")
ax.set_xlabel("after this step of the batch of 1000")
ax.set_ylabel(f"memory in use (MiB, {METHOD})")
ax.set_title("The same test batch: training vs no_grad vs inference_mode")
ax.grid(True, alpha=0.3)
ax.legend()
plt.tight_layout()
plt.show()
