# %% setup
# Setup the cells below need: imports, the device, the MLP and the three witnesses.
# What a GPU holds besides your tensors: the CUDA context, cuBLAS's workspace and the
# caching allocator's cache, step by step, as three witnesses see it: PyTorch's
# allocator (memory_allocated, memory_reserved), the driver (torch.cuda.mem_get_info)
# and nvidia-smi. Without CUDA the snippet says so and shows the process's own resident
# memory (RSS) instead. Bytes are exact; MiB are 1024-based (nvidia-smi reports whole
# MiB).
import math
import os
import shutil
import subprocess
import sys
import textwrap

import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.optim as optim

torch.manual_seed(0)
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
gpu_name = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
print(f"Device: {device}" + gpu_name)


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


def say(text):
    """Print a long sentence wrapped at 88 columns."""
    print(textwrap.fill(text, width=88))


def nvidia_smi(*query):
    """Rows of an nvidia-smi CSV query, or None with the reason when nvidia-smi cannot
    answer."""
    if shutil.which("nvidia-smi") is None:
        return None, "nvidia-smi not available"
    command = ["nvidia-smi", *query, "--format=csv,noheader,nounits"]
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=30, check=True
        )
    except (OSError, subprocess.SubprocessError) as error:
        return None, f"nvidia-smi failed ({type(error).__name__})"
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    return [[field.strip() for field in line.split(",")] for line in lines], ""


def smi_this_process():
    """nvidia-smi's memory for this process in MiB (None when it cannot tell), and how
    the row was chosen."""
    rows, why = nvidia_smi("--query-compute-apps=pid,used_memory")
    if rows is None:
        return None, why
    if not rows:
        return None, "no process listed (one is listed once it has a CUDA context)"
    mine = [row for row in rows if row[0] == str(os.getpid())]
    if len(mine) == 1:
        row, how = mine[0], "its row matches this process's pid"
    elif len(rows) == 1:  # in a container nvidia-smi may show the host's pid for us
        row = rows[0]
        how = (
            "the only process listed (its pid is not ours: a container's pid namespace)"
        )
    else:
        return None, f"{len(rows)} processes listed, none with this pid"
    if not row[1].isdigit():
        return None, f"nvidia-smi gave {row[1]!r}"
    return int(row[1]), how


def rss_bytes():
    """This process's resident memory now (Linux), else its peak so far (getrusage)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


rows = []  # one row per step: what each witness reports


def record(step):
    if device.type == "cuda":
        torch.cuda.synchronize()
        free, total = torch.cuda.mem_get_info()
        smi, how = smi_this_process()
        row = dict(step=step, smi=smi, how=how, used=total - free, total=total)
        row["reserved"] = torch.cuda.memory_reserved()
        row["allocated"] = torch.cuda.memory_allocated()
        rows.append(row)
    else:
        rows.append(dict(step=step, rss=rss_bytes()))


if device.type == "cuda":
    gpus, why = nvidia_smi("--query-gpu=index,name,memory.used,memory.total")
    for index, name, used, total in gpus or []:
        print(f"nvidia-smi at the start: GPU {index} ({name}):")
        print(f"  {used} MiB used of {total} MiB")
    if gpus is None:
        print(why)
    smi, how = smi_this_process()
    so_far = how if smi is None else f"{smi} MiB ({how})"
    say(f"nvidia-smi, this process so far: {so_far}")
else:
    say(
        "No CUDA device: the CUDA context, cuBLAS workspace and caching allocator "
        "exist only on a GPU; this run shows the process's resident memory instead."
    )
    record("after import")
    rss = rows[-1]["rss"]
    print(f"CPU: resident memory (RSS) after importing torch: {rss:,} bytes")
    print(f"     = {rss / MiB:.1f} MiB")


# %% report
# Helpers the cells below need: what each step prints, on a GPU and on the CPU.
def allocated():
    """memory_allocated() on a GPU; 0 on the CPU, which has no allocator counter."""
    return torch.cuda.memory_allocated() if device.type == "cuda" else 0


def show_context():
    """The context's size: nvidia-smi minus reserved (GPU); nothing to show (CPU)."""
    if device.type != "cuda":
        print("CPU: no CUDA context; a CPU tensor comes from the process's heap.")
        return
    row = rows[-1]
    total, reserved = row["total"], row["reserved"]
    print(f"GPU memory in all (mem_get_info total): {total:,} bytes")
    print(f"memory_allocated {row['allocated']:,} bytes, memory_reserved {reserved:,}")
    if row["smi"] is not None:
        context = row["smi"] * MiB - reserved
        say(f"nvidia-smi, this process: {row['smi']} MiB ({row['how']})")
        print(f"CUDA context (nvidia-smi - reserved): about {context / MiB:.0f} MiB")
    else:
        say(f"nvidia-smi, this process: {row['how']}")
    print(f"Device-wide (mem_get_info: total - free): {row['used']:,} bytes")
    loading = os.environ.get("CUDA_MODULE_LOADING", "(not set)")
    print(f"CUDA_MODULE_LOADING={loading}")


