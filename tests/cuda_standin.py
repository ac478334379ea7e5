"""A stand-in for the CUDA caching allocator's counters, on the CPU, so that the bookkeeping of the snippets' CUDA
branches (when a peak is taken, what resets it, where it is stored) runs and is tested without a GPU.

    python tests/cuda_standin.py SNIPPET RESULT.json [PROBES.json [LAST_CELL [FEWER.json]]]   # CUDA bookkeeping on

What it copies from PyTorch's allocator (``c10/cuda/CUDACachingAllocator.cpp``, and ``torch.cuda.memory``):

- One set of counters for the whole process: ``memory_allocated()``, ``max_memory_allocated()``,
  ``memory_reserved()``, ``max_memory_reserved()``. ``reset_peak_memory_stats()``, called from anywhere (another
  meter, a helper, the recorder's reset before every cell), sets both peaks back to what is in use now.
- Every allocation is rounded up to a multiple of 512 bytes.
- Reserved memory grows in segments (2 MiB for requests up to 1 MiB, 20 MiB for requests under 10 MiB, else the
  request rounded up to 2 MiB) and does not shrink when tensors are freed: freed blocks stay cached for reuse.
- ``set_per_process_memory_fraction(f)`` limits *reserved* memory to ``f`` x the total. A request that does not fit
  first frees the cached segments and retries (``num_alloc_retries``), then raises ``torch.cuda.OutOfMemoryError``.
  ``empty_cache()`` gives cached segments back.
- ``memory_stats()`` with the real keys (``allocation.all.current``, ``allocated_bytes.all.peak``, ...).

What it does not copy: block splitting and fragmentation (a cached byte is reused by any request), streams, the
CUDA context and cuBLAS's workspaces (nothing here is allocated outside tensors).

How it sees memory: a ``TorchDispatchMode`` sees the outputs of every operator, backward's included. A storage is
counted from the first operator that returns it until it is freed (a weak reference tells); tensors made without an
operator (``torch.from_numpy``) are not counted. A DataLoader's work to assemble a batch (reading images, the
transforms, collation) is host work that a GPU's allocator never sees: it is not counted, and the tensors of the
batch it returns are counted from then on, as their copies on the GPU would be. (Counting that work image by image
was also what made the stand-in slow: 95% of a snippet's time, one scan of every live storage per operator.)

How a snippet is run: its cells in one namespace through the recorder's own ``tools.run_cells.run_cell`` (with the
per-cell reset on), after one line of its setup cell, ``ALLOCATOR = device.type == "cuda"``, is replaced by
``ALLOCATOR = True``: every branch that reads the allocator then runs, on CPU tensors, against this stand-in.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

ROOT = Path(__file__).resolve().parent.parent
SWITCH = 'ALLOCATOR = device.type == "cuda"'
MiB = 2**20
TOTAL = 8 * 1024 * MiB           # what mem_get_info() reports as the device's memory


def rounded(nbytes: int) -> int:
    return -(-nbytes // 512) * 512


def segment(nbytes: int) -> int:
    if nbytes <= MiB:
        return 2 * MiB
    if nbytes < 10 * MiB:
        return 20 * MiB
    return -(-nbytes // (2 * MiB)) * (2 * MiB)


class StandIn(TorchDispatchMode):
    """The CUDA caching allocator's counters, kept for CPU tensors. Enter it, then ``patch(torch.cuda)``."""

    def __init__(self):
        super().__init__()
        self.storages: dict[int, tuple[StorageWeakRef, int]] = {}     # address -> (weak reference, rounded bytes)
        self.allocated = self.reserved = self.peak_allocated = self.peak_reserved = 0
        self.limit = TOTAL
        self.stats = {"num_alloc_retries": 0, "num_ooms": 0, "num_device_free": 0, "num_device_alloc": 0}
        self.resets = 0
        self.paused = 0                # > 0 while host work runs (``host``): nothing is counted

    # --- bookkeeping -------------------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Forget freed storages: what is allocated now. (It runs after every operator, over every live storage:
        the check StorageWeakRef.expired() makes, called directly, keeps that fast.)"""
        expired = torch.UntypedStorage._expired
        for address in [a for a, (weak, _) in self.storages.items() if expired(weak.cdata)]:
            self.allocated -= self.storages.pop(address)[1]

    def _allocate(self, storage) -> None:
        nbytes = rounded(storage.nbytes())
        if nbytes == 0:
            return
        address = storage.data_ptr()
        known = self.storages.get(address)
        if known is not None and not known[0].expired():
            return                                                    # a view of a storage already counted
        if known is not None:
            del self.storages[address]
            self.allocated -= known[1]
        if self.allocated + nbytes > self.reserved:                   # the cache cannot serve it: a new segment
            grow = segment(nbytes)
            if self.reserved + grow > self.limit:
                self.stats["num_alloc_retries"] += 1                  # free the cached segments, then retry
                self._release_cache()
                if self.reserved + grow > self.limit:
                    self.stats["num_ooms"] += 1
                    raise torch.cuda.OutOfMemoryError(
                        f"CUDA out of memory (stand-in). Tried to allocate {nbytes / MiB:.2f} MiB. "
                        f"{self.allocated / MiB:.2f} MiB is allocated by PyTorch, and "
                        f"{(self.reserved - self.allocated) / MiB:.2f} MiB is reserved but unallocated; "
                        f"allowed: {self.limit / MiB:.2f} MiB")
            self.reserved += grow
            self.stats["num_device_alloc"] += 1
        self.storages[address] = (StorageWeakRef(storage), nbytes)
        self.allocated += nbytes
        self.peak_allocated = max(self.peak_allocated, self.allocated)
        self.peak_reserved = max(self.peak_reserved, self.reserved)

    def _release_cache(self) -> None:
        kept = segment(self.allocated) if self.allocated else 0
        if kept < self.reserved:
            self.stats["num_device_free"] += 1
        self.reserved = min(self.reserved, kept)

    def _count(self, out) -> None:
        self.refresh()
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor) and value.layout == torch.strided:
                self._allocate(value.untyped_storage())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not self.paused:
            self._count(out)
        return out

    def host(self, function):
        """``function`` (a DataLoader iterator's ``__next__``) run as host work, uncounted; the tensors it returns are
        counted from then on, as the batch's copy on the GPU would be."""
        def wrapped(*args, **kwargs):
            self.paused += 1
            try:
                out = function(*args, **kwargs)
            finally:
                self.paused -= 1
            if not self.paused:
                self._count(out)
            return out
        return wrapped

    # --- the torch.cuda API -----------------------------------------------------------------------------------
    def memory_allocated(self, device=None) -> int:
        self.refresh()
        return self.allocated

    def max_memory_allocated(self, device=None) -> int:
        self.refresh()
        return self.peak_allocated

    def memory_reserved(self, device=None) -> int:
        return self.reserved

    def max_memory_reserved(self, device=None) -> int:
        return self.peak_reserved

    def reset_peak_memory_stats(self, device=None) -> None:
        self.refresh()
        self.resets += 1
        self.peak_allocated, self.peak_reserved = self.allocated, self.reserved

    def empty_cache(self) -> None:
        self.refresh()
        self._release_cache()

    def set_per_process_memory_fraction(self, fraction: float, device=None) -> None:
        if not 0 <= fraction <= 1:
            raise ValueError(f"Invalid fraction value: {fraction}. Allowed range: 0~1")
        self.limit = int(fraction * TOTAL)

    def mem_get_info(self, device=None) -> tuple[int, int]:
        return TOTAL - self.reserved, TOTAL

    def memory_stats(self, device=None) -> dict:
        self.refresh()
        return {"allocation.all.current": len(self.storages),
                "allocated_bytes.all.current": self.allocated, "allocated_bytes.all.peak": self.peak_allocated,
                "reserved_bytes.all.current": self.reserved, "reserved_bytes.all.peak": self.peak_reserved,
                **self.stats}

    def synchronize(self, device=None) -> None:
        pass

    NAMES = ("memory_allocated", "max_memory_allocated", "memory_reserved", "max_memory_reserved",
             "reset_peak_memory_stats", "empty_cache", "set_per_process_memory_fraction", "mem_get_info",
             "memory_stats", "synchronize")

    def patch(self, cuda) -> None:
        """Replace those functions of ``torch.cuda`` by this stand-in's."""
        for name in self.NAMES:
            setattr(cuda, name, getattr(self, name))


def run(snippet: Path, figure_dir: Path, probes: dict[str, str] | None = None,
        last: str | None = None, fewer: dict[str, str] | None = None) -> list[dict]:
    """Run the cells of ``snippet`` with its allocator switch on, against a stand-in, the recorder's per-cell reset
    included: all of them, or up to the cell named ``last``. ``fewer`` ({line: replacement}, each line found exactly
    once) sets a timing's repeats and sample counts lower: the stand-in sees every operator in Python, its clock
    measures nothing, and a timing loop run in full only costs minutes. Returns the cells' results as
    ``tools.run_cells.run_cell`` gives them (it stops at a cell that raised), then one entry named '(stand-in)' with
    the stand-in's counters and each of ``probes`` ({name: expression}) evaluated in the snippet's namespace after
    the last cell run."""
    sys.path.insert(0, str(ROOT))
    from tools import run_cells, snippets

    cells = snippets.cells(snippet)
    setup = cells[0]
    if setup.source.count(SWITCH) != 1:
        raise SystemExit(f"{snippet.name}: its setup cell must hold the line {SWITCH!r} once")
    if last is not None and last not in [cell.name for cell in cells]:
        raise SystemExit(f"{snippet.name}: no cell named {last!r}")
    cells[0] = dataclasses.replace(setup, source=setup.source.replace(SWITCH, "ALLOCATOR = True"))
    for line, replacement in (fewer or {}).items():
        found = [i for i, cell in enumerate(cells) for text in cell.source.splitlines() if text == line]
        if len(found) != 1:
            raise SystemExit(f"{snippet.name}: the line {line!r} is in {len(found)} places, not one")
        cells[found[0]] = dataclasses.replace(cells[found[0]], source=cells[found[0]].source.replace(line, replacement))
    stand_in = StandIn()
    stand_in.patch(torch.cuda)
    from torch.utils.data import dataloader
    dataloader._BaseDataLoaderIter.__next__ = stand_in.host(dataloader._BaseDataLoaderIter.__next__)
    run_cells._cuda_in_use = lambda: torch          # the recorder resets the peak before every cell
    namespace = {"__name__": "__main__", "__file__": str(snippet)}
    results = []
    figure_dir.mkdir(parents=True, exist_ok=True)
    with stand_in:
        for cell in cells:
            results.append(run_cells.run_cell(cell, namespace, str(snippet), figure_dir, "standin"))
            if results[-1]["error"] or cell.name == last:
                break
    failed = results[-1]["error"] if results else None
    values = {} if failed else {name: eval(expression, namespace) for name, expression in (probes or {}).items()}
    results.append({"name": "(stand-in)", "resets": stand_in.resets, **stand_in.memory_stats(), "probes": values})
    return results


if __name__ == "__main__":
    path, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
    probes = json.loads(Path(sys.argv[3]).read_text()) if len(sys.argv) > 3 else None
    last = sys.argv[4] or None if len(sys.argv) > 4 else None
    fewer = json.loads(Path(sys.argv[5]).read_text()) if len(sys.argv) > 5 else None
    out.write_text(json.dumps(run(path, out.parent / "figures", probes, last, fewer)), encoding="utf-8")
