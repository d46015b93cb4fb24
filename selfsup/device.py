"""Choosing the device and the precision that go with it."""
from __future__ import annotations

import torch

from .errors import SelfSupError


def pick_device(name: str | None = None) -> torch.device:
    """Return the requested device, or CUDA when present, else CPU; a one-line error for one this machine lacks."""
    if not name or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SelfSupError(f"unknown device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SelfSupError(f"--device {name}: this machine has no CUDA GPU (use --device cpu or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise SelfSupError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s)")
    elif device.type != "cpu":
        raise SelfSupError(f"--device {name}: only cpu and cuda devices are supported")
    return device


def autocast(device: torch.device, enabled: bool | None = None):
    """bf16 autocast: by default on CUDA only (CPU bf16 is slower than fp32 on small models); `enabled` forces it."""
    on = device.type == "cuda" if enabled is None else enabled
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=on)


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether a run trains under bf16 autocast: "bf16" always, "auto" on CUDA, "fp32" never."""
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")
