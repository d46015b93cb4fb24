"""Run configuration: one dataclass, defaults fitted to the method and the hardware, saved as config.yaml."""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .data.budget import SIZE_HELP, size_ok
from .data.decode import parse_background
from .errors import SelfSupError
from .methods import get_method
from .methods.hparams import hparams_to_dict, nearest, parse_hparams
from .models.backbones import check_backbone
from .train.optim import OPTIMIZERS, scaled_lr

# Recipes fitted to the hardware, with a training budget in optimizer steps (epochs follow from the data size).
# CPU: a small CNN, 1,400 steps of 256 (6 epochs of Fashion-MNIST): the main job ends in about ten minutes on 2 cores.
CPU_DEFAULTS = dict(backbone="small_cnn", batch_size=256, steps=1400)
# GPU: ResNet-18, 23,400 steps of 512 (200 epochs of Fashion-MNIST).
GPU_DEFAULTS = dict(backbone="resnet18", batch_size=512, steps=23400)
MIN_STEPS_PER_EPOCH = 8  # small data sets get a smaller batch rather than an epoch of two or three steps
KNN_CHECKS = 40  # the kNN monitor runs about this many times a run (every epoch on the CPU main job, every 5 of 200)
# Warm-up: a share of the run's steps, at most WARMUP_MAX_EPOCHS epochs. 5% is SimCLR's 10 warm-up epochs of a
# 200-epoch run (Chen et al. 2020, as our GPU recipe) and MAE's 40 of 800 (He et al. 2022); BERT warms up 1%
# (Devlin et al. 2019), MoCo v2 not at all. 10 epochs is SimCLR's and BYOL's warm-up, whatever the run's length.
WARMUP_SHARE = 0.05
WARMUP_MAX_EPOCHS = 10
# Method settings that were run-level fields before the method contract (config.yaml of older runs).
_LEGACY_METHOD_KEYS = ("temperature", "proj_hidden", "proj_dim", "queue_size", "momentum")