def show_change():
    """What the last step changed: the allocator's counters (GPU) or the RSS (CPU)."""
    before, after = rows[-2], rows[-1]
    since = f"since '{before['step']}'"
    if device.type == "cuda":
        grown = after["allocated"] - before["allocated"]
        print(f"memory_allocated {after['allocated']:,} bytes ({grown:+,} {since})")
        grown = after["reserved"] - before["reserved"]
        print(f"memory_reserved  {after['reserved']:,} bytes ({grown:+,} {since})")
    else:
        rss, grown = after["rss"], after["rss"] - before["rss"]
        print(f"CPU: RSS {rss:,} bytes ({grown:+,} {since})")


def workspace_config_bytes(config):
    """Bytes that a CUBLAS_WORKSPACE_CONFIG such as ':4096:8' asks for: the sum of
    SIZE_KiB * COUNT pairs."""
    numbers = [int(n) for n in config.split(":") if n.strip().isdigit()]
    return sum(size * 1024 * count for size, count in zip(numbers[::2], numbers[1::2]))


def workspace_text(workspace):
    """What the first matmul's jump in memory_allocated (bytes) is."""
    if workspace > 0:
        return (
            f"That is cuBLAS's workspace: {workspace:,} bytes = "
            f"{workspace / MiB:g} MiB, allocated through PyTorch's caching allocator "
            "and kept for as long as the process runs."
        )
    return (
        "No allocator jump: this PyTorch lets cuBLAS keep its workspace outside "
        "the caching allocator."
    )


def outside_text(outside):
    """What grew outside PyTorch's allocator at the first matmul (nvidia-smi's growth
    minus reserved's, bytes; nvidia-smi counts whole MiB)."""
    if outside > 0:
        return (
            f"Outside PyTorch's allocator (nvidia-smi - reserved) it grew by "
            f"{outside:,} bytes: cuBLAS's handle and its kernels, loaded into the "
            "context"
        )
    return (
        f"Outside PyTorch's allocator (nvidia-smi - reserved) it did not grow "
        f"({outside:+,} bytes, in nvidia-smi's whole MiB)"
    )


