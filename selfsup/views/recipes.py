"""View recipes: short lists of batched ops. A recipe maps (uint8 batch, generator) -> normalised float views."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from . import ops


Size = int | tuple[int, int]  # S (square) or (H, W): non-square images keep their shape, as in evaluation


def _short_side(size: Size) -> int:
    return size if isinstance(size, int) else min(size)


def default_blur_kernel(size: Size) -> int:
    """The odd number nearest 10% of the image size (its shorter side), at least 3 (SimCLR's choice)."""
    return max(3, 2 * int(math.floor(0.05 * _short_side(size))) + 1)


@dataclass
class SimCLRViews:
    """Random resized crop, flip, colour jitter, grayscale, blur, solarize, normalise."""

    size: Size
    mean: Sequence[float]
    std: Sequence[float]
    crop_scale: tuple[float, float] = (0.08, 1.0)
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.0
    solarize_p: float = 0.0
    flip_p: float = 0.5
    blur_kernel: int | None = None  # default: default_blur_kernel(size)
    blur_sigma: tuple[float, float] = (0.1, 2.0)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 (B,C,H,W) -> normalised float32 (B,C,S_h,S_w), parameters drawn per sample."""
        g = generator
        v = ops.random_resized_crop(ops.to_float(x), self.size, scale=self.crop_scale, generator=g)
        v = ops.random_hflip(v, self.flip_p, generator=g)
        if self.jitter_p > 0:
            v = ops.random_color_jitter(v, *self.jitter, p=self.jitter_p, generator=g)
        if self.gray_p > 0:
            v = ops.random_grayscale(v, self.gray_p, generator=g)
        if self.blur_p > 0:
            v = ops.random_gaussian_blur(v, self.blur_p, sigma=self.blur_sigma,
                                         kernel_size=self.blur_kernel or default_blur_kernel(self.size), generator=g)
        if self.solarize_p > 0:
            v = ops.random_solarize(v, self.solarize_p, generator=g)
        return ops.normalize(v, self.mean, self.std)

    def pair(self, x: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Two independently augmented views of one uint8 batch, {"v1", "v2"}: the batch of every two-view
        method (SimCLR, MoCo, BYOL, SimSiam, Barlow Twins, VICReg); v1 is drawn first, so the draws are fixed."""
        return {"v1": self(x, generator), "v2": self(x, generator)}


def simclr_views(size: Size, mean, std, crop_min: float | None = None,
                 jitter_strength: float | None = None) -> SimCLRViews:
    """SimCLR's recipe (Chen et al. 2020, appendix A). From 64 px (the shorter side): crops of 8-100%, colour
    jitter of strength 1 (0.8, 0.8, 0.8, 0.2) and blur, as on ImageNet. Below: the CIFAR variant, jitter of
    strength 0.5 (0.4, 0.4, 0.4, 0.1) and no blur, with crops of at least 20% (8% of 28 px leaves almost nothing).

    crop_min / jitter_strength (None: the size rule above) set the augmentation strength: the crop's smallest
    area share and s in the paper's jitter (0.8s, 0.8s, 0.8s, 0.2s)."""
    large = _short_side(size) >= 64
    lo = crop_min if crop_min is not None else (0.08 if large else 0.2)
    s = jitter_strength if jitter_strength is not None else (1.0 if large else 0.5)
    return SimCLRViews(size, mean, std, crop_scale=(lo, 1.0), jitter=(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s),
                       jitter_p=0.8 if s > 0 else 0.0, blur_p=0.5 if large else 0.0)


def moco_v2_views(size: Size, mean, std) -> SimCLRViews:
    """MoCo v2's recipe: jitter (0.4, 0.4, 0.4, 0.1) at every size, crops of at least 20%, blur from 64 px."""
    return SimCLRViews(size, mean, std, crop_scale=(0.2, 1.0), blur_p=0.5 if _short_side(size) >= 64 else 0.0)


def byol_views(size: Size, mean, std) -> tuple[SimCLRViews, SimCLRViews]:
    """BYOL's asymmetric pair: blur 1.0/0.1, solarize 0/0.2."""
    scale = (0.08, 1.0) if _short_side(size) >= 64 else (0.2, 1.0)
    return (SimCLRViews(size, mean, std, crop_scale=scale, blur_p=1.0, solarize_p=0.0),
            SimCLRViews(size, mean, std, crop_scale=scale, blur_p=0.1, solarize_p=0.2))


@dataclass
class FinetuneViews:
    """Light augmentation for supervised fine-tuning: resized crop (50-100%) and flip; floats in [0, 1].

    Not normalised: the Encoder that takes the batch normalises it, as it does the un-augmented images.
    """

    size: Size

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        v = ops.random_resized_crop(ops.to_float(x), self.size, scale=(0.5, 1.0), generator=generator)
        return ops.random_hflip(v, 0.5, generator=generator)


def finetune_views(size: Size) -> FinetuneViews:
    """The fine-tuning transform."""
    return FinetuneViews(size)
