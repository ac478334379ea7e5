# %% setup
# Setup the cells below need: imports, autocast's 16-bit type, MNIST, the model, meter.
# The device and autocast's 16-bit type for it; the MNIST loader; the lesson's MLP;
# the memory meter (MemoryMeter: the CUDA allocator's counters on a GPU, counted
# tensor bytes through hooks on the CPU); the helpers that sort a step's memory into
# parts and print them; the batches.
import contextlib
import io
import os
import re
import socket
import sys

import matplotlib.pyplot as plt
import torch
from torch import nn, optim
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

DATA_ROOT = os.environ.get("LESSON_DATA", "./data")  # the lesson's ./data by default
torch.manual_seed(0)
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
print(f"Device: {device}" + gpu)
ALLOCATOR = device.type == "cuda"  # the CUDA caching allocator counts every byte
METHOD = "CUDA allocator" if ALLOCATOR else "counted tensor bytes"
# autocast's 16-bit type: bfloat16 on the CPU and on GPUs that support it; float16 on
# older GPUs, where small gradients underflow unless a GradScaler scales the loss
if device.type == "cuda" and not torch.cuda.is_bf16_supported():
    AMP_DTYPE = torch.float16
else:
    AMP_DTYPE = torch.bfloat16
AMP = str(AMP_DTYPE).removeprefix("torch.")
NEEDS_SCALER = AMP_DTYPE == torch.float16


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


def dtype_name(t):
    return str(t.dtype).removeprefix("torch.")


def storage_bytes(tensors):
    """Bytes of the distinct storages of some tensors."""
    sizes = {
        t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors
    }
    return sum(sizes.values())


def parts(meter, model, x, y, optimizer):
    """A step's memory by part: {(part, dtype): bytes}, from the tensors themselves
    and what the meter saw autograd save (sorted by shape: the flattened batch, a
    weight, or a layer output); and the bytes the forward pass added (from "start"
    to the reading after the loss: the allocator on CUDA, counted on the CPU)."""
    params = list(model.parameters())
    found = {("parameters", dtype_name(params[0])): storage_bytes(params)}
    found["batch: images", dtype_name(x)] = storage_bytes([x])
    found["batch: labels", dtype_name(y)] = storage_bytes([y])
    for ptr, (shape, dtype) in meter.saved_as.items():
        if shape == tuple(x.flatten(1).shape):
            part = "saved: copy of the batch"
        elif any(sorted(shape) == sorted(p.shape) for p in params):
            part = "saved: copies of weights"
        else:
            part = "saved: layer outputs"
        key = (part, str(dtype).removeprefix("torch."))
        found[key] = found.get(key, 0) + meter.saved[ptr]
    found["gradients", dtype_name(params[0])] = storage_bytes([p.grad for p in params])
    state = [v for s in optimizer.state.values() for v in s.values()]
    state = [v for v in state if v.device.type == device.type]  # CUDA: step on host
    found["Adam's state", dtype_name(state[0])] = storage_bytes(state)
    readings = dict(meter.readings)
    return found, readings["loss"] - readings["start"]


ORDER = ["parameters", "batch: images", "batch: labels", "saved: layer outputs"]
ORDER += ["saved: copy of the batch", "saved: copies of weights"]
ORDER += ["gradients", "Adam's state"]


def parts_table(results):
    """Print the parts of each run side by side, and what the forward pass added."""
    rows = sorted({key for found, _ in results.values() for key in found})
    rows.sort(key=lambda key: ORDER.index(key[0]))  # stable: dtypes stay sorted
    print(f"cast batch: autocast, with the batch cast to {AMP} on the device first")
    print(f"{'part (counted tensor bytes)':<27} {'dtype':<9}", end="")
    print("".join(f"{run:>14}" for run in results))
    for part, dtype in rows:
        cells = [found.get((part, dtype)) for found, _ in results.values()]
        print(f"{part:<27} {dtype:<9}", end="")
        print("".join(f"{'-' if c is None else f'{c:,}':>14}" for c in cells))
    forward_label = "allocator" if ALLOCATOR else "counted"  # fits the dtype column
    print(f"{'forward pass added':<27} {forward_label:<9}", end="")
    print("".join(f"{added:>14,}" for _, added in results.values()))
    return rows