def show_first_matmul(batch_bytes):
    """The first matmul's jump: cuBLAS's workspace (GPU); the RSS since the model
    (CPU, the batch included)."""
    before, after = rows[-2], rows[-1]
    if device.type != "cuda":
        rss, grown = after["rss"], after["rss"] - rows[-3]["rss"]
        print(f"CPU: RSS {rss:,} bytes ({grown:+,} bytes since the model,")
        print(f"     the batch of {batch_bytes:,} bytes included)")
        return
    workspace = after["allocated"] - before["allocated"]
    grown = after["reserved"] - before["reserved"]
    print(f"memory_allocated {workspace:+,} bytes, memory_reserved {grown:+,} bytes")
    say(workspace_text(workspace))
    config = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    if config:
        asked = workspace_config_bytes(config)
        print(f"CUBLAS_WORKSPACE_CONFIG={config}: asks for {asked:,} bytes")
    else:
        major, _ = torch.cuda.get_device_capability(device)
        default = 32 * MiB if major >= 9 else 4096 * 1024 * 2 + 16 * 1024 * 8
        print(f"CUBLAS_WORKSPACE_CONFIG not set: default {default:,} bytes", end="")
        print(f" on compute capability {major}.x")
    # fp32_precision, not allow_tf32 (deprecated)
    precision = getattr(torch.backends.cuda.matmul, "fp32_precision", "n/a")
    print(f"torch.backends.cuda.matmul.fp32_precision = {precision!r}")
    if after["smi"] is not None and before["smi"] is not None:
        say(outside_text((after["smi"] - before["smi"]) * MiB - grown))


def step_text(made, grown):
    """CPU: the bytes of the tensors the step made against the RSS's growth."""
    tensors = (
        f"CPU: the tensors this step created hold {made:,} bytes (gradients, Adam's "
        "state, labels, logits, loss)"
    )
    if grown > made:
        return (
            f"{tensors}; the rest is code and buffers that backward and the optimizer "
            "use for the first time"
        )
    return (
        f"{tensors}, more than the RSS grew: part of them went into memory the "
        "process already held"
    )


def show_step(optimizer, *made):
    """The step's change: the allocator's counters (GPU); the RSS against the bytes
    of the tensors the step made (CPU)."""
    if device.type == "cuda":
        show_change()
        return
    state = optimizer.state.values()
    state = [v for s in state for v in s.values() if torch.is_tensor(v)]
    grads = [p.grad for p in optimizer.param_groups[0]["params"]]
    made = sum(t.numel() * t.element_size() for t in [*grads, *made, *state])
    rss, grown = rows[-1]["rss"], rows[-1]["rss"] - rows[-2]["rss"]
    print(f"CPU: RSS {rss:,} bytes ({grown:+,} bytes since the first matmul)")
    say(step_text(made, grown))


def rounding_text(one, odd):
    """What memory_allocated's growth for a 1-byte and a 513-byte tensor shows."""
    if (one, odd) == (512, 1024):
        return (
            "The caching allocator hands out blocks in multiples of 512 bytes: every "
            "tensor is rounded up."
        )
    return (
        "Not the caching allocator's usual 512-byte blocks (+512 and +1,024): this "
        "allocator rounds differently."
    )


def show_rounding(tensors, grown):
    """memory_allocated's growth per tensor (GPU); the storages' exact bytes (CPU)."""
    if device.type == "cuda":
        for t, n in zip(tensors, grown):
            print(f"a {t.numel():,}-byte tensor: memory_allocated {n:+,} bytes")
        say(rounding_text(*grown))
        return
    sizes = [t.untyped_storage().nbytes() for t in tensors]
    say(
        f"CPU: the two storages hold exactly {sizes[0]} and {sizes[1]:,} bytes "
        "(no allocator counter to read)"
    )


# %% context
# The first tensor on a GPU makes the driver create this process's CUDA context.
tiny = torch.zeros(1, device=device)
record("context + 1 tensor")
show_context()

# %% model
model = MLP().to(device)
param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
record("model")
count = len(list(model.parameters()))
print(f"The MLP's parameters: {param_bytes:,} bytes in {count} tensors")
show_change()

# %% first-matmul
images = torch.randn(1024, 1, 28, 28, device=device)  # memory depends on the shape only
record("batch of 1024")
hidden = model.layer1(model.flatten(images))  # the process's first matrix multiply
del hidden  # keep only what the matmul left behind
record("first matmul")
show_first_matmul(images.numel() * images.element_size())

# %% training-step
optimizer = optim.Adam(model.parameters(), lr=1e-3)
labels = torch.randint(0, 10, (1024,), device=device)
output = model(images)
loss = nn.functional.cross_entropy(output, labels)
loss.backward()  # autograd runs this on its own thread for a CUDA device
optimizer.step()  # Adam's two state tensors per parameter appear here
record("training step")
show_step(optimizer, labels, output, loss)

