"""Which device a recording is made on, and the environment stamp, without importing torch (that takes seconds)."""
from __future__ import annotations

import ctypes
import platform
from datetime import datetime, timezone
from importlib import metadata


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


def stamp(device: str, cuda_version: str | None = None) -> dict:
    """The environment a recording was made in. ``key(stamp)`` is what decides whether it is still current."""
    return {
        "device": device,
        "device_name": (cuda_device_name() or "unknown GPU") if device == "cuda" else cpu_name(),
        "torch": metadata.version("torch"),
        "torchvision": metadata.version("torchvision"),
        "cuda": cuda_version if device == "cuda" else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "recorded_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


KEY_FIELDS = ("device", "device_name", "torch", "torchvision", "python", "platform")


def key(environment: dict) -> tuple:
    return tuple(environment.get(field) for field in KEY_FIELDS)
