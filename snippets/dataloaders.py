# %% setup
# Batch size is a DataLoader setting, not part of the model: the lesson's loaders
# (train: 64, shuffled; test: 1000, in order), what one batch looks like, and the same
# MNIST MLP run on batches of 1, 64 and 1000 images, which gives the same answer for
# the same image whatever the batch size.
import contextlib
import io
import os
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


def load_mnist(train, transform):
    """MNIST from DATA_ROOT, downloaded if it is not there; if that fails, one clear
    sentence and exit 1."""
    socket.setdefaulttimeout(10)  # never hang on a dead network
    quiet = contextlib.redirect_stdout(io.StringIO())  # torchvision lists each mirror
    try:
        with quiet:
            return datasets.MNIST(
                root=DATA_ROOT, train=train, download=True, transform=transform
            )
    except Exception as error:
        sys.exit(
            f"MNIST is not in {os.path.abspath(DATA_ROOT)}/MNIST/raw and could not be "
            f"downloaded ({type(error).__name__}): connect to the internet, or set "
            "LESSON_DATA to a folder that holds MNIST/raw."
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
print(f"{'train':<7}{n_train:>8}{64:>7}{'True':>9}{len(train_loader):>9}", end="")
print("   (60000 / 64 = 937.5 -> 938)")
print(f"{'test':<7}{n_test:>8}{1000:>7}{'False':>9}{len(test_loader):>9}", end="")
print("   (10000 / 1000 = 10)")

# %% one-batch
images, labels = next(iter(train_loader))
for name, tensor in (("images", images), ("labels", labels)):
    shape, dtype = str(tuple(tensor.shape)), str(tensor.dtype)
    print(f"{name}: shape {shape:<16} dtype {dtype:<14} {tensor.nbytes:>8,} bytes")
print(f"first labels: {labels[:10].tolist()}")
# The batch sampler lists each batch's indices without loading any image: the last
# batch is what is left.
batch_sizes = [len(batch) for batch in train_loader.batch_sampler]
full, last = len(batch_sizes) - 1, batch_sizes[-1]
print(f"train batches: {full} of 64 images, then a last one of {last}", end="")
print(f" (60000 % 64 = {60000 % 64})")


# %% any-batch-size
# The lesson's MNIST MLP, untrained (seeded weights). Nothing in it mentions a batch
# size.
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
n_params = sum(p.numel() for p in model.parameters())
print(f"{'batch size':>10}  {'input':<20}{'output':<12}{'parameters':>10}")
first_logits = {}
with torch.no_grad():
    for batch_size in (1, 64, 1000):
        # Unshuffled test images, so every batch starts with the same image: test
        # image 0.
        loader = DataLoader(test_dataset, batch_size=batch_size, shuffle=False)
        batch, _ = next(iter(loader))
        output = model(batch.to(device))
        first_logits[batch_size] = output[0]
        count = sum(p.numel() for p in model.parameters())
        shapes = f"{str(tuple(batch.shape)):<20}{str(tuple(output.shape)):<12}"
        print(f"{batch_size:>10}  {shapes}{count:>10,}")
diff = max((first_logits[n] - first_logits[1]).abs().max().item() for n in (64, 1000))
print("Test image 0, logits with batch size 1:")
print("  " + " ".join(f"{v:+.4f}" for v in first_logits[1].tolist()))
# float32 sums in another order (each batch size may pick another kernel) differ in
# the last bits; TF32 would round much more, and matmuls do not use it unless asked:
TOLERANCE = 1e-5  # absolute, for logits of size about 1
print(f"Largest difference of those logits at batch size 64 or 1000: {diff:.2e}")
tf32 = torch.backends.cuda.matmul.allow_tf32
verdict = "the same" if diff <= TOLERANCE else "NOT the same"
print(f"{verdict} within {TOLERANCE:.0e} (float32; TF32 matmuls allowed: {tf32})")
shape = tuple(model.layer1.weight.shape)
print(f"The same model with the same {n_params:,} parameters took every batch size;")
print(f"layer1.weight is {shape}: no batch axis.")
