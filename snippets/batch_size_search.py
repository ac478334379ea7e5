# %% setup
# Setup the cells below need: imports, the device, the model, the budget, and the meter
# of a training step's peak memory (StepMemory, training_step_peak) with random batches.
# The lesson's recipe: start small (16) and grow the batch until a step runs out of
# memory or the results get worse. This file grows it our way: double until a step does
# not fit in a memory budget, then bisect. A trial measures the peak memory of a
# training step: the most tensor bytes alive at one moment over two steps with Adam.
import contextlib
import gc
import textwrap
from typing import NamedTuple

import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.optim as optim

torch.manual_seed(0)
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
gpu_name = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
print(f"Device: {device}" + gpu_name)
ALLOCATOR = device.type == "cuda"  # the CUDA caching allocator counts every byte


def say(text, first="", rest=None):
    """Print a long sentence wrapped at 88 columns, its lines indented."""
    print(
        textwrap.fill(text, 88, initial_indent=first, subsequent_indent=rest or first)
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


MiB = 2**20
BUDGET_BYTES = 128 * MiB  # the pretend "GPU memory"
START, CAP = 16, 65536  # the first size tried; never beyond CAP
print(f"Memory budget: {BUDGET_BYTES:,} bytes = {BUDGET_BYTES / MiB:.0f} MiB")
print(f"Double from {START} (up to a cap of {CAP:,}), then bisect.")
PEAK_LABEL = (
    "CUDA allocator, above the baseline" if ALLOCATOR else "counted tensor bytes"
)


def cuda_memory():
    """(allocated, reserved, most allocated, most reserved since the last reset), in
    bytes: the CUDA caching allocator's counters, one set for the whole process."""
    torch.cuda.synchronize()
    return (
        torch.cuda.memory_allocated(),
        torch.cuda.memory_reserved(),
        torch.cuda.max_memory_allocated(),
        torch.cuda.max_memory_reserved(),
    )


class StepMemory:
    """The peak memory of the training steps run inside `with`, measured around them:
    the loop itself stays a plain training loop.
    CUDA: the caching allocator's counters. Cached blocks are given back first, so that
    every measurement starts from the same reserved memory, and the peaks are reset:
    .peak is max_memory_allocated() above `baseline` (default: what is allocated when
    the `with` starts); max_memory_reserved() is then this measurement's own.
    CPU, which has no such counters: watch() hooks count the bytes of the parameters,
    gradients, optimizer state, batch, logits, loss and what autograd saved for
    backward (each storage once) after each event: forward with the loss (the loss's
    forward hook), backward (the optimizer's step pre-hook) and the optimizer step (its
    post-hook). Moving the batch and zero_grad are not counted: neither is ever the
    peak, the forward adds to the first and the second only frees. .peak is the most
    bytes, .event the first event that had them (None on CUDA)."""

    def __init__(self, baseline=None):
        self.baseline, self.counts, self.hooks = baseline, [], []
        self.peak = self.event = self.saving = None

    def __enter__(self):
        if ALLOCATOR:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()  # to measure, not to recover (see above)
            if self.baseline is None:
                self.baseline = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        return self

    def watch(self, model, criterion, optimizer):
        """CPU: count the bytes alive after each event of these three's steps."""
        if ALLOCATOR:
            return  # the allocator counts every byte by itself
        self.model, self.optimizer, self.step = model, optimizer, 0
        self.images = self.labels = self.output = self.loss = None
        self.saved = {}  # storage address -> bytes, what autograd saved for backward
        self.hooks = [
            model.register_forward_pre_hook(self.batch_arrived),
            criterion.register_forward_hook(self.loss_computed),
            optimizer.register_step_pre_hook(self.backward_done),
            optimizer.register_step_post_hook(self.stepped),
        ]
        self.saving = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self.saving.__enter__()

    def pack(self, t):
        self.saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t.detach()  # t itself would keep a saved output alive in a cycle

    def batch_arrived(self, model, args):
        self.step, self.images = self.step + 1, args[0]

    def loss_computed(self, criterion, args, loss):
        self.output, self.labels, self.loss = args[0], args[1], loss
        self.count("forward")  # with the loss

    def backward_done(self, optimizer, args, kwargs):
        self.saved.clear()  # backward frees what autograd saved
        self.count("backward")

    def stepped(self, optimizer, args, kwargs):
        self.count("optimizer step")

    def count(self, event):
        params = list(self.model.parameters())
        state = self.optimizer.state.values()
        tensors = [
            *params,
            *(p.grad for p in params),
            *(v for s in state for v in s.values() if torch.is_tensor(v)),
            self.images,
            self.labels,
            self.output,
            self.loss,
        ]
        sizes = {  # each storage once
            t.untyped_storage().data_ptr(): t.numel() * t.element_size()
            for t in tensors
            if t is not None
        }
        sizes.update((ptr, n) for ptr, n in self.saved.items() if ptr not in sizes)
        self.counts.append((sum(sizes.values()), f"{self.step}: {event}"))

    def __exit__(self, *exception):
        for hook in self.hooks:
            hook.remove()
        if self.saving is not None:
            self.saving.__exit__(*exception)
        if ALLOCATOR:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.baseline
        elif self.counts:
            self.peak, self.event = max(self.counts, key=lambda c: c[0])  # the first
        return False


def training_step_peak(batches, baseline=None):
    """Peak memory of a training step: the most tensor bytes alive at one moment over
    two plain training steps with Adam, from a fresh model; StepMemory measures them.
    Returns (bytes, the event of the CPU peak or None on CUDA)."""
    with StepMemory(baseline) as memory:  # CUDA: from here, the model included
        torch.manual_seed(0)
        model = MLP().to(device)
        criterion = nn.CrossEntropyLoss()
        optimizer = optim.Adam(model.parameters(), lr=1e-3)
        memory.watch(model, criterion, optimizer)  # CPU: hooks that count bytes
        for images, labels in batches:
            images, labels = images.to(device), labels.to(device)
            output = model(images)
            loss = criterion(output, labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    return memory.peak, memory.event


def random_batches(batch_size):
    """The same random batch twice, in host memory as a DataLoader gives it. Random
    pixels are enough: memory depends on the batch's shape, not on what it shows."""
    images = torch.randn(batch_size, 1, 28, 28)
    labels = torch.randint(0, 10, (batch_size,))
    return [(images, labels)] * 2


# %% trial
# The trial the search runs at each size (two training steps, judged against the
# budget), the baseline it measures above (CUDA), and how the search reports.
if ALLOCATOR:
    # Warm-up: one unmeasured trial, so that the CUDA context and cuBLAS's workspaces
    # (one per thread: backward runs on autograd's own) exist before any measurement.
    training_step_peak(random_batches(START))
    gc.collect()
    torch.cuda.empty_cache()
    baseline = cuda_memory()[:2]  # (allocated, reserved)
    blocks = torch.cuda.memory_stats()["allocation.all.current"]
    say(
        f"CUDA baseline after a warm-up trial at batch {START}: {baseline[0]:,} bytes "
        f"allocated in {blocks} blocks, {baseline[1]:,} bytes reserved"
    )


def step_peaks(batch_size):
    """(allocated, reserved or None on the CPU, the event of the CPU peak or None on
    CUDA): the peaks of two training steps at this batch size, above the baseline.
    StepMemory empties the CUDA cache first, so that every trial starts from the same
    reserved memory and its max_memory_reserved() is its own."""
    if ALLOCATOR:
        peak, _ = training_step_peak(random_batches(batch_size), baseline[0])
        return peak, cuda_memory()[3] - baseline[1], None
    peak, event = training_step_peak(random_batches(batch_size))
    return peak, None, event


class Trial(NamedTuple):
    batch: int
    fits: bool
    peak: int | None  # allocated (CPU: counted); None: out of memory before a reading
    reserved: int | None  # CUDA: the reserved peak, what the budget limits
    event: str | None  # CPU: the event of the peak
    why: str


def trial(batch_size, budget_bytes):
    """Run two training steps at this batch size and judge them against the budget."""
    try:
        peak, reserved, event = step_peaks(batch_size)
    except torch.cuda.OutOfMemoryError:
        peak = reserved = event = None
    # The failed call's tensors were its locals: collect them now. A training run needs
    # no empty_cache() after an OOM: when a cudaMalloc fails (also against
    # set_per_process_memory_fraction's limit), PyTorch's caching allocator frees its
    # cached blocks that are not split and retries before it raises OutOfMemoryError.
    # The search empties the cache before each trial only so that every trial starts
    # from the same reserved memory and its max_memory_reserved() is its own.
    gc.collect()
    at = f"; peak at '{event}'" if event else ""
    if ALLOCATOR and (left := cuda_memory()[0] - baseline[0]):
        at += f"; {left:+,} bytes still allocated after the trial"  # should not happen
    if peak is None:
        why = "OUT OF MEMORY (torch.cuda.OutOfMemoryError)"
        return Trial(batch_size, False, None, None, None, why)
    used = reserved if ALLOCATOR else peak  # what the budget is on
    if used > budget_bytes:
        how = "reserved" if ALLOCATOR else "counted, no real OOM"
        return Trial(
            batch_size, False, peak, reserved, event, f"over budget ({how}){at}"
        )
    return Trial(batch_size, True, peak, reserved, event, f"fits{at}")


def budgeted(t):
    """What the budget is on: reserved memory on CUDA, counted bytes on the CPU."""
    return t.reserved if ALLOCATOR else t.peak


def budgeted_peak(batch_size):
    """The peak the budget is compared with, at this batch size."""
    peak, reserved, _ = step_peaks(batch_size)
    gc.collect()
    return reserved if ALLOCATOR else peak


@contextlib.contextmanager
def memory_limit(budget_bytes):
    """CUDA: a real limit on reserved memory, the baseline plus the budget, beyond which
    the allocator raises OutOfMemoryError; lifted afterwards. CPU: no limit to set."""
    if ALLOCATOR:
        total = torch.cuda.mem_get_info()[1]  # the limit is a fraction of this
        fraction = min(1.0, (baseline[1] + budget_bytes) / total)
        torch.cuda.set_per_process_memory_fraction(fraction)
    try:
        yield
    finally:
        if ALLOCATOR:
            torch.cuda.set_per_process_memory_fraction(1.0)  # later cells: no limit


class SearchResult(NamedTuple):
    budget: int
    start: int
    cap: int
    trials: list
    largest: int | None  # the largest batch that fitted
    first_failing: int | None  # the smallest batch that failed
    outcome: str  # one of the four below
    message: str


def search_result(budget_bytes, start, cap, trials, good, bad, resolution):
    """The search's outcome, and a sentence saying why it ended."""
    if good is None:
        outcome = "nothing fits"
        first = trials[0]
        message = f"not even the start size, {start:,}, fits: " + (
            "it ran out of memory"
            if first.peak is None
            else f"its peak, {budgeted(first):,} bytes, is over the budget"
        )
    elif bad is None:
        outcome = "reached the cap"
        message = (
            f"every size tried fits, up to {good:,}; the next doubling would "
            f"pass the cap of {cap:,}, so the largest batch that fits may be "
            f"bigger"
        )
    elif good == start:
        outcome = "only the start size fits"
        message = (
            f"{start:,} fits, {bad:,} does not; no size between them is tried "
            f"(resolution {resolution:,} samples)"
        )
    else:
        outcome = "found the largest batch"
        message = (
            f"{good:,} fits, {bad:,} does not (resolution {resolution:,} "
            f"samples: 1/64 of the last size the doubling fitted, at least "
            f"{start})"
        )
    return SearchResult(budget_bytes, start, cap, trials, good, bad, outcome, message)


def fitted_line(result):
    """(bytes per sample, fixed bytes, (b0, b1)): the straight line through the peaks of
    the two largest fitting trials, or None when fewer than two trials fit."""
    fitted = sorted((t.batch, t.peak) for t in result.trials if t.fits)
    if len(fitted) < 2:
        return None
    (b0, m0), (b1, m1) = fitted[-2:]  # two different sizes: no trial is repeated
    per_sample = (m1 - m0) / (b1 - b0)
    return per_sample, m1 - per_sample * b1, (b0, b1)


def line_text(result):
    line = fitted_line(result)
    if line is None:
        if any(t.fits for t in result.trials):
            return "only one trial fits: no line can be fitted from one point"
        return "no trial fits: no line to fit"
    per_sample, fixed, (b0, b1) = line
    return (
        f"line through the peaks at {b0:,} and {b1:,}: {per_sample:,.1f} bytes per "
        f"sample + {fixed:,.0f} bytes fixed"
    )


def show_trials(result):
    """The search's trials, one row each, and its outcome."""
    reserved = f" {'reserved':>13}" if ALLOCATOR else ""
    print(
        f"{'trial':>5} {'batch':>7} {'peak bytes':>13}{reserved}   (peak memory of a "
        f"training step, {PEAK_LABEL})"
    )
    for number, t in enumerate(result.trials, start=1):
        shown = "?" if t.peak is None else f"{t.peak:,}"
        if ALLOCATOR:
            shown = (
                f"{shown:>13} {'?' if t.reserved is None else f'{t.reserved:,}':>13}"
            )
        print(f"{number:>5} {t.batch:>7,} {shown:>13}   {t.why}")
    say(f"{len(result.trials)} trials. Outcome: {result.outcome}: {result.message}")


def fixed_text(fixed, params):
    """CPU: what the line's fixed bytes are made of, if they are the parameters, Adam's
    two moment buffers and a few scalars (less than SCALARS bytes)."""
    rest = round(fixed - 3 * params)
    if 0 <= rest < SCALARS:
        return (
            f"CPU: of the fixed part, {params:,} bytes are the parameters and "
            f"{2 * params:,} Adam's two moment buffers; {rest:,} bytes are small "
            "scalars (Adam's step counters, the loss, its total weight)"
        )
    return (
        f"CPU: the fixed part, {fixed:,.0f} bytes, is not the parameters "
        f"({params:,}) and Adam's two moment buffers ({2 * params:,}) with a few "
        f"scalars: it differs from those two by {rest:+,} bytes"
    )


def events_text(trials, line):
    """CPU: where the two fitted trials peak, and in which trials the line holds: those
    that fit, peak at the same event and lie on the line (within a byte)."""
    per_sample, fixed, (b0, b1) = line
    event = {t.batch: t.event for t in trials}
    if event[b0] != event[b1]:
        return (
            f"The two peaks are at different events ('{event[b0]}' at {b0:,}, "
            f"'{event[b1]}' at {b1:,}): the line mixes two kinds of peak"
        )
    same = [t for t in trials if t.fits and t.event == event[b1]]
    if any(abs(fixed + per_sample * t.batch - t.peak) >= 1 for t in same):
        return (
            f"Both peaks are at '{event[b1]}', but not every trial that peaks there "
            "lies on the line"
        )
    low = min(t.batch for t in same)
    other = {t.event for t in trials if t.fits and t.batch < low}
    smaller = ", ".join(f"'{e}'" for e in sorted(other))
    return (
        f"Both peaks are at '{event[b1]}'. The line holds where the peak is at that "
        f"event: in these trials from batch {low:,} up"
        + (f"; smaller batches peak at {smaller}" if other else "")
    )


SCALARS = 64  # bytes: a few 4-byte scalars, not a tensor of any size


# %% search
def search(budget_bytes, start=START, cap=CAP):
    """Double from `start` while a step fits and the next size is within `cap`; then
    bisect between the largest size that fitted and the first that failed."""
    if cap < start:
        raise ValueError(f"cap {cap} is below the start size {start}")
    trials, good, bad, size = [], None, None, start
    with memory_limit(budget_bytes):  # on CUDA, a real out-of-memory error beyond it
        while size <= cap:  # phase 1: double
            trials.append(trial(size, budget_bytes))
            if not trials[-1].fits:
                bad = size
                break
            good, size = size, size * 2
        resolution = max(start, (good or start) // 64)
        while good is not None and bad is not None and bad - good > resolution:
            middle = (good + bad) // 2  # phase 2: bisect to within the resolution
            trials.append(trial(middle, budget_bytes))
            if trials[-1].fits:
                good = middle
            else:
                bad = middle
    return search_result(budget_bytes, start, cap, trials, good, bad, resolution)


result = search(BUDGET_BYTES)
show_trials(result)

# %% line
# The straight line through the two largest fitting trials, and (CPU) what it is made of
say(f"Fixed + per-sample: {line_text(result)}")
line = fitted_line(result)
if line is not None and not ALLOCATOR:
    params = sum(p.numel() * p.element_size() for p in MLP().parameters())
    say(fixed_text(line[1], params), "  ")
    say(events_text(result.trials, line), "  ")

# %% small-budgets
# Three budgets made from measured peaks: nothing fits, only the start size fits, and
# every size fits up to a small cap.
peak_start, peak_next = budgeted_peak(START), budgeted_peak(2 * START)
print(f"batch {START}: {peak_start:,} bytes; batch {2 * START}: {peak_next:,} bytes")
cases = [
    (f"half the peak at batch {START}", peak_start // 2, CAP),
    (
        f"between the peaks at {START} and {2 * START}",
        (peak_start + peak_next) // 2,
        CAP,
    ),
    (f"the {BUDGET_BYTES / MiB:.0f} MiB budget, a small cap", BUDGET_BYTES, 16 * START),
]
for label, budget, cap in cases:
    small = search(budget, START, cap)
    trials = f"{len(small.trials)} trial{'' if len(small.trials) == 1 else 's'}"
    print(f"budget {budget:,} bytes ({label}), cap {cap:,}: {trials}")
    outcome = f"-> {small.outcome.upper()}: {small.message}; {line_text(small)}"
    say(outcome, "   ", "      ")

# %% chart
# The chart of the trials: peak against batch size, the budget and the fitted line
plt.rcParams["font.size"] = 10
fig, ax = plt.subplots(figsize=(7, 5.4), layout="constrained")
ok = sorted((t.batch, budgeted(t) / MiB) for t in result.trials if t.fits)
over = [(t.batch, budgeted(t) / MiB) for t in result.trials if not t.fits and t.peak]
oom = [t.batch for t in result.trials if t.peak is None]
if ok:
    ax.plot(*zip(*ok), "o-", label="fits")
if over:
    how = "reserved" if ALLOCATOR else "counted"
    ax.plot(*zip(*over), "x", color="red", markersize=9, label=f"over budget ({how})")
if oom:
    at_budget = [BUDGET_BYTES / MiB] * len(oom)
    label = "out of memory (no reading; drawn at the budget)"
    ax.plot(oom, at_budget, "v", color="red", markersize=8, label=label)
line = fitted_line(result)
if line is not None:
    per_sample, fixed, (b0, b1) = line
    xs = [result.start * (b1 / result.start) ** (k / 50) for k in range(51)]  # a curve
    ys = [(fixed + per_sample * x) / MiB for x in xs]
    label = f"fitted line (through {b0:,} and {b1:,})"
    ax.plot(xs, ys, ":", color="grey", lw=2, label=label)
budget_label = f"budget {BUDGET_BYTES / MiB:.0f} MiB"
ax.axhline(BUDGET_BYTES / MiB, color="grey", linestyle="--", label=budget_label)
sizes = [t.batch for t in result.trials] or [result.start]
low, high = min(sizes).bit_length() - 1, max(sizes).bit_length()
ax.set_xscale("log", base=2)
ax.set_yscale("log")
ticks = [2**k for k in range(low, high + 1, 2)]
ax.set_xticks(ticks, [f"{tick:,}" for tick in ticks], rotation=45, ha="right")
ax.set_xlabel("batch size (samples, log scale)")
ax.set_ylabel("peak memory of a training step\n(MiB, log scale)")
ax.set_title(
    f"Batch-size search on {device.type.upper()}: two Adam steps of the MNIST MLP"
    + (
        "\n(CUDA: reserved memory, what the budget limits)"
        if ALLOCATOR
        else "\n(CPU: counted tensor bytes)"
    )
)
fig.legend(loc="outside lower center", ncols=2)
plt.show()

# %% exercise-line-512
# The fitted line's prediction at two batch sizes, against the measured peak
per_sample, fixed, _ = fitted_line(result)
for batch_size in (512, 3000):
    predicted = fixed + per_sample * batch_size
    peak, _, event = step_peaks(batch_size)
    at = f" at '{event}'" if event else ""
    print(f"batch {batch_size:,}: line {predicted:,.0f}, measured {peak:,} bytes{at}")
