# %% setup
# Setup the cells below need: imports, MNIST, the model, MemoryMeter, print helpers.
# The device; the MNIST loader; the lesson's MLP; the memory meter (MemoryMeter: the
# CUDA allocator's counters on a GPU, counted tensor bytes through hooks on the CPU);
# the helpers that print the tables; the first 1024 MNIST training images, in one
# batch of 1024 or in 16 micro-batches of 64.
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


def peaks_table(meters):
    """Print each update's peak (and, on the CPU, the reading where it fell)."""
    where = "" if ALLOCATOR else "  at the reading"
    print(f"{'one update as':<24} {'peak bytes':>11}{where}   ({METHOD})")
    for label, meter in meters.items():
        peak, at = meter.peak()
        print(f"{label:<24} {peak:>11,}" + ("" if ALLOCATOR else f"  {at}"))


def saving(full_peak, micro_peak):
    """Accumulation's peak against the full batch's, in words that fit the numbers."""
    ratio = f"Accumulation: {micro_peak / full_peak:.2f} of the full batch's peak"
    if micro_peak < full_peak:
        return f"{ratio}, {full_peak - micro_peak:,} bytes less ({METHOD})"
    if micro_peak > full_peak:
        return f"{ratio}, {micro_peak - full_peak:,} bytes more ({METHOD})"
    return f"{ratio}, as many bytes ({METHOD})"


TOLERANCE = 1e-6  # absolute, for every single number of every gradient


def largest_difference(gradients, others):
    """The largest absolute difference between two lists of gradients."""
    return max((a - b).abs().max().item() for a, b in zip(gradients, others))


def differences_table(gradients, others):
    """Print each gradient's shape, largest value and largest difference."""
    print(f"{'gradient':<14} {'shape':<11} {'largest |value|':>16}", end="")
    print(f" {'max |difference|':>17}")
    names = [name for name, _ in MLP().named_parameters()]
    for name, full, micro in zip(names, gradients, others):
        largest, difference = full.abs().max().item(), (full - micro).abs().max().item()
        shape = str(tuple(full.shape))
        print(f"{name:<14} {shape:<11} {largest:>16.3e} {difference:>17.1e}")


def agreement(worst):
    """The verdict for the largest difference from the full batch."""
    return "equal" if worst <= TOLERANCE else "NOT equal"


def rules_header(loader):
    """Print how `loader` splits its images, and the head of the rules' table."""
    sizes = [len(labels) for _, labels in loader]
    count, total = len(sizes), sum(sizes)
    print(f"{total} images: {count} micro-batches, {count - 1} of {sizes[0]}", end="")
    print(f" and one of {sizes[-1]}")
    print(f"{'each micro-batch':<44} {'max |difference|':>16}  vs one batch of {total}")


def scaled(ratio, steps):
    """What leaving out the 1/steps weighting did to the gradients' size (ratio: the
    norm of the unweighted gradients over the full batch's)."""
    head = f"Without weighting each loss by 1/{steps}: gradients"
    if f"{ratio:.2f}" == "1.00":
        return f"{head} as large as with it (1.00 times)"
    return f"{head} {ratio:.2f} times too {'large' if ratio > 1 else 'small'}"


def norm_ratio(gradients, others):
    """The norm of all of `gradients` over the norm of all of `others`."""
    norm = [torch.cat([g.flatten() for g in gs]).norm() for gs in (gradients, others)]
    return (norm[0] / norm[1]).item()


EFFECTIVE, MICRO = 1024, 64
STEPS = EFFECTIVE // MICRO
transform = transforms.Compose(
    [transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))]
)
images_used = Subset(load_mnist(True, transform), range(EFFECTIVE))
full_loader = DataLoader(images_used, batch_size=EFFECTIVE, shuffle=False)
micro_loader = DataLoader(images_used, batch_size=MICRO, shuffle=False)
criterion = nn.CrossEntropyLoss()
START = MLP().state_dict()  # every update starts from these weights
if ALLOCATOR:  # warm-up: cuBLAS's workspace is allocated once, up front
    warm = MLP().to(device)
    images, labels = next(iter(micro_loader))
    criterion(warm(images.to(device)), labels.to(device)).backward()
    del warm, images, labels
