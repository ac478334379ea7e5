# %% setup
# Reading an out-of-memory error. On CUDA: a real torch.cuda.OutOfMemoryError,
# provoked under a memory limit set with torch.cuda.set_per_process_memory_fraction,
# caught, and each number of its message explained; torch.cuda.memory_summary(); and a
# memory snapshot, recorded with torch.cuda.memory._record_memory_history and saved with
# torch.cuda.memory._dump_snapshot, which opens in https://pytorch.org/memory_viz. The
# limit is removed at the end.
# On the CPU there is no CUDA out-of-memory error, no allocator summary and no
# snapshot: this file says so, and shows what the CPU offers instead.
import os
import re
import tempfile
import textwrap

import torch

torch.manual_seed(0)
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
print(f"Device: {device}" + gpu)
KiB, MiB, GiB = 2**10, 2**20, 2**30


def say(text):
    """Print a long sentence in lines of at most 88 characters."""
    print(textwrap.fill(text, 88, break_on_hyphens=False))


def rss():
    """This process's resident memory now and its peak so far (bytes), read from
    /proc/self/status (Linux), or None where there is no /proc. (The kernel updates
    these counters lazily: they can be off by a few pages.)"""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            fields = dict(line.split(":", 1) for line in status if ":" in line)
    except OSError:
        return None
    return tuple(int(fields[key].split()[0]) * KiB for key in ("VmRSS", "VmHWM"))


if device.type == "cuda":
    free, total = torch.cuda.mem_get_info()
    LIMIT = 2 * GiB  # the pretend card: this process may reserve at most 2 GiB
    print(f"GPU: {total:,} bytes in all, {free:,} free now (mem_get_info)")
    print(f"Limit for this process: {LIMIT:,} bytes = {LIMIT / GiB:.0f} GiB")
else:
    say(
        "On the CPU there is no CUDA out-of-memory error, no allocator summary and no "
        "allocator snapshot: the cells below say what the CPU offers instead."
    )

