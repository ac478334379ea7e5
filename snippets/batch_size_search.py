# %% setup
# The lesson's batch-size search, done for real: start at 16, double until the step no longer fits in a memory
# budget, then bisect between the last size that fitted and the first that did not.
# On CUDA the budget is enforced by PyTorch's allocator (a real out-of-memory error); on the CPU, which has no such
# limit, each trial's bytes are measured from its tensors and compared with the same budget.
import gc
import torch
import torch.nn as nn
import torch.optim as optim
import matplotlib.pyplot as plt

torch.manual_seed(0)
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
print(f"Device: {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))

class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()
        self.layer1 = nn.Linear(784, 128)
        self.relu = nn.ReLU()
        self.layer2 = nn.Linear(128, 10)
    def forward(self, x):
        return self.layer2(self.relu(self.layer1(self.flatten(x))))

BUDGET_BYTES = 128 * 2**20                  # the pretend "GPU memory": 134,217,728 bytes
print(f"Memory budget: {BUDGET_BYTES:,} bytes = {BUDGET_BYTES / 2**20:.0f} MiB")
if device.type == "cuda":
    MLP().to(device)(torch.randn(16, 1, 28, 28, device=device)).sum().backward()   # cuBLAS set-up, outside trials
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(BUDGET_BYTES / total)   # beyond this, allocations raise OOM
    print(f"CUDA: this process may now use {BUDGET_BYTES / total:.5f} of the GPU's {total:,} bytes")
else:
    print("CPU: no real out-of-memory here; a trial whose measured bytes exceed the budget counts as failed")

# %% trial
def step_bytes(batch_size):
    """One real training step (forward, loss, backward, Adam step) on random images; returns the bytes it used.
    Random pixels are enough: memory depends on the batch's shape, not on what the images show."""
    model = MLP().to(device)
    optimizer = optim.Adam(model.parameters(), lr=1e-3)
    images = torch.randn(batch_size, 1, 28, 28, device=device)
    labels = torch.randint(0, 10, (batch_size,), device=device)
    saved = {}                               # storage address -> bytes, for every tensor autograd saves
    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        output = model(images)
        loss = nn.functional.cross_entropy(output, labels)
    loss.backward()
    optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    already_counted = {t.untyped_storage().data_ptr() for t in [images, labels, *model.parameters()]}
    tensors = [*model.parameters(), *(p.grad for p in model.parameters()), images, labels, output, loss,
               *(v for s in optimizer.state.values() for v in s.values())]
    return (sum(t.numel() * t.element_size() for t in tensors)
            + sum(n for ptr, n in saved.items() if ptr not in already_counted))

def trial(batch_size):
    """(fits, bytes): bytes is None when CUDA ran out of memory."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    try:
        used = step_bytes(batch_size)       # its tensors are local: they are freed when it returns or raises
        fits = used <= BUDGET_BYTES
    except torch.cuda.OutOfMemoryError:
        used, fits = None, False
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()            # hand the cached blocks back before the next try
    return fits, used

# %% search
trials = []
def run_trial(batch_size):
    fits, used = trial(batch_size)
    trials.append((batch_size, fits, used))
    if fits:
        result = "fits"
    elif used is None:
        result = "OUT OF MEMORY (torch.cuda.OutOfMemoryError)"
    else:
        result = "over budget (CPU: measured bytes, no real OOM)"
    shown = "?" if used is None else f"{used:,}"
    print(f"trial {len(trials):>2}: batch {batch_size:>7,}  {shown:>13} bytes  {result}")
    return fits

good, bad = None, 16
while run_trial(bad):                       # phase 1: double from 16 until a step does not fit
    good, bad = bad, bad * 2
if good is None:
    print("Even a batch of 16 does not fit in the budget.")
else:
    resolution = max(16, good // 64)        # phase 2: bisect to within 1/64 of the last good size
    while bad - good > resolution:
        middle = (good + bad) // 2
        if run_trial(middle):
            good = middle
        else:
            bad = middle
    fitted = [(b, used) for b, fits, used in trials if fits]
    (b0, m0), (b1, m1) = min(fitted), max(fitted)
    per_sample = (m1 - m0) / (b1 - b0)
    print(f"Largest batch found: {good:,} (the first failure was {bad:,}; resolution {resolution} samples)")
    print(f"Memory per extra sample: {per_sample:,.1f} bytes; fixed part: {m0 - per_sample * b0:,.0f} bytes")
    print(f"{len(trials)} trials in all")

# %% chart
MiB = 2**20
fig, ax = plt.subplots(figsize=(7, 4))
ok = sorted((b, used / MiB) for b, fits, used in trials if fits)
over = [(b, used / MiB) for b, fits, used in trials if not fits and used is not None]
oom = [b for b, fits, used in trials if used is None]
ax.plot(*zip(*ok), "o-", label="fits")
if over:
    ax.plot(*zip(*over), "x", color="red", markersize=9, label="over budget (measured)")
if oom:
    ax.plot(oom, [BUDGET_BYTES / MiB] * len(oom), "x", color="red", markersize=9, label="out of memory")
ax.axhline(BUDGET_BYTES / MiB, color="grey", linestyle="--", label=f"budget {BUDGET_BYTES / MiB:.0f} MiB")
ax.set_xscale("log", base=2)
ax.set_yscale("log")
ax.set_xticks([2**k for k in range(4, 18, 2)], [f"{2**k:,}" for k in range(4, 18, 2)])
ax.set_xlabel("batch size (samples, log scale)")
ax.set_ylabel("memory used by one training step (MiB, log scale)")
ax.set_title(f"Batch-size search on {device.type.upper()}: Adam step of the MNIST MLP")
ax.legend()
plt.tight_layout()
plt.show()
