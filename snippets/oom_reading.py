# %% setup
# Setup the cells below need: imports, the device, the sizes, and on CUDA the limit.
# HOLD and REQUEST: what to hold and what to ask for. On CUDA a 2 GiB limit (a pretend
# card) and the allocator's history, switched on for a snapshot at the end.
# On CUDA the request fails with torch.OutOfMemoryError; on the CPU, 2**60 bytes
# fail with the CPU allocator's RuntimeError.
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
HOLD = GiB  # bytes the process holds in a tensor it keeps


def say(text):
    """Print text in lines of at most 88 characters, paragraph by paragraph."""
    for paragraph in text.splitlines():
        print(textwrap.fill(paragraph, 88, break_on_hyphens=False))


recording = False  # the CUDA allocator's history, for a snapshot at the end
if device.type == "cuda":
    REQUEST = 3 * GiB // 2  # 1.5 GiB more: over the limit
    free, total = torch.cuda.mem_get_info()
    LIMIT = 2 * GiB  # this process may reserve at most 2 GiB
    print(f"GPU: {total:,} bytes in all, {free:,} free now (mem_get_info)")
    print(f"Limit for this process: {LIMIT:,} bytes")
    try:  # a private API: it may change between releases
        torch.cuda.memory._record_memory_history(max_entries=100_000, stacks="python")
        recording = True
    except (AttributeError, RuntimeError, TypeError) as error:
        print(f"No allocator history here ({type(error).__name__}: {error})")
    torch.cuda.set_per_process_memory_fraction(LIMIT / total)
else:
    REQUEST = 2**60  # bytes: more than any machine has, or can even address

# %% provoke
held = torch.empty(HOLD, dtype=torch.uint8, device=device)  # kept
try:
    more = torch.empty(REQUEST, dtype=torch.uint8, device=device)
    message = "no error: this machine allowed it"
except RuntimeError as error:  # torch.OutOfMemoryError is a RuntimeError too
    message = f"{type(error).__name__}: {error}"
print(f"Holding {held.nbytes:,} bytes, then asking for {REQUEST:,} more:")
say(message)

