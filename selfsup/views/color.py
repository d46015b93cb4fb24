"""sRGB <-> CIE Lab (D65) for batches, and the quantised ab space of Zhang et al. 2016's colorization.

Conversions follow the CIE/IEC definitions directly: sRGB companding (IEC 61966-2-1), the sRGB -> XYZ matrix
for the D65 white point, and CIE 1976 L*a*b* with its linear segment below (6/29)^3. L is in [0, 100], a and b
roughly in [-110, 110]. All ops are batched (B, 3, H, W) float tensors, no loops.
"""
from __future__ import annotations

from functools import lru_cache

import torch

__all__ = ["rgb_to_lab", "lab_to_rgb", "ab_bins", "nearest_bin", "soft_encode", "rebalance_weights"]

# sRGB (linear) -> XYZ, D65 (IEC 61966-2-1), and the D65 reference white.
_RGB2XYZ = ((0.4124564, 0.3575761, 0.1804375),
            (0.2126729, 0.7151522, 0.0721750),
            (0.0193339, 0.1191920, 0.9503041))
_WHITE = (0.95047, 1.0, 1.08883)
_DELTA = 6.0 / 29.0


def _mix(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,bjhw->bihw", m.to(x), x)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) sRGB in [0, 1] -> (B, 3, H, W) L*a*b* (L in [0, 100]). Computed in float32 or better."""
    x = rgb.float() if rgb.dtype not in (torch.float32, torch.float64) else rgb
    lin = torch.where(x <= 0.04045, x / 12.92, ((x.clamp(min=0.04045) + 0.055) / 1.055) ** 2.4)
    xyz = _mix(torch.tensor(_RGB2XYZ, dtype=torch.float64), lin)
    xyz = xyz / torch.tensor(_WHITE, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    f = torch.where(xyz > _DELTA ** 3, xyz.clamp(min=_DELTA ** 3) ** (1.0 / 3.0), xyz / (3 * _DELTA ** 2) + 4.0 / 29.0)
    fx, fy, fz = f.unbind(1)
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=1)


def lab_to_rgb(lab: torch.Tensor, clamp: bool = True) -> torch.Tensor:
    """The inverse of rgb_to_lab; colours outside the sRGB gamut are clipped to [0, 1] when `clamp`."""
    L, a, b = lab.unbind(1)
    fy = (L + 16.0) / 116.0
    f = torch.stack([fy + a / 500.0, fy, fy - b / 200.0], dim=1)
    xyz = torch.where(f > _DELTA, f ** 3, 3 * _DELTA ** 2 * (f - 4.0 / 29.0))
    xyz = xyz * torch.tensor(_WHITE, dtype=lab.dtype, device=lab.device).view(1, 3, 1, 1)
    lin = _mix(torch.linalg.inv(torch.tensor(_RGB2XYZ, dtype=torch.float64)), xyz)
    rgb = torch.where(lin <= 0.0031308, 12.92 * lin, 1.055 * lin.clamp(min=0.0031308) ** (1 / 2.4) - 0.055)
    return rgb.clamp(0.0, 1.0) if clamp else rgb


@lru_cache(maxsize=4)
def _bins(grid: int, levels: int) -> tuple[tuple[float, float], ...]:
    v = torch.linspace(0, 1, levels, dtype=torch.float64)
    cube = torch.stack(torch.meshgrid(v, v, v, indexing="ij"), 0).reshape(1, 3, -1, 1)  # every sampled sRGB colour
    ab = rgb_to_lab(cube)[0, 1:, :, 0].T  # ab: levels^3 x 2
    cells = torch.unique(torch.round(ab / grid), dim=0)  # the occupied cells of a grid-sized ab lattice
    return tuple((float(a) * grid, float(b) * grid) for a, b in cells)


def ab_bins(grid: int = 10, levels: int = 48) -> torch.Tensor:
    """Centres (Q, 2) of the in-gamut ab bins: a lattice of spacing `grid` restricted to cells that some sRGB
    colour falls in (found by converting a levels^3 cube of colours). Zhang et al. keep the 313 cells of spacing
    10 that ImageNet occupies; the sRGB gamut gives a similar set without needing ImageNet's statistics."""
    return torch.tensor(_bins(grid, levels), dtype=torch.float32)


def nearest_bin(ab: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """(N, 2) ab values -> (N,) index of the nearest bin centre."""
    return torch.cdist(ab.float(), centres.to(ab.device)).argmin(dim=1)


def soft_encode(ab: torch.Tensor, centres: torch.Tensor, k: int = 5, sigma: float = 5.0) -> torch.Tensor:
    """Zhang et al.'s soft target: each (N, 2) ab value spread over its k nearest bins with a Gaussian of width
    sigma (5 and 5 in the paper), so near-equal colours get near-equal targets. Returns (N, Q), rows sum to 1;
    a row's largest entry is its nearest bin."""
    d = torch.cdist(ab.float(), centres.to(ab.device))  # d: N x Q
    dist, idx = d.topk(k, dim=1, largest=False)
    w = torch.softmax(-dist.pow(2) / (2 * sigma ** 2), dim=1)  # exp(-d^2 / 2 sigma^2), normalised
    return torch.zeros_like(d).scatter_(1, idx, w)


def rebalance_weights(counts: torch.Tensor, centres: torch.Tensor, lam: float = 0.5,
                      sigma: float = 5.0) -> torch.Tensor:
    """Zhang et al.'s class rebalancing, Eq. 4: w ∝ ((1 - lam) p~ + lam / Q)^-1 with E_p~[w] = 1, where p~ is
    the empirical bin distribution (counts) smoothed by a Gaussian of width sigma in ab space. Rare, saturated
    colours get up to ~1/lam times the weight, so the loss is not dominated by the greys of backgrounds."""
    q = centres.shape[0]
    p = counts.double() / counts.sum().clamp(min=1)
    kernel = torch.exp(-torch.cdist(centres.double(), centres.double()).pow(2) / (2 * sigma ** 2))
    p = kernel @ p
    p = p / p.sum()
    w = 1.0 / ((1 - lam) * p + lam / q)
    return (w / (p * w).sum()).float()
