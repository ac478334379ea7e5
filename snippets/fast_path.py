# %% setup
# Setup the cells below need: imports, the device, the MNIST loader, the model, and the
# helpers that time a run and test a model.
# A fast path for small datasets: preprocess MNIST once, keep it on the device as two
# tensors and shuffle with torch.randperm, instead of running ToTensor + Normalize on
# every image of every epoch through a DataLoader. Same model, optimizer, batch size and
# epochs; both are evaluated on the test set, and timed 5 times from the same start: the
# median is the time, the fastest and slowest runs show how much it varies.
import contextlib
import io
import os
import re
import socket
import statistics
import sys
import time

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


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()
        self.layer1 = nn.Linear(784, 128)
        self.relu = nn.ReLU()
        self.layer2 = nn.Linear(128, 10)

    def forward(self, x):
        return self.layer2(self.relu(self.layer1(self.flatten(x))))


EPOCHS, BATCH_SIZE = 1, 64
REPEATS = 5  # runs of each timed piece of work: one run alone can mislead
criterion = nn.CrossEntropyLoss()
shuffle = torch.Generator()  # reseeded by every run: the same order each time


def sync():
    if device.type == "cuda":
        torch.cuda.synchronize()  # GPU work is asynchronous: wait, then read a clock


def timed(work):
    """Run work() REPEATS times, timing each run; returns the seconds of every run and
    what the last run returned."""
    seconds = []
    for _ in range(REPEATS):
        sync()
        start = time.perf_counter()
        result = work()
        sync()
        seconds.append(time.perf_counter() - start)
    return seconds, result


def median_and_range(seconds):
    """'4.70 s (4.61 to 4.93 s)': the median run, then the fastest and the slowest."""
    low, mid, high = min(seconds), statistics.median(seconds), max(seconds)
    return f"{mid:.2f} s ({low:.2f} to {high:.2f} s)"


def accuracy(model, batches):
    """Test accuracy over (images, labels) batches, without autograd."""
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for images, labels in batches:
            images, labels = images.to(device), labels.to(device)
            correct += (model(images).argmax(dim=1) == labels).sum().item()
            total += len(labels)
    return correct / total


# %% lesson-loop
normalize = transforms.Normalize((0.1307,), (0.3081,))
transform = transforms.Compose([transforms.ToTensor(), normalize])
train_dataset = load_mnist(True, transform)
train_loader = DataLoader(train_dataset, BATCH_SIZE, shuffle=True, generator=shuffle)
test_loader = DataLoader(load_mnist(False, transform), batch_size=1000)


def train_lesson_way():
    """A fresh model trained for EPOCHS epochs the lesson's way."""
    torch.manual_seed(0)
    model = MLP().to(device)
    optimizer = optim.Adam(model.parameters(), lr=1e-3)
    shuffle.manual_seed(0)
    for _ in range(EPOCHS):
        model.train()
        for data, target in train_loader:  # PIL -> ToTensor -> Normalize -> collate
            data, target = data.to(device), target.to(device)
            optimizer.zero_grad()
            loss = criterion(model(data), target)
            loss.backward()
            optimizer.step()
    return model


lesson_runs, model = timed(train_lesson_way)  # REPEATS runs, each from the start
lesson_accuracy = accuracy(model, test_loader)
took = f"{median_and_range(lesson_runs)} for {EPOCHS} epoch"
print(f"DataLoader loop: {took}, test accuracy {lesson_accuracy:.2%}")


# %% preprocess
def to_device_tensors(dataset):
    """Whole dataset -> (images, labels) on the device; the same values as ToTensor()
    + Normalize()."""
    images = (dataset.data.float() / 255 - 0.1307) / 0.3081  # (N, 28, 28) float32
    return images.unsqueeze(1).to(device), dataset.targets.to(device)  # (N, 1, 28, 28)


def preprocess():
    """Read MNIST and convert it once: (train images, labels), (test images, labels)."""
    train = to_device_tensors(load_mnist(True, None))
    return train, to_device_tensors(load_mnist(False, None))


prepare_runs, tensors = timed(preprocess)
(train_images, train_labels), (test_images, test_labels) = tensors
train, test = tuple(train_images.shape), tuple(test_images.shape)
print(
    f"Preprocessed once in {median_and_range(prepare_runs)}, on {train_images.device}:"
)
print(f"  train {train} ({train_images.nbytes:,} bytes) and test {test}")


