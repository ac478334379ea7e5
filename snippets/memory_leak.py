# %% setup
# Setup the cells below need: imports, the device, MNIST, the model, the measuring.
# The MNIST test set in batches of 1000, the lesson's MLP, and memory_after_each_step
# (a MemoryMeter that reads memory after each step of a loop, from outside it).
# On CUDA the memory is the allocator's memory_allocated() above what was allocated
# before the loop. On the CPU, which has no allocator counter, it is counted tensor
# bytes: batches, outputs and what autograd saved for backward, each storage once and
# only while it exists; the model's parameters are left out.
import contextlib
import io
import itertools
import os
import re
import socket
import sys

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


class MemoryMeter:
    """Memory in use while a `with` block runs, read by hooks around the code: on
    CUDA the allocator's counters, on the CPU counted tensor bytes (see above)."""

    def __init__(self, *watched, optimizer=None, layers=False, labels=None):
        modules = [w for w in watched if isinstance(w, torch.nn.Module)]
        self.tensors = [w for w in watched if torch.is_tensor(w)]
        self.modules, self.optimizer, self.layers = modules, optimizer, layers
        kind = {True: "loss", False: "forward"}
        self.labels = labels or {
            m: kind[type(m).__name__.endswith("Loss")] for m in modules
        }
        self.readings, self.saved, self.saved_as, self.saved_count = [], {}, {}, 0
        self.storages, self.known, self.made = {}, {}, {}  # address -> weak ref
        self.offset, self.highest, self.highest_at = 0, 0, None
        self.handles, self.accumulated = [], 0
        self.params = [p for m in modules for p in m.parameters()]

    def __enter__(self):
        existing = [*self.tensors, *self.params, *(p.grad for p in self.params)]
        if self.optimizer is not None:
            existing += self._state()
        self.see(*existing)
        self._note(self.known, existing)
        if ALLOCATOR:
            sizes = {self._ptr(t): self._bytes(t) for t in existing if t is not None}
            self.baseline = self._allocated() - sum(sizes.values())
            torch.cuda.reset_peak_memory_stats()
        for module in self.modules:
            self._watch(module, self.labels.get(module), top=True)
            for name, child in module.named_children() if self.layers else ():
                self._watch(child, name, top=False)
            for sub in module.modules():  # every layer's output counts while it lives
                if sub is not module and not (
                    self.layers and sub in [*module.children()]
                ):
                    self.handles.append(sub.register_forward_hook(self._see_output))
        for p in self.params:
            if p.requires_grad:
                self.handles.append(p.register_post_accumulate_grad_hook(self._grad))
        if self.optimizer is not None:
            self.handles.append(self.optimizer.register_step_post_hook(self._stepped))
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self.hooks.__enter__()
        self.read("start")
        return self

    def __exit__(self, *exc):
        self.hooks.__exit__(*exc)
        for handle in self.handles:
            handle.remove()
        self.read("end")

    def _watch(self, module, label, top):
        def before(module, args):
            for t in self._tensors(args):
                if top and not self._has(self.made, t):  # the batch, not a result
                    self._note(self.known, [t])
                self.see(t)

        def after(module, args, output):
            outputs = self._tensors(output)
            self.see(*outputs)
            self._note(self.made, outputs)
            self.read(label)
            for t in outputs if self.layers and not top else ():
                if t.requires_grad:
                    t.register_hook(lambda grad: self._backward(grad, label))

        self.handles.append(module.register_forward_pre_hook(before))
        self.handles.append(module.register_forward_hook(after))

    def _see_output(self, module, args, output):
        self.see(*self._tensors(output))

    def _backward(self, grad, label):
        self.see(grad)
        self.read(f"{label} backward")

    def _grad(self, param):
        self.see(param.grad)
        self.accumulated += 1
        if self.accumulated % len([p for p in self.params if p.requires_grad]) == 0:
            self.read("backward")

    def _stepped(self, optimizer, args, kwargs):
        self.see(*(p.grad for p in self.params), *self._state())
        self.read("optimizer step")

    def _state(self):
        states = self.optimizer.state.values()
        return [v for s in states for v in s.values() if torch.is_tensor(v)]

    def _pack(self, t):
        """saved_tensors_hooks' pack hook: count what autograd saves. It returns a
        detached view: returning t itself would keep a saved output alive in a
        reference cycle after its graph is gone."""
        self.saved_count += 1
        self.see(t)
        if not self._has(self.known, t):  # not a parameter, not the batch
            self.saved[self._ptr(t)] = self._bytes(t)
            self.saved_as[self._ptr(t)] = (tuple(t.shape), t.dtype)
        return t.detach()

    def see(self, *tensors):
        """Count these tensors' storages while they exist (the CPU's count)."""
        for t in tensors:
            if t is not None:
                storage = t.untyped_storage()
                known = self.storages.get(storage.data_ptr())
                if known is None or known[0].expired():
                    weak = StorageWeakRef(storage)
                    self.storages[storage.data_ptr()] = (weak, storage.nbytes())

    def now(self):
        """Bytes in use now, above what zero() left out."""
        if ALLOCATOR:
            return self._allocated() - self.baseline - self.offset
        alive = sum(n for weak, n in self.storages.values() if not weak.expired())
        return alive - self.offset

    def read(self, label):
        """Store a reading (label, bytes now); on CUDA also read the peak counter."""
        self.readings.append((label, self.now()))
        if ALLOCATOR:
            peak = torch.cuda.max_memory_allocated() - self.baseline - self.offset
            if peak > self.highest:
                self.highest, self.highest_at = peak, label
        return self.readings[-1][1]

    def zero(self):
        """Count from here on: leave out what is in use now."""
        self.offset += self.now()

    def peak(self):
        """(bytes, label): on CUDA the allocator's peak up to the last reading, between
        readings too, and the reading that first saw it; on the CPU the highest
        reading."""
        if ALLOCATOR:
            return self.highest, self.highest_at
        label, peak = max(self.readings, key=lambda r: r[1])
        return peak, label

    @staticmethod
    def _note(where, tensors):
        for t in tensors:
            if t is not None:
                where[t.untyped_storage().data_ptr()] = StorageWeakRef(
                    t.untyped_storage()
                )

    @staticmethod
    def _has(where, t):
        weak = where.get(t.untyped_storage().data_ptr())
        return weak is not None and not weak.expired()

    @staticmethod
    def _allocated():
        torch.cuda.synchronize()
        return torch.cuda.memory_allocated()

    @staticmethod
    def _ptr(t):
        return t.untyped_storage().data_ptr()

    @staticmethod
    def _bytes(t):
        return t.untyped_storage().nbytes()

    @staticmethod
    def _tensors(value):
        """The tensors in a module's arguments or output (tuples, lists, dicts)."""
        if torch.is_tensor(value):
            return [value]
        if isinstance(value, dict):
            value = list(value.values())
        if isinstance(value, (list, tuple)):
            return [t for v in value for t in MemoryMeter._tensors(v)]
        return []


