# %% setup
# Setup the cells below need: imports, MNIST, the model, MemoryMeter, print helpers.
# The device; the MNIST loader; the lesson's MLP; the memory meter (MemoryMeter: the
# CUDA allocator's counters on a GPU, counted tensor bytes through hooks on the CPU);
# the helpers that print the tables; the first test batch of 1000 images. The model
# is untrained: memory depends on shapes, not on what the weights learned.
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


class MemoryMeter:
    """Memory in use while a `with` block runs, read by hooks around the code: on
    CUDA the allocator's counters, on the CPU counted tensor bytes (see above)."""

    def __init__(self, *watched, optimizer=None, layers=False, labels=None):
        modules = [w for w in watched if isinstance(w, torch.nn.Module)]
        self.tensors = [w for w in watched if torch.is_tensor(w)]
        self.modules, self.optimizer, self.layers = modules, optimizer, layers
        kind = {True: "loss", False: "forward"}
        self.labels = labels or {
            m: kind[type(m).__name__.endswith("Loss")] for m in modules
        }
        self.readings, self.saved, self.saved_as, self.saved_count = [], {}, {}, 0
        self.storages, self.known, self.made = {}, {}, {}  # address -> weak ref
        self.offset, self.highest, self.highest_at = 0, 0, None
        self.handles, self.accumulated = [], 0
        self.params = [p for m in modules for p in m.parameters()]

    def __enter__(self):
        existing = [*self.tensors, *self.params, *(p.grad for p in self.params)]
        if self.optimizer is not None:
            existing += self._state()
        self.see(*existing)
        self._note(self.known, existing)
        if ALLOCATOR:
            sizes = {self._ptr(t): self._bytes(t) for t in existing if t is not None}
            self.baseline = self._allocated() - sum(sizes.values())
            torch.cuda.reset_peak_memory_stats()
        for module in self.modules:
            self._watch(module, self.labels.get(module), top=True)
            for name, child in module.named_children() if self.layers else ():
                self._watch(child, name, top=False)
            for sub in module.modules():  # every layer's output counts while it lives
                if sub is not module and not (
                    self.layers and sub in [*module.children()]
                ):
                    self.handles.append(sub.register_forward_hook(self._see_output))
        for p in self.params:
            if p.requires_grad:
                self.handles.append(p.register_post_accumulate_grad_hook(self._grad))
        if self.optimizer is not None:
            self.handles.append(self.optimizer.register_step_post_hook(self._stepped))
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self.hooks.__enter__()
        self.read("start")
        return self

    def __exit__(self, *exc):
        self.hooks.__exit__(*exc)
        for handle in self.handles:
            handle.remove()
        self.read("end")

    def _watch(self, module, label, top):
        def before(module, args):
            for t in self._tensors(args):
                if top and not self._has(self.made, t):  # the batch, not a result
                    self._note(self.known, [t])
                self.see(t)

        def after(module, args, output):
            outputs = self._tensors(output)
            self.see(*outputs)
            self._note(self.made, outputs)
            self.read(label)
            for t in outputs if self.layers and not top else ():
                if t.requires_grad:
                    t.register_hook(lambda grad: self._backward(grad, label))

        self.handles.append(module.register_forward_pre_hook(before))
        self.handles.append(module.register_forward_hook(after))

    def _see_output(self, module, args, output):
        self.see(*self._tensors(output))

    def _backward(self, grad, label):
        self.see(grad)
        self.read(f"{label} backward")

    def _grad(self, param):
        self.see(param.grad)
        self.accumulated += 1
        if self.accumulated % len([p for p in self.params if p.requires_grad]) == 0:
            self.read("backward")

    def _stepped(self, optimizer, args, kwargs):
        self.see(*(p.grad for p in self.params), *self._state())
        self.read("optimizer step")

    def _state(self):
        states = self.optimizer.state.values()
        return [v for s in states for v in s.values() if torch.is_tensor(v)]

    def _pack(self, t):
        """saved_tensors_hooks' pack hook: count what autograd saves. It returns a
        detached view: returning t itself would keep a saved output alive in a
        reference cycle after its graph is gone."""
        self.saved_count += 1
        self.see(t)
        if not self._has(self.known, t):  # not a parameter, not the batch
            self.saved[self._ptr(t)] = self._bytes(t)
            self.saved_as[self._ptr(t)] = (tuple(t.shape), t.dtype)
        return t.detach()

    def see(self, *tensors):
        """Count these tensors' storages while they exist (the CPU's count)."""
        for t in tensors:
            if t is not None:
                storage = t.untyped_storage()
                known = self.storages.get(storage.data_ptr())
                if known is None or known[0].expired():
                    weak = StorageWeakRef(storage)
                    self.storages[storage.data_ptr()] = (weak, storage.nbytes())

    def now(self):
        """Bytes in use now, above what zero() left out."""
        if ALLOCATOR:
            return self._allocated() - self.baseline - self.offset
        alive = sum(n for weak, n in self.storages.values() if not weak.expired())
        return alive - self.offset

    def read(self, label):
        """Store a reading (label, bytes now); on CUDA also read the peak counter."""
        self.readings.append((label, self.now()))
        if ALLOCATOR:
            peak = torch.cuda.max_memory_allocated() - self.baseline - self.offset
            if peak > self.highest:
                self.highest, self.highest_at = peak, label
        return self.readings[-1][1]

    def zero(self):
        """Count from here on: leave out what is in use now."""
        self.offset += self.now()

    def peak(self):
        """(bytes, label): on CUDA the allocator's peak up to the last reading, between
        readings too, and the reading that first saw it; on the CPU the highest
        reading."""
        if ALLOCATOR:
            return self.highest, self.highest_at
        label, peak = max(self.readings, key=lambda r: r[1])
        return peak, label

    @staticmethod
    def _note(where, tensors):
        for t in tensors:
            if t is not None:
                where[t.untyped_storage().data_ptr()] = StorageWeakRef(
                    t.untyped_storage()
                )

    @staticmethod
    def _has(where, t):
        weak = where.get(t.untyped_storage().data_ptr())
        return weak is not None and not weak.expired()

    @staticmethod
    def _allocated():
        torch.cuda.synchronize()
        return torch.cuda.memory_allocated()

    @staticmethod
    def _ptr(t):
        return t.untyped_storage().data_ptr()

    @staticmethod
    def _bytes(t):
        return t.untyped_storage().nbytes()

    @staticmethod
    def _tensors(value):
        """The tensors in a module's arguments or output (tuples, lists, dicts)."""
        if torch.is_tensor(value):
            return [value]
        if isinstance(value, dict):
            value = list(value.values())
        if isinstance(value, (list, tuple)):
            return [t for v in value for t in MemoryMeter._tensors(v)]
        return []


