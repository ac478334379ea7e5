# %% setup
# Gradient accumulation: 16 micro-batches of 64 MNIST images, each loss weighted by its
# share of the samples (64/1024 = 1/16) and the gradients of all 16 added up by
# backward(), against one batch of 1024, from the same starting weights on the same
# 1024 images. The gradients are compared number by number, and the peak memory of one
# Adam update is measured for each way. Then 1000 images, whose last micro-batch is
# smaller: dividing by the number of micro-batches is no longer exact; the share is.
# On CUDA the memory is the allocator's: max_memory_allocated() above what was
# allocated before. On the CPU, which has no allocator counter, it is counted tensor
# bytes after each event: parameters, gradients, Adam's state, batch, logits, loss and
# what autograd saved for backward, each storage once and only while it exists.
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

    def pack(self, t):
        """A saved_tensors_hooks pack hook: note what autograd saves. It returns a
        detached view: returning t itself would keep a saved output alive in a
        reference cycle after its graph is gone."""
        self.see(t)
        return t.detach()

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


EFFECTIVE, MICRO = 1024, 64
STEPS = EFFECTIVE // MICRO
transform = transforms.Compose(
    [transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))]
)
images_used = Subset(load_mnist(True, transform), range(EFFECTIVE))
full_loader = DataLoader(images_used, batch_size=EFFECTIVE, shuffle=False)
micro_loader = DataLoader(images_used, batch_size=MICRO, shuffle=False)
criterion = nn.CrossEntropyLoss()
START = MLP().state_dict()  # both ways start from these weights
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
    """One Adam update from START over every batch of `loader`, each batch's mean loss
    multiplied by share(n), n the batch's size. With share(n) = n / (all samples) the
    sum is the mean over all samples, whatever the batch sizes. Returns the gradients
    just before the optimizer step (copied to host memory) and the Meter."""
    meter = Meter()
    model = MLP().to(device)
    model.load_state_dict(START)
    optimizer = optim.Adam(model.parameters(), lr=1e-3)
    meter.see(*model.parameters())
    meter.check("model")
    for step, (images, labels) in enumerate(loader, start=1):
        images, labels = images.to(device), labels.to(device)  # replaces the last
        meter.see(images, labels)
        meter.check(f"{step}: batch to device")
        with torch.autograd.graph.saved_tensors_hooks(meter.pack, lambda t: t):
            output = model(images)
            loss = criterion(output, labels) * share(len(labels))
        meter.see(output, loss)
        meter.check(f"{step}: forward")
        loss.backward()  # adds this batch's gradients to .grad
        meter.see(*(p.grad for p in model.parameters()))
        meter.check(f"{step}: backward")
    gradients = [p.grad.to("cpu", copy=True) for p in model.parameters()]
    optimizer.step()
    meter.see(*(v for s in optimizer.state.values() for v in s.values()))
    meter.check("optimizer step")
    optimizer.zero_grad()
    meter.check("zero_grad")
    return gradients, meter


# each batch's loss weighted by its share of the 1024 samples: 1024/1024, or 64/1024
full_gradients, full_meter = one_update(full_loader, lambda n: n / EFFECTIVE)
micro_gradients, micro_meter = one_update(micro_loader, lambda n: n / EFFECTIVE)

# %% peaks
where = "" if ALLOCATOR else "  at the event"
print(f"{'one update as':<24} {'peak bytes':>11}{where}   ({METHOD})")
for label, meter in (
    (f"one batch of {EFFECTIVE}", full_meter),
    (f"{STEPS} micro-batches of {MICRO}", micro_meter),
):
    peak, event = meter.peak()
    print(f"{label:<24} {peak:>11,}" + ("" if ALLOCATOR else f"  {event}"))
full_peak, micro_peak = full_meter.peak()[0], micro_meter.peak()[0]


def saving(full_peak, micro_peak):
    """Accumulation's peak against the full batch's, in words that fit the numbers."""
    ratio = f"Accumulation: {micro_peak / full_peak:.2f} of the full batch's peak"
    if micro_peak < full_peak:
        return f"{ratio}, {full_peak - micro_peak:,} bytes less ({METHOD})"
    if micro_peak > full_peak:
        return f"{ratio}, {micro_peak - full_peak:,} bytes more ({METHOD})"
    return f"{ratio}, as many bytes ({METHOD})"


print(saving(full_peak, micro_peak))

# %% compare
TOLERANCE = 1e-6  # absolute, for every single number of every gradient


