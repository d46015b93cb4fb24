"""A run directory: its layout, and rebuilding the method a run trained."""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

import torch

from .config import Config
from .data.types import DataSpec, image_spec
from .errors import SelfSupError
from .methods import Method, get_method, parse_hparams
from .models.encoder import Encoder
from .train.checkpoint import load_run_checkpoint, unwrapped


@dataclass
class RunPaths:
    """Where a run keeps its files."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def holdout(self) -> Path:
        return self.root / "holdout.json"

    @property
    def skipped(self) -> Path:
        """The unreadable files a folder source left out (--skip-bad), one path a line."""
        return self.root / "skipped.txt"


def build_method(cfg: Config, spec: DataSpec, seed: int | None = None) -> Method:
    """A freshly initialised method (backbone + heads) for a resolved config, seeded by cfg.seed (or `seed`)."""
    cls = get_method(cfg.method)
    if spec.kind != cls.modality:
        raise SelfSupError(f"method {cls.name} learns from {cls.modality} data, but {cfg.data} holds "
                           f"{spec.kind} data")
    torch.manual_seed(cfg.seed if seed is None else seed)
    return cls(spec, parse_hparams(cls.name, cls.Hparams, cfg.method_args), cfg.backbone)


def checkpoint_spec(ckpt: dict) -> DataSpec:
    """The data spec a checkpoint was trained with (older checkpoints stored in_shape, mean and std)."""
    if "spec" in ckpt:
        return DataSpec.from_dict(ckpt["spec"])
    return image_spec(ckpt["in_shape"], ckpt["mean"], ckpt["std"])


@dataclass
class TrainedRun:
    """What evaluation and embedding need from a finished (or interrupted) run."""

    config: Config
    method: Method
    encoder: Encoder
    spec: DataSpec
    epoch: int
    data_name: str

    def random_encoder(self, seed: int) -> Encoder:
        """The same architecture freshly initialised (the random-init baseline)."""
        return build_method(self.config, self.spec, seed=seed).encoder()


def load_run(run_dir: str | Path) -> TrainedRun:
    """Rebuild a run's method from its last checkpoint and take its encoder (heads are not used)."""
    paths = RunPaths(Path(run_dir))
    if paths.root.exists() and not paths.root.is_dir():
        raise SelfSupError(f"{paths.root} is a file, not a directory: give a run directory made by "
                           "'selfsup pretrain'")
    if not paths.root.is_dir():
        raise SelfSupError(f"no such run directory: {paths.root}")
    if paths.config.exists():
        Config.load(paths.config)  # a broken config.yaml is refused here as --resume refuses it
    ckpt = load_run_checkpoint(paths.last)
    try:
        cfg = Config.from_dict(ckpt["config"])
        spec = checkpoint_spec(ckpt)
    except (KeyError, TypeError, ValueError) as e:
        raise SelfSupError(f"{paths.last} is not a selfsup checkpoint (bad config or data spec: {e})") from None
    method = build_method(cfg, spec)
    missing, unexpected = method.load_state_dict(unwrapped(ckpt["model"]), strict=False)
    if missing or unexpected:
        raise SelfSupError(f"checkpoint {paths.last} does not match method {cfg.method}: missing "
                           f"{', '.join(missing[:3]) or 'nothing'}, unexpected {', '.join(unexpected[:3]) or 'nothing'} "
                           f"(written by another version of selfsup?)")
    method.eval()
    return TrainedRun(cfg, method, method.encoder(), spec, int(ckpt["epoch"]), str(ckpt.get("data_name", cfg.data)))


class RunLock:
    """One process per run directory: an exclusive lock on RUN_DIR/.lock that the OS drops when the process ends.

    A second `pretrain` (or `--resume`) on a run directory in use gets a one-line error naming the holder; a lock
    file left by a killed process holds no lock, so the next resume takes it.
    """

    def __init__(self, root: Path):
        self.path = Path(root) / ".lock"
        self.fd: int | None = None

    def acquire(self) -> "RunLock":
        if fcntl is None:  # no flock on this platform: run unguarded
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise SelfSupError(f"{self.path.parent} is in use by {holder}; wait for it to end or stop it") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"selfsup pid {os.getpid()} on {socket.gethostname()} since {datetime.now():%Y-%m-%d %H:%M:%S}"
                 .encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
