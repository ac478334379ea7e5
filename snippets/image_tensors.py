# %% setup
# Image data vs tabular data: a table is (samples, features), but an image keeps its layout
# as (channels, height, width). MNIST is 1x28x28 greyscale, CIFAR-10 is 3x32x32 colour, and
# a batch adds one axis in front: (batch, channels, height, width).
import os, socket, sys, contextlib, io
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

# %% tabular
# Tabular data: one row per sample, one column per feature. Random numbers stand in for real features.
table = torch.randn(1000, 5)
print(f"Table shape: {tuple(table.shape)}  ->  (samples, features)")
print("First 3 rows (each row is one sample with 5 features):")
for row in table[:3]:
    print("   " + "  ".join(f"{value:+.4f}" for value in row.tolist()))

# %% one-image
# One MNIST image after ToTensor: a 3-D tensor, not a row of numbers.
train_dataset = load_mnist(train=True, transform=transforms.ToTensor())
image, label = train_dataset[0]
print(f"Image shape: {tuple(image.shape)}  ->  (channels, height, width)")
print(f"dtype      : {image.dtype}")
print(f"label      : {label}")
print(f"values     : {image.numel()} = 1 x 28 x 28, from {image.min().item():.1f} to {image.max().item():.1f}")
print(f"size       : {image.numel()} values x {image.element_size()} bytes = {image.nbytes:,} bytes")

# %% cifar-shape
# CIFAR-10 is never downloaded here: the lesson only needs its shape, so torch.rand makes a
# random "image" of the same shape (3 colour channels: red, green, blue; 32 x 32 pixels).
cifar_image = torch.rand(3, 32, 32)
print(f"CIFAR-10-shaped image: {tuple(cifar_image.shape)}  ->  (channels, height, width)")
for channel, colour in enumerate(["red", "green", "blue"]):
    print(f"  channel {channel} ({colour:>5}): shape {tuple(cifar_image[channel].shape)}")
print(f"values: {cifar_image.numel()} = 3 x 32 x 32, dtype {cifar_image.dtype}")

# %% batch
# A model sees many images at once: stacking 64 images adds a batch axis in front.
batch = torch.stack([train_dataset[i][0] for i in range(64)])
meanings = ["batch: which image (0-63)", "channels: 1 grey channel",
            "height: pixel rows", "width: pixel columns"]
print(f"Batch shape: {tuple(batch.shape)}")
for axis, (size, meaning) in enumerate(zip(batch.shape, meanings)):
    print(f"  axis {axis}: {size:>3}  {meaning}")
print(f"size: {batch.numel():,} values x {batch.element_size()} bytes = {batch.nbytes:,} bytes "
      f"= {batch.nbytes / 1024:.1f} KiB")

# %% flatten
# An MLP needs one vector per image: flatten every axis except the batch axis (what nn.Flatten does).
flat = batch.flatten(start_dim=1)
print(f"MNIST batch   {tuple(batch.shape)} -> flattened {tuple(flat.shape)}   (1 x 28 x 28 = {1 * 28 * 28})")
cifar_batch = torch.rand(64, 3, 32, 32)
cifar_flat = cifar_batch.flatten(start_dim=1)
print(f"CIFAR batch   {tuple(cifar_batch.shape)} -> flattened {tuple(cifar_flat.shape)}  "
      f"(3 x 32 x 32 = {3 * 32 * 32})")
print("Flattening keeps every pixel but forgets which pixels were neighbours.")
