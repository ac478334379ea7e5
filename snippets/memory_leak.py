# %% setup
# The growing-memory bug: adding up `loss`, a tensor, across steps. Each sum is part of
# autograd's graph, so the graph of every step stays reachable from the total. In an
# evaluation loop without torch.no_grad() that graph still holds the step's batch and
# the activations saved for backward; with loss.item(), a Python number, it is freed
# at the next step. Measured step by step over the 10 MNIST test batches of 1000.
# On CUDA the memory is the allocator's memory_allocated() above what was allocated
# before the loop. On the CPU, which has no allocator counter, it is counted tensor
# bytes: parameters, batches, outputs and what autograd saved for backward, each
# storage once and only while it exists.
import contextlib
import io
import itertools
import os
import re
import socket
import sys
import textwrap

import matplotlib.pyplot as plt
import torch
from torch import nn, optim
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

DATA_ROOT = os.environ.get("LESSON_DATA", "./data")  # the lesson's ./data by default
torch.manual_seed(0)
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
print(f"Device: {device}" + gpu)
ALLOCATOR = device.type == "cuda"  # the CUDA caching allocator counts every byte
METHOD = "CUDA allocator" if ALLOCATOR else "counted tensor bytes"


def say(text):
    """Print a long sentence in lines of at most 88 characters."""
    print(textwrap.fill(text, 88, break_on_hyphens=False))


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


def cuda_memory():
    """Bytes allocated now: the CUDA caching allocator's counter, one for the whole
    process."""
    torch.cuda.synchronize()
    return torch.cuda.memory_allocated()


class Meter:
    """Memory in use from its creation on.
    CUDA: memory_allocated() above what was allocated at the start. CPU: the bytes of
    the storages shown to see() (and, through pack(), of those autograd saves for
    backward) that still exist, each storage once; a weak reference to each storage
    tells whether it has been freed."""

    def __init__(self):
        self.storages, self.offset = {}, 0  # address -> (weak reference, bytes)
        if ALLOCATOR:
            self.baseline = cuda_memory()

    def see(self, *tensors):
        for t in tensors:
            if t is not None:
                storage = t.untyped_storage()
                known = self.storages.get(storage.data_ptr())
                if known is None or known[0].expired():
                    weak = StorageWeakRef(storage)
                    self.storages[storage.data_ptr()] = (weak, storage.nbytes())

    def pack(self, t):
        """A saved_tensors_hooks pack hook: note what autograd saves. It returns a
        detached view: returning t itself would keep a saved output alive in a
        reference cycle after its graph is gone."""
        self.see(t)
        return t.detach()

    def now(self):
        if ALLOCATOR:
            return cuda_memory() - self.baseline - self.offset
        alive = sum(n for weak, n in self.storages.values() if not weak.expired())
        return alive - self.offset

    def zero(self):
        """Count from here on: leave out what exists now (CPU: what was seen)."""
        self.offset += self.now()


transform = transforms.Compose(
    [transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))]
)
test_loader = DataLoader(load_mnist(False, transform), batch_size=1000, shuffle=False)
criterion = nn.CrossEntropyLoss()
torch.manual_seed(0)
model = MLP().to(device)  # untrained: memory depends on shapes, not on the weights
if ALLOCATOR:  # warm-up: cuBLAS's workspaces are allocated once, up front
    images, labels = next(iter(test_loader))
    criterion(model(images.to(device)), labels.to(device)).backward()
    model.zero_grad(set_to_none=True)
    del images, labels
print(f"{len(test_loader)} test batches of {test_loader.batch_size}; memory: {METHOD}")


# %% tensor-sum
def evaluate(as_number):
    """The lesson's test loop without torch.no_grad(), adding up the loss as a tensor
    or as a number. Returns the memory in use after each step."""
    meter = Meter()
    meter.see(*model.parameters())
    meter.zero()  # the model is not part of the growth
    memory = []
    total_loss = 0
    for images, labels in test_loader:
        images, labels = images.to(device), labels.to(device)
        meter.see(images, labels)
        with torch.autograd.graph.saved_tensors_hooks(meter.pack, lambda t: t):
            loss = criterion(model(images), labels)
        meter.see(loss)
        if as_number:
            total_loss += loss.item()  # a Python float: no graph
        else:
            total_loss += loss  # a tensor: the sum joins every step's graph
        memory.append(meter.now())
    value = total_loss.item() if torch.is_tensor(total_loss) else total_loss
    print(f"total_loss is a {type(total_loss).__name__}: {value:.4f}")
    return memory


def per_step(memory):
    """The growth from step to step, in words."""
    growth = [b - a for a, b in itertools.pairwise(memory)]
    low, high = min(growth), max(growth)
    return f"{low:,} bytes every step" if low == high else f"{low:,} to {high:,} bytes"


