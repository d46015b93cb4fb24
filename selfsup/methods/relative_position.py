"""Relative patch position: where does a patch lie relative to the centre patch? (Doersch et al. 2015)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ..errors import SelfSupError
from ..losses import top1
from ..models.backbones import MLPEncoder
from ..models.heads import mlp_head
from ..views.ops import normalize, to_float, to_grayscale
from ..views.pretext import pair_scales, random_drop_colour, random_relative_pairs
from .base import Method, OptimDefaults
from .hparams import setting
from .registry import register


def default_patch_px(side: int) -> int:
    """The side patches are resized to for the encoder: half the image side, at least 16 px, at most the side."""
    return min(side, max(16, side // 2))


@register
class RelativePosition(Method):
    """Shared backbone on the centre patch and one of its 8 neighbours; an 8-way head on the two features
    concatenated (Doersch et al.'s late fusion: fc layers after the two towers, 'pair classification').

    The paper's guards against trivial solutions: a gap between patches (half a patch) and up to ~7/96 of a
    patch of random jitter each, so no edge or texture runs from one patch into the next; and against
    chromatic aberration (lens colour fringes that reveal a patch's place in the frame) either colour dropping
    (two of three channels replaced by faint noise, the paper's choice) or grayscale. The paper resizes each
    image to 150K-450K pixels, so its 96 px patches cover a random share of the scene: here the patch side is
    drawn per pair between `min_scale` and 1 times the largest that fits (28 px: 3-6 px). A fixed grid on a
    28 px image could move 2 px, so each label meant one region of the image and on centred data the
    neighbour's content alone named it: the neighbour is now placed uniformly over the positions where all 8
    labels fit (``random_pair_boxes``; inside an image both patches cannot be placed independently of the
    label, so the centre's position now carries part of it). Patches are resized to `patch_px` so a stride-2
    stem keeps a feature map.
    """

    name = "relative_position"
    aliases = ("relpos", "context_prediction", "doersch")
    paper = "Doersch et al. 2015, Unsupervised Visual Representation Learning by Context Prediction (ICCV)"
    optimizers = {"adamw": OptimDefaults(lr=1e-3, weight_decay=0.05,
                               source="ours: a common AdamW rate for small CNNs, not tuned (the paper trains with "
                                      "SGD)"),
                  "sgd": OptimDefaults(lr=0.1, weight_decay=5e-4,
                             source="ours: not tuned (the paper's SGD schedule, sec. 4, is for AlexNet on ImageNet)")}

    @dataclass
    class Hparams:
        gap: float = setting(0.5, "gap between neighbouring patches, in patch sides (the paper: 48 of 96 px)",
            source="Doersch et al. 2015, sec. 3: a 48 px gap between 96 px patches")
        jitter: float = setting(0.15, "largest random shift of each patch, in patch sides (at least 1 px, "
                                      "always under half the gap)",
            source="Doersch et al. 2015, sec. 3: patches jittered by up to 7 px (of 96)")
        min_scale: float = setting(0.5, "smallest patch side drawn, as a fraction of the largest that fits (the "
                                        "paper's images vary 150K-450K pixels under fixed 96 px patches)",
            source="ours: the paper resizes images to 150K-450K pixels under fixed 96 px patches (sec. 3), so patches"
                   " vary in relative scale")
        patch_px: int | None = setting(None, "side the patches are resized to (None: half the image side, >= 16)",
            source="ours: not tuned (the paper feeds 96 px patches)")
        colour: Literal["drop", "gray", "keep"] = setting(
            "drop", "against chromatic aberration: drop two colour channels per patch (paper), grayscale, or keep",
            source="Doersch et al. 2015, sec. 3.1: dropping colour channels against chromatic aberration")
        hidden: int = setting(512, "hidden width of the pair classifier",
            source="ours: not tuned (the paper's fc layers are 4096 wide)")

        def __post_init__(self):
            if self.gap <= 0 or self.jitter < 0 or self.hidden < 1 or (self.patch_px is not None and self.patch_px < 4):
                raise ValueError("gap must be > 0, jitter >= 0, hidden >= 1 and patch_px >= 4")
            if not 0 < self.min_scale <= 1:
                raise ValueError(f"min_scale must be in (0, 1], got {self.min_scale}")

    @classmethod
    def grid_for(cls, shape, hp):
        """The range of patch sides of (C, H, W) images, or a one-line error when they are too small for a grid."""
        try:
            return pair_scales(shape[1], shape[2], hp.gap, hp.jitter, hp.min_scale)
        except ValueError as e:
            raise SelfSupError(f"{cls.name}: {e}") from None

    @classmethod
    def check_data(cls, data, hp):
        cls.grid_for(tuple(data.x.shape[1:]), hp)

    def __init__(self, spec, hp, backbone):
        super().__init__(spec, hp, backbone)
        h, w = spec.shape[1:]
        if isinstance(self.backbone, MLPEncoder):
            raise SelfSupError(f"{self.name} feeds patches smaller than the image to the backbone: choose a conv "
                               "backbone (small_cnn, resnet18, resnet50), not mlp")
        self.grid = self.grid_for(spec.shape, hp)
        self.patch_px = hp.patch_px or default_patch_px(min(h, w))
        self.head = mlp_head(2 * self.backbone.feature_dim, hp.hidden, 8)

    def describe(self):
        g = self.grid
        return (f"patch sides {g.lo[0]}-{g.hi[0]} px, gap {g.gap:g} and jitter {g.jitter:g} of a side, "
                f"resized to {self.patch_px} px")

    def make_batch(self, x, generator):
        """Centre and neighbour patches of every image (resized, normalised) and the neighbour's label 0..7."""
        centre, other, label, _ = random_relative_pairs(to_float(x), self.grid, self.patch_px, generator)
        b = x.shape[0]
        pairs = torch.cat([centre, other])  # pairs: 2B x C x p x p
        if self.hp.colour == "gray":
            pairs = to_grayscale(pairs, torch.ones(2 * b, dtype=torch.bool, device=pairs.device))
        pairs = normalize(pairs, self.spec.mean, self.spec.std)
        if self.hp.colour == "drop":
            pairs, _ = random_drop_colour(pairs, generator)  # noise around the mean, after normalising
        return {"centre": pairs[:b], "other": pairs[b:], "pos": label}

    def forward(self, batch):
        f = self.backbone(torch.cat([batch["centre"], batch["other"]]))  # f: 2B x D
        fc, fo = f.chunk(2)
        logits = self.head(torch.cat([fc, fo], dim=1))  # logits: B x 8
        return F.cross_entropy(logits, batch["pos"]), {"pos_acc": top1(logits, batch["pos"])}