print(
    f"The first {EFFECTIVE} MNIST training images: one batch of {EFFECTIVE}, or "
    f"{STEPS} micro-batches of {MICRO}"
)
print(f"Memory: {METHOD}")


# %% one-update
def one_update(loader, share):
    """One Adam update from START, the gradients of every batch of `loader` added up;
    each batch's mean loss is weighted by share(its size)."""
    model = MLP().to(device)
    model.load_state_dict(START)
    optimizer = optim.Adam(model.parameters(), lr=1e-3)
    with MemoryMeter(model, criterion, optimizer=optimizer) as meter:
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            output = model(images)
            loss = criterion(output, labels)
            (loss * share(len(labels))).backward()  # adds to each .grad
        gradients = [p.grad.to("cpu", copy=True) for p in model.parameters()]
        optimizer.step()  # one step, after all the batches
        optimizer.zero_grad()
    return gradients, meter


# %% peaks
# each batch's loss weighted by its share of the 1024 samples: 1024/1024, or 64/1024
full_gradients, full_meter = one_update(full_loader, lambda n: n / EFFECTIVE)
micro_gradients, micro_meter = one_update(micro_loader, lambda n: n / EFFECTIVE)
peaks_table(
    {
        f"one batch of {EFFECTIVE}": full_meter,
        f"{STEPS} micro-batches of {MICRO}": micro_meter,
    }
)
print(saving(full_meter.peak()[0], micro_meter.peak()[0]))

# %% compare
differences_table(full_gradients, micro_gradients)
worst = largest_difference(full_gradients, micro_gradients)
print(
    f"Largest difference {worst:.1e}, tolerance {TOLERANCE:.0e} (absolute): "
    f"{agreement(worst)} within the tolerance"
)

# %% uneven
UNEVEN = 1000  # not a multiple of 64: a DataLoader's last micro-batch is smaller
uneven_images = Subset(images_used.dataset, range(UNEVEN))
reference, _ = one_update(DataLoader(uneven_images, batch_size=UNEVEN), lambda n: 1)
uneven_loader = DataLoader(uneven_images, batch_size=MICRO)
count = len(uneven_loader)
rules = {
    f"loss / {count}  (the number of micro-batches)": lambda n: 1 / count,
    f"loss * n / {UNEVEN}  (each batch's share)": lambda n: n / UNEVEN,
}
rules_header(uneven_loader)
for rule, share in rules.items():
    gradients, _ = one_update(uneven_loader, share)
    worst = largest_difference(reference, gradients)
    print(f"{rule:<44} {worst:>16.1e}  {agreement(worst)} within {TOLERANCE:.0e}")

# %% chart
# The chart: memory at each reading of the two updates (MemoryMeter's readings)
MiB = 2**20
fig, ax = plt.subplots(figsize=(7, 3.2))
for label, meter, style in (
    (f"one batch of {EFFECTIVE}", full_meter, "-"),
    (f"{STEPS} micro-batches of {MICRO}", micro_meter, "--"),
):
    values = [b / MiB for _, b in meter.readings]
    ax.step(range(len(values)), values, style, where="post", label=label)
ax.set_xlabel("reading during the update (forward, loss, backward, ..., step)")
ax.set_ylabel(f"memory in use (MiB, {METHOD})")
ax.set_title(f"One Adam update at an effective batch of {EFFECTIVE}")
ax.set_ylim(bottom=0)
ax.grid(True, alpha=0.3)
ax.legend()
plt.tight_layout()
plt.show()

# %% exercise-no-weight
# Exercise: accumulate the 16 micro-batches' losses without weighting them (share 1)
unweighted, _ = one_update(micro_loader, lambda n: 1)
print(scaled(norm_ratio(unweighted, full_gradients), STEPS))

# %% exercise-micro-128
# Exercise: the same update in micro-batches of 128
loader_128 = DataLoader(images_used, batch_size=128, shuffle=False)
_, meter_128 = one_update(loader_128, lambda n: n / EFFECTIVE)
peaks_table({f"{EFFECTIVE // 128} micro-batches of 128": meter_128})
