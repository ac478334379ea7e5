# %% setup
# Setup the cells below need: imports, the device, the MNIST loader (load_mnist)
import contextlib
import io
import os
import re
import socket
import sys

import matplotlib.pyplot as plt
import numpy as np
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


# %% to-tensor
# Without a transform, MNIST gives PIL images of 8-bit pixels; ToTensor converts one.
raw_train = load_mnist(train=True, transform=None)
pil_image, label = raw_train[0]
pixels = np.array(pil_image)
tensor = transforms.ToTensor()(pil_image)
print(f"PIL image     : size {pil_image.size}, mode {pil_image.mode}")
low, high = pixels.min(), pixels.max()
print(f"numpy array   : {pixels.shape} {pixels.dtype}, {low} to {high}")
low, high = tensor.min().item(), tensor.max().item()
print(f"after ToTensor: {tuple(tensor.shape)} {tensor.dtype}, {low:.1f} to {high:.1f}")
# ToTensor by hand: add a channel axis, convert to float32, divide by 255.
by_hand = torch.from_numpy(pixels).unsqueeze(0).float() / 255
print(f"equals x / 255 as float32 with a channel axis: {torch.equal(tensor, by_hand)}")

# %% mean-std
# Mean and std of every pixel of the 60,000 training images, scaled to [0, 1].
# raw_train.data is the raw uint8 tensor; float64 keeps the sums exact enough.
all_pixels = raw_train.data.to(torch.float64) / 255
mean, std = all_pixels.mean().item(), all_pixels.std().item()
print(f"pixels: {tuple(raw_train.data.shape)} -> {all_pixels.numel():,} values")
print(f"mean = {mean:.4f}   (more digits: {mean:.10f})")
print(f"std  = {std:.4f}   (more digits: {std:.10f})")
same = round(mean, 4) == 0.1307 and round(std, 4) == 0.3081
print(f"Rounded to 4 decimals they are the lesson's constants: {same}")

# %% stats-helpers
# Helpers the next cells need: a one-line verdict on a mean and std, and a table row.
ABOUT = 0.005  # "about": within this of 0 and of 1, the same to 2 decimals


def normalized_text(mean, std):
    """What Normalize gave the whole training set, in words that fit its mean and
    std."""
    if mean == 0 and std == 1:
        return "After: mean 0 and std 1, exactly."
    if abs(mean) < ABOUT and abs(std - 1) < ABOUT:
        return (
            "After: mean about 0 and std about 1 (not exactly: 0.1307 and 0.3081 are "
            "rounded)."
        )
    return (
        f"After: mean {mean:.4f} and std {std:.4f}, not about 0 and 1:\n0.1307 and "
        "0.3081 are not this data's mean and std."
    )


def stats_row(name, values):
    """Print min, max, mean and std of a tensor (computed in float64), in one row."""
    values = values.double()
    stats = [values.min(), values.max(), values.mean(), values.std()]
    print(f"{name:<18}" + "".join(f"{v.item():>9.4f}" for v in stats))
    return stats[2].item(), stats[3].item()


# %% normalize
# Normalize computes (x - 0.1307) / 0.3081 for every pixel (per channel: MNIST has 1).
normalize = transforms.Normalize((0.1307,), (0.3081,))
three = torch.tensor([[[0.0, 0.1307, 1.0]]])  # 3 pixels: background, mean, ink
for x, y in zip(three.flatten(), normalize(three).flatten()):
    print(f"pixel {x:.4f} -> {y:+.4f}")
# The whole training set, as ToTensor gives it, then after Normalize:
before = raw_train.data.unsqueeze(1).float() / 255  # (60000, 1, 28, 28)
after = normalize(before)
print(f"\n{'whole training set':<18}{'min':>9}{'max':>9}{'mean':>9}{'std':>9}")
stats_row("before Normalize", before)
mean, std = stats_row("after Normalize", after)
print(normalized_text(mean, std))

# %% histogram
# Figure: histogram of every training pixel before and after Normalize (log scale).
# MNIST pixels take only 256 values, so counting each byte value gives it exactly.
plt.rcParams["font.size"] = 10
counts = torch.bincount(raw_train.data.flatten(), minlength=256).numpy()
values_before = np.arange(256) / 255
values_after = (values_before - 0.1307) / 0.3081
zeros, total = counts[0], counts.sum()
share = zeros / total
print(f"Pixels that are exactly 0 (background): {zeros:,} of {total:,} = {share:.1%}")
fig, axes = plt.subplots(2, 1, figsize=(7, 5.2), layout="constrained")
for ax, xs, title in (
    (axes[0], values_before, "After ToTensor: values in [0, 1]"),
    (axes[1], values_after, "After Normalize: (x - 0.1307) / 0.3081"),
):
    ax.bar(xs, counts, width=xs[1] - xs[0], color="tab:blue")
    mean_x = xs @ counts / counts.sum()
    ax.axvline(mean_x, color="tab:red", linestyle="--", label=f"mean {mean_x:.4f}")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel("pixel value")
    ax.set_ylabel("number of pixels (log scale)")
    ax.legend()
fig.suptitle("MNIST training set: pixel values before and after normalisation")
plt.show()

# %% exercise-constants
# Normalize with the constants many tutorials use, (0.5,) and (0.5,), on MNIST.
half = transforms.Normalize((0.5,), (0.5,))
print(f"{'whole training set':<18}{'min':>9}{'max':>9}{'mean':>9}{'std':>9}")
stats_row("after (0.5, 0.5)", half(before))