# %% block-rounding
start = allocated()
one_byte = torch.empty(1, dtype=torch.uint8, device=device)
after_one = allocated()
odd = torch.empty(513, dtype=torch.uint8, device=device)
after_odd = allocated()
show_rounding([one_byte, odd], [after_one - start, after_odd - after_one])


# %% adds-up
# The whole history as a table, then where the memory is at the end (formatting only).
def rounded(tensors):
    """Bytes the caching allocator gives these tensors on the GPU: each storage rounded
    up to 512 bytes."""
    storages = {
        t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
        for t in tensors
        if t.device.type == "cuda"
    }
    return sum(-(-n // 512) * 512 for n in storages.values())


state = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
params = list(model.parameters())
tensors = [tiny, *params, *(p.grad for p in params), images, labels, output, loss]
tensors += [one_byte, odd, *state]  # every tensor this snippet holds now


def table_row(step, *cells, widths=(11, 16, 14, 14)):
    """One row of the step-by-step table: a step, then one cell per witness."""
    print(f"{step:<20}" + "".join(f" {cell:>{w}}" for cell, w in zip(cells, widths)))


def line(label, value, note=""):
    """One row of the 'where the memory is now' table, and a note under it."""
    print(f"{label:<50} {value:>14,}")
    if note:
        pad = " " * 6
        print(textwrap.fill(note, 88, initial_indent=pad, subsequent_indent=pad))


if device.type == "cuda":
    table_row("step", "nvidia-smi", "device used", "reserved", "allocated")
    table_row("", "(MiB)", "(bytes)", "(bytes)", "(bytes)")
    for row in rows:
        smi = "?" if row["smi"] is None else f"{row['smi']:,}"
        sizes = [f"{row[key]:,}" for key in ("used", "reserved", "allocated")]
        table_row(row["step"], smi, *sizes)
    ours = rounded(tensors)
    at = {row["step"]: row for row in rows}
    first_workspace = at["first matmul"]["allocated"] - at["batch of 1024"]["allocated"]
    now_allocated = torch.cuda.memory_allocated()
    other = now_allocated - ours - first_workspace
    second = first_workspace > 0 and other == first_workspace
    print()
    print(f"{'Where the memory is now':<50} {'bytes':>14}")
    line("  allocated by PyTorch (memory_allocated)", now_allocated)
    line("    our tensors, each rounded up to 512 bytes", ours)
    line("    cuBLAS workspace (the first matmul's jump)", first_workspace)
    why = "one more workspace: backward ran on autograd's own thread, with its own "
    why += "cuBLAS handle"
    line("    other blocks PyTorch allocated for itself", other, why if second else "")
    reserved = torch.cuda.memory_reserved()
    line("  reserved by PyTorch (memory_reserved)", reserved)
    line("    cached but unused (reserved - allocated)", reserved - now_allocated)
    smi, how = smi_this_process()
    free, total = torch.cuda.mem_get_info()
    if smi is not None:
        line(f"  nvidia-smi, this process ({smi:,} MiB)", smi * MiB, how)
        line(
            "    outside PyTorch's allocator (smi - reserved)",
            smi * MiB - reserved,
            "the CUDA context, its loaded kernels, cuBLAS's handle",
        )
    else:
        say(f"  nvidia-smi, this process: {how}")
    line("  device used, mem_get_info (total - free)", total - free)
    line("    outside PyTorch's allocator (used - reserved)", total - free - reserved)
    if smi is not None:
        line(
            "    not this process's (used - nvidia-smi)",
            total - free - smi * MiB,
            "the driver's own reservations and any other process",
        )
    print("(nvidia-smi reports whole MiB: figures derived from it are good to ~1 MiB.)")
else:
    print(f"{'step':<20} {'RSS (bytes)':>14} {'change':>12}")
    previous = rows[0]["rss"]
    for row in rows:
        print(f"{row['step']:<20} {row['rss']:>14,} {row['rss'] - previous:>+12,}")
        previous = row["rss"]


# %% nested-boxes
# Plotting code: the witnesses above drawn as nested boxes, each inside the next.
# On a GPU, allocated ⊂
# reserved ⊂ what nvidia-smi shows for this process ⊂ the device's memory. Without a
# GPU, the same picture from the CPU fallback's numbers: our tensors ⊂ the process's
# resident memory ⊂ the machine's memory. Box areas are to scale when the smallest box
# stays visible; otherwise the sides are on a log scale, and the title says so.
plt.rcParams["font.size"] = 10


def machine_bytes():
    """Physical memory of this machine (None where os.sysconf cannot tell)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def storage_bytes(tensors):
    """Bytes of the distinct storages behind these tensors, each counted once."""
    storages = {t.untyped_storage().data_ptr(): t for t in tensors}
    return sum(t.untyped_storage().nbytes() for t in storages.values())


def size_text(n):
    """Bytes in the largest binary unit that keeps the number at 1 or more."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n:,} bytes"


if device.type == "cuda":  # (label, bytes), the innermost box first
    smi, how = smi_this_process()
    free, total = torch.cuda.mem_get_info()
    allocated, reserved = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
    boxes = [
        ("allocated: our tensors, cuBLAS's\nworkspaces (memory_allocated)", allocated),
        ("reserved: allocated + the\nallocator's cache (memory_reserved)", reserved),
    ]
    if smi is not None:
        third = "nvidia-smi"
        boxes.append(
            ("nvidia-smi, this process:\nreserved + the CUDA context", smi * MiB)
        )
    else:  # nvidia-smi cannot tell: what the driver says is in use, all processes
        third = "used"
        boxes.append(
            ("used on the device, every\nprocess (mem_get_info)", total - free)
        )
    boxes.append(("the device: all its memory\n(mem_get_info total)", total))
    title = f"GPU memory: allocated ⊂ reserved ⊂ {third} ⊂ device"
    where = f"{torch.cuda.get_device_name(device)}, after one Adam step at batch 1024"
else:
    ours = storage_bytes(tensors)
    boxes = [
        ("our tensors: parameters, gradients,\nAdam's state, batch, logits", ours),
        ("the process's resident memory\n(RSS): Python, libraries, heap", rss_bytes()),
    ]
    if machine_bytes():
        boxes.append(("the machine's memory\n(os.sysconf)", machine_bytes()))
    title = "CPU fallback (no GPU): tensors ⊂ process RSS ⊂ machine"
    where = "On a GPU: allocated ⊂ reserved ⊂ nvidia-smi ⊂ device"

sizes = [max(1, n) for _, n in boxes]
to_scale = math.sqrt(sizes[0] / sizes[-1]) >= 0.04  # the smallest side >= 4% of all
if to_scale:  # side ~ sqrt(bytes): areas to scale
    sides = [math.sqrt(n / sizes[-1]) for n in sizes]
    scale = "areas to scale"
else:  # side ~ log(bytes), from a tenth of the smallest up to the largest
    low, high = math.log10(sizes[0] / 10), math.log10(sizes[-1])
    sides = [(math.log10(n) - low) / (high - low) for n in sizes]
    scale = "sides on a log scale, areas not to scale"

fig, ax = plt.subplots(figsize=(7, 4.4), layout="constrained")
edges = ["tab:red", "tab:orange", "tab:green", "tab:blue"][-len(boxes) :]
fills = ["#f8d0d0", "#fde0c5", "#d9f0d3", "#dbe9f6"][-len(boxes) :]
spots = [0.1 + 0.8 * k / max(1, len(boxes) - 1) for k in range(len(boxes))]
drawn = list(zip(boxes, sides, edges, fills, spots))
for (label, n), side, edge, fill, spot in reversed(drawn):  # the outermost first
    ax.add_patch(plt.Rectangle((0, 0), side, side, fc=fill, ec=edge, lw=2))
    ax.annotate(
        f"{label}\n{size_text(n)}",
        xy=(side, side),
        xytext=(1.08, spot),
        va="center",
        arrowprops={"arrowstyle": "-", "color": edge},
    )
ax.set_xlim(0, 2.05)
ax.set_ylim(0, 1.02)
ax.set_aspect("equal")
ax.set_axis_off()
ax.set_title(f"{where}\n({scale})", size=10)
fig.suptitle(title)
for label, n in boxes:
    print(f"{label.replace(chr(10), ' '):<64} {n:>16,} bytes")
print(f"Drawn with {scale}.")
plt.show()

# %% cache-released-under-pressure
# A GPU-only experiment: a freed block stays cached, yet is released when needed.
# memory_reserved stays up after a tensor is freed (the block is cached), but the cache
# is not lost to PyTorch: when an allocation does not fit, the caching allocator frees
# its cached blocks that are not split and retries before it raises out-of-memory, also
# under a per-process memory fraction. This cell shows it with no empty_cache() call.
if device.type == "cuda":
    LIMIT_ABOVE = 2**30  # the process may reserve 1 GiB beyond now
    total = torch.cuda.mem_get_info()[1]  # the fraction is a fraction of this total
    limit = torch.cuda.memory_reserved() + LIMIT_ABOVE
    torch.cuda.set_per_process_memory_fraction(min(1.0, limit / total))
    print(
        f"Limit: memory_reserved may grow to {limit:,} bytes "
        f"(what it is now + {LIMIT_ABOVE:,})"
    )
    COUNTERS = ("num_alloc_retries", "num_device_alloc", "num_device_free", "num_ooms")
    before = torch.cuda.memory_stats()

    def show(label):
        print(
            f"{label:<33} allocated {torch.cuda.memory_allocated():>14,}  "
            f"reserved {torch.cuda.memory_reserved():>14,}"
        )

    first_bytes, second_bytes = 6 * LIMIT_ABOVE // 10, 7 * LIMIT_ABOVE // 10
    show("start")
    first = torch.empty(first_bytes, dtype=torch.uint8, device=device)
    show(f"a tensor of {first_bytes:,} bytes")
    del first
    show("deleted: its block stays cached")
    try:
        second = torch.empty(second_bytes, dtype=torch.uint8, device=device)
        show(f"a tensor of {second_bytes:,} bytes")
        del second
        succeeded = True
    except torch.cuda.OutOfMemoryError:
        print(f"a tensor of {second_bytes:,} bytes: OutOfMemoryError")
        succeeded = False
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)  # no limit after this cell
    after = torch.cuda.memory_stats()
    say(
        "memory_stats() counters, change during the cell: "
        + ", ".join(
            f"{key} {after[key] - before.get(key, 0):+}"
            if key in after
            else f"{key} (not reported)"
            for key in COUNTERS
        )
    )
    say(
        f"The second tensor is bigger than the cached block, and the two together "
        f"({first_bytes + second_bytes:,} bytes) need more than the {LIMIT_ABOVE:,} "
        f"the limit leaves."
    )
    retries = after.get("num_alloc_retries", 0) - before.get("num_alloc_retries", 0)
    if succeeded and retries > 0:
        say(
            "It was allocated anyway: the first try failed against the limit, the "
            "allocator freed its cached blocks that are not split (num_device_free) "
            "and retried (num_alloc_retries). No empty_cache() call was needed."
        )
    elif succeeded:
        print("It was allocated without a counted retry: see the counters above.")
    say(
        "torch.cuda.empty_cache() returns cached blocks to the driver: useful for "
        "other processes, nvidia-smi and libraries that allocate outside PyTorch, "
        "but it gives PyTorch's own allocations nothing the allocator would not "
        "release by itself on failure."
    )
else:
    print("CPU fallback: no caching allocator, so nothing to measure here.")