def modes_table(results):
    """Print, per mode, what autograd saved beyond the parameters and the batch (bytes
    and tensors), the bytes in use after the loss, and the peak (CPU: where)."""
    at = "" if ALLOCATOR else "  at"
    print(f"{'mode':<23} {'saved':>10}{'tensors':>8}{'after loss':>12}{'peak':>12}{at}")
    for mode, (meter, _) in results.items():
        saved, count = sum(meter.saved.values()), meter.saved_count
        after_loss, (peak, where) = dict(meter.readings)["loss"], meter.peak()
        line = f"{mode:<23} {saved:>10,}{count:>8}{after_loss:>12,}{peak:>12,}"
        print(line + ("" if ALLOCATOR else f"  {where}"))
    print(f"(bytes, {METHOD})")
    for mode, (_, output) in results.items():
        print(
            f"{mode:<23} output requires_grad={output.requires_grad!s:<5} "
            f"is_inference={output.is_inference()}"
        )


def why_fine(eval_saved, eval_peak, batch_bytes):
    """The verdict on evaluating the batch, as far as the measured numbers say:
    whether no_grad kept anything for backward, and the batch's share of the peak."""
    kept = "nothing" if not eval_saved else f"{eval_saved:,} bytes"
    share = "most" if 2 * batch_bytes > eval_peak else "not most"
    return (
        f"Evaluation kept {kept} for backward; the batch is {share} of its peak "
        f"({batch_bytes / eval_peak:.0%})"
    )


transform = transforms.Compose(
    [transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))]
)
test_set = load_mnist(False, transform)
images, labels = next(iter(DataLoader(test_set, batch_size=1000)))  # the test batch
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


def run(mode, images, labels):
    """Forward and loss in one mode (in training also backward)."""
    torch.manual_seed(0)
    model = MLP().to(device)
    x, y = images.to(device), labels.to(device)
    with MemoryMeter(model, criterion, x, y, layers=True) as meter, MODES[mode]():
        output = model(x)
        loss = criterion(output, y)
        if mode == "training":
            loss.backward()
    return meter, output


results = {mode: run(mode, images, labels) for mode in MODES}
modes_table(results)

# %% why-1000
# The peaks of training and evaluation, and what the batch and the parameters take
train_peak = results["training"][0].peak()[0]
eval_peak = results["torch.no_grad()"][0].peak()[0]
batch_bytes = images.nbytes + labels.nbytes
param_bytes = sum(p.nbytes for p in MLP().parameters())
print(f"Peak, training the batch of {len(images)}: {train_peak:>11,} bytes ({METHOD})")
print(f"Peak, evaluating it (no_grad):    {eval_peak:>11,} bytes ({METHOD})")
print(f"  of which the batch itself:      {batch_bytes:>11,} bytes (images and labels)")
print(f"  and the parameters:             {param_bytes:>11,} bytes")
print(f"Training needs {train_peak / eval_peak:.2f}x the memory of evaluation here")
eval_saved = sum(results["torch.no_grad()"][0].saved.values())
print(why_fine(eval_saved, eval_peak, batch_bytes))

# %% inference-tensor
# An inference tensor where autograd must save it: the error, and the clone
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
# The chart: memory at each reading of the three modes (MemoryMeter's readings)
MiB = 2**20
fig, ax = plt.subplots(figsize=(7, 3.3))
readings = [label for label, _ in results["training"][0].readings]  # the longest
for (mode, (meter, _)), style in zip(results.items(), ("-", "--", ":")):
    where = [readings.index(label) for label, _ in meter.readings]
    values = [b / MiB for _, b in meter.readings]
    ax.plot(where, values, style, marker="o", label=mode)
ax.set_xticks(range(len(readings)), readings, rotation=35, ha="right")
ax.set_xlabel("reading, in the order taken, for the batch of 1000")
ax.set_ylabel(f"memory in use (MiB, {METHOD})")
ax.set_title("The same test batch: training vs no_grad vs inference_mode")
ax.set_ylim(bottom=0)
ax.grid(True, alpha=0.3)
ax.legend(loc="lower right")
plt.tight_layout()
plt.show()

# %% exercise-batch-2000
# Exercise: the no_grad peak at a test batch of 2000
images_2000, labels_2000 = next(iter(DataLoader(test_set, batch_size=2000)))
meter_2000, _ = run("torch.no_grad()", images_2000, labels_2000)
peak, where = meter_2000.peak()
print(f"Peak, evaluating a batch of 2000 (no_grad): {peak:,} bytes ({METHOD})")
