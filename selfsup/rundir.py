"""A run directory: its layout, and rebuilding the method a run trained."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .config import Config
from .data.types import DataSpec, image_spec
from .errors import SelfSupError
from .methods import Method, get_method, parse_hparams
from .models.encoder import Encoder
from .train.checkpoint import load_checkpoint


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
    if not paths.root.is_dir():
        raise SelfSupError(f"no such run directory: {paths.root}")
    ckpt = load_checkpoint(paths.last)
    cfg = Config.from_dict(ckpt["config"])
    spec = checkpoint_spec(ckpt)
    method = build_method(cfg, spec)
    missing, unexpected = method.load_state_dict(ckpt["model"], strict=False)
    if missing or unexpected:
        raise SelfSupError(f"checkpoint {paths.last} does not match method {cfg.method}: missing "
                           f"{', '.join(missing[:3]) or 'nothing'}, unexpected {', '.join(unexpected[:3]) or 'nothing'} "
                           f"(written by another version of selfsup?)")
    method.eval()
    return TrainedRun(cfg, method, method.encoder(), spec, int(ckpt["epoch"]), str(ckpt.get("data_name", cfg.data)))
