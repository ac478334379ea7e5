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
import torch.nn as nn
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


# %% tabular
# Tabular data: one row per sample, one column per feature.
table = torch.randn(1000, 5)  # random numbers stand in for real features
print(f"Table shape: {tuple(table.shape)}  (samples, features)")
print(table[:3])

# %% one-image
# One MNIST image after ToTensor: a 3-D tensor (channels, height, width).
train_dataset = load_mnist(train=True, transform=transforms.ToTensor())
image, label = train_dataset[0]
print(f"Image shape: {tuple(image.shape)}, dtype {image.dtype}, label {label}")
print(f"values from {image.min():.1f} to {image.max():.1f}")
size = f"{image.numel()} values x {image.element_size()} bytes"
print(f"size: {size} = {image.nbytes:,} bytes")

# %% cifar-shape
# CIFAR-10 is never downloaded: only its shape matters here, so random numbers stand
# in for a 32 x 32 colour picture with 3 channels (red, green, blue).
cifar_image = torch.rand(3, 32, 32)
print(f"CIFAR-10-shaped image: {tuple(cifar_image.shape)}")
print(f"one channel: {tuple(cifar_image[0].shape)}")
print(f"values: {cifar_image.numel()} = 3 x 32 x 32")

# %% batch
# A model sees many images at once: stacking 64 images adds a batch axis in front.
batch = torch.stack([train_dataset[i][0] for i in range(64)])
print(f"Batch shape: {tuple(batch.shape)}  (N, C, H, W)")
values = f"{batch.numel():,} values x {batch.element_size()} bytes"
print(f"size: {values} = {batch.nbytes:,} bytes = {batch.nbytes / 1024:.1f} KiB")

# %% flatten
# An MLP wants one vector per image: nn.Flatten joins every axis but the batch axis.
flatten = nn.Flatten()  # the same as tensor.flatten(start_dim=1)
cifar_batch = torch.rand(64, 3, 32, 32)
print(f"MNIST batch {tuple(batch.shape)} -> {tuple(flatten(batch).shape)}")
print(f"CIFAR batch {tuple(cifar_batch.shape)} -> {tuple(flatten(cifar_batch).shape)}")

# %% axes-figure
# Figure: the batch's four axes (N, C, H, W) and the rows nn.Flatten makes of them.
# Every size on it is read from the tensors.
plt.rcParams["font.size"] = 10
flat = flatten(batch)  # the layer the MLP uses
N, C, H, W = batch.shape
fig, (deck, rows) = plt.subplots(
    2, 1, figsize=(7, 6.4), height_ratios=[1.5, 1], layout="constrained"
)

SHOWN, STEP = 4, 9  # draw the first 4 images of the batch, each 9 pixels behind
for k in reversed(range(SHOWN)):  # the back of the stack first
    x = y = k * STEP
    box, front = (x, x + W, y, y + H), 10 - k
    deck.imshow(batch[k, 0].numpy(), cmap="gray", extent=box, zorder=front)
    edge = plt.Rectangle((x, y), W, H, fill=False, lw=1.5, ec="tab:blue", zorder=front)
    deck.add_patch(edge)
deck.annotate(
    "",
    xy=(W + SHOWN * STEP, H + SHOWN * STEP),
    xytext=(W + 1, H + 1),
    arrowprops=dict(arrowstyle="->", lw=1.5, color="tab:blue"),
)
deck.text(
    W + SHOWN * STEP + 2,
    H + SHOWN * STEP - 2,
    f"N = {N}: axis 0, which image\n(the first {SHOWN} drawn)",
    va="top",
    color="tab:blue",
)
both_ways = dict(arrowstyle="<->", lw=1.2)
deck.annotate("", xy=(0, -3), xytext=(W, -3), arrowprops=both_ways)
deck.text(W / 2, -5, f"W = {W}: axis 3,\npixel columns", ha="center", va="top")
deck.annotate("", xy=(-3, 0), xytext=(-3, H), arrowprops=both_ways)
deck.text(-5, H / 2, f"H = {H}: axis 2,\npixel rows", ha="right", va="center")
deck.text(
    W + SHOWN * STEP + 2,
    8,
    f"C = {C}: axis 1, channels\n(one grey value a pixel;\nCIFAR-10 has 3: red,\n"
    "green, blue)",
    va="center",
)
deck.set_xlim(-34, W + SHOWN * STEP + 58)
deck.set_ylim(-16, H + SHOWN * STEP + 4)
deck.set_aspect("equal")
deck.set_axis_off()
deck.set_title(f"An image batch tensor: (N, C, H, W) = {tuple(batch.shape)}")

rows.imshow(flat.numpy(), cmap="gray", aspect="auto", interpolation="nearest")
rows.set_title(
    f"nn.Flatten(): {tuple(batch.shape)} -> {tuple(flat.shape)}, one row per image"
)
rows.set_xlabel(f"{flat.shape[1]} features = {C} x {H} x {W} pixels, row after row")
rows.set_ylabel(f"N = {flat.shape[0]} images")
rows.set_xticks(range(0, flat.shape[1], 7 * W))  # a tick every 7 image rows
rows.set_yticks([0, N - 1], ["image 0", f"image {N - 1}"])
fig.suptitle("MNIST: the axes of an image batch, and what nn.Flatten does")
print(f"Drawn from the tensors: batch {tuple(batch.shape)} -> {tuple(flat.shape)}")
plt.show()

# %% exercise-cifar-batch
# A CIFAR-10 batch of 128 float32 images: its shape and its bytes.
cifar_batch = torch.rand(128, 3, 32, 32)
values = f"{cifar_batch.numel():,} values x {cifar_batch.element_size()} bytes"
size = f"{cifar_batch.nbytes:,} bytes = {cifar_batch.nbytes / 1024:.1f} KiB"
print(f"{tuple(cifar_batch.shape)}: {values} = {size}")

# %% exercise-dtype
# The MNIST batch of 64 in three dtypes: bytes per value and bytes in all.
versions = {
    "float32": batch,
    "float16": batch.half(),
    "uint8": (batch * 255).round().to(torch.uint8),  # the bytes MNIST stores
}
for name, tensor in versions.items():
    each = f"bytes per value: {tensor.element_size()}"
    print(f"{name:<8} {tuple(tensor.shape)}  {each}, in all: {tensor.nbytes:>7,} bytes")