leak = evaluate(as_number=False)
print(f"In use after step 1: {leak[0]:,} bytes; after step {len(leak)}: {leak[-1]:,}")
print(f"Growth per step with the tensor sum: {per_step(leak)} ({METHOD})")

# %% item
flat = evaluate(as_number=True)
print(f"{'step':>4} {'total_loss += loss':>20} {'+= loss.item()':>16}   ({METHOD})")
for step, (grows, stays) in enumerate(zip(leak, flat), start=1):
    print(f"{step:>4} {grows:>20,} {stays:>16,}")
print(f"Growth per step with .item(): {per_step(flat)} ({METHOD})")
images, labels = next(iter(test_loader))
batch = images.nbytes + labels.nbytes


def kept_text(memory, batch):
    """What the tensor sum kept, from its memory after each step: each step's batch
    only if memory grew by at least a batch every step."""
    growth = min(b - a for a, b in itertools.pairwise(memory))
    if growth >= batch:
        kept = (
            f"With the tensor sum, each step keeps its batch ({batch:,} bytes of "
            "images and labels) and what autograd saved, until total_loss itself is "
            "deleted."
        )
    else:
        kept = (
            "With the tensor sum, memory grew by less than a batch "
            f"({batch:,} bytes of images and labels) in some step: not every step "
            "kept its batch."
        )
    return (
        f"{kept} Under torch.no_grad() there is no graph at all; .item() is still the "
        "right way to add up a number."
    )


say(kept_text(leak, batch))


# %% training
def train(steps=20):
    """A training loop that keeps `running_loss += loss` as a tensor. backward() frees
    each step's saved tensors, but the chain of graph nodes behind running_loss grows.
    Returns (memory in use, nodes reachable from running_loss) after each step."""
    meter = Meter()
    torch.manual_seed(0)
    net = MLP().to(device)
    optimizer = optim.Adam(net.parameters(), lr=1e-3)
    meter.see(*net.parameters())
    loader = DataLoader(Subset(test_loader.dataset, range(steps * 64)), batch_size=64)
    running_loss, history = 0, []
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        meter.see(images, labels)
        with torch.autograd.graph.saved_tensors_hooks(meter.pack, lambda t: t):
            loss = criterion(net(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        meter.see(loss, *(p.grad for p in net.parameters()))
        meter.see(*(v for s in optimizer.state.values() for v in s.values()))
        running_loss += loss
        history.append((meter.now(), graph_nodes(running_loss)))
    return history


def graph_nodes(tensor):
    """How many autograd nodes can be reached from a tensor's grad_fn."""
    seen, todo = set(), [tensor.grad_fn]
    while todo:
        node = todo.pop()
        if node is not None and node not in seen:
            seen.add(node)
            todo += [next_node for next_node, _ in node.next_functions]
    return len(seen)


history = train()
for step in (1, 2, 10, 20):
    used, nodes = history[step - 1]
    print(
        f"training step {step:>2}: {used:>9,} bytes ({METHOD}), {nodes:>3} graph nodes"
    )
memory_growth = history[-1][0] - history[1][0]
node_growth = (history[-1][1] - history[1][1]) / (len(history) - 2)


def training_text(steps, memory_growth, node_growth, step_batch):
    """What running_loss kept from step 2 to the last step: backward freed each step's
    saved tensors only if memory grew by less than one batch a step."""
    grew = f"from step 2 to step {steps} memory grew by {memory_growth:,} bytes"
    if memory_growth < (steps - 2) * step_batch:
        text = (
            "In training, backward() has already freed each step's saved tensors: "
            f"{grew}"
        )
    else:
        text = (
            f"In training, {grew}, at least a batch ({step_batch:,} bytes) a step: "
            "tensors of every step are still alive"
        )
    if node_growth > 0:
        return (
            f"{text}, but the graph behind running_loss grew by {node_growth:.0f} "
            "nodes a step (host memory, outside the tensors)."
        )
    return f"{text}, and the graph behind running_loss did not grow."


step_batch = 64 * (images[0].nbytes + labels[0].nbytes)  # train()'s batches of 64
say(training_text(len(history), memory_growth, node_growth, step_batch))

# %% chart
MiB = 2**20
steps = range(1, len(leak) + 1)
fig, ax = plt.subplots(figsize=(7, 3.6))
ax.plot(steps, [b / MiB for b in leak], "o-", label="total_loss += loss")
ax.plot(steps, [b / MiB for b in flat], "s--", label="total_loss += loss.item()")
ax.set_xlabel("test batch (1000 images each), no torch.no_grad()")
ax.set_ylabel(f"memory in use (MiB, {METHOD})")
ax.set_title("Adding up the loss as a tensor keeps every step's graph")
ax.set_ylim(bottom=0)
ax.grid(True, alpha=0.3)
ax.legend()
plt.tight_layout()
plt.show()
