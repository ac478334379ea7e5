# %% setup
# Activation checkpointing with torch.utils.checkpoint on a deeper MLP: 8 hidden blocks
# (Linear + ReLU, 1024 wide) at batch 512, on random images (only the shapes matter).
# A checkpointed run of blocks keeps only its input for backward, and runs its forward
# pass again during backward: less memory, more compute.
# Memory kept for backward after the forward pass: on CUDA the allocator's
# memory_allocated() (and the step's peak, max_memory_allocated()); on the CPU, which
# has no allocator counter, counted tensor bytes: every layer's output and what
# autograd saved, each storage once and only while it exists. Time: the median of 7
# timed training steps (forward, loss, backward) after 2 untimed ones.
import statistics
import textwrap
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


def say(text):
    """Print a long sentence in lines of at most 88 characters."""
    print(textwrap.fill(text, 88, break_on_hyphens=False))


def cuda_memory():
    """(bytes allocated now, the most allocated since the last reset): the CUDA
    caching allocator's counters, one set for the whole process."""
    torch.cuda.synchronize()
    return torch.cuda.memory_allocated(), torch.cuda.max_memory_allocated()


class Meter:
    """Memory from its creation on.
    CUDA: memory_allocated() and max_memory_allocated() above what was allocated at
    the start. CPU: the bytes of the storages shown to see() (and, through pack(), of
    those autograd saves for backward) that still exist, each storage once; a weak
    reference to each storage tells whether it has been freed."""

    def __init__(self):
        self.storages, self.offset = {}, 0  # address -> (weak reference, bytes)
        if ALLOCATOR:
            self.baseline = cuda_memory()[0]
            torch.cuda.reset_peak_memory_stats()

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
            return cuda_memory()[0] - self.baseline - self.offset
        alive = sum(n for weak, n in self.storages.values() if not weak.expired())
        return alive - self.offset

    def zero(self):
        """Count from here on: leave out what exists now (CPU: what was seen)."""
        self.offset += self.now()


# %% model
def run_blocks(blocks, x):
    for block in blocks:
        x = block(x)
    return x


class DeepMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(784 if i == 0 else WIDTH, WIDTH), nn.ReLU())
            for i in range(DEPTH)
        )
        self.head = nn.Linear(WIDTH, 10)

    def forward(self, x, group=0):
        """group=0: no checkpointing. group=k: each run of k blocks is one checkpoint:
        backward gets only the run's input, and runs the blocks' forward again."""
        x = self.flatten(x)
        size = group or DEPTH
        for start in range(0, DEPTH, size):
            run = self.blocks[start : start + size]
            if group:
                x = checkpoint(run_blocks, run, x, use_reentrant=False)
            else:
                x = run_blocks(run, x)
        return self.head(x)


x = torch.randn(BATCH, 1, 28, 28, device=device)
y = torch.randint(0, 10, (BATCH,), device=device)
criterion = nn.CrossEntropyLoss()
model = DeepMLP().to(device)
params = sum(p.numel() for p in model.parameters())
print(f"DeepMLP: {DEPTH} blocks of Linear + ReLU, {WIDTH} wide, then Linear to 10")
print(f"{params:,} parameters = {params * 4:,} bytes (float32); batch {BATCH}")
print(f"One block's output at batch {BATCH}: {BATCH * WIDTH * 4:,} bytes (float32)")
criterion(model(x), y).backward()  # warm-up (CUDA: cuBLAS's workspaces)
model.zero_grad(set_to_none=True)

# %% memory
GROUPS = {"no checkpointing": 0, "every block": 1}
GROUPS |= {f"runs of {k} blocks": k for k in (2, 4, 8)}


def kept_for_backward(group):
    """Bytes in use after the forward pass and the loss, above the model and the batch
    (what backward will need), and on CUDA the peak of the whole step."""
    meter = Meter()
    meter.see(*model.parameters(), x, y)
    meter.zero()

    def after_layer(module, args, out):
        meter.see(out)

    layers = [m for m in model.modules() if not list(m.children())]
    handles = [layer.register_forward_hook(after_layer) for layer in layers]
    with torch.autograd.graph.saved_tensors_hooks(meter.pack, lambda t: t):
        loss = criterion(model(x, group), y)
    kept = meter.now()
    loss.backward()
    for handle in handles:
        handle.remove()
    model.zero_grad(set_to_none=True)
    if ALLOCATOR:
        return kept, cuda_memory()[1] - meter.baseline
    return kept, None


kept = {label: kept_for_backward(group) for label, group in GROUPS.items()}
MiB = 2**20
header = f"{'checkpoints':<19} {'kept for backward':>24}"
print(header + (f" {'peak of the step':>26}" if ALLOCATOR else ""))  # over "N bytes"
for label, (kept_bytes, peak) in kept.items():
    line = f"{label:<19} {kept_bytes:>14,} bytes = {kept_bytes / MiB:5.2f} MiB"
    print(line + (f" {peak:>12,} bytes" if peak is not None else ""))
print(f"({METHOD}; above the model and the batch)")
plain, best = kept["no checkpointing"][0], kept["runs of 4 blocks"][0]
print(
    f"Runs of 4 blocks keep {plain - best:,} bytes less than no checkpointing "
    f"({best / plain:.2f} of it)"
)
say(
    "Checkpointing every block saves nothing here: a block's input is the previous "
    "ReLU's output, exactly what autograd keeps anyway. A checkpoint helps when it "
    "spans several layers."
)


# %% time
def step_seconds(labels, warmup=2, repeats=7):
    """Seconds of every timed training step (forward, loss, backward) of each grouping
    in `labels`, timed in turns so that a busy moment of the machine hits them all."""

    def step(group):
        criterion(model(x, group), y).backward()
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    seconds = {label: [] for label in labels}
    for repeat in range(warmup + repeats):
        for label in labels:
            start = time.perf_counter()
            step(GROUPS[label])
            if repeat >= warmup:  # the first steps allocate fresh memory: untimed
                seconds[label].append(time.perf_counter() - start)
    return seconds


runs = step_seconds(["no checkpointing", "runs of 4 blocks"])
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
say(
    "The extra time is the forward pass of the checkpointed blocks, run a second time "
    "during backward. Timings differ from run to run and machine to machine."
)

# %% chart
fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5))
top.barh(list(kept), [b / MiB for b, _ in kept.values()], color="tab:blue")
top.invert_yaxis()
top.set_xlabel(f"MiB kept for backward after the forward pass ({METHOD})")
top.set_ylabel("checkpoints")
top.set_title(f"Activation memory, {DEPTH} blocks of {WIDTH} at batch {BATCH}")
bottom.barh(list(timed), [s * 1000 for s in timed.values()], color="tab:orange")
bottom.invert_yaxis()
bottom.set_xlabel("milliseconds a training step (median of 7)")
bottom.set_ylabel("checkpoints")
bottom.set_title("The price: time for the forward pass run again")
plt.tight_layout()
plt.show()
