"""Run configuration: one dataclass, defaults fitted to the method and the hardware, saved as config.yaml."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import SelfSupError
from .methods import get_method
from .methods.hparams import hparams_to_dict, nearest, parse_hparams
from .train.optim import OPTIMIZERS, scaled_lr

# Recipes fitted to the hardware. CPU: a small CNN that finishes in about ten minutes on two cores.
CPU_DEFAULTS = dict(backbone="small_cnn", batch_size=256, epochs=6, knn_every=1)
# On a GPU an epoch takes seconds and a kNN pass over the full splits a good part of one: monitor every 5 epochs.
GPU_DEFAULTS = dict(backbone="resnet18", batch_size=512, epochs=200, knn_every=5)
# Method settings that were run-level fields before the method contract (config.yaml of older runs).
_LEGACY_METHOD_KEYS = ("temperature", "proj_hidden", "proj_dim", "queue_size", "momentum")


@dataclass
class Config:
    """Everything needed to rebuild a run. None means "fill in from the method and the hardware".

    `method_args` holds the method's own settings (its Hparams); resolved, it lists every one of them.
    """

    method: str = "simclr"
    data: str = "fashion-mnist"
    labels: str | None = None
    out: str | None = None
    epochs: int | None = None
    backbone: str | None = None
    batch_size: int | None = None
    optimizer: str | None = None
    lr: float | None = None
    weight_decay: float | None = None
    warmup_epochs: float = 2.0
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    knn_every: int | None = None
    save_every: int = 0
    threads: int | None = None
    method_args: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        d = dict(d)
        legacy = {k: d.pop(k) for k in _LEGACY_METHOD_KEYS if k in d}
        d["method_args"] = {**{k: v for k, v in legacy.items() if v is not None}, **(d.get("method_args") or {})}
        known = [f.name for f in dataclasses.fields(cls)]
        for key in d:
            if key not in known:
                raise SelfSupError(f"unknown config key {key!r}{nearest(key, known)}")
        return cls(**d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def load(cls, path: str | Path) -> "Config":
        p = Path(path)
        if not p.is_file():
            raise SelfSupError(f"no config.yaml in run directory {p.parent}")
        return cls.from_dict(yaml.safe_load(p.read_text()) or {})


def resolve(cfg: Config, device_type: str) -> Config:
    """Fill every None field from the method's declarations and the hardware recipe; returns a new Config.

    The learning rate and weight decay come from the method's defaults for the chosen optimizer, never from
    another optimizer's: an optimizer the method declares no defaults for needs an explicit --lr.
    """
    cls = get_method(cfg.method)
    hw = GPU_DEFAULTS if device_type == "cuda" else CPU_DEFAULTS
    hp = parse_hparams(cls.name, cls.Hparams, cfg.method_args)
    optimizer = (cfg.optimizer or next(iter(cls.optimizers))).lower()
    if optimizer not in OPTIMIZERS:
        raise SelfSupError(f"unknown optimizer {optimizer!r}{nearest(optimizer, OPTIMIZERS)}; "
                           f"choose from {', '.join(OPTIMIZERS)}")
    defaults = cls.optimizers.get(optimizer)
    if defaults is None and cfg.lr is None:
        raise SelfSupError(f"{cls.name} has no default learning rate for --optimizer {optimizer} (it has defaults "
                           f"for {', '.join(cls.optimizers)}); pass --lr")
    batch_size = cfg.batch_size or hw["batch_size"]
    return dataclasses.replace(
        cfg, method=cls.name, optimizer=optimizer, batch_size=batch_size,
        epochs=cfg.epochs or hw["epochs"],
        backbone=cfg.backbone or cls.backbone_default or hw["backbone"],
        knn_every=hw["knn_every"] if cfg.knn_every is None else cfg.knn_every,
        lr=cfg.lr if cfg.lr is not None else scaled_lr(optimizer, defaults.lr, batch_size),
        weight_decay=cfg.weight_decay if cfg.weight_decay is not None else (defaults.weight_decay if defaults else 0.0),
        method_args=hparams_to_dict(hp))
