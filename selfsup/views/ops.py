"""Batched view ops on the device with per-sample parameters.

Every op comes in two layers:

* a deterministic op taking explicit per-sample parameters (tensors of shape (B,)), equal to
  torchvision's functional op (``torchvision.transforms.functional``) applied to each sample with the
  same parameters — this is what the tests check;
* a ``random_*`` sampler drawing those parameters from a ``torch.Generator`` (on the generator's
  device) and calling the deterministic op.

Inputs are float32 batches (B, C, H, W) in [0, 1] with C in {1, 3} (use :func:`to_float` on uint8).
There are no per-sample Python loops and, off the CPU, no data-dependent shapes, so nothing forces a device
sync. The colour jitter's ops live in :mod:`.jitter` (re-exported here); on the CPU it takes each op's rows by
index, which costs nothing there and spares computing ops for samples that do not need them.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from .jitter import _check_channels, _col  # the batch helpers both modules use
from .jitter import (adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation, color_jitter,  # noqa: F401
                     rgb_to_gray)

__all__ = [
    "to_float", "normalize",
    "resized_crop", "random_resized_crop_params", "random_resized_crop",
    "hflip", "random_hflip",
    "rgb_to_gray", "adjust_brightness", "adjust_contrast", "adjust_saturation", "adjust_hue",
    "color_jitter", "random_color_jitter",
    "to_grayscale", "random_grayscale",
    "gaussian_kernels", "gaussian_blur", "random_gaussian_blur",
    "solarize", "random_solarize",
]


# ----------------------------------------------------------------------------------------- helpers

def _gen_device(generator: torch.Generator | None, fallback: torch.device) -> torch.device:
    return generator.device if generator is not None else fallback


def _rand(shape, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """U[0,1) drawn on the generator's device (or `device` without one), returned on `device`."""
    u = torch.rand(shape, generator=generator, device=_gen_device(generator, device))
    return u.to(device)


def _uniform(n: int, lo: float, hi: float, generator, device) -> torch.Tensor:
    return _rand(n, generator, device) * (hi - lo) + lo


def _bernoulli(n: int, p: float, generator, device) -> torch.Tensor:
    return _rand(n, generator, device) < p


def _bmask(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return mask.to(device=x.device, dtype=torch.bool).view(-1, 1, 1, 1)


# ------------------------------------------------------------------------------ conversion / normalise

def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0,255] -> float32 [0,1]; float input is returned as float32 unchanged."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Per-channel (x - mean) / std; equals TF.normalize."""
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


# ------------------------------------------------------------------------------------ resized crop