def largest_difference(gradients, others):
    """The largest absolute difference between two lists of gradients."""
    return max((a - b).abs().max().item() for a, b in zip(gradients, others))


def agreement(worst):
    """(verdict, what it means) for the largest difference from the full batch."""
    if worst <= TOLERANCE:
        return (
            "equal",
            "The differences are float32 rounding: the same sums in another order.",
        )
    return (
        "NOT equal",
        "Check the weights: each loss times its batch's share of the samples.",
    )


def scaled(ratio, steps):
    """What leaving out the 1/steps weighting did to the gradients' size (ratio: the
    norm of the unweighted gradients over the full batch's)."""
    head = f"Without weighting each loss by 1/{steps}: gradients"
    if f"{ratio:.2f}" == "1.00":
        return f"{head} as large as with it (1.00 times)"
    return f"{head} {ratio:.2f} times too {'large' if ratio > 1 else 'small'}"


names = [n for n, _ in MLP().named_parameters()]
print(
    f"{'gradient':<14} {'shape':<11} {'largest |value|':>16} {'max |difference|':>17}"
)
differences = []
for n, full, micro in zip(names, full_gradients, micro_gradients):
    differences.append((full - micro).abs().max().item())
    shape = str(tuple(full.shape))
    print(
        f"{n:<14} {shape:<11} {full.abs().max().item():>16.3e} {differences[-1]:>17.1e}"
    )
worst = max(differences)
verdict, meaning = agreement(worst)
print(
    f"Largest difference {worst:.1e}, tolerance {TOLERANCE:.0e} (absolute): "
    f"{verdict} within the tolerance"
)
say(meaning)
unscaled, _ = one_update(micro_loader, lambda n: 1)  # the classic mistake: no 1/16
ratio = (
    torch.cat([g.flatten() for g in unscaled]).norm()
    / torch.cat([g.flatten() for g in full_gradients]).norm()
)
print(scaled(ratio.item(), STEPS))
say(
    f"Learning rate: choose it for the effective batch of {EFFECTIVE}, not for "
    f"{MICRO}: each update is the one a batch of {EFFECTIVE} makes, and there are "
    f"{STEPS} times fewer updates per epoch than with batches of {MICRO}."
)
say(
    f"BatchNorm-like layers compute their statistics over each micro-batch of {MICRO}, "
    f"not over all {EFFECTIVE} images, so with them accumulation does not reproduce "
    f"the large batch exactly (this MLP has none)."
)

# %% uneven
UNEVEN = 1000  # not a multiple of 64: a DataLoader's last micro-batch is smaller
uneven_images = Subset(images_used.dataset, range(UNEVEN))
reference, _ = one_update(DataLoader(uneven_images, batch_size=UNEVEN), lambda n: 1)
uneven_loader = DataLoader(uneven_images, batch_size=MICRO)
sizes = [len(labels) for _, labels in uneven_loader]
count = len(sizes)
last = f"{count - 1} of {MICRO} and one of {sizes[-1]}"
print(f"{UNEVEN} images: {count} micro-batches, {last}")
rules = {
    f"loss / {count}  (the number of micro-batches)": lambda n: 1 / count,
    f"loss * n / {UNEVEN}  (each batch's share)": lambda n: n / UNEVEN,
}
print(f"{'each micro-batch':<44} {'max |difference|':>16}  vs one batch of {UNEVEN}")
for rule, share in rules.items():
    gradients, _ = one_update(uneven_loader, share)
    worst = largest_difference(reference, gradients)
    verdict = agreement(worst)[0]
    print(f"{rule:<44} {worst:>16.1e}  {verdict} within {TOLERANCE:.0e}")

# %% chart
MiB = 2**20
fig, ax = plt.subplots(figsize=(7, 3.6))
for label, meter, style in (
    (f"one batch of {EFFECTIVE}", full_meter, "-"),
    (f"{STEPS} micro-batches of {MICRO}", micro_meter, "--"),
):
    values = [b / MiB for _, b in meter.events]
    ax.step(range(len(values)), values, style, where="post", label=label)
ax.set_xlabel("event of the update (batch to device, forward, backward, ...)")
ax.set_ylabel(f"memory in use (MiB, {METHOD})")
ax.set_title(f"One Adam update at an effective batch of {EFFECTIVE}")
ax.set_ylim(bottom=0)
ax.grid(True, alpha=0.3)
ax.legend()
plt.tight_layout()
plt.show()
