"""oom_reading.py's reading of CUDA out-of-memory messages: every layout PyTorch has printed, and the cause it
states. The messages under test are real ones quoted in the snippet, plus messages built from the format strings of
PyTorch's allocator (c10/cuda/CUDACachingAllocator.cpp) for the parts no quoted message has."""
from __future__ import annotations

import contextlib
import io

import pytest

from tools import snippets

KiB, MiB, GiB = 2**10, 2**20, 2**30


@pytest.fixture(scope="module")
def reader() -> dict:
    """The snippet's namespace after its setup, reader, reported and real-messages cells (no GPU needed)."""
    path = snippets.SNIPPETS_DIR / "oom_reading.py"
    namespace = {"__name__": "__main__", "__file__": str(path)}
    with contextlib.redirect_stdout(io.StringIO()):
        for cell in snippets.cells(path):
            if cell.name in ("setup", "reader", "reported", "real-messages"):
                exec(compile(cell.source, str(path), "exec"), namespace)
    return namespace


def b(value: float, unit: int) -> int:
    return round(value * unit)


LAYOUTS = {
    "1.0-1.3, cached, KiB": (
        "CUDA out of memory. Tried to allocate 16.00 GiB (GPU 0; 11.93 GiB total capacity; 4.00 GiB already "
        "allocated; 7.33 GiB free; 179.00 KiB cached)",
        dict(requested=16 * GiB, capacity=b(11.93, GiB), free=b(7.33, GiB), this_process=None, other_processes=[],
             allowed=None, allocated=4 * GiB, reserved_unallocated=179 * KiB),
        "too large"),
    "1.4-2.0, reserved in total": (
        "CUDA out of memory. Tried to allocate 60.00 MiB (GPU 0; 11.17 GiB total capacity; 505.96 MiB already "
        "allocated; 12.50 MiB free; 530.00 MiB reserved in total by PyTorch)",
        dict(requested=60 * MiB, capacity=b(11.17, GiB), free=b(12.5, MiB), this_process=None, other_processes=[],
             allowed=None, allocated=b(505.96, MiB), reserved_unallocated=530 * MiB - b(505.96, MiB)),
        "too large"),
    "1.8-2.0 with a memory fraction (format string)": (
        "CUDA out of memory. Tried to allocate 1.50 GiB (GPU 0; 139.81 GiB total capacity; 1.00 GiB already "
        "allocated; 137.00 GiB free; 2.00 GiB allowed; 1.02 GiB reserved in total by PyTorch)",
        dict(requested=b(1.5, GiB), capacity=b(139.81, GiB), free=137 * GiB, this_process=None,
             other_processes=[], allowed=2 * GiB, allocated=GiB, reserved_unallocated=b(1.02, GiB) - GiB),
        "over the memory fraction's limit"),
    "2.1, 'capacty', a Process line": (
        "CUDA out of memory. Tried to allocate 496.00 MiB. GPU 0 has a total capacty of 14.75 GiB of which 235.06 "
        "MiB is free. Process 20398 has 14.52 GiB memory in use. Of the allocated memory 14.06 GiB is allocated by "
        "PyTorch, and 330.42 MiB is reserved by PyTorch but unallocated.",
        dict(requested=496 * MiB, capacity=b(14.75, GiB), free=b(235.06, MiB), this_process=None,
             other_processes=[{"pid": 20398, "bytes": b(14.52, GiB)}], allowed=None, allocated=b(14.06, GiB),
             reserved_unallocated=b(330.42, MiB)),
        "fragmentation"),
    "2.2+, this process and four others, pasted over lines": (
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 572.00 MiB. GPU 0 has a total capacity\n"
        "of 39.49 GiB of which 321.31 MiB is free. Process 3721648 has 414.00 MiB memory in use. Including\n"
        "non-PyTorch memory, this process has 37.46 GiB memory in use. Process 1374765 has 414.00 MiB memory in "
        "use. Process 1374763 has 414.00 MiB memory in use. Process 1374764 has 414.00 MiB memory in use. Of the "
        "allocated memory 36.04 GiB is allocated by PyTorch, and 321.37 MiB is reserved by PyTorch but "
        "unallocated. If reserved but unallocated memory is large try setting "
        "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.",
        dict(requested=572 * MiB, capacity=b(39.49, GiB), free=b(321.31, MiB), this_process=b(37.46, GiB),
             other_processes=[{"pid": p, "bytes": 414 * MiB} for p in (3721648, 1374765, 1374763, 1374764)],
             allowed=None, allocated=b(36.04, GiB), reserved_unallocated=b(321.37, MiB)),
        "fragmentation"),
    "newest: 'Out of memory', fraction, private pools, 0 bytes free (format string)": (
        "torch.OutOfMemoryError: Out of memory. Tried to allocate 20.00 MiB. GPU 0 has a total capacity of 79.14 "
        "GiB of which 0 bytes is free. Including non-PyTorch memory, this process has 40.51 GiB memory in use. "
        "40.00 GiB allowed; Of the allocated memory 39.60 GiB is allocated by PyTorch, with 1.00 GiB allocated in "
        "private pools (e.g., CUDA Graphs), and 490.00 MiB is reserved by PyTorch but unallocated.",
        dict(requested=20 * MiB, capacity=b(79.14, GiB), free=0, this_process=b(40.51, GiB), other_processes=[],
             allowed=40 * GiB, allocated=b(39.6, GiB), reserved_unallocated=490 * MiB),
        "over the memory fraction's limit"),
    "request within free (1.0-1.3)": (
        "CUDA out of memory. Tried to allocate 12.50 MiB (GPU 0; 10.92 GiB total capacity; 8.57 MiB already "
        "allocated; 9.28 GiB free; 4.68 MiB cached)",
        dict(requested=b(12.5, MiB), capacity=b(10.92, GiB), free=b(9.28, GiB), this_process=None,
             other_processes=[], allowed=None, allocated=b(8.57, MiB), reserved_unallocated=b(4.68, MiB)),
        "refused although"),
}


