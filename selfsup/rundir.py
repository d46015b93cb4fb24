"""A run directory: its layout, and rebuilding the model a run trained."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .config import Config, method_hparams
from .errors import SelfSupError
from .methods import method_class
from .models import build_backbone
from .train.checkpoint import load_checkpoint, prefixed


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


def build_method(cfg: Config, in_shape, mean, std) -> nn.Module:
    """A freshly initialised method (backbone + heads), seeded by cfg.seed."""
    torch.manual_seed(cfg.seed)
    backbone = build_backbone(cfg.backbone, tuple(in_shape))
    return method_class(cfg.method)(backbone, tuple(in_shape), mean, std, **method_hparams(cfg))


@dataclass
class TrainedRun:
    """What evaluation and embedding need from a finished (or interrupted) run."""

    config: Config
    backbone: nn.Module
    in_shape: tuple[int, int, int]
    mean: list[float]
    std: list[float]
    epoch: int
    data_name: str


def load_run(run_dir: str | Path) -> TrainedRun:
    """Load a run's backbone from its last checkpoint (projector and other heads dropped)."""
    paths = RunPaths(Path(run_dir))
    if not paths.root.is_dir():
        raise SelfSupError(f"no such run directory: {paths.root}")
    ckpt = load_checkpoint(paths.last)
    cfg = Config.from_dict(ckpt["config"])
    in_shape = tuple(int(v) for v in ckpt["in_shape"])
    backbone = build_backbone(cfg.backbone, in_shape)
    backbone.load_state_dict(prefixed(ckpt["model"], "backbone"))
    backbone.eval()
    return TrainedRun(cfg, backbone, in_shape, list(ckpt["mean"]), list(ckpt["std"]), int(ckpt["epoch"]),
                      str(ckpt.get("data_name", cfg.data)))
