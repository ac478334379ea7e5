# %% setup
# Preprocessing MNIST: ToTensor turns 0-255 bytes into float32 values in [0, 1], and
# Normalize((0.1307,), (0.3081,)) shifts and scales them to mean 0, std 1. The two numbers
# are MNIST's own training-set mean and std, which this file computes from all 60,000 images.
import os, socket, sys, contextlib, io
import numpy as np
import matplotlib.pyplot as plt
import torch
from torchvision import datasets, transforms

DATA_ROOT = os.environ.get("LESSON_DATA", "./data")   # the lesson's ./data unless LESSON_DATA says otherwise
torch.manual_seed(0)
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
print(f"Device: {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))

def load_mnist(train, transform):
    """MNIST from DATA_ROOT, downloading it if it is not there; one clear sentence and exit 1 if that fails."""
    socket.setdefaulttimeout(10)            # never hang on a dead network
    try:
        with contextlib.redirect_stdout(io.StringIO()):   # torchvision prints each mirror it tries
            return datasets.MNIST(root=DATA_ROOT, train=train, download=True, transform=transform)
    except Exception as error:
        sys.exit(f"MNIST is not in {os.path.abspath(DATA_ROOT)}/MNIST/raw and could not be downloaded "
                 f"({type(error).__name__}): connect to the internet, or set LESSON_DATA to a folder "
                 f"that holds MNIST/raw.")

# %% to-tensor
# Without a transform, MNIST gives PIL images whose pixels are 8-bit integers 0..255.
raw_train = load_mnist(train=True, transform=None)
pil_image, label = raw_train[0]
pixels = np.array(pil_image)
tensor = transforms.ToTensor()(pil_image)
print(f"{'':<18}{'type':<16}{'shape':<14}{'dtype':<15}{'min':>6}{'max':>6}")
print(f"{'PIL image':<18}{type(pil_image).__name__:<16}{str(pil_image.size):<14}{'mode ' + pil_image.mode:<15}"
      f"{pixels.min():>6}{pixels.max():>6}")
print(f"{'as numpy array':<18}{'ndarray':<16}{str(pixels.shape):<14}{str(pixels.dtype):<15}"
      f"{pixels.min():>6}{pixels.max():>6}")
print(f"{'after ToTensor':<18}{'Tensor':<16}{str(tuple(tensor.shape)):<14}{str(tensor.dtype):<15}"
      f"{tensor.min().item():>6.1f}{tensor.max().item():>6.1f}")
# ToTensor = add a channel axis, convert to float32, divide by 255.
by_hand = torch.from_numpy(pixels).unsqueeze(0).float().div(255)
print(f"ToTensor(x) equals x / 255 as float32 with a channel axis added: {torch.equal(tensor, by_hand)}")

# %% mean-std
# Mean and std of every pixel of the 60,000 training images (47,040,000 values).
# train.data is the raw uint8 tensor (60000, 28, 28); float64 keeps the sums exact enough.
all_pixels = raw_train.data.to(torch.float64) / 255
mean = all_pixels.mean().item()
std = all_pixels.std().item()
print(f"pixels: {tuple(raw_train.data.shape)} -> {all_pixels.numel():,} values")
print(f"mean = {mean:.4f}   (more digits: {mean:.10f})")
print(f"std  = {std:.4f}   (more digits: {std:.10f})")
print(f"Rounded to 4 decimals they are the lesson's constants: "
      f"{round(mean, 4) == 0.1307 and round(std, 4) == 0.3081}")

# %% normalize
# Normalize((0.1307,), (0.3081,)) computes (x - mean) / std for every pixel (per channel; MNIST has one).
normalize = transforms.Normalize((0.1307,), (0.3081,))
for x in (0.0, 0.1307, 1.0):
    print(f"pixel {x:.4f} -> ({x:.4f} - 0.1307) / 0.3081 = {(x - 0.1307) / 0.3081:+.4f}")
# The whole training set exactly as the lesson's pipeline (ToTensor, then Normalize) produces it:
before = raw_train.data.unsqueeze(1).float().div(255)          # (60000, 1, 28, 28) float32
after = normalize(before)
pipeline = load_mnist(train=True, transform=transforms.Compose([transforms.ToTensor(), normalize]))
assert torch.equal(pipeline[0][0], after[0])                    # same values as the Dataset gives
print(f"\n{'whole training set':<20}{'min':>9}{'max':>9}{'mean':>9}{'std':>9}")
for name, values in (("before (ToTensor)", before), ("after Normalize", after)):
    values = values.double()
    print(f"{name:<20}{values.min().item():>9.4f}{values.max().item():>9.4f}"
          f"{values.mean().item():>9.4f}{values.std().item():>9.4f}")
print("After: mean about 0 and std about 1 (not exactly: 0.1307 and 0.3081 are rounded).")

# %% histogram
# Pixel-value histogram before and after normalisation. MNIST pixels take only 256 values,
# so counting each byte value gives the exact histogram; Normalize moves and stretches the x axis only.
counts = torch.bincount(raw_train.data.flatten(), minlength=256).numpy()
values_before = np.arange(256) / 255
values_after = (values_before - 0.1307) / 0.3081
print(f"Pixels that are exactly 0 (background): {counts[0]:,} of {counts.sum():,} "
      f"= {counts[0] / counts.sum():.1%}")
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
for ax, xs, title in ((axes[0], values_before, "After ToTensor: values in [0, 1]"),
                      (axes[1], values_after, "After Normalize: (x - 0.1307) / 0.3081")):
    ax.bar(xs, counts, width=xs[1] - xs[0], color="tab:blue")
    ax.axvline(xs @ counts / counts.sum(), color="tab:red", linestyle="--", label="mean")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel("pixel value")
    ax.set_ylabel("number of pixels (log scale)")
    ax.legend()
fig.suptitle("MNIST training set: pixel values before and after normalisation")
fig.tight_layout()
plt.show()