def total(run, part):
    """Bytes of a part in a run, all dtypes together."""
    return sum(b for (p, _), b in results[run][0].items() if p == part)


def parts_summary():
    """Print the saved layer outputs of float32 and autocast side by side, and whether
    parameters, gradients and Adam's state stayed the same in every run."""
    outputs32, outputs16 = (
        total(r, "saved: layer outputs") for r in ("float32", "autocast")
    )
    print(
        f"Saved layer outputs: {outputs16:,} bytes under autocast against "
        f"{outputs32:,} in float32 ({outputs16 / outputs32:.2f}x)"
    )
    same = all(
        total("float32", part) == total(run, part)
        for run in results
        for part in ("parameters", "gradients", "Adam's state")
    )
    print(f"Parameters, gradients and Adam's state unchanged under autocast: {same}")


def losses_table(losses):
    """Print the losses of the runs at a few steps, and their difference."""
    print(f"Training loss over {TRAIN_STEPS} Adam steps at batch {TRAIN_BATCH}:")
    print(
        f"{'step':>5}" + "".join(f"{run:>22}" for run in losses) + f"{'difference':>14}"
    )
    for step in (1, 10, 20, 30, 40, 50):
        a, b = (run[step - 1] for run in losses.values())
        print(f"{step:>5}{a:>22.4f}{b:>22.4f}{b - a:>+14.4f}")


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


# %% one-step
def one_step(use_autocast, cast_batch):
    """One Adam step from the same weights, in float32 or under autocast, with the
    batch in float32 or cast to the 16-bit type. Returns its memory by part."""
    torch.manual_seed(0)
    model = MLP().to(device)
    optimizer = optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(device.type, enabled=use_autocast and NEEDS_SCALER)
    x, y = images.to(device), labels.to(device)
    if cast_batch:
        x = x.to(AMP_DTYPE)  # the batch itself in 16 bits
    with MemoryMeter(model, criterion, x, y, optimizer=optimizer) as meter:
        with torch.autocast(device.type, dtype=AMP_DTYPE, enabled=use_autocast):
            loss = criterion(model(x), y)
        scaler.scale(loss).backward()  # float16: the loss scaled up first
        scaler.step(optimizer)
        scaler.update()
    return parts(meter, model, x, y, optimizer)


# %% parts
RUNS = {
    "float32": (False, False),
    "autocast": (True, False),
    "cast batch": (True, True),
}
results = {run: one_step(*flags) for run, flags in RUNS.items()}
rows = parts_table(results)
parts_summary()


# %% training
def train(use_autocast):
    """TRAIN_STEPS Adam steps from the same weights on the same batches; the losses."""
    torch.manual_seed(0)
    model = MLP().to(device)
    optimizer = optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(device.type, enabled=use_autocast and NEEDS_SCALER)
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
losses_table(losses)

# %% chart
# The chart: memory by part for the three runs, and the two training losses
KiB = 1024
fig = plt.figure(figsize=(7, 5.2), layout="constrained")
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

# %% exercise-saved-dtypes
# Exercise: each tensor autograd saves under autocast, with a float32 batch
saved = []


def note(t):
    """A pack hook that notes each saved tensor's shape and dtype."""
    saved.append((tuple(t.shape), dtype_name(t)))
    return t.detach()


model = MLP().to(device)
with torch.autograd.graph.saved_tensors_hooks(note, lambda t: t):
    with torch.autocast(device.type, dtype=AMP_DTYPE):
        loss = criterion(model(images.to(device)), labels.to(device))
for shape, dtype in saved:
    print(f"{str(shape):<12} {dtype}")