class EveryStep:
    """The loader's sampler, wrapped: the meter reads memory each time the loop asks
    for a new batch, that is after each step, and once more when the sampler runs
    out, after the last step (while the loop's variables still exist)."""

    def __init__(self, sampler, batch_size, meter):
        self.sampler, self.batch_size, self.meter = sampler, batch_size, meter

    def __iter__(self):
        for number, index in enumerate(self.sampler):
            if number % self.batch_size == 0:
                self.meter.read("step")
            yield index
        self.meter.read("step")

    def __len__(self):
        return len(self.sampler)


@contextlib.contextmanager
def memory_after_each_step(loader, *watched, optimizer=None):
    """Memory in use after each step of a `for ... in loader` loop run inside the
    `with`, above what was in use before it (the model's parameters left out): a
    MemoryMeter watching the modules, reading each time the loader starts a batch."""
    memory = []
    batches = loader.batch_sampler
    sampler = batches.sampler
    with MemoryMeter(*watched, optimizer=optimizer) as meter:
        batches.sampler = EveryStep(sampler, loader.batch_size, meter)
        try:
            yield memory
        finally:
            batches.sampler = sampler
    start = meter.readings[0][1]  # what existed on entering: the parameters
    steps = [n - start for label, n in meter.readings if label == "step"]
    memory += steps[1:]  # the first reading comes before the first step


def per_step(memory):
    """The growth from step to step, in words."""
    growth = [b - a for a, b in itertools.pairwise(memory)]
    low, high = min(growth), max(growth)
    return f"{low:,} bytes every step" if low == high else f"{low:,} to {high:,} bytes"


def graph_nodes(node):
    """How many autograd nodes can be reached from a graph node."""
    seen, todo = set(), [node]
    while todo:
        node = todo.pop()
        if node is not None and node not in seen:
            seen.add(node)
            todo += [next_node for next_node, _ in node.next_functions]
    return len(seen)