@pytest.mark.parametrize("layout", LAYOUTS, ids=list(LAYOUTS))
def test_every_layout_is_read_in_bytes_with_its_cause(reader, layout):
    text, expected, cause = LAYOUTS[layout]
    parts = reader["parse_oom_message"](text)
    assert parts == expected
    assert reader["oom_cause"](parts).startswith(cause)


def test_the_quoted_messages_are_all_read_and_cover_every_cause_but_the_fraction(reader):
    causes = set()
    for text in reader["REPORTED"]:
        parts = reader["parse_oom_message"](text)
        assert None not in (parts["requested"], parts["capacity"], parts["free"], parts["allocated"],
                            parts["reserved_unallocated"]), text
        causes.add(reader["oom_cause"](parts).split(":")[0].split(" although")[0])
    assert causes == {"too large", "fragmentation", "refused"}


def test_another_process_line_is_never_this_process(reader):
    """'Process N has ...' goes to other_processes; only 'this process has ...' is this process."""
    parts = reader["parse_oom_message"](LAYOUTS["2.1, 'capacty', a Process line"][0])
    assert parts["this_process"] is None and parts["other_processes"][0]["pid"] == 20398


def test_the_cpu_message_names_only_the_request(reader):
    parts = reader["parse_oom_message"](
        "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to "
        "allocate 1152921504606846976 bytes. Error code 12 (Cannot allocate memory)")
    assert parts["requested"] == 2**60
    assert all(value is None for key, value in parts.items() if key not in ("requested", "other_processes"))
    assert reader["oom_cause"](parts).startswith("no allocator numbers")


def test_the_exercise_message_is_fragmentation(recorded):
    from conftest import cell_output
    text = cell_output(recorded("oom_reading"), "exercise-message")
    assert "2,048.00   1,536.00   3,276.80" in text
    assert text.endswith("cause: fragmentation: free + cached would hold it, but not in one piece\n")


def test_the_recorded_cell_states_each_cause(recorded):
    from conftest import cell_output
    text = cell_output(recorded("oom_reading"), "real-messages")
    assert text.count("too large") == 3 and text.count("fragmentation") == 3 and text.count("refused") == 1
    assert "process 20398: 14,868.48 MiB, more than PyTorch holds: this one?" in text
    assert "other processes: 4, 1,656.00 MiB in all" in text
