"""Multi-crop (Caron et al. 2020, SwAV, sec. 3.2; DINO's recipe, Caron et al. 2021, sec. 3.1): two global crops
at the image size and N local crops at a smaller size, every crop of one size made in one batched pass.

Any method may use it: ``MultiCropViews.crops(x, generator)`` returns ``{"global": (2B, C, H, W), "local":
(N*B, C, h, w)}``, crop-major (rows k*B..(k+1)*B-1 are crop k of every sample), so a backbone takes each size
as one batch and ``tensor.chunk(n)`` gives the crops back, as the reference's MultiCropWrapper does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from . import ops
from .recipes import Size, _short_side, default_blur_kernel

# The reference's crops: 224 px globals and 96 px locals (main_dino.py, DataAugmentationDINO).
LOCAL_TO_GLOBAL = 96 / 224


def local_size_for(size: Size) -> Size:
    """The local crops' size for images of `size`: the reference's 96/224 of each side, at least 8 px (28 -> 12,
    32 -> 14, 96 -> 41, 224 -> 96)."""
    if isinstance(size, int):
        return max(8, round(size * LOCAL_TO_GLOBAL))
    return tuple(max(8, round(s * LOCAL_TO_GLOBAL)) for s in size)


@dataclass
class MultiCropViews:
    """DINO's augmentations (the reference's DataAugmentationDINO), batched on the device.

    Every crop: a random resized crop, flip (p 0.5), colour jitter (0.4, 0.4, 0.2, 0.1) with p 0.8, grayscale
    (p 0.2), normalise. Global crop 1 is blurred (p 1.0), global crop 2 blurred (p 0.1) and solarized (p 0.2),
    the locals blurred (p 0.5). `blur` False leaves blur out (small images: as the library's SimCLR recipe
    below 64 px, a sigma of up to 2 px wipes out a 28 px digit). One-channel images skip saturation, hue and
    grayscale (the ops are the identity there), keeping brightness and contrast.
    """

    size: Size  # the global crops' size (the image size)
    local_size: Size
    mean: Sequence[float]
    std: Sequence[float]
    n_local: int = 8
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.4)
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)
    jitter_p: float = 0.8
    gray_p: float = 0.2
    flip_p: float = 0.5
    blur: bool = True
    blur_p: tuple[float, float, float] = (1.0, 0.1, 0.5)  # global 1, global 2, locals
    solarize_p: tuple[float, float, float] = (0.0, 0.2, 0.0)
    blur_sigma: tuple[float, float] = (0.1, 2.0)

    def view(self, x: torch.Tensor, size: Size, scale: tuple[float, float], blur_p: float, solarize_p: float,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """One crop of each sample of a float batch in [0, 1] (B, C, H, W) -> normalised (B, C, S_h, S_w)."""
        g = generator
        v = ops.random_resized_crop(x, size, scale=scale, generator=g)
        v = ops.random_hflip(v, self.flip_p, generator=g)
        if self.jitter_p > 0:
            v = ops.random_color_jitter(v, *self.jitter, p=self.jitter_p, generator=g)
        if self.gray_p > 0:
            v = ops.random_grayscale(v, self.gray_p, generator=g)
        if self.blur and blur_p > 0:
            v = ops.random_gaussian_blur(v, blur_p, sigma=self.blur_sigma, kernel_size=default_blur_kernel(size),
                                         generator=g)
        if solarize_p > 0:
            v = ops.random_solarize(v, solarize_p, generator=g)
        return ops.normalize(v, self.mean, self.std)

    def crops(self, x: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """uint8 (B, C, H, W) -> {"global": (2B, C, S_h, S_w), "local": (N*B, C, s_h, s_w)} ("local" only when
        N > 0), crop-major, each crop drawn per sample; drawn in a fixed order (global 1, global 2, locals)."""
        xf = ops.to_float(x)
        out = {"global": torch.cat([self.view(xf, self.size, self.global_scale, self.blur_p[k], self.solarize_p[k],
                                              generator) for k in (0, 1)])}
        if self.n_local > 0:  # all locals in one pass: the batch repeated N times, crop-major
            out["local"] = self.view(xf.repeat(self.n_local, 1, 1, 1), self.local_size, self.local_scale,
                                     self.blur_p[2], self.solarize_p[2], generator)
        return out

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One global crop (the first kind) of every sample: what a one-view caller (the preview) draws."""
        return self.view(ops.to_float(x), self.size, self.global_scale, self.blur_p[0], self.solarize_p[0],
                         generator)

    def preview(self, x: torch.Tensor, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """The two global crops and the first two local crops of every sample, for plots/views.png."""
        c = self.crops(x, generator)
        b = x.shape[0]
        return [*c["global"].chunk(2), *([] if "local" not in c else c["local"][:2 * b].chunk(2))]


def dino_views(size: Size, mean, std, n_local: int = 8, local_size: Size | None = None,
               global_scale: tuple[float, float] = (0.4, 1.0),
               local_scale: tuple[float, float] = (0.05, 0.4)) -> MultiCropViews:
    """DINO's multi-crop for images of `size`: globals at the image size, locals at `local_size` (default
    `local_size_for(size)`), blur from 64 px (the library's rule for small images, see `simclr_views`)."""
    return MultiCropViews(size, local_size or local_size_for(size), mean, std, n_local=n_local,
                          global_scale=global_scale, local_scale=local_scale, blur=_short_side(size) >= 64)