# %% reader
# The reader the cells below need: parse_oom_message, oom_cause and the table's rows.
# parse_oom_message: each part of a message, in bytes; oom_cause: the four rules; row
# and process_notes: how the table below prints them.
UNITS = {"bytes": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
SIZE = r"([\d.]+) (bytes|KiB|MiB|GiB|TiB)"
# One pattern per part, for every layout PyTorch has printed: 1.0-1.3 "(GPU 0; ...;
# F free; C cached)", 1.4-2.0 "(...; F free; [L allowed; ]R reserved in total by
# PyTorch)", 2.1 and later "GPU 0 has a total capacity of T of which F is free.
# [Process N has P memory in use. ...] ..." (2.1 printed "capacty"). The CPU's
# allocator says only "you tried to allocate N bytes".
PARTS = {
    "requested": r"Tried to allocate " + SIZE + r"|you tried to allocate (\d+) (bytes)",
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
    """The numbers of an out-of-memory message, in bytes (int, from the message's
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
    refusal although the device reported enough free. A message without the
    allocator's numbers (the CPU's) names only the request."""
    request, free = parts["requested"], parts["free"]
    if free is None:
        return "no allocator numbers: the message names only the request"
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


def shown(value):
    """One part of a parsed message, in bytes, as the cell below prints it."""
    if isinstance(value, list):  # other processes
        return ", ".join(f"{p['pid']}: {p['bytes']:,}" for p in value) or "none"
    return f"{value:,} bytes"


def row(parts):
    """Requested, free, cached and allowed, in MiB ('-' where the message has none)."""
    keys = ("requested", "free", "reserved_unallocated", "allowed")
    cells = ["-" if parts[k] is None else f"{parts[k] / MiB:,.2f}" for k in keys]
    return f"{cells[0]:>10} {cells[1]:>10} {cells[2]:>10} {cells[3]:>9}"


def process_notes(parts):
    """The 'Process N has' lines: one larger than all PyTorch holds is most likely
    this very process, seen from outside its container; the rest, added up."""
    held = (parts["allocated"] or 0) + (parts["reserved_unallocated"] or 0)
    notes, others = [], []
    for p in parts["other_processes"]:
        if p["bytes"] >= held:
            mib = f"{p['bytes'] / MiB:,.2f} MiB"
            notes.append(
                f"process {p['pid']}: {mib}, more than PyTorch holds: this one?"
            )
        else:
            others.append(p["bytes"])
    if others:
        used = f"{sum(others) / MiB:,.2f} MiB"
        notes.append(f"other processes: {len(others)}, {used} in all")
    return notes


# %% explain
parts = parse_oom_message(message)
for key, value in parts.items():
    if value is not None:
        print(f"{key:<22} {shown(value)}")
print(f"absent: {', '.join(k for k, v in parts.items() if v is None) or 'none'}")
print(f"cause: {oom_cause(parts)}")

# %% reported
# The messages the next cell reads: seven real ones, each with its source.
# Learners posted them with their questions; one or two per layout PyTorch printed.
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

# %% real-messages
print("MiB; cached: reserved by PyTorch but unallocated")
print(f"{'':>2} {'requested':>10} {'free':>10} {'cached':>10} {'allowed':>9}")
for number, text in enumerate(REPORTED, start=1):
    parts = parse_oom_message(text)
    print(f"{number:>2} {row(parts)}")
    print(f"   {oom_cause(parts)}")
    for note in process_notes(parts):
        print(f"   {note}")


# %% summary
# The allocator's own table on CUDA (memory_summary); on the CPU, the process's RSS.
# The CPU has no allocator table: its resident memory around a 256 MiB tensor instead.
def rss():
    """This process's resident memory now (bytes), from /proc/self/status (Linux),
    or None where there is no /proc. The kernel updates it lazily: it can be off by
    a few pages."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            fields = dict(line.split(":", 1) for line in status if ":" in line)
    except OSError:
        return None
    return int(fields["VmRSS"].split()[0]) * KiB


if device.type == "cuda":
    print("torch.cuda.memory_summary(abbreviated=True):")
    for line in torch.cuda.memory_summary(abbreviated=True).splitlines():
        print(line[:88])
else:
    before = rss()
    block = torch.ones(256 * MiB // 4)  # 256 MiB of float32, written: pages in use
    during, size = rss(), block.nbytes
    del block
    after = rss()
    if before is None:
        print("(no /proc here: the RSS is not available)")
    else:
        print(f"{'RSS before':<42} {before:>13,} bytes")
        print(f"{f'RSS holding a tensor of {size:,} bytes':<42} {during:>13,} bytes")
        print(f"{'RSS after del':<42} {after:>13,} bytes")
        print(f"The RSS grew by {during - before:,} bytes for the tensor's {size:,}")

# %% snapshot
# The allocator's history saved as a snapshot file for pytorch.org/memory_viz (CUDA).
if device.type == "cuda" and recording:
    path = os.path.join(tempfile.gettempdir(), "oom_snapshot.pickle")
    torch.cuda.memory._dump_snapshot(path)
    torch.cuda.memory._record_memory_history(enabled=None)  # stop recording
    print(f"Snapshot written: {path} ({os.path.getsize(path):,} bytes)")
else:
    print("No snapshot: there is no allocator history to save here.")

# %% reset
# The limit removed and the held tensor freed, so that nothing stays behind (CUDA).
del held
if device.type == "cuda":
    torch.cuda.set_per_process_memory_fraction(1.0)
    torch.cuda.empty_cache()
    allocated = torch.cuda.memory_allocated()
    print(f"Limit removed (fraction 1.0); memory_allocated {allocated:,} bytes")
else:
    print("Nothing to reset on the CPU: no limit was set.")

# %% exercise-message
EXERCISE = (
    "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
    "23.65 GiB of which 1.50 GiB is free. Including non-PyTorch memory, this process "
    "has 22.13 GiB memory in use. Of the allocated memory 18.40 GiB is allocated by "
    "PyTorch, and 3.20 GiB is reserved by PyTorch but unallocated."
)
parts = parse_oom_message(EXERCISE)
print(f"{'':>2} {'requested':>10} {'free':>10} {'cached':>10} {'allowed':>9}  (MiB)")
print(f"{'':>2} {row(parts)}")
print(f"cause: {oom_cause(parts)}")