# %% fast-loop
def train_fast_way():
    """The same fresh model, the same training, with batches indexed from the device
    tensors."""
    torch.manual_seed(0)
    model = MLP().to(device)  # the same initial weights as the DataLoader run
    optimizer = optim.Adam(model.parameters(), lr=1e-3)
    shuffle.manual_seed(0)
    for _ in range(EPOCHS):
        model.train()
        order = torch.randperm(len(train_labels), generator=shuffle).to(device)
        for i in range(0, len(order), BATCH_SIZE):
            idx = order[i : i + BATCH_SIZE]
            data, target = train_images[idx], train_labels[idx]  # one indexing op each
            optimizer.zero_grad()
            loss = criterion(model(data), target)
            loss.backward()
            optimizer.step()
    return model


fast_runs, model = timed(train_fast_way)
fast_accuracy = accuracy(model, [(test_images, test_labels)])
took = f"{median_and_range(fast_runs)} for {EPOCHS} epoch"
print(f"Fast path: {took}, test accuracy {fast_accuracy:.2%}")

# %% compare
# The table of the two paths, the ratio of their times, the difference of accuracies.
# Each path: the median and range of its runs, samples per second, test accuracy.
lesson_seconds, fast_seconds = map(statistics.median, (lesson_runs, fast_runs))
samples = EPOCHS * len(train_labels)
print(
    f"{EPOCHS} epoch, {REPEATS} runs of each path: median and fastest-slowest seconds"
)
header = f"{'path':<24} {'seconds':>7} {'fastest-slowest':>15} {'samples/s':>10}"
print(f"{header} {'test accuracy':>14}")
for name, runs, acc in [
    ("DataLoader + transforms", lesson_runs, lesson_accuracy),
    ("tensors on the device", fast_runs, fast_accuracy),
]:
    seconds = statistics.median(runs)
    spread = f"{min(runs):.2f}-{max(runs):.2f}"
    row = f"{name:<24} {seconds:>7.2f} {spread:>15} {samples / seconds:>10,.0f}"
    print(f"{row} {acc:>14.2%}")
speedup = lesson_seconds / fast_seconds
lowest = min(lesson_runs) / max(fast_runs)  # the least favourable pair of runs
highest = max(lesson_runs) / min(fast_runs)  # the most favourable
ratios = f"from {lowest:.1f}x to {highest:.1f}x taking any run"
print(f"fast path is {speedup:.1f}x faster (ratio of the medians; {ratios})")
difference = abs(fast_accuracy - lesson_accuracy)
TOLERANCE = 0.01  # one percentage point: two shuffles of one training, float32
points = f"{100 * difference:.2f} percentage points"
verdict = "within" if difference <= TOLERANCE else "MORE than"
tolerance = f"{verdict} the tolerance of {100 * TOLERANCE:.0f} percentage point"
print(f"accuracy difference: {points}, {tolerance}")

# %% chart
# The chart of the two paths' times: median bars, whiskers from fastest to slowest
plt.rcParams["font.size"] = 10
fig, ax = plt.subplots(figsize=(7, 2.9), layout="constrained")
names = ["DataLoader +\ntransforms", "tensors on\nthe device"]
all_runs, medians = [lesson_runs, fast_runs], [lesson_seconds, fast_seconds]
whiskers = [  # from the fastest to the slowest run
    [m - min(runs) for m, runs in zip(medians, all_runs)],
    [max(runs) - m for m, runs in zip(medians, all_runs)],
]
bars = ax.barh(names, medians, xerr=whiskers, capsize=4, color=["grey", "seagreen"])
labels = [
    f"{lesson_seconds:.2f} s, {lesson_accuracy:.2%} test accuracy",
    f"{fast_seconds:.2f} s, {fast_accuracy:.2%}",
]
for bar, runs, label in zip(bars, all_runs, labels):  # each label after its whisker
    ax.text(max(runs), bar.get_y() + bar.get_height() / 2, f"  {label}", va="center")
ax.set_xlim(0, max(lesson_runs) * 1.7)
ax.invert_yaxis()
ax.set_xlabel(
    f"seconds for {EPOCHS} epoch: median of {REPEATS} runs, fastest to slowest"
)
ax.set_title(f"Same training, two input pipelines ({device.type.upper()}, batch 64)")
plt.show()
