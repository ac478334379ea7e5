"""Which device a recording is made on, the environment stamp, and which of its fields decide whether a recording
is current. No torch import here (that takes seconds): versions come from package metadata.

A recording is *current* when it was made from the snippet's present bytes and its ``key`` (device class and the
versions of the libraries that can change what a snippet prints) equals ``expected_key`` for its device class: the
versions pinned for that class (``PINS_FILES``: ``requirements-lesson.txt`` for the CPU set, which CI records;
``requirements-gpu.txt`` for the CUDA set, which is recorded on a GPU machine whose torch cannot be changed).
Versions are compared as public versions: ``2.11.0+cu130`` is ``2.11.0`` (the stamp keeps the full string, and the
site shows it). Everything else in the stamp (the machine's name, the kernel build, the Python patch release, how
busy the machine was, the date) is shown only: it never makes a recording stale. ``tools.record``,
``tools.record --check`` and the mkdocs hook all decide through ``tools.recordings.problems``, which uses this.
"""
from __future__ import annotations

import ctypes
import os
import platform
import re
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PINS_FILES = {                          # the pins each device class's published recordings are made with
    "cpu": ROOT / "requirements-lesson.txt",
    "cuda": ROOT / "requirements-gpu.txt",
}
DEVICES = ("cuda", "cpu")               # the device classes, in the order the site shows them: GPU first
LIBRARIES = ("torch", "torchvision", "torchsummary", "torchinfo", "numpy", "matplotlib")
KEY_FIELDS = ("device", *LIBRARIES)     # the fields that decide whether a recording is current
KIND = {"cuda": "GPU", "cpu": "CPU"}    # what the site calls each device class


def label(environment: dict) -> str:
    """How the site names the machine of a stamp: 'GPU · NVIDIA H200', 'CPU · AMD EPYC'."""
    return f"{KIND[environment['device']]} · {environment['device_name']}"


def cuda_device_name() -> str | None:
    """Name of CUDA device 0 as the driver reports it (torch reports the same), or None without a usable GPU.

    Asks the driver library directly, so it honours CUDA_VISIBLE_DEVICES and costs milliseconds.
    """
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    count, device, name = ctypes.c_int(0), ctypes.c_int(0), ctypes.create_string_buffer(256)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
        return None
    if cuda.cuDeviceGet(ctypes.byref(device), 0) != 0 or cuda.cuDeviceGetName(name, 256, device) != 0:
        return None
    return name.value.decode()


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def resolve(requested: str) -> str:
    """'auto' → 'cuda' when a GPU answers, else 'cpu'. 'cuda' without a GPU raises RuntimeError."""
    if requested not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, not {requested!r}")
    if requested == "cpu":
        return "cpu"
    has_gpu = cuda_device_name() is not None
    if requested == "cuda" and not has_gpu:
        raise RuntimeError("--device cuda: no CUDA GPU is visible on this machine")
    return "cuda" if has_gpu else "cpu"


def installed(library: str) -> str | None:
    """The installed version of ``library`` (from its metadata, without importing it), or None."""
    try:
        return metadata.version(library)
    except metadata.PackageNotFoundError:
        return None


def load_per_cpu() -> float | None:
    """How busy this machine is: the 1-minute load average divided by the number of CPUs, rounded to 2 decimals
    (0.0 idle; 1.0 every CPU busy on average); None where the system has no load average."""
    try:
        return round(os.getloadavg()[0] / (os.cpu_count() or 1), 2)
    except (AttributeError, OSError):
        return None


def stamp(device: str, cuda_version: str | None = None, load: float | None = None) -> dict:
    """The environment a recording is made in: ``KEY_FIELDS`` plus fields shown on the site only. ``load`` is the
    load per CPU when the recording started (default: measured now); timings made above 0.5 are slower and noisier."""
    return {
        "device": device,
        "device_name": (cuda_device_name() or "unknown GPU") if device == "cuda" else cpu_name(),
        **{library: installed(library) for library in LIBRARIES},
        "cuda": cuda_version if device == "cuda" else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_per_cpu": load_per_cpu() if load is None else load,
        "recorded_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def key(environment: dict) -> dict:
    """The fields of a stamp that decide whether its recording is current."""
    return {field: environment.get(field) for field in KEY_FIELDS}


def public(version: str | None) -> str | None:
    """A version without its local part: '2.11.0+cu130' -> '2.11.0' (PEP 440: the local label names a build, not a
    release)."""
    return version.split("+", 1)[0] if version else version


def pinned(pins_file: Path) -> dict[str, str]:
    """``{library: version}`` for every ``name==version`` line of a requirements file (names lower-cased)."""
    pins = {}
    for line in Path(pins_file).read_text(encoding="utf-8").splitlines():
        match = re.match(r"^\s*([A-Za-z0-9_.-]+)\s*==\s*([^\s;#]+)", line)
        if match:
            pins[match[1].lower()] = match[2]
    return pins


def expected_key(device: str, pins_files: dict[str, Path] | None = None) -> dict:
    """What ``key`` must be for a recording of ``device`` to be current: the device and the versions pinned for it."""
    pins = pinned((pins_files or PINS_FILES)[device])
    return {"device": device, **{library: pins.get(library) for library in LIBRARIES}}


def key_differences(environment: dict, device: str, pins_files: dict[str, Path] | None = None) -> list[str]:
    """Human-readable differences between a stamp's key and the one expected for ``device``, comparing public
    versions, e.g. 'torch 2.13.0, pinned 2.14.1'; [] when the stamp's key matches."""
    have, want = key(environment), expected_key(device, pins_files)
    return [f"{field} {have[field]}, expected {want[field]}" if field == "device" else
            f"{field} {have[field]}, pinned {want[field]}"
            for field in KEY_FIELDS if public(have[field]) != want[field]]


def pins_name(device: str, pins_files: dict[str, Path] | None = None) -> str:
    """The file that pins ``device``'s recordings, e.g. 'requirements-gpu.txt'."""
    return Path((pins_files or PINS_FILES)[device]).name
