"""The memory budget that decides whether a run's data is loaded onto the device or streamed (--memory-budget)."""
from __future__ import annotations

import os
import re

import torch

from ..errors import SelfSupError

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12,
          "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*$", re.IGNORECASE)
SIZE_HELP = "a size: a number of bytes with an optional unit B, KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB"
DEVICE_SHARE = 0.5  # the default budget: this share of the device's free memory


def parse_size(text: str) -> int:
    """Bytes of "2GiB", "500MB", "1.5 GB", "4096" (bytes); a one-line SelfSupError for anything else (or 0)."""
    m = _SIZE.match(str(text))
    unit = m and _UNITS.get(m.group(2).lower())
    if not m or unit is None:
        raise SelfSupError(f"--memory-budget must be {SIZE_HELP} (e.g. 2GiB or 500MB), got {text!r}")
    size = int(float(m.group(1)) * unit)
    if size <= 0:
        raise SelfSupError(f"--memory-budget must be more than 0 bytes, got {text!r}")
    return size


def size_ok(text) -> bool:
    """Whether `text` is a valid --memory-budget (for config validation)."""
    try:
        parse_size(text)
    except SelfSupError:
        return False
    return True


def show_size(n: float) -> str:
    """1536 -> "1.5 KiB"."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def available_host_memory() -> int | None:
    """Bytes of host memory available to new allocations: MemAvailable of /proc/meminfo, else the free pages
    (os.sysconf), else None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def default_budget(device: torch.device) -> int:
    """DEVICE_SHARE of the device's free memory: the GPU's (torch.cuda.mem_get_info), or the host's divided among
    the processes of this node (torchrun's LOCAL_WORLD_SIZE), since they share it."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * DEVICE_SHARE)
    free = available_host_memory()
    if free is None:
        return 2**62  # unknown: load to memory as before
    return int(free * DEVICE_SHARE) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
