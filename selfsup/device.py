"""Choosing the device and the precision that go with it."""
from __future__ import annotations

import torch


def pick_device(name: str | None = None) -> torch.device:
    """Return the requested device, or CUDA when present, else CPU."""
    if name and name != "auto":
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(device: torch.device, enabled: bool | None = None):
    """bf16 autocast: by default on CUDA only (CPU bf16 is slower than fp32 on small models); `enabled` forces it."""
    on = device.type == "cuda" if enabled is None else enabled
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=on)


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether a run trains under bf16 autocast: "bf16" always, "auto" on CUDA, "fp32" never."""
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")