# %% provoke
message = None
if device.type == "cuda":
    try:  # a private API: it may change between releases
        torch.cuda.memory._record_memory_history(max_entries=100_000, stacks="python")
        recording = True
    except (AttributeError, RuntimeError, TypeError) as error:
        print(f"No allocator history here ({type(error).__name__}: {error})")
        recording = False
    torch.cuda.set_per_process_memory_fraction(LIMIT / total)
    held = torch.empty(GiB, dtype=torch.uint8, device=device)  # 1 GiB, kept
    try:
        more = torch.empty(3 * GiB // 2, dtype=torch.uint8, device=device)  # 1.5 GiB
    except torch.cuda.OutOfMemoryError as error:
        message = str(error)
    print(f"Holding {held.nbytes:,} bytes, then asking for {3 * GiB // 2:,} more:")
    if message is None:
        print("no error: this GPU's allocator allowed it")
    else:
        print("torch.cuda.OutOfMemoryError:")
        for paragraph in message.splitlines():
            say(paragraph)
else:
    request = 2**60  # bytes: more than any machine has, or can even address
    try:
        torch.empty(request, dtype=torch.uint8)
    except RuntimeError as error:
        message = str(error)
    print(f"torch.empty({request:,} bytes) on the CPU:")
    print("no error: this machine allowed it" if message is None else "RuntimeError:")
    if message is not None:
        say(message)

# %% explain
if device.type == "cuda" and message is not None:
    PARTS = [
        (r"Tried to allocate [\d.]+ \w+", "the request that failed: the new tensor"),
        (
            r"total capacity of [\d.]+ \w+",
            "the whole GPU's memory, as mem_get_info() reports it",
        ),
        (
            r"of which [\d.]+ \w+ is free",
            (
                "free on the whole GPU, for any process: under a fraction it can be "
                "far more than this process may still take"
            ),
        ),
        (
            r"(this process|Process \d+) has [\d.]+ \w+ memory in use",
            "this process on the GPU: what PyTorch reserved plus the CUDA context",
        ),
        (r"[\d.]+ \w+ allowed", "the limit set with set_per_process_memory_fraction"),
        (
            r"[\d.]+ \w+ is allocated by PyTorch",
            "memory in live tensors: torch.cuda.memory_allocated()",
        ),
        (
            r"[\d.]+ \w+ is reserved by PyTorch but unallocated",
            (
                "cached blocks no tensor uses: memory_reserved() - memory_allocated(). "
                "If it is large, the free memory is in pieces (fragmentation)"
            ),
        ),
    ]
    for pattern, meaning in PARTS:
        found = re.search(pattern, message)
        print(f"'{found.group(0)}'" if found else f"({pattern}: not in this message)")
        say(f"    {meaning}")
    allocated, reserved = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
    print(f"Now: memory_allocated {allocated:,} bytes, memory_reserved {reserved:,}")
    print(f"Free on the GPU (mem_get_info): {torch.cuda.mem_get_info()[0]:,} bytes")
    say(
        "What fails is the allocator's limit for this process, not the card: the "
        "request plus what is reserved would pass the limit, and the allocator had "
        "already freed its unused cached blocks and retried before it raised."
    )
elif message is not None:
    found = re.search(r"tried to allocate \d+ bytes", message)
    if found:
        print(f"'{found.group(0)}'")
        say(f"    the request: 2**60 = {2**60:,} bytes = {2**60 / 2**40:,.0f} TiB")
    code = re.search(r"Error code \d+ \([^)]*\)", message)
    if code:
        print(f"'{code.group(0)}'")
        say("    the operating system's answer (errno ENOMEM): it would not give that")
    say(
        "The CPU's message names only the request. Nothing says how much is in use, "
        "because the CPU has no caching allocator keeping count: PyTorch takes host "
        "memory from the C library. And a request the machine could hold in "
        "principle usually succeeds even when that memory is in use elsewhere: Linux "
        "overcommits, and when the pages are finally written and run out, the "
        "kernel's out-of-memory killer ends the process, with no Python exception "
        "('Killed', exit status 137)."
    )

# %% summary
if device.type == "cuda":
    print("torch.cuda.memory_summary(abbreviated=True):")
    for line in torch.cuda.memory_summary(abbreviated=True).splitlines():
        print(line[:88])
else:
    say(
        "torch.cuda.memory_summary() describes the CUDA caching allocator; the CPU has "
        "none. What the CPU offers is the operating system's view of the whole "
        "process: its resident memory (RSS), read here from /proc/self/status."
    )
    before = rss()
    block = torch.ones(256 * MiB // 4)  # 256 MiB of float32, written: pages in use
    during = rss()
    size = block.nbytes
    del block
    after = rss()
    if before is None:
        print("(no /proc here: the RSS is not available)")
    else:
        for label, (now, _) in (
            ("RSS before", before),
            (f"RSS holding a tensor of {size:,} bytes", during),
            ("RSS after del", after),
        ):
            print(f"{label:<42} {now:>13,} bytes")
        say(
            f"The RSS grew by {during[0] - before[0]:,} bytes for the tensor's "
            f"{size:,}. It counts whole pages of everything in the process, not "
            f"tensors, so it also moves with Python, libraries and freed memory the C "
            f"library keeps, and it changes from run to run."
        )


# %% snapshot
if device.type == "cuda" and recording:
    path = os.path.join(tempfile.gettempdir(), "oom_snapshot.pickle")
    torch.cuda.memory._dump_snapshot(path)
    torch.cuda.memory._record_memory_history(enabled=None)  # stop recording
    print(f"Snapshot written: {path} ({os.path.getsize(path):,} bytes)")
    say(
        "Open https://pytorch.org/memory_viz and drop the file on the page: it runs in "
        "your browser, uploads nothing, and shows every allocation over time with the "
        "Python stack that made it, the failed request included."
    )
elif device.type == "cuda":
    print("No snapshot: the allocator's history could not be recorded here.")
else:
    say(
        "No snapshot either: torch.cuda.memory._record_memory_history records the "
        "CUDA allocator's history, and there is none on the CPU. On the CPU, count "
        "tensor bytes as this chapter does, or use torch.profiler with "
        "profile_memory=True."
    )

# %% reset
if device.type == "cuda":
    del held
    torch.cuda.set_per_process_memory_fraction(1.0)
    torch.cuda.empty_cache()
    allocated = torch.cuda.memory_allocated()
    print(f"Limit removed (fraction 1.0); memory_allocated {allocated:,} bytes")
else:
    print("Nothing to reset on the CPU: no limit was set.")
