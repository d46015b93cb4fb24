"""The method contract: what one training loop, one evaluation, `embed` and the CLI need from a pretext task.

A method is one file holding one registered class::

    @register
    class MyMethod(Method):
        name = "mine"                                  # --method mine
        paper = "Author et al. 2024, Title"           # shown by `selfsup methods`
        optimizers = {"adamw": OptimDefaults(lr=1e-3, weight_decay=0.05)}   # first = default

        @dataclass
        class Hparams:                                 # the only place its defaults live
            width: int = setting(128, "head width")

        def __init__(self, spec, hp, backbone):        # builds self.backbone from the encoder's spec
            super().__init__(spec, hp, backbone)
            self.head = ...

        def make_batch(self, x, generator):            # on the device, under no_grad
            return {"inputs": ..., "targets": ...}

        def forward(self, batch):                      # -> (loss, logs)
            ...

The loop calls, per step: ``make_batch`` -> ``forward`` (under autocast) -> backward -> gradient clipping ->
``before_optimizer_step(step, steps_per_epoch)`` -> ``optimizer.step()`` -> ``on_step_end(step, total)``. Evaluation and `embed` use ``encoder()`` only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..data.types import DataSpec
from ..models.backbones import build_backbone
from ..models.encoder import Encoder
from .ema import EMATeacher


@dataclass(frozen=True)
class OptimDefaults:
    """A method's default learning rate and weight decay for one optimizer.

    For optimizers that follow the linear scaling rule (sgd, lars) `lr` is per 256 samples and scaled by
    batch_size / 256; for adamw it is used as is, unless `per_256` says otherwise (MAE's base lr is per 256).
    `betas`: AdamW's (beta1, beta2) when the method's paper sets them (None: PyTorch's (0.9, 0.999)).
    `source`: where these values come from (paper + section, reference code, or "ours: ..."), shown by
    `selfsup methods NAME`.
    """

    lr: float
    weight_decay: float
    betas: tuple[float, float] | None = None
    per_256: bool | None = None  # None: the optimizer's own rule
    source: str = ""


@dataclass
class NoHparams:
    """A method without settings of its own."""


class Method(nn.Module):
    """Base class of every pretext task. Subclasses declare the class attributes and implement
    ``make_batch`` and ``forward``; they may override ``encoder``, ``encoder_spec``, ``check_data``,
    ``before_optimizer_step`` and ``on_step_end``."""

    name: ClassVar[str] = ""  # registry key: --method NAME
    aliases: ClassVar[tuple[str, ...]] = ()
    paper: ClassVar[str] = ""  # the paper it follows, cited by `selfsup methods`
    modality: ClassVar[str] = "image"  # the data kind it learns from: "image" or "tokens"
    backbone_default: ClassVar[str | None] = None  # None: the hardware recipe's (small_cnn on CPU, resnet18 on GPU)
    optimizers: ClassVar[dict[str, OptimDefaults]] = {}  # optimizer -> defaults; the first is the default optimizer
    # device type ("cpu", "cuda") -> entries of the hardware recipe (batch_size, steps) this method replaces
    hardware_defaults: ClassVar[dict[str, dict]] = {}
    Hparams: ClassVar[type] = NoHparams
    # On several processes (torchrun): whether BatchNorm outside EMA teachers normalises over the global batch
    # (SimCLR's global BN; --sync-bn/--no-sync-bn overrides), and whether DDP must look for parameters a step
    # leaves unused (slower; only for methods whose forward skips some trainable modules).
    sync_bn: ClassVar[bool] = False
    find_unused_parameters: ClassVar[bool] = False
    # Largest global gradient norm (torch.nn.utils.clip_grad_norm_ after backward, before the optimizer step);
    # None: no clipping. A method may set it per instance from its settings (MLM: BERT's 1.0).
    grad_clip: float | None = None
    # A log that counts what a step learns from (MLM: "tokens", the real ones): the loop adds its rate per second
    # over every process, as "<log>_per_s", to each epoch's record in metrics.jsonl. None: samples/s only.
    counted_log: ClassVar[str | None] = None

    def __init__(self, spec: DataSpec, hp, backbone: str):
        """Build ``self.backbone`` (named `backbone`) for ``encoder_spec(spec)``; subclasses then add their heads."""
        super().__init__()
        self.spec = spec
        self.hp = hp
        self.backbone = build_backbone(backbone, self.encoder_spec(spec))
        # The augmentation recipe, when the method has one: drawn into plots/views.png at the start of a run.
        self.view_recipe = None

    @classmethod
    def optimizer_defaults(cls, hp) -> dict[str, OptimDefaults]:
        """The optimizer defaults for these settings: `optimizers`, unless a setting picks others (MoCo's preset)."""
        return cls.optimizers

    @classmethod
    def fit_to_data(cls, hp, n: int, batch_size: int):
        """Settings fitted to the number of training samples (MoCo: the queue); resolved into config.yaml."""
        return hp

    @classmethod
    def check_data(cls, data, hp) -> None:
        """Refuse data this method cannot learn from with these settings (a one-line SelfSupError: colorization
        on grayscale images, a patch grid too big for the images). Called with the pretraining Dataset before the
        run directory is created, so a refusal writes nothing."""

    @classmethod
    def encoder_spec(cls, spec: DataSpec) -> DataSpec:
        """The spec of what the encoder takes (the data's own by default; 1 channel for colorization)."""
        return spec

    def make_batch(self, x: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Inputs and targets of one step from a raw batch x (uint8 images / token ids) on the device.

        Runs under no_grad. All randomness comes from `generator` (seeded per run and epoch), so a resumed
        run draws the same views, labels and masks. 4-D float tensors are made channels_last by the loop.
        """
        raise NotImplementedError

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss, logs): the scalar loss and named scalar diagnostics, averaged per epoch into metrics.jsonl."""
        raise NotImplementedError

    def teachers(self) -> list[EMATeacher]:
        """The EMA teachers this method declared (attributes holding an EMATeacher)."""
        return [m for m in self.modules() if isinstance(m, EMATeacher)]

    def before_optimizer_step(self, step: int, steps_per_epoch: int) -> None:
        """After backward (and gradient clipping), right before optimizer step `step` (0-based), with the run's
        steps per epoch: a method may drop gradients here (DINO freezes its last layer in the first epoch by
        setting them to None, so the optimizer skips those parameters, weight decay and momentum included)."""

    def on_step_end(self, step: int, total: int) -> None:
        """After optimizer step `step` (0-based) of `total`: move every declared EMA teacher on its schedule."""
        for teacher in self.teachers():
            teacher.update(step, total)

    def describe(self) -> str:
        """A note for the recipe printed at the start of a run: settings derived from the data, if any."""
        return ""

    def encoder(self) -> Encoder:
        """What evaluation, `embed` and export use: raw batch -> pooled features (heads dropped)."""
        return Encoder(self.backbone, self.spec)
