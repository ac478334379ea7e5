# %% setup
# Loading MNIST the lesson's way (ToTensor, then Normalize) and looking at it: a grid of random
# training images with their labels, de-normalised for display, and how many images each digit has.
import os, socket, sys, contextlib, io
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

# %% load
transform = transforms.Compose([
    transforms.ToTensor(),                       # uint8 0..255 -> float32 0..1, shape (1, 28, 28)
    transforms.Normalize((0.1307,), (0.3081,)),  # MNIST's mean and std -> (x - 0.1307) / 0.3081
])
train_dataset = load_mnist(train=True, transform=transform)
test_dataset = load_mnist(train=False, transform=transform)
print(f"training images: {len(train_dataset)}")
print(f"test images    : {len(test_dataset)}")
image, label = train_dataset[0]
print(f"one sample     : image {tuple(image.shape)} {image.dtype}, label {label} ({type(label).__name__})")

# %% grid
# 16 random training images. A seeded generator picks the same ones on every run.
generator = torch.Generator().manual_seed(0)
indices = torch.randperm(len(train_dataset), generator=generator)[:16].tolist()
fig, axes = plt.subplots(2, 8, figsize=(12, 4.2), layout="constrained")
chosen = []
for ax, index in zip(axes.flat, indices):
    image, label = train_dataset[index]
    chosen.append(label)
    shown = image * 0.3081 + 0.1307                  # undo Normalize to get back to 0..1 for display
    ax.imshow(shown[0].numpy(), cmap="gray", vmin=0, vmax=1)   # [0]: the only channel
    ax.set_title(f"label {label}")
    ax.set_xlabel(f"#{index}")
    ax.set_xticks([])
    ax.set_yticks([])
fig.suptitle("Random MNIST training images (title: label; below: index in the training set)")
print(f"indices: {indices}")
print(f"labels : {chosen}")
plt.show()

# %% class-counts
# How many images of each digit? .targets holds all labels without loading any image.
train_counts = torch.bincount(train_dataset.targets, minlength=10)
test_counts = torch.bincount(test_dataset.targets, minlength=10)
print(f"{'digit':>5}{'train':>8}{'share':>8}{'test':>7}{'share':>8}")
for digit in range(10):
    print(f"{digit:>5}{train_counts[digit].item():>8}{train_counts[digit].item() / len(train_dataset):>8.1%}"
          f"{test_counts[digit].item():>7}{test_counts[digit].item() / len(test_dataset):>8.1%}")
print(f"{'total':>5}{train_counts.sum().item():>8}{'':>8}{test_counts.sum().item():>7}")
fig, ax = plt.subplots(figsize=(7, 3.2))
ax.bar(range(10), train_counts.numpy(), color="tab:blue")
ax.set_xticks(range(10))
ax.set_title("MNIST training set: images per digit")
ax.set_xlabel("digit (label)")
ax.set_ylabel("number of images")
fig.tight_layout()
plt.show()
