# %% setup
# Setup the cells below need: imports, the device, the MNIST loader and both datasets
import contextlib
import io
import os
import re
import socket
import sys

import torch
import torch.nn as nn
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


normalize = transforms.Normalize((0.1307,), (0.3081,))
transform = transforms.Compose([transforms.ToTensor(), normalize])
train_dataset = load_mnist(train=True, transform=transform)
test_dataset = load_mnist(train=False, transform=transform)

# %% loaders
# train: a new random order every epoch; test: bigger batches, always in order
train_loader = DataLoader(train_dataset, batch_size=64, shuffle=True)
test_loader = DataLoader(test_dataset, batch_size=1000, shuffle=False)
print(f"{'loader':<7}{'images':>8}{'batch':>7}{'shuffle':>9}{'batches':>9}")
n_train, n_test = len(train_dataset), len(test_dataset)
print(f"{'train':<7}{n_train:>8}{64:>7}{'True':>9}{len(train_loader):>9}")
print(f"{'test':<7}{n_test:>8}{1000:>7}{'False':>9}{len(test_loader):>9}")
# The batch sampler lists each batch's indices without loading an image.
sizes = [len(batch) for batch in train_loader.batch_sampler]
print(f"train: {sizes.count(64)} batches of 64, then a last one of {sizes[-1]}")

# %% one-batch
images, labels = next(iter(train_loader))
for name, tensor in (("images", images), ("labels", labels)):
    shape, dtype = str(tuple(tensor.shape)), str(tensor.dtype)
    print(f"{name}: shape {shape:<16} dtype {dtype:<14} {tensor.nbytes:>8,} bytes")
print(f"first labels: {labels[:10].tolist()}")


# %% model
# The MNIST MLP of mnist_mlp.py, untrained (seeded): the cells below run it
class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()
        self.layer1 = nn.Linear(784, 128)
        self.relu = nn.ReLU()
        self.layer2 = nn.Linear(128, 10)

    def forward(self, x):
        return self.layer2(self.relu(self.layer1(self.flatten(x))))


torch.manual_seed(0)
model = MLP().to(device)

# %% any-batch-size
first_logits = {}  # test image 0's logits, per batch size
with torch.no_grad():
    for batch_size in (1, 64, 1000):
        loader = DataLoader(test_dataset, batch_size=batch_size)  # in order
        batch, _ = next(iter(loader))
        output = model(batch.to(device))
        first_logits[batch_size] = output[0]  # test image 0 comes first in each
        n_params = sum(p.numel() for p in model.parameters())
        shapes = f"{str(tuple(batch.shape)):<19} -> {str(tuple(output.shape)):<11}"
        print(f"batch {batch_size:>4}: {shapes} {n_params:,} parameters")
print(f"layer1.weight: {tuple(model.layer1.weight.shape)}")

# %% same-answer
TOLERANCE = 1e-5  # float32 sums in another order differ in the last bits
diff = max((first_logits[n] - first_logits[1]).abs().max().item() for n in (64, 1000))
print(f"Largest difference of image 0's logits at batch size 64 or 1000: {diff:.2e}")
tf32 = torch.backends.cuda.matmul.allow_tf32
verdict = "the same" if diff <= TOLERANCE else "NOT the same"
print(f"{verdict} within {TOLERANCE:.0e} (TF32 matmuls allowed: {tf32})")

# %% exercise-drop-last
# The training loader with drop_last=True, at the lesson's batch size and at 100.
for batch_size in (64, 100):
    loader = DataLoader(train_dataset, batch_size=batch_size, drop_last=True)
    skipped = len(train_dataset) - len(loader) * batch_size
    print(
        f"batch size {batch_size:>3}: {len(loader)} batches, {skipped} images skipped"
    )
