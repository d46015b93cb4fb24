"""Atomic checkpoint files that load without executing pickled code."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from ..errors import SelfSupError


def save_atomic(obj: dict, path: str | Path) -> None:
    """Write `obj` with torch.save to a temp file in the same folder, fsync it, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint with weights_only=True: tensors and plain containers only, no code runs."""
    path = Path(path)
    if not path.is_file():
        raise SelfSupError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # a truncated or foreign file
        raise SelfSupError(f"cannot read checkpoint {path}: {str(e).splitlines()[0]}") from None


def prefixed(state: dict, prefix: str) -> dict:
    """The entries of a state dict under `prefix.`, with the prefix removed."""
    return {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}
