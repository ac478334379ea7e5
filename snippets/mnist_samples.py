# %% setup
# Setup the cells below need: imports, the device, the MNIST loader (load_mnist)
import contextlib
import io
import os
import re
import socket
import sys

import matplotlib.pyplot as plt
import torch
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


# %% load
# The lesson's pipeline: ToTensor, then Normalize with MNIST's own mean and std.
transform = transforms.Compose(
    [transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))]
)
train_dataset = load_mnist(train=True, transform=transform)
test_dataset = load_mnist(train=False, transform=transform)
print(f"training images: {len(train_dataset)}, test images: {len(test_dataset)}")
image, label = train_dataset[0]
kind = type(label).__name__
print(f"one sample: image {tuple(image.shape)} {image.dtype}, label {label} ({kind})")

# %% grid
# Figure: 16 random training images, de-normalised for display (x = y * 0.3081 +
# 0.1307). A seeded generator picks the same ones on every run.
plt.rcParams["font.size"] = 10
generator = torch.Generator().manual_seed(0)
indices = torch.randperm(len(train_dataset), generator=generator)[:16].tolist()
fig, axes = plt.subplots(2, 8, figsize=(7, 3), layout="constrained")
labels = []
for ax, index in zip(axes.flat, indices):
    image, label = train_dataset[index]
    labels.append(label)
    shown = image * 0.3081 + 0.1307  # undo Normalize to get back to 0..1 for display
    ax.imshow(shown[0].numpy(), cmap="gray", vmin=0, vmax=1)  # [0]: the only channel
    ax.set_title(f"{label}", fontsize=10)
    ax.set_xlabel(f"#{index}", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
fig.suptitle("Random MNIST training images: label above, training-set index below")
print("labels, row by row as in the grid:")
for row in range(2):
    print("  " + " ".join(str(n) for n in labels[8 * row : 8 * row + 8]))
plt.show()

# %% class-counts
# How many images of each digit? .targets holds every label without loading an image.
print("digit" + "".join(f"{digit:>7}" for digit in range(10)))
for name, dataset in (("train", train_dataset), ("test", test_dataset)):
    counts = torch.bincount(dataset.targets, minlength=10)
    print(f"{name:<5}" + "".join(f"{n:>7}" for n in counts.tolist()))
    shares = (counts / counts.sum()).tolist()
    print(f"{'share':<5}" + "".join(f"{share:>7.1%}" for share in shares))
