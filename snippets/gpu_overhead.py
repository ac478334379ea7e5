# %% setup
# What a GPU holds besides your tensors: the CUDA context, cuBLAS's workspace and the caching allocator's cache,
# step by step, as three witnesses see it: PyTorch's allocator (memory_allocated, memory_reserved), the driver
# (torch.cuda.mem_get_info) and nvidia-smi. Without CUDA the snippet says so and shows the process's own resident
# memory (RSS) instead. Bytes are exact; MiB are 1024-based (nvidia-smi reports whole MiB).
import os, sys, shutil, subprocess
import torch
import torch.nn as nn
import torch.optim as optim

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

MiB = 2**20

def nvidia_smi(*query):
    """Rows of an nvidia-smi CSV query, or None with the reason when nvidia-smi cannot answer."""
    if shutil.which("nvidia-smi") is None:
        return None, "nvidia-smi not available"
    try:
        result = subprocess.run(["nvidia-smi", *query, "--format=csv,noheader,nounits"],
                                capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError) as error:
        return None, f"nvidia-smi failed ({type(error).__name__})"
    return [[f.strip() for f in line.split(",")] for line in result.stdout.splitlines() if line.strip()], ""

def smi_this_process():
    """nvidia-smi's memory for this process in MiB (None when it cannot tell), and how the row was chosen."""
    rows, why = nvidia_smi("--query-compute-apps=pid,used_memory")
    if rows is None:
        return None, why
    if not rows:
        return None, "no process listed (a process is listed once it has a CUDA context)"
    mine = [row for row in rows if row[0] == str(os.getpid())]
    if len(mine) == 1:
        row, how = mine[0], "its row matches this process's pid"
    elif len(rows) == 1:                    # in a container nvidia-smi may show the host's pid for us
        row, how = rows[0], "the only process listed (its pid is not ours: a container's pid namespace)"
    else:
        return None, f"{len(rows)} processes listed, none with this pid"
    return (int(row[1]), how) if row[1].isdigit() else (None, f"nvidia-smi gave {row[1]!r}")