@dataclass
class Config:
    """Everything needed to rebuild a run. None means "fill in from the method and the hardware".

    `method_args` holds the method's own settings (its Hparams); resolved, it lists every one of them.
    `image_size`, `background`, `skip_bad` and `cache` say how an image folder is decoded (FolderOptions).
    The budget is `steps` (optimizer steps) unless `epochs` is given; resolved, both are set, and a run of
    `steps` ends after exactly that many steps, inside its last epoch if `steps` is not a multiple of an epoch.
    The learning rate warms up over `warmup` (a share) of the steps, at most WARMUP_MAX_EPOCHS epochs; or over
    exactly `warmup_epochs` epochs when that is set (config.yaml of runs made before `warmup` existed has it).
    `holdout` is the fraction of a source without a test split that is set aside, before pretraining, for evaluation.
    """

    method: str = "simclr"
    data: str | list[str] = "fashion-mnist"  # a list: several text sources pretrained on together
    labels: str | None = None
    out: str | None = None
    epochs: int | None = None
    steps: int | None = None
    holdout: float = 0.2
    vocab_size: int = 4096  # text only: the tokenizer's vocabulary, trained on the pretraining split
    seq_len: int = 64  # text only: ids per document ([CLS] text [SEP], truncated and padded)
    backbone: str | None = None
    init: str | None = None  # a run directory whose encoder this run starts from (train/init.py)
    batch_size: int | None = None
    optimizer: str | None = None
    lr: float | None = None
    weight_decay: float | None = None
    warmup: float = WARMUP_SHARE
    warmup_epochs: float | None = None
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    knn_every: int | None = None
    save_every: int = 0
    threads: int | None = None
    sync_bn: bool | None = None  # several processes only: BatchNorm over the global batch (None: the method's)
    image_size: int | None = None
    background: str = "white"
    skip_bad: bool = False
    cache: bool = True
    memory_budget: str | None = None  # e.g. "2GiB": data over it is streamed (None: half the device's free memory)
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
        """A run's config.yaml, checked: valid YAML, a mapping of known keys, every value in range."""
        p = Path(path)
        if not p.is_file():
            raise SelfSupError(f"no config.yaml in run directory {p.parent}")
        try:
            d = yaml.safe_load(p.read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise SelfSupError(f"{p} is not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(d, dict):
            raise SelfSupError(f"{p} must hold a mapping of settings, found {type(d).__name__}")
        try:
            cfg = cls.from_dict(d)
        except TypeError as e:  # e.g. method_args that is not a mapping
            raise SelfSupError(f"{p}: {e}") from None
        except SelfSupError as e:
            raise SelfSupError(f"{p}: {e}") from None
        # a run saved with --epochs 0 (the untrained model) records 0 steps, which a user may not ask for;
        # threads are bounded by the cores of the machine that trained it, not of this one
        checked = dataclasses.replace(cfg, threads=None, steps=None if cfg.epochs == 0 else cfg.steps)
        validate(checked, source=str(p))
        return cfg


def resolve(cfg: Config, device_type: str, n: int | None = None) -> Config:
    """Fill every None field from the method's declarations, the hardware recipe and (given `n`, the number of
    training samples) the data size; returns a new, validated Config.

    The learning rate and weight decay come from the method's defaults for the chosen optimizer, never from
    another optimizer's: an optimizer the method declares no defaults for needs an explicit --lr. The default
    batch leaves at least MIN_STEPS_PER_EPOCH steps an epoch. The budget: `epochs` gives whole epochs; otherwise
    `steps` (or the hardware's) is kept exactly and `epochs` is ceil(steps / steps per epoch), the last one
    partial where the steps end inside it. A resolved config (both set, consistent) resolves to itself.
    """
    validate(cfg)
    if cfg.backbone is not None:
        check_backbone(cfg.backbone)  # a one-line error for a name no registry knows (timm:NAME asks timm)
    cls = get_method(cfg.method)
    hw = GPU_DEFAULTS if device_type == "cuda" else CPU_DEFAULTS
    hw = {**hw, **cls.hardware_defaults.get("cuda" if device_type == "cuda" else "cpu", {})}
    hp = parse_hparams(cls.name, cls.Hparams, cfg.method_args)
    optimizer = (cfg.optimizer or next(iter(cls.optimizers))).lower()
    if optimizer not in OPTIMIZERS:
        raise SelfSupError(f"unknown optimizer {optimizer!r}{nearest(optimizer, OPTIMIZERS)}; "
                           f"choose from {', '.join(OPTIMIZERS)}")
    defaults = cls.optimizer_defaults(hp).get(optimizer)  # MoCo: its preset's
    if defaults is None and cfg.lr is None:
        raise SelfSupError(f"{cls.name} has no default learning rate for --optimizer {optimizer} (it has defaults "
                           f"for {', '.join(cls.optimizers)}); pass --lr")
    batch_size = cfg.batch_size or hw["batch_size"]
    if n is not None and cfg.batch_size is not None and cfg.batch_size > n:
        raise SelfSupError(f"--batch-size {cfg.batch_size} is more than the {n} samples pretraining sees; "
                           f"choose at most {n}")
    if n is not None and cfg.batch_size is None:
        while batch_size > 16 and n // batch_size < MIN_STEPS_PER_EPOCH:
            batch_size //= 2
    epochs, steps = cfg.epochs, cfg.steps
    if n is not None:
        hp = cls.fit_to_data(hp, n, batch_size)
        per_epoch = max(1, n // min(batch_size, n))
        fits = epochs is not None and steps is not None and (epochs - 1) * per_epoch < steps <= epochs * per_epoch
        if epochs is not None and not fits:
            steps = epochs * per_epoch  # --epochs: whole epochs (a resolved config keeps its own steps)
        steps = steps if steps is not None else hw["steps"]
        epochs = math.ceil(steps / per_epoch)
    knn_every = cfg.knn_every if cfg.knn_every is not None else max(1, round((epochs or 1) / KNN_CHECKS))
    return dataclasses.replace(
        cfg, method=cls.name, optimizer=optimizer, batch_size=batch_size, epochs=epochs, steps=steps,
        backbone=cfg.backbone or cls.backbone_default or hw["backbone"], knn_every=knn_every,
        sync_bn=cfg.sync_bn if cfg.sync_bn is not None else cls.sync_bn,
        lr=cfg.lr if cfg.lr is not None else scaled_lr(optimizer, defaults.lr, batch_size, defaults.per_256),
        weight_decay=cfg.weight_decay if cfg.weight_decay is not None else (defaults.weight_decay if defaults else 0.0),
        method_args=hparams_to_dict(hp))


# Upper bounds: far beyond any sensible run, low enough that a typo is refused instead of failing in an
# allocator, overflowing, or training at a learning rate of 1e9 (the batch is also capped by the data size).
MAX_BATCH = 2 ** 20
MAX_STEPS = 10 ** 9
MAX_LR = 100.0  # LARS at batch 16,384 is 0.3 x 64 = 19.2
MAX_VOCAB = 2 ** 20
MAX_SEQ_LEN = 8192
MAX_IMAGE_SIZE = 4096
MAX_THREADS = 4 * (os.cpu_count() or 1)

# field -> (test, what it must be): every numeric setting is checked before any work starts
_CHECKS = {
    "epochs": (lambda v: 0 <= v <= MAX_STEPS, f"an integer >= 0 and <= {MAX_STEPS:,} (0 saves the untrained model)"),
    "steps": (lambda v: 1 <= v <= MAX_STEPS, f"an integer >= 1 and <= {MAX_STEPS:,}"),
    "batch_size": (lambda v: 2 <= v <= MAX_BATCH, f"an integer >= 2 and <= {MAX_BATCH:,}"),
    "lr": (lambda v: 0 < v <= MAX_LR, f"a number > 0 and <= {MAX_LR:g}"),
    "weight_decay": (lambda v: v >= 0 and math.isfinite(v), "a number >= 0"),
    "warmup_epochs": (lambda v: v >= 0 and math.isfinite(v), "a number >= 0"),
    "warmup": (lambda v: 0 <= v < 1, "a fraction of the steps in [0, 1)"),
    "holdout": (lambda v: 0 <= v < 1, "a fraction in [0, 1)"),
    "vocab_size": (lambda v: 5 < v <= MAX_VOCAB,
                   f"an integer in [6, {MAX_VOCAB:,}] (the 5 special tokens and at least one more)"),
    "seq_len": (lambda v: 3 <= v <= MAX_SEQ_LEN, f"an integer in [3, {MAX_SEQ_LEN:,}] ([CLS] text [SEP])"),
    "seed": (lambda v: 0 <= v < 2 ** 63, "an integer in [0, 2**63)"),
    "knn_every": (lambda v: v >= 0, "an integer >= 0 (0: off)"),
    "save_every": (lambda v: v >= 0, "an integer >= 0 (0: only last)"),
    "threads": (lambda v: 1 <= v <= MAX_THREADS, f"an integer in [1, {MAX_THREADS}] (4 per CPU core)"),
    "precision": (lambda v: v in ("auto", "bf16", "fp32"), "auto, bf16 or fp32"),
    "image_size": (lambda v: 1 <= v <= MAX_IMAGE_SIZE, f"an integer in [1, {MAX_IMAGE_SIZE}]"),
    "background": (lambda v: _colour(v), "a colour name, #rrggbb or R,G,B"),
    "memory_budget": (size_ok, SIZE_HELP + " (e.g. 2GiB or 500MB)"),
}


def warmup_steps(cfg: Config, steps_per_epoch: int) -> int:
    """Linear warm-up steps of a resolved run: `warmup_epochs` epochs when set (exactly, as before `warmup`
    existed), else round(warmup * steps) capped at WARMUP_MAX_EPOCHS epochs, so that a short run warms up a
    few percent of its budget instead of two whole epochs, and a long one no longer than the papers do."""
    if cfg.warmup_epochs is not None:
        return int(cfg.warmup_epochs * steps_per_epoch)
    return min(round(cfg.warmup * (cfg.steps or 0)), int(WARMUP_MAX_EPOCHS * steps_per_epoch))


def _colour(text: str) -> bool:
    try:
        parse_background(text)
    except ValueError:
        return False
    return True


def validate(cfg: Config, source: str | None = None) -> None:
    """A one-line error for the first setting out of its range (None means "not set" and passes).

    `source`: the file the settings come from (a run's config.yaml), named instead of a flag the user never gave.
    """
    for key, (ok, what) in _CHECKS.items():
        value = getattr(cfg, key)
        try:
            good = value is None or ok(value)
        except TypeError:  # a config.yaml may hold a string where a number belongs
            good = False
        if not good:
            name = f"{source}: {key}" if source else f"--{key.replace('_', '-')}"
            raise SelfSupError(f"{name} must be {what}, got {value!r}")


# Flags --resume takes whatever they were: where the run is, its new total, and whether to use the decode cache.
RESUME_FREE = ("out", "epochs", "cache")


def resume_conflicts(saved: Config, given: dict, method_args: dict) -> list[str]:
    """The flags given with --resume whose values differ from the run's saved (resolved) ones, as --flag names;
    a flag repeated with its saved value is no conflict, so the same command with --resume appended works."""
    cls = get_method(saved.method)

    def same(key, value) -> bool:
        old = getattr(saved, key)
        if key == "method":
            return get_method(value).name == cls.name
        if key == "data" and isinstance(old, str) and os.path.exists(value) and os.path.exists(old):
            return os.path.samefile(value, old)
        return value == old

    changed = sorted(k for k, v in given.items() if k not in RESUME_FREE and not same(k, v))
    if method_args:
        hp = hparams_to_dict(parse_hparams(cls.name, cls.Hparams, method_args))
        changed += sorted(k for k in method_args if hp[k] != saved.method_args.get(k))
    return ["--" + k.replace("_", "-") for k in changed]
