"""Choosing the device and the precision that go with it."""
from __future__ import annotations

import torch


def pick_device(name: str | None = None) -> torch.device:
    """Return the requested device, or CUDA when present, else CPU."""
    if name and name != "auto":
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA; a no-op context on CPU (CPU bf16 is slower than fp32 on small models)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")