def rss_bytes():
    """This process's resident memory now (Linux), else its peak so far (getrusage)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024

rows = []                                   # one row per step: what each witness reports
def record(step):
    if device.type == "cuda":
        torch.cuda.synchronize()
        free, total = torch.cuda.mem_get_info()
        smi, how = smi_this_process()
        rows.append(dict(step=step, smi=smi, how=how, used=total - free, total=total,
                         reserved=torch.cuda.memory_reserved(), allocated=torch.cuda.memory_allocated()))
    else:
        rows.append(dict(step=step, rss=rss_bytes()))

if device.type == "cuda":
    gpus, why = nvidia_smi("--query-gpu=index,name,memory.used,memory.total")
    for index, name, used, total in gpus or []:
        print(f"nvidia-smi at the start: GPU {index} ({name}): {used} MiB used of {total} MiB")
    if gpus is None:
        print(why)
    smi, how = smi_this_process()
    print("nvidia-smi, this process so far: " + (f"{smi} MiB ({how})" if smi is not None else how))
else:
    print("No CUDA device: the CUDA context, cuBLAS workspace and caching allocator exist only on a GPU; recorded "
          "on the CPU, this snippet shows the process's own memory instead")
    record("after import")
    print(f"CPU: resident memory (RSS) after importing torch: {rows[-1]['rss']:,} bytes "
          f"= {rows[-1]['rss'] / MiB:.1f} MiB")

# %% context
if device.type == "cuda":
    torch.cuda.init()                       # PyTorch's CUDA state; the driver makes the context on first real use
    tiny = torch.zeros(1, device=device)    # the first tensor: the CUDA context now surely exists
    record("context + 1 tensor")
    row = rows[-1]
    print(f"GPU memory in all (mem_get_info total): {row['total']:,} bytes = {row['total'] / MiB:,.0f} MiB")
    print(f"PyTorch: allocated {row['allocated']:,} bytes (a 4-byte tensor rounded up to one 512-byte block), "
          f"reserved {row['reserved']:,} bytes (the segment the allocator asked CUDA for: "
          f"{row['reserved'] / MiB:g} MiB)")
    if row["smi"] is not None:
        print(f"nvidia-smi, this process: {row['smi']} MiB ({row['how']})")
        print(f"So the CUDA context alone is about {row['smi'] * MiB - row['reserved']:,} bytes "
              f"= {row['smi'] - row['reserved'] / MiB:.0f} MiB: nvidia-smi minus what PyTorch reserved")
    else:
        print(f"nvidia-smi, this process: {row['how']}")
    print(f"Device-wide (mem_get_info: total - free, every process and the driver): {row['used']:,} bytes "
          f"= {row['used'] / MiB:,.0f} MiB")
    print(f"CUDA_MODULE_LOADING={os.environ.get('CUDA_MODULE_LOADING', '(not set)')}: kernels are loaded into the "
          f"context when first used, so the context grows a little as new operations run")
else:
    print("CPU: there is no CUDA context to create; a CPU tensor's memory comes from the process's ordinary heap.")
    tiny = torch.zeros(1)

# %% model
model = MLP().to(device)
param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
record("model")
print(f"The MLP's parameters: {param_bytes:,} bytes in {len(list(model.parameters()))} tensors")
if device.type == "cuda":
    change = rows[-1]["allocated"] - rows[-2]["allocated"]
    print(f"memory_allocated grew by {change:,} bytes (each tensor rounded up to a multiple of 512 bytes); "
          f"memory_reserved is now {rows[-1]['reserved']:,} bytes")
else:
    print(f"CPU: RSS after the model: {rows[-1]['rss']:,} bytes "
          f"({rows[-1]['rss'] - rows[-2]['rss']:+,} bytes since the import; RSS moves in whole 4 KiB pages)")

# %% first-matmul
def workspace_config_bytes(config):
    """Bytes that a CUBLAS_WORKSPACE_CONFIG such as ':4096:8' asks for: the sum of SIZE_KiB * COUNT pairs."""
    numbers = [int(n) for n in config.split(":") if n.strip().isdigit()]
    return sum(size * 1024 * count for size, count in zip(numbers[::2], numbers[1::2]))

images = torch.randn(1024, 1, 28, 28, device=device)   # random pixels: memory depends on the shape only
record("batch of 1024")
hidden = model.layer1(model.flatten(images))           # the process's first matrix multiply
del hidden                                             # keep only what the matmul left behind
record("first matmul")
if device.type == "cuda":
    before, after = rows[-2], rows[-1]
    workspace = after["allocated"] - before["allocated"]
    print(f"After the first matmul (its output deleted): memory_allocated +{workspace:,} bytes, "
          f"memory_reserved +{after['reserved'] - before['reserved']:,} bytes")
    if workspace > 0:
        print(f"That is cuBLAS's workspace: {workspace:,} bytes = {workspace / MiB:g} MiB, allocated through "
              f"PyTorch's caching allocator and kept for as long as the process runs.")
    else:
        print("No allocator jump: this PyTorch lets cuBLAS keep its workspace outside the caching allocator.")
    config = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    if config:
        print(f"CUBLAS_WORKSPACE_CONFIG={config}: asks for {workspace_config_bytes(config):,} bytes")
    else:
        major, _ = torch.cuda.get_device_capability(device)
        default = 32 * MiB if major >= 9 else 4096 * 1024 * 2 + 16 * 1024 * 8
        print(f"CUBLAS_WORKSPACE_CONFIG is not set: recent PyTorch releases then use {default:,} bytes on a GPU of "
              f"compute capability {major}.x (32 MiB from Hopper, 9.x, on; 8 MiB + 128 KiB before)")
    precision = getattr(torch.backends.cuda.matmul, "fp32_precision", "n/a")   # not allow_tf32: deprecated
    print(f"torch.backends.cuda.matmul.fp32_precision = {precision!r} (only 'tf32' lets cuBLAS use TF32 "
          f"for float32 matrix multiplies)")
    if after["smi"] is not None and before["smi"] is not None:
        print(f"Outside PyTorch's allocator (nvidia-smi - reserved) it grew by "
              f"{(after['smi'] - before['smi']) * MiB - (after['reserved'] - before['reserved']):,} bytes: "
              f"cuBLAS's handle and its kernels, loaded into the context")
else:
    print("CPU: no cuBLAS here; the matmul runs in the CPU BLAS library, and its buffers are ordinary process "
          "memory")
    print(f"CPU: RSS after the first forward matmul: {rows[-1]['rss']:,} bytes "
          f"({rows[-1]['rss'] - rows[-3]['rss']:+,} bytes since the model, the batch of "
          f"{images.numel() * images.element_size():,} bytes included)")

# %% training-step
optimizer = optim.Adam(model.parameters(), lr=1e-3)
labels = torch.randint(0, 10, (1024,), device=device)
output = model(images)
loss = nn.functional.cross_entropy(output, labels)
loss.backward()                             # autograd runs this on its own thread for a CUDA device
optimizer.step()                            # Adam's two state tensors per parameter appear here
record("training step")
if device.type == "cuda":
    before, after = rows[-2], rows[-1]
    print(f"One Adam step at batch 1024: memory_allocated {after['allocated']:,} bytes "
          f"({after['allocated'] - before['allocated']:+,}), memory_reserved {after['reserved']:,} bytes "
          f"({after['reserved'] - before['reserved']:+,})")
else:
    new_tensors = [*(p.grad for p in model.parameters()), labels, output, loss,
                   *(v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v))]
    print(f"CPU: RSS after one Adam step at batch 1024: {rows[-1]['rss']:,} bytes "
          f"({rows[-1]['rss'] - rows[-2]['rss']:+,} bytes since the first matmul)")
    print(f"CPU: the tensors this step created hold {sum(t.numel() * t.element_size() for t in new_tensors):,} "
          f"bytes (gradients, Adam's state, labels, logits, loss); the rest is code and buffers that backward "
          f"and the optimizer use for the first time")

# %% block-rounding
allocated = torch.cuda.memory_allocated if device.type == "cuda" else (lambda: 0)
start = allocated()
one_byte = torch.empty(1, dtype=torch.uint8, device=device)
after_one = allocated()
odd = torch.empty(513, dtype=torch.uint8, device=device)
after_odd = allocated()
if device.type == "cuda":
    print(f"a 1-byte tensor:   memory_allocated +{after_one - start:,} bytes")
    print(f"a 513-byte tensor: memory_allocated +{after_odd - after_one:,} bytes")
    print("The caching allocator hands out blocks in multiples of 512 bytes: every tensor is rounded up.")
else:
    print(f"CPU: the two storages hold exactly {one_byte.untyped_storage().nbytes()} and "
          f"{odd.untyped_storage().nbytes():,} bytes; PyTorch keeps no allocator counter for the CPU, so its "
          f"rounding cannot be read here (on a GPU: +512 and +1,024 bytes of memory_allocated)")

# %% adds-up
def rounded(tensors):
    """Bytes the caching allocator gives these tensors on the GPU: each storage rounded up to 512 bytes."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                for t in tensors if t.device.type == "cuda"}
    return sum(-(-n // 512) * 512 for n in storages.values())

if device.type == "cuda":
    print(f"{'step':<20} {'nvidia-smi':>11} {'device used':>16} {'reserved':>14} {'allocated':>14}")
    print(f"{'':<20} {'(MiB)':>11} {'(bytes)':>16} {'(bytes)':>14} {'(bytes)':>14}")
    for row in rows:
        smi = "?" if row["smi"] is None else f"{row['smi']:,}"
        print(f"{row['step']:<20} {smi:>11} {row['used']:>16,} {row['reserved']:>14,} {row['allocated']:>14,}")
    tensors = [tiny, *model.parameters(), *(p.grad for p in model.parameters()), images, labels, output, loss,
               one_byte, odd, *(v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v))]
    ours = rounded(tensors)
    at = {row["step"]: row for row in rows}
    first_workspace = at["first matmul"]["allocated"] - at["batch of 1024"]["allocated"]
    now_allocated = torch.cuda.memory_allocated()
    other = now_allocated - ours - first_workspace
    def line(label, value, note=""):
        print(f"{label:<50} {value:>14,}" + (f"  {note}" if note else ""))
    print()
    print(f"{'Where the memory is now':<50} {'bytes':>14}")
    line("  allocated by PyTorch (memory_allocated)", now_allocated)
    line("    our tensors, each rounded up to 512 bytes", ours)
    line("    cuBLAS workspace (the first matmul's jump)", first_workspace)
    line("    other blocks PyTorch allocated for itself", other,
         "one more workspace: backward ran on autograd's own thread, with its own cuBLAS handle"
         if first_workspace > 0 and other == first_workspace else "")
    reserved = torch.cuda.memory_reserved()
    line("  reserved by PyTorch (memory_reserved)", reserved)
    line("    cached but unused (reserved - allocated)", reserved - now_allocated)
    smi, how = smi_this_process()
    free, total = torch.cuda.mem_get_info()
    if smi is not None:
        line(f"  nvidia-smi, this process ({smi:,} MiB)", smi * MiB, how)
        line("    outside PyTorch's allocator (smi - reserved)", smi * MiB - reserved,
             "the CUDA context, its loaded kernels, cuBLAS's handle")
    else:
        print(f"  nvidia-smi, this process: {how}")
    line("  device used, mem_get_info (total - free)", total - free)
    line("    outside PyTorch's allocator (used - reserved)", total - free - reserved)
    if smi is not None:
        line("    not this process's (used - nvidia-smi)", total - free - smi * MiB,
             "the driver's own reservations and any other process")
    print("(nvidia-smi reports whole MiB, so figures derived from it are good to about 1 MiB.)")
else:
    print(f"{'step':<20} {'RSS (bytes)':>14} {'change':>12}")
    previous = rows[0]["rss"]
    for row in rows:
        print(f"{row['step']:<20} {row['rss']:>14,} {row['rss'] - previous:>+12,}")
        previous = row["rss"]
    print("CPU: resident memory counts whole pages of everything in the process (Python, libraries, the BLAS's "
          "buffers, freed memory the C allocator keeps), not tensors. On a GPU this table shows nvidia-smi, "
          "mem_get_info, reserved and allocated side by side, and their differences are the CUDA context, "
          "cuBLAS's workspace and the allocator's cache.")

# %% cache-released-under-pressure
# memory_reserved stays up after a tensor is freed (the block is cached), but the cache
# is not lost to PyTorch: when an allocation does not fit, the caching allocator frees
# its cached blocks that are not split and retries before it raises out-of-memory, also
# under a per-process memory fraction. This cell shows it with no empty_cache() call.
if device.type == "cuda":
    LIMIT_ABOVE = 2**30                     # the process may reserve 1 GiB beyond now
    total = torch.cuda.mem_get_info()[1]    # the fraction is a fraction of this total
    limit = torch.cuda.memory_reserved() + LIMIT_ABOVE
    torch.cuda.set_per_process_memory_fraction(min(1.0, limit / total))
    print(f"Limit: memory_reserved may grow to {limit:,} bytes "
          f"(what it is now + {LIMIT_ABOVE:,})")
    COUNTERS = ("num_alloc_retries", "num_device_alloc", "num_device_free", "num_ooms")
    before = torch.cuda.memory_stats()

    def show(label):
        print(f"{label:<40} allocated {torch.cuda.memory_allocated():>14,}  "
              f"reserved {torch.cuda.memory_reserved():>14,}")

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
        torch.cuda.set_per_process_memory_fraction(1.0)   # no limit after this cell
    after = torch.cuda.memory_stats()
    print("memory_stats() counters, change during the cell: " + ", ".join(
        f"{key} {after[key] - before.get(key, 0):+}" if key in after
        else f"{key} (not reported)" for key in COUNTERS))
    print(f"The second tensor is bigger than the cached block, and the two together "
          f"({first_bytes + second_bytes:,} bytes) need more than the {LIMIT_ABOVE:,} "
          f"the limit leaves.")
    retries = after.get("num_alloc_retries", 0) - before.get("num_alloc_retries", 0)
    if succeeded and retries > 0:
        print("It was allocated anyway: the first try failed against the limit, the "
              "allocator freed its cached blocks that are not split (num_device_free) "
              "and retried (num_alloc_retries). No empty_cache() call was needed.")
    elif succeeded:
        print("It was allocated without a counted retry: see the counters above.")
    print("torch.cuda.empty_cache() returns cached blocks to the driver: useful for "
          "other processes, nvidia-smi and libraries that allocate outside PyTorch, "
          "but it gives PyTorch's own allocations nothing the allocator would not "
          "release by itself on failure.")
else:
    print("CPU fallback: there is no caching allocator on the CPU (a freed CPU tensor "
          "goes back to the C heap), so there is no cache to release and nothing to "
          "measure here.")
    print("On a GPU this cell limits the process with set_per_process_memory_fraction, "
          "frees a large tensor (memory_reserved stays up: the block is cached), then "
          "allocates a bigger one that fits only if that cached block is released, "
          "with no empty_cache() call, and prints memory_stats()' num_alloc_retries "
          "and num_device_free to show that the allocator released it and retried.")
