# %% setup
# Setup the cells below need: imports, the device, sizes, data, the meter, a table.
# Random images (only the shapes matter), MemoryMeter, and show_kept: the table of what
# each model kept for backward.
# Kept for backward: the bytes of what autograd saved in the forward pass, beyond the
# parameters and the batch, counted through saved_tensors_hooks on either device. On
# CUDA also the step's peak, the allocator's max_memory_allocated(). Time: the median
# of 7 timed training steps (forward, loss, backward) after 2 untimed ones.
import statistics
import time

import matplotlib.pyplot as plt
import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils.checkpoint import checkpoint

torch.manual_seed(0)
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
print(f"Device: {device}" + gpu)
ALLOCATOR = device.type == "cuda"  # the CUDA caching allocator counts every byte
METHOD = "CUDA allocator" if ALLOCATOR else "counted tensor bytes"
WIDTH, DEPTH, BATCH = 1024, 8, 512
MiB = 2**20
x = torch.randn(BATCH, 1, 28, 28, device=device)
y = torch.randint(0, 10, (BATCH,), device=device)
criterion = nn.CrossEntropyLoss()
# warm-up on a throwaway layer: on CUDA, cuBLAS's workspaces are allocated once, here
nn.Linear(784, WIDTH).to(device)(x.flatten(1)).sum().backward()


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


def kept_and_peak(meter):
    """(bytes autograd saved for backward beyond the parameters and the batch, the
    peak of the step on CUDA or None)."""
    return sum(meter.saved.values()), meter.peak()[0] if ALLOCATOR else None


def show_kept(kept):
    """The table: kept for backward, and on CUDA the step's peak, per model."""
    header = f"{'checkpoints':<19} {'kept for backward':>24}"
    print(header + (f" {'peak of the step':>26}" if ALLOCATOR else ""))
    for label, (kept_bytes, peak) in kept.items():
        line = f"{label:<19} {kept_bytes:>14,} bytes = {kept_bytes / MiB:5.2f} MiB"
        print(line + (f" {peak:>12,} bytes" if peak is not None else ""))
    peak = f"; the peak: {METHOD}" if ALLOCATOR else ""
    print(f"(counted tensor bytes of what autograd saved{peak})")


# %% model
def block(width_in):
    return nn.Sequential(nn.Linear(width_in, WIDTH), nn.ReLU())


model = nn.Sequential(
    nn.Flatten(),
    *[block(784 if i == 0 else WIDTH) for i in range(DEPTH)],
    nn.Linear(WIDTH, 10),
).to(device)
params = sum(p.numel() for p in model.parameters())
print(f"{DEPTH} blocks of Linear + ReLU, {WIDTH} wide, then Linear to 10")
print(f"{params:,} parameters = {params * 4:,} bytes (float32); batch {BATCH}")
print(f"One block's output at batch {BATCH}: {BATCH * WIDTH * 4:,} bytes (float32)")


# %% checkpointed
class Checkpointed(nn.Module):
    """The same model, each run of `size` blocks one checkpoint."""

    def __init__(self, model, size):
        super().__init__()
        self.flatten, *blocks, self.head = model
        self.runs = nn.ModuleList(
            nn.Sequential(*blocks[i : i + size]) for i in range(0, len(blocks), size)
        )

    def forward(self, x):
        x = self.flatten(x)
        for run in self.runs:
            x = checkpoint(run, x, use_reentrant=False)
        return self.head(x)


# %% memory
models = {"no checkpointing": model, "every block": Checkpointed(model, 1)}
models |= {f"runs of {k} blocks": Checkpointed(model, k) for k in (4, 8)}
kept = {}
for label, net in models.items():
    with MemoryMeter(net, criterion, x, y) as meter:
        loss = criterion(net(x), y)
        loss.backward()
    net.zero_grad(set_to_none=True)
    kept[label] = kept_and_peak(meter)
show_kept(kept)
plain, best = kept["no checkpointing"][0], kept["runs of 4 blocks"][0]
print(
    f"Runs of 4 blocks keep {plain - best:,} bytes less than no checkpointing "
    f"({best / plain:.2f} of it)"
)


# %% time
# Timing: training steps without checkpoints and with runs of 4 blocks, in turns.
# Timed in turns so that a busy moment of the machine hits both; the median of 7, and
# the fastest and slowest.
def step_seconds(nets, warmup=2, repeats=7):
    """Seconds of every timed training step (forward, loss, backward) of each model
    in `nets`, timed in turns."""

    def step(net):
        criterion(net(x), y).backward()
        net.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    seconds = {label: [] for label in nets}
    for repeat in range(warmup + repeats):
        for label, net in nets.items():
            start = time.perf_counter()
            step(net)
            if repeat >= warmup:  # the first steps allocate fresh memory: untimed
                seconds[label].append(time.perf_counter() - start)
    return seconds


runs = step_seconds(
    {label: models[label] for label in ("no checkpointing", "runs of 4 blocks")}
)
timed = {label: statistics.median(s) for label, s in runs.items()}
for label, seconds in timed.items():
    print(f"{label:<19} {seconds * 1000:9.1f} ms a step (median of 7)")
    fastest, slowest = min(runs[label]) * 1000, max(runs[label]) * 1000
    print(f"{'':<19} {fastest:9.1f} to {slowest:.1f} ms (fastest to slowest)")
plain_ms, checkpointed_ms = (round(s * 1000, 1) for s in timed.values())
print(f"Ratio: {checkpointed_ms / plain_ms:.2f} (runs of 4 blocks / no checkpointing)")
pairs = [b / a for a, b in zip(*runs.values())]  # each turn: one step of each, in a row
each_turn = f"{min(pairs):.2f} to {max(pairs):.2f}"
print(f"Ratio in each of the 7 turns (one step of each, in a row): {each_turn}")

# %% chart
# The chart: memory kept for backward per model, and the time a step takes.
fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 4.2))
top.barh(list(kept), [b / MiB for b, _ in kept.values()], color="tab:blue")
top.invert_yaxis()
top.set_xlabel("MiB kept for backward after the forward pass (saved tensors)")
top.set_ylabel("checkpoints")
top.set_title(f"Activation memory, {DEPTH} blocks of {WIDTH} at batch {BATCH}")
bottom.barh(list(timed), [s * 1000 for s in timed.values()], color="tab:orange")
bottom.invert_yaxis()
bottom.set_xlabel("milliseconds a training step (median of 7)")
bottom.set_ylabel("checkpoints")
bottom.set_title("The price: time for the forward pass run again")
plt.tight_layout()
plt.show()

# %% exercise-runs-of-2
net = Checkpointed(model, 2)
with MemoryMeter(net, criterion, x, y) as meter:
    loss = criterion(net(x), y)
    loss.backward()
net.zero_grad(set_to_none=True)
kept_bytes = kept_and_peak(meter)[0]
blocks, rest = divmod(kept_bytes, BATCH * WIDTH * 4)
print(f"runs of 2 blocks: {kept_bytes:,} bytes kept for backward")
print(f"= {blocks} block outputs + {rest:,} bytes")
