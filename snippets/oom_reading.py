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

# %% reader
UNITS = {"bytes": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
SIZE = r"([\d.]+) (bytes|KiB|MiB|GiB|TiB)"
# One pattern per part, for every layout PyTorch has printed: 1.0-1.3 "(GPU 0; ...;
# F free; C cached)", 1.4-2.0 "(...; F free; [L allowed; ]R reserved in total by
# PyTorch)", 2.1 and later "GPU 0 has a total capacity of T of which F is free.
# [Process N has P memory in use. ...] ..." (2.1 printed "capacty").
PARTS = {
    "requested": r"Tried to allocate " + SIZE,
    "capacity": SIZE + r" total capacity|total capaci?ty of " + SIZE,
    "free": SIZE + r" free[;)]|of which " + SIZE + " is free",
    "this_process": r"this process has " + SIZE + " memory in use",
    "allowed": SIZE + r" allowed;",
    "allocated": SIZE + r" already allocated|memory " + SIZE + " is allocated by",
    "reserved_unallocated": SIZE
    + r" cached\)|and "
    + SIZE
    + " is reserved by PyTorch but",
}


def parse_oom_message(text):
    """The numbers of a CUDA out-of-memory message, in bytes (int, from the message's
    rounded values; KiB, MiB, GiB are 1024-based), None where this layout has no such
    part: requested, capacity, free (on the whole GPU), this_process (what it uses,
    CUDA context included), other_processes (a list of {"pid", "bytes"}), allowed (a
    memory fraction's limit), allocated (in live tensors) and reserved_unallocated
    (cached blocks no tensor uses; 1.4-2.0 print the reserved total instead)."""
    text = " ".join(text.split())  # a message pasted over several lines reads as one
    found = {}
    for key, pattern in PARTS.items():
        match = re.search(pattern, text)
        size = [g for g in match.groups() if g] if match else None
        found[key] = round(float(size[0]) * UNITS[size[1]]) if size else None
    total = re.search(SIZE + r" reserved in total by PyTorch", text)
    if total and found["allocated"] is not None:
        reserved = round(float(total[1]) * UNITS[total[2]])
        found["reserved_unallocated"] = reserved - found["allocated"]
    found["other_processes"] = [
        {"pid": int(pid), "bytes": round(float(n) * UNITS[unit])}
        for pid, n, unit in re.findall(r"Process (\d+) has " + SIZE, text)
    ]
    return found


def oom_cause(parts):
    """Why the request failed, from what the message says was left: the limit of a
    memory fraction, more than free plus cached, cached memory in pieces, or a
    refusal although the device reported enough free."""
    request, free = parts["requested"], parts["free"]
    cached = parts["reserved_unallocated"] or 0
    held = (parts["allocated"] or 0) + cached
    if parts["allowed"] is not None and held + request > parts["allowed"]:
        return (
            "over the memory fraction's limit: allocated + cached + request > allowed"
        )
    if request > free + cached:
        return "too large: the request is more than free + reserved-but-unallocated"
    if request > free:
        return "fragmentation: free + cached would hold it, but not in one piece"
    return "refused although the device reported more free than the request"


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
    parts = parse_oom_message(message)
    for key, value in parts.items():
        if key == "other_processes":
            shown = ", ".join(f"{p['pid']}: {p['bytes']:,}" for p in value) or "none"
        else:
            shown = "not in this message" if value is None else f"{value:,} bytes"
        print(f"{key:<22} {shown}")
    allocated, reserved = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
    print(f"Now: memory_allocated {allocated:,} bytes, memory_reserved {reserved:,}")
    print(f"cause: {oom_cause(parts)}")
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

# %% real-messages
# Out-of-memory messages as learners met them, quoted from public reports (each with
# its source), one or two per layout PyTorch has printed.
REPORTED = [
    (  # github.com/pytorch/pytorch/pull/13751 (the message as 1.0 introduced it)
        "CUDA out of memory. Tried to allocate 16.00 GiB (GPU 0; 11.93 GiB total "
        "capacity; 4.00 GiB already allocated; 7.33 GiB free; 179.00 KiB cached)"
    ),
    (  # github.com/pytorch/pytorch/issues/16417
        "CUDA out of memory. Tried to allocate 12.50 MiB (GPU 0; 10.92 GiB total "
        "capacity; 8.57 MiB already allocated; 9.28 GiB free; 4.68 MiB cached)"
    ),
    (  # github.com/pytorch/pytorch/issues/40863 (PyTorch 1.5.1)
        "CUDA out of memory. Tried to allocate 60.00 MiB (GPU 0; 11.17 GiB total "
        "capacity; 505.96 MiB already allocated; 12.50 MiB free; 530.00 MiB reserved "
        "in total by PyTorch)"
    ),
    (  # github.com/pytorch/pytorch/issues/35901
        "CUDA out of memory. Tried to allocate 10.84 GiB (GPU 0; 23.65 GiB total "
        "capacity; 1.06 GiB already allocated; 10.26 GiB free; 12.53 GiB reserved in "
        "total by PyTorch)"
    ),
    (  # github.com/FoundationVision/GenerateU/issues/10 (2.1: "capacty")
        "CUDA out of memory. Tried to allocate 496.00 MiB. GPU 0 has a total capacty "
        "of 14.75 GiB of which 235.06 MiB is free. Process 20398 has 14.52 GiB memory "
        "in use. Of the allocated memory 14.06 GiB is allocated by PyTorch, and "
        "330.42 MiB is reserved by PyTorch but unallocated."
    ),
    (  # github.com/murong-xu/CADS/issues/4
        "CUDA out of memory. Tried to allocate 22.78 GiB. GPU 0 has a total capacity "
        "of 31.47 GiB of which 12.73 GiB is free. Including non-PyTorch memory, this "
        "process has 18.73 GiB memory in use. Of the allocated memory 9.08 GiB is "
        "allocated by PyTorch, and 9.35 GiB is reserved by PyTorch but unallocated."
    ),
    (  # github.com/awslabs/keys_values/issues/92
        "CUDA out of memory. Tried to allocate 572.00 MiB. GPU 0 has a total capacity "
        "of 39.49 GiB of which 321.31 MiB is free. Process 3721648 has 414.00 MiB "
        "memory in use. Including non-PyTorch memory, this process has 37.46 GiB "
        "memory in use. Process 1374765 has 414.00 MiB memory in use. Process 1374763 "
        "has 414.00 MiB memory in use. Process 1374764 has 414.00 MiB memory in use. "
        "Of the allocated memory 36.04 GiB is allocated by PyTorch, and 321.37 MiB is "
        "reserved by PyTorch but unallocated."
    ),
]
print("MiB; cached: reserved by PyTorch but unallocated")
print(f"{'':>2} {'requested':>10} {'free':>10} {'cached':>10} {'allowed':>9}")
for number, text in enumerate(REPORTED, start=1):
    parts = parse_oom_message(text)
    shown = [
        "-" if parts[key] is None else f"{parts[key] / MiB:,.2f}"
        for key in ("requested", "free", "reserved_unallocated", "allowed")
    ]
    print(f"{number:>2} {shown[0]:>10} {shown[1]:>10} {shown[2]:>10} {shown[3]:>9}")
    print(f"   {oom_cause(parts)}")
    held = (parts["allocated"] or 0) + (parts["reserved_unallocated"] or 0)
    others = [p for p in parts["other_processes"] if p["bytes"] < held]
    for p in parts["other_processes"]:
        if p["bytes"] >= held:  # a container shows this process under another PID
            mib = f"{p['bytes'] / MiB:,.2f} MiB"
            print(f"   process {p['pid']}: {mib}, more than PyTorch holds: this one?")
    if others:
        used = sum(p["bytes"] for p in others) / MiB
        print(f"   other processes: {len(others)}, {used:,.2f} MiB in all")

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
