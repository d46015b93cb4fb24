"""Run configuration: one dataclass, defaults fitted to the hardware, saved as config.yaml in the run dir."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import SelfSupError
from .methods import canonical_name, method_class

# Recipes fitted to the hardware. CPU: a small CNN that finishes in about ten minutes on two cores.
CPU_DEFAULTS = dict(backbone="small_cnn", batch_size=256, epochs=6, knn_every=1)
# On a GPU an epoch takes seconds and a kNN pass over the full splits a good part of one: monitor every 5 epochs.
GPU_DEFAULTS = dict(backbone="resnet18", batch_size=512, epochs=200, knn_every=5)


@dataclass
class Config:
    """Everything needed to rebuild a run. None means "fill in from the method and the hardware"."""

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
    temperature: float | None = None
    proj_hidden: int | None = None
    proj_dim: int | None = None
    queue_size: int | None = None
    momentum: float | None = None
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
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise SelfSupError(f"unknown config keys: {', '.join(sorted(unknown))}")
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
    """Fill every None field from the method's defaults and the hardware recipe; returns a new Config."""
    cfg = dataclasses.replace(cfg, method=canonical_name(cfg.method))
    cls = method_class(cfg.method)
    hw = GPU_DEFAULTS if device_type == "cuda" else CPU_DEFAULTS
    d = cfg.to_dict()
    merged = {**hw, **cls.defaults}
    for k, v in merged.items():
        if k in d and d[k] is None:
            d[k] = v
    # Linear scaling rule for the SGD family: defaults are per 256 images.
    if cfg.lr is None and d["optimizer"] in ("sgd", "lars"):
        d["lr"] = cls.defaults["lr"] * d["batch_size"] / 256
    return Config.from_dict(d)


def method_hparams(cfg: Config) -> dict:
    """The keyword arguments a method's constructor takes from the config."""
    keys = ("temperature", "proj_hidden", "proj_dim", "queue_size", "momentum")
    return {**{k: getattr(cfg, k) for k in keys if getattr(cfg, k) is not None}, **cfg.method_args}