def nodes_after_each_step(total):
    """The graph nodes behind a sum made with `+=` in a loop, after each step: walked
    back along the chain of additions, the first step's last."""
    counts, node = [], total.grad_fn
    while type(node).__name__.startswith("AddBackward"):  # one `+=` of one step
        counts.append(graph_nodes(node))
        node = node.next_functions[0][0]  # the sum before it
    return counts[::-1]


def kept_text(memory, batch):
    """Whether the tensor sum kept each step's batch: only if memory grew by at least
    a batch every step."""
    growth = min(b - a for a, b in itertools.pairwise(memory))
    if growth >= batch:
        return (
            f"Each step kept at least its batch ({batch:,} bytes of images and labels)"
        )
    return f"Memory grew by less than a batch ({batch:,} bytes) in some step"


def training_text(steps, memory_growth, node_growth, step_batch):
    """What running_loss kept from step 2 to the last step: backward freed each step's
    saved tensors only if memory grew by less than a batch a step."""
    grew = f"steps 2-{steps}: +{memory_growth:,} bytes"
    if memory_growth < (steps - 2) * step_batch:
        text = f"Saved tensors freed ({grew})"
    else:
        text = f"Tensors of each step kept ({grew})"
    if node_growth > 0:
        return f"{text}; the graph: +{node_growth:.0f} nodes a step"
    return f"{text}; the graph did not grow"


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
images, labels = next(iter(test_loader))
batch = images.nbytes + labels.nbytes  # one test batch: images and labels
print(f"{len(test_loader)} test batches of {test_loader.batch_size}; memory: {METHOD}")


# %% tensor-sum
def evaluate(model, loader):
    total_loss = 0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        loss = criterion(model(images), labels)
        total_loss += loss  # a tensor: the sum joins every step's graph
    return total_loss / len(loader)


with memory_after_each_step(test_loader, model, criterion) as leak:
    mean_loss = evaluate(model, test_loader)
print(f"The mean loss is a {type(mean_loss).__name__}: {mean_loss.item():.4f}")
print(f"In use after step 1: {leak[0]:,} bytes; after step {len(leak)}: {leak[-1]:,}")
print(f"Growth per step with the tensor sum: {per_step(leak)} ({METHOD})")


# %% item
def evaluate_fixed(model, loader):
    total_loss = 0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        loss = criterion(model(images), labels)
        total_loss += loss.item()  # a Python float: no graph
    return total_loss / len(loader)


with memory_after_each_step(test_loader, model, criterion) as flat:
    mean_loss_fixed = evaluate_fixed(model, test_loader)
print(f"The mean loss is a {type(mean_loss_fixed).__name__}: {mean_loss_fixed:.4f}")
print(f"{'step':>4} {'total_loss += loss':>20} {'+= loss.item()':>16}   ({METHOD})")
for step, (grows, stays) in enumerate(zip(leak, flat), start=1):
    print(f"{step:>4} {grows:>20,} {stays:>16,}")
print(f"Growth per step with .item(): {per_step(flat)} ({METHOD})")
print(kept_text(leak, batch))


# %% training
def train(net, loader, optimizer):
    """A training loop that keeps the same mistake: running_loss += loss."""
    running_loss = 0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        loss = criterion(net(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        running_loss += loss
    return running_loss


net = MLP().to(device)
optimizer = optim.Adam(net.parameters(), lr=1e-3)
loader = DataLoader(Subset(test_loader.dataset, range(20 * 64)), batch_size=64)
with memory_after_each_step(loader, net, criterion, optimizer=optimizer) as memory:
    running_loss = train(net, loader, optimizer)
history = list(zip(memory, nodes_after_each_step(running_loss)))
for step in (1, 2, 10, 20):
    used, nodes = history[step - 1]
    print(
        f"training step {step:>2}: {used:>9,} bytes ({METHOD}), {nodes:>3} graph nodes"
    )
steps = len(history)  # growth from step 2 on: step 1 also made Adam's state
growth = history[-1][0] - history[1][0], (history[-1][1] - history[1][1]) / (steps - 2)
print(training_text(steps, *growth, step_batch=64 * batch // 1000))

# %% chart
# The chart: memory after each step, adding up the loss as a tensor or as a number.
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

# %% exercise-batch-500
half = DataLoader(test_loader.dataset, batch_size=500)
with memory_after_each_step(half, model, criterion) as memory:
    evaluate(model, half)
print(f"Growth per step with the tensor sum at batch 500: {per_step(memory)}")