def resized_crop(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, height: torch.Tensor,
                 width: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Crop box (top, left, height, width) of each sample, bilinearly resized to `size` (S or (S_h, S_w)).

    Equals ``TF.resized_crop(x[i], top[i], left[i], height[i], width[i], [S_h, S_w], antialias=False)``
    (and antialias=True when the crop is upsampled). One ``grid_sample`` on a per-sample grid: output
    pixel o of a crop of length w maps to src = (o + 0.5) * w / S - 0.5 clamped to [0, w - 1], exactly
    like ``F.interpolate(..., mode="bilinear", align_corners=False)``.
    """
    b, _, h_in, w_in = x.shape
    sh, sw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    dev = x.device

    def axis(start, length, full, out):
        o = torch.arange(out, device=dev, dtype=torch.float32).view(1, -1) + 0.5
        length = torch.as_tensor(length, device=dev).to(torch.float32).view(-1, 1)
        start = torch.as_tensor(start, device=dev).to(torch.float32).view(-1, 1)
        src = (o * length / out - 0.5).clamp(min=0.0)
        src = torch.minimum(src, length - 1.0)  # the upper neighbour clamps to the crop's last pixel
        return (start + src + 0.5) / full * 2.0 - 1.0

    gy = axis(top, height, h_in, sh).expand(b, sh)  # (B, S_h)
    gx = axis(left, width, w_in, sw).expand(b, sw)  # (B, S_w)
    grid = torch.stack([gx.view(b, 1, sw).expand(b, sh, sw),
                        gy.view(b, sh, 1).expand(b, sh, sw)], dim=-1)
    return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="border", align_corners=False)


def random_resized_crop_params(b: int, height: int, width: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                               generator: torch.Generator | None = None, tries: int = 10,
                               device: torch.device | str | None = None):
    """torchvision's ``RandomResizedCrop.get_params``, vectorised over the batch.

    All `tries` attempts are drawn for every sample at once; each sample takes its first attempt that
    fits, else the ratio-clamped centre crop. Returns long tensors (top, left, h, w), each (B,), on
    the generator's device (or `device`).
    """
    dev = torch.device(device) if device is not None else _gen_device(generator, torch.device("cpu"))
    g = generator
    area = float(height * width)
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    u_area, u_ratio = (_rand((b, tries), g, dev).double() for _ in range(2))
    u_top, u_left = (_rand(b, g, dev).double() for _ in range(2))

    target = area * (u_area * (scale[1] - scale[0]) + scale[0])
    aspect = torch.exp(u_ratio * (log_r[1] - log_r[0]) + log_r[0])
    cw = torch.round(torch.sqrt(target * aspect))  # round-half-even, like Python's round
    ch = torch.round(torch.sqrt(target / aspect))
    ok = (cw > 0) & (cw <= width) & (ch > 0) & (ch <= height)
    first = torch.argmax(ok.to(torch.int8), dim=1, keepdim=True)  # first valid try (0 if none)
    any_ok = ok.any(dim=1)
    cw = cw.gather(1, first).squeeze(1)
    ch = ch.gather(1, first).squeeze(1)

    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fh, fw = height, int(round(height * max(ratio)))
    else:
        fw, fh = width, height
    cw = torch.where(any_ok, cw, torch.full_like(cw, fw)).long()
    ch = torch.where(any_ok, ch, torch.full_like(ch, fh)).long()
    # randint(0, n) == floor(u * n), clamped against float rounding up to n
    top = torch.minimum(torch.floor(u_top * (height - ch + 1)).long(), height - ch)
    left = torch.minimum(torch.floor(u_left * (width - cw + 1)).long(), width - cw)
    top = torch.where(any_ok, top, (height - ch) // 2)
    left = torch.where(any_ok, left, (width - cw) // 2)
    return top, left, ch, cw


def random_resized_crop(x: torch.Tensor, size: int | tuple[int, int], scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                        generator: torch.Generator | None = None, return_params: bool = False):
    """Random resized crop of every sample with its own box (RandomResizedCrop semantics).

    Returns the (B, C, S_h, S_w) batch, or ``(batch, (top, left, h, w))`` with `return_params`.
    """
    params = random_resized_crop_params(x.shape[0], x.shape[-2], x.shape[-1], scale, ratio, generator)
    params = tuple(p.to(x.device) for p in params)
    out = resized_crop(x, *params, size)
    return (out, params) if return_params else out


# -------------------------------------------------------------------------------------------- flip

def hflip(x: torch.Tensor, flip_mask: torch.Tensor) -> torch.Tensor:
    """Mirror the flagged samples left-right (TF.hflip)."""
    return torch.where(_bmask(flip_mask, x), x.flip(-1), x)


def random_hflip(x: torch.Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each sample with probability p."""
    return hflip(x, _bernoulli(x.shape[0], p, generator, x.device))


# ------------------------------------------------------------------------------------ colour jitter

def random_color_jitter(x: torch.Tensor, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4,
                        hue: float = 0.1, p: float = 0.8, generator: torch.Generator | None = None,
                        return_params: bool = False):
    """RandomApply(ColorJitter(b, c, s, h), p): factors uniform in [max(0,1-v), 1+v], hue in [-h, h],
    order a uniformly random permutation per sample. With `return_params` also returns a dict of them."""
    if not 0.0 <= hue <= 0.5:
        raise ValueError(f"hue must be in [0, 0.5], got {hue}")
    b, dev, g = x.shape[0], x.device, generator
    fb = _uniform(b, max(0.0, 1 - brightness), 1 + brightness, g, dev)
    fc = _uniform(b, max(0.0, 1 - contrast), 1 + contrast, g, dev)
    fs = _uniform(b, max(0.0, 1 - saturation), 1 + saturation, g, dev)
    fh = _uniform(b, -hue, hue, g, dev)
    order = torch.argsort(_rand((b, 4), g, dev), dim=1)
    mask = _bernoulli(b, p, g, dev)
    # A range that is the identity is left out, as torchvision's ColorJitter leaves it out (its draws are kept,
    # so the generator advances the same whatever the strengths).
    out = color_jitter(x, fb if brightness else None, fc if contrast else None, fs if saturation else None,
                       fh if hue else None, order, mask)
    if return_params:
        return out, dict(brightness=fb, contrast=fc, saturation=fs, hue=fh, order=order, apply_mask=mask)
    return out


# ---------------------------------------------------------------------------------------- grayscale

def to_grayscale(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Replace flagged samples by TF.rgb_to_grayscale(img, num_output_channels=3); a no-op for C=1."""
    if _check_channels(x) == 1:
        return x
    return torch.where(_bmask(mask, x), rgb_to_gray(x).expand_as(x), x)


def random_grayscale(x: torch.Tensor, p: float = 0.2, generator: torch.Generator | None = None) -> torch.Tensor:
    """Grayscale each sample with probability p (RandomGrayscale)."""
    return to_grayscale(x, _bernoulli(x.shape[0], p, generator, x.device))


# --------------------------------------------------------------------------------------------- blur

def gaussian_kernels(sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """(B, k) normalised 1-D Gaussian kernels with torchvision's formula."""
    half = (kernel_size - 1) * 0.5
    xs = torch.linspace(-half, half, steps=kernel_size, device=sigma.device, dtype=torch.float32)
    pdf = torch.exp(-0.5 * (xs.view(1, -1) / sigma.view(-1, 1).float()).pow(2))
    return pdf / pdf.sum(dim=1, keepdim=True)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Per-sample Gaussian blur, equal to TF.gaussian_blur(img, [k, k], [s, s]) (reflect padding).

    Separable: two depthwise convs over the batch folded into channels (groups = B*C).
    """
    if kernel_size % 2 != 1 or kernel_size < 1:
        raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
    b, c, h, w = x.shape
    k = gaussian_kernels(sigma.to(x.device), kernel_size).to(x.dtype).repeat_interleave(c, dim=0)  # (B*C, k)
    pad = kernel_size // 2
    y = F.pad(x.reshape(1, b * c, h, w), (pad, pad, pad, pad), mode="reflect")
    y = F.conv2d(y, k.view(b * c, 1, 1, kernel_size), groups=b * c)
    y = F.conv2d(y, k.view(b * c, 1, kernel_size, 1), groups=b * c)
    return y.view(b, c, h, w)


def random_gaussian_blur(x: torch.Tensor, p: float = 0.5, sigma=(0.1, 2.0), kernel_size: int = 3,
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """Blur each sample with probability p, sigma uniform in `sigma`; unselected samples unchanged."""
    b, dev = x.shape[0], x.device
    s = _uniform(b, sigma[0], sigma[1], generator, dev)
    mask = _bernoulli(b, p, generator, dev)
    return torch.where(_bmask(mask, x), gaussian_blur(x, s, kernel_size), x)


# ----------------------------------------------------------------------------------------- solarize

def solarize(x: torch.Tensor, threshold: float, mask: torch.Tensor) -> torch.Tensor:
    """On flagged samples invert pixels >= threshold (TF.solarize, float images)."""
    return torch.where(_bmask(mask, x) & (x >= threshold), 1.0 - x, x)


def random_solarize(x: torch.Tensor, p: float = 0.2, threshold: float = 0.5,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Solarize each sample with probability p."""
    return solarize(x, threshold, _bernoulli(x.shape[0], p, generator, x.device))
