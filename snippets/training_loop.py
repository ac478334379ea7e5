# %% setup
# Setup the cells below need: imports, the device and the MNIST loader.
# The complete training loop the lesson only sketches: data, model, loss, optimizer,
# several epochs of zero_grad -> forward -> loss -> backward -> step, and an evaluation
# on the test set after every epoch. Shuffling uses a seeded generator, so every run
# prints the same losses and accuracies.
import contextlib
import functools
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


# %% data
transform = transforms.Compose(
    [
        transforms.ToTensor(),  # uint8 0..255 -> float32 0..1, shape (1, 28, 28)
        transforms.Normalize((0.1307,), (0.3081,)),  # MNIST's mean and std
    ]
)
train_dataset = load_mnist(True, transform)
test_dataset = load_mnist(False, transform)
shuffle = torch.Generator().manual_seed(0)  # the same shuffle order on every run
train_loader = DataLoader(train_dataset, batch_size=64, shuffle=True, generator=shuffle)
test_loader = DataLoader(test_dataset, batch_size=1000, shuffle=False)
n_train, n_batches = len(train_dataset), len(train_loader)
last = n_train % 64
print(
    f"train: {n_train:,} images in {n_batches} batches of 64 (the last one has {last})"
)
print(f"test:  {len(test_dataset):,} images in {len(test_loader)} batches of 1000")


# %% model
class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()
        self.layer1 = nn.Linear(784, 128)
        self.relu = nn.ReLU()
        self.layer2 = nn.Linear(128, 10)

    def forward(self, x):
        return self.layer2(self.relu(self.layer1(self.flatten(x))))


model = MLP().to(device)
criterion = nn.CrossEntropyLoss()  # takes raw logits and integer labels
optimizer = optim.Adam(model.parameters(), lr=1e-3)
num_epochs = 2
count = sum(p.numel() for p in model.parameters())
print(f"{count:,} parameters; loss {criterion}; Adam lr 1e-3; {num_epochs} epochs")


# %% train-eval
def train_one_epoch(model, loader):
    """One pass over the training data; returns the average loss."""
    model.train()
    total, count = 0.0, 0
    for data, target in loader:
        data, target = data.to(device), target.to(device)
        optimizer.zero_grad()  # forget the previous batch's gradients
        output = model(data)  # forward: logits, shape (batch, 10)
        loss = criterion(output, target)  # mean loss over the batch
        loss.backward()  # gradients of the loss for every parameter
        optimizer.step()  # update the parameters
        total += loss.item() * len(target)
        count += len(target)
    return total / count


def evaluate(model, loader):
    """Average loss and accuracy on a dataset, without building any autograd graph."""
    model.eval()
    total_loss, correct = 0.0, 0
    with torch.no_grad():
        for data, target in loader:
            data, target = data.to(device), target.to(device)
            output = model(data)
            total_loss += criterion(output, target).item() * len(target)
            correct += (output.argmax(dim=1) == target).sum().item()
    return total_loss / len(loader.dataset), correct / len(loader.dataset)


# %% clock
# The clock and the loss log around the loop: train_one_epoch and evaluate, timed.
# Each call is timed from outside (their .item() calls have waited for the GPU), and a
# forward hook on the loss keeps every training batch's loss, for the chart.
seconds = {"train": [], "test": []}
batch_losses = []  # every training batch's loss, in order


def clocked(function, times):
    """`function`, timed: each call's seconds are appended to `times`."""

    @functools.wraps(function)
    def timed_call(*args, **kwargs):
        start = time.perf_counter()
        result = function(*args, **kwargs)
        times.append(time.perf_counter() - start)
        return result

    return timed_call


def keep_training_loss(module, args, loss):
    if torch.is_grad_enabled():  # training; evaluate() runs under torch.no_grad()
        batch_losses.append(loss.item())


train_one_epoch = clocked(train_one_epoch, seconds["train"])
evaluate = clocked(evaluate, seconds["test"])
criterion.register_forward_hook(keep_training_loss)

# %% loop
history = {"train_loss": [], "test_loss": [], "test_accuracy": []}
print(f"{'epoch':>5} {'train loss':>11} {'test loss':>10} {'test accuracy':>14}")
for epoch in range(1, num_epochs + 1):
    train_loss = train_one_epoch(model, train_loader)
    test_loss, test_accuracy = evaluate(model, test_loader)
    history["train_loss"].append(train_loss)
    history["test_loss"].append(test_loss)
    history["test_accuracy"].append(test_accuracy)
    print(f"{epoch:>5} {train_loss:>11.4f} {test_loss:>10.4f} {test_accuracy:>14.2%}")

# %% times
# The seconds per epoch the clock measured (training and test): median and range
epochs = [a + b for a, b in zip(seconds["train"], seconds["test"])]
median, spread = statistics.median(epochs), f"({min(epochs):.1f} to {max(epochs):.1f})"
print(f"Seconds per epoch, training and test: median {median:.1f} {spread}", end="")
print(f" over {len(epochs)} epochs")

# %% chart
# The chart of the loop's losses and accuracy, two panels one above the other
plt.rcParams["font.size"] = 10
fig, (loss_ax, acc_ax) = plt.subplots(
    2, 1, figsize=(7, 6.6), height_ratios=[3, 2], layout="constrained"
)
epochs = range(1, num_epochs + 1)
running = [
    sum(batch_losses[i : i + 100]) / 100 for i in range(0, len(batch_losses) - 99, 100)
]
running_x = [(i + 1) * 100 / len(train_loader) for i in range(len(running))]
loss_ax.plot(
    running_x,
    running,
    color="lightsteelblue",
    label="train loss, mean of each 100 batches",
)
loss_ax.plot(epochs, history["train_loss"], "o-", label="train loss (epoch mean)")
loss_ax.plot(epochs, history["test_loss"], "s-", label="test loss")
loss_ax.set_xlabel("epoch")
loss_ax.set_ylabel("cross-entropy loss")
loss_ax.set_title("Loss")
loss_ax.legend()
acc_ax.plot(epochs, [100 * a for a in history["test_accuracy"]], "o-", color="green")
acc_ax.set_xticks(list(epochs))
acc_ax.set_xlabel("epoch")
acc_ax.set_ylabel("test accuracy (%)")
acc_ax.set_title("Test accuracy")
fig.suptitle("MNIST MLP, Adam lr 1e-3, batch 64")
plt.show()

# %% exercise-sgd
# The same loop with plain SGD at the same learning rate, from the same weights
torch.manual_seed(0)
model = MLP().to(device)  # the same initial weights as above
optimizer = optim.SGD(model.parameters(), lr=1e-3)
shuffle.manual_seed(0)  # the same order of batches
for epoch in range(1, num_epochs + 1):
    train_loss = train_one_epoch(model, train_loader)
    test_loss, test_accuracy = evaluate(model, test_loader)
    print(f"SGD lr 1e-3, epoch {epoch}: train loss {train_loss:.4f}", end="")
    print(f", test accuracy {test_accuracy:.2%}")

# %% exercise-untrained
# What evaluate() reports for a fresh model, before any training
torch.manual_seed(0)
untrained = MLP().to(device)
test_loss, test_accuracy = evaluate(untrained, test_loader)
print(f"untrained: test loss {test_loss:.4f}, test accuracy {test_accuracy:.2%}")
