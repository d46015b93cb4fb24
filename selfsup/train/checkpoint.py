"""Atomic checkpoint files that load without executing pickled code."""
from __future__ import annotations

import os
import pickle
import tempfile
import threading
import warnings
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


def _to_cpu_copy(obj):
    """A copy of nested containers whose tensors are detached CPU copies (training may change the originals)."""
    if torch.is_tensor(obj):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu_copy(v) for v in obj)
    return obj


class CheckpointWriter:
    """Saves checkpoints atomically on a background thread, one at a time, so training need not wait for the disk.

    `save` copies the state to the CPU at once; `wait` blocks until the last write is on disk and re-raises its error.
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def save(self, state: dict, *paths: str | Path) -> None:
        self.wait()
        snapshot = _to_cpu_copy(state)
        self._thread = threading.Thread(target=self._write, args=(snapshot, paths), name="checkpoint-writer")
        self._thread.start()

    def _write(self, snapshot: dict, paths) -> None:
        try:
            for path in paths:
                save_atomic(snapshot, path)
        except BaseException as e:  # handed to the training thread by wait()
            self._error = e

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


CHECKPOINT_KEYS = ("config", "model", "epoch")  # what every selfsup checkpoint holds, whatever its version


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint with weights_only=True: tensors and plain containers only, no code runs."""
    path = Path(path)
    if not path.is_file():
        raise SelfSupError(f"no checkpoint at {path}")
    if path.stat().st_size == 0:
        raise SelfSupError(f"checkpoint {path} is empty (0 bytes): the run was stopped while it was written?")
    try:
        with warnings.catch_warnings():  # e.g. torch's note on a pickle protocol: the one line below says it all
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:  # weights_only refused a global: the file holds arbitrary Python objects
        raise SelfSupError(f"cannot read checkpoint {path}: it holds Python objects other than tensors and plain "
                           "containers, and loading those could run code (refused)") from None
    except Exception as e:  # a truncated or foreign file
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SelfSupError(f"cannot read checkpoint {path}: {msg}") from None
    return ckpt


def load_run_checkpoint(path: str | Path) -> dict:
    """A run's checkpoint (load_checkpoint), checked to hold what every selfsup checkpoint holds."""
    ckpt = load_checkpoint(path)
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise SelfSupError(f"{path} is not a selfsup checkpoint (it lacks {', '.join(missing)})")
    if not isinstance(ckpt["config"], dict) or not isinstance(ckpt["model"], dict):
        raise SelfSupError(f"{path} is not a selfsup checkpoint (its config or model is not a mapping)")
    return ckpt


def prefixed(state: dict, prefix: str) -> dict:
    """The entries of a state dict under `prefix.`, with the prefix removed."""
    return {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}


def unwrapped(state: dict) -> dict:
    """A state dict without DistributedDataParallel's `module.` (or torch.compile's `_orig_mod.`) prefixes, so a
    model saved while wrapped loads into the bare method."""
    for prefix in ("_orig_mod.", "module."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state
