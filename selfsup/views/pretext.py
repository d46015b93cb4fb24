"""Batched label-making ops of the classic pretext tasks: rotations and relative patch positions (the
jigsaw's ops live in ``views/jigsaw.py`` and are re-exported here).

Like ``views/ops.py``, each op is deterministic given explicit per-sample parameters, and a ``random_*``
sampler draws those parameters from the passed ``torch.Generator`` (so a resumed run draws the same labels)
and returns them beside the result. Inputs are float batches (B, C, H, W); boxes are integer, so the tests can
check the geometry exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .jigsaw import (hamming_permutations, min_hamming, random_jigsaw, shuffle_tiles,  # noqa: F401
                     standardize_tiles, unshuffle_tiles)
from .ops import _rand, resized_crop

__all__ = [
    "rotate90", "all_rotations",
    "Grid", "patch_grid", "crop_patches", "resize_patches",
    "NEIGHBOURS", "PairScales", "pair_scales", "random_pair_boxes", "relative_pairs", "random_relative_pairs",
    "drop_colour", "random_drop_colour",
]


# ------------------------------------------------------------------------------------------ rotation

def rotate90(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Each square sample turned by k[i] * 90 degrees counter-clockwise: ``torch.rot90(x[i], k[i], (-2, -1))``.

    x: (B, C, S, S), k: (B,) ints (taken mod 4). The four turns are computed for the whole batch and selected
    per sample with ``torch.where``: no per-sample loop, no sync.
    """
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"rotate90 needs square images, got {tuple(x.shape[-2:])}")
    k = (k.to(x.device).long() % 4).view(-1, 1, 1, 1)
    r1 = x.transpose(-2, -1).flip(-2)  # 90 degrees counter-clockwise
    out = torch.where(k == 1, r1, x)
    out = torch.where(k == 2, x.flip(-2, -1), out)
    return torch.where(k == 3, r1.flip(-2, -1), out)


def all_rotations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RotNet's batch (Gidaris et al. 2018): every image at 0, 90, 180 and 270 degrees.

    x: (B, C, S, S) -> images (4B, C, S, S) ordered turn-major (all images at 0 degrees first), labels (4B,)
    the number of quarter turns. Keeping the four copies of an image in the same batch is the paper's choice:
    it found this better than one random rotation per image.
    """
    b = x.shape[0]
    k = torch.arange(4, device=x.device).repeat_interleave(b)  # labels: 4B
    return rotate90(x.repeat(4, 1, 1, 1), k), k


# ------------------------------------------------------------------------------------- patch grids

@dataclass(frozen=True)
class Grid:
    """A 3x3 grid of patches with gaps (per axis: patch side, gap, max jitter; image side).

    Cell (r, c) nominally starts at jitter + r * (patch + gap) from the grid's origin; each patch then moves by
    up to +-jitter. Since gap > 2 * jitter, neighbouring patches never touch, so no low-level cue (a line running
    on, a texture's continuation) crosses from one patch to the next: Doersch et al. 2015's guard.
    """

    patch: tuple[int, int]
    gap: tuple[int, int]
    jitter: tuple[int, int]
    size: tuple[int, int]

    @property
    def span(self) -> tuple[int, int]:
        """The grid's extent with the jitter margin: 3 patches + 2 gaps + 2 jitters per axis."""
        return tuple(3 * p + 2 * g + 2 * j for p, g, j in zip(self.patch, self.gap, self.jitter))

    @property
    def slack(self) -> tuple[int, int]:
        """How far the grid's origin can move inside the image."""
        return tuple(s - t for s, t in zip(self.size, self.span))


def _axis(side: int, gap: float, jitter: float) -> tuple[int, int, int]:
    for p in range(side // 3, 1, -1):  # the largest patch whose grid fits
        g = max(1, round(gap * p))
        j = min(max(1 if jitter > 0 else 0, round(jitter * p)), (g - 1) // 2)  # gap > 2 jitter: never touching
        if 3 * p + 2 * g + 2 * j <= side:
            return p, g, j
    raise ValueError(f"an image side of {side} px is too small for a 3x3 grid of patches with gaps (8 px at least)")


def patch_grid(height: int, width: int, gap: float = 0.5, jitter: float = 0.15) -> Grid:
    """The largest 3x3 grid that fits an H x W image with gap and jitter given in patch sides.

    Doersch et al. use 96 px patches, 48 px gaps (gap=0.5) and up to 7 px of jitter; at 28 px this gives
    6 px patches, 3 px gaps and 1 px of jitter (span 26 px), at 32 px 7/4/1, at 64 px 14/7/2; at 8 px (sklearn's
    digits) 2/1/0, the least that keeps a gap.
    """
    ph, gh, jh = _axis(height, gap, jitter)
    pw, gw, jw = _axis(width, gap, jitter)
    return Grid((ph, pw), (gh, gw), (jh, jw), (height, width))


def crop_patches(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Exact crops: x (B, C, H, W), top/left (B, K) -> (B, K, C, h, w) with out[b, k] = x[b, :, t:t+h, l:l+w].

    One gather by index (no interpolation, no loop); boxes must lie inside the image.
    """
    b, c = x.shape[:2]
    h, w = size
    rows = top.unsqueeze(-1) + torch.arange(h, device=x.device)  # rows: B x K x h
    cols = left.unsqueeze(-1) + torch.arange(w, device=x.device)  # cols: B x K x w
    bi = torch.arange(b, device=x.device).view(b, 1, 1, 1)
    out = x[bi, :, rows.unsqueeze(-1), cols.unsqueeze(-2)]  # B x K x h x w x C
    return out.permute(0, 1, 4, 2, 3)


def resize_patches(p: torch.Tensor, side: int | None) -> torch.Tensor:
    """(N, C, h, w) patches bilinearly resized to side x side (unchanged when side is None or already so).

    Patches of 28-64 px images are 6-21 px; resizing them lets a stride-2 stem keep a few pixels of feature map.
    """
    if side is None or tuple(p.shape[-2:]) == (side, side):
        return p
    return F.interpolate(p, size=(side, side), mode="bilinear", align_corners=False)


# ------------------------------------------------------------------------------ relative position

# Label -> (row, col) offset of the neighbour from the centre patch, row-major around it (Doersch et al. Fig. 2).
NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


@dataclass(frozen=True)
class PairScales:
    """Relative position's patch sides per axis, drawn per pair in [lo, hi]: hi is the largest 3x3 grid that fits
    (``patch_grid``), lo = max(2, round(min_scale * hi)). Gap and jitter are the fractions of the patch side."""

    lo: tuple[int, int]
    hi: tuple[int, int]
    gap: float
    jitter: float
    size: tuple[int, int]


def pair_scales(height: int, width: int, gap: float = 0.5, jitter: float = 0.15, min_scale: float = 0.5) -> PairScales:
    """The range of patch sides of an H x W image (ValueError when not even a 2 px grid fits).

    Doersch et al. resize every image to between 150K and 450K pixels before cutting 96 px patches, so a patch
    covers a random share of the scene; here the patch side is drawn between min_scale and 1 times the largest
    that fits (28 px: 3-6 px, 64 px: 7-14 px; 8 px: 2 px only).
    """
    grid = patch_grid(height, width, gap, jitter)
    lo = tuple(min(p, max(2, round(min_scale * p))) for p in grid.patch)
    return PairScales(lo, grid.patch, gap, jitter, (height, width))


def _spacing(p: torch.Tensor, gap: float, jitter: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Gap and jitter (long, like p) of patch side p, by ``patch_grid``'s rule: gap >= 1, gap > 2 * jitter."""
    g = torch.clamp(torch.round(gap * p.float()), min=1).long()
    j = torch.clamp(torch.round(jitter * p.float()), min=1 if jitter > 0 else 0).long()
    return g, torch.minimum(j, (g - 1) // 2)


def _uniform_int(lo: torch.Tensor, hi: torch.Tensor, generator, device) -> torch.Tensor:
    """One uniform integer in [lo[i], hi[i]] per entry (long tensors of one shape)."""
    u = _rand(lo.shape, generator, device)
    return lo + torch.minimum(torch.floor(u * (hi - lo + 1).float()).long(), hi - lo)


def random_pair_boxes(b: int, scales: PairScales, generator: torch.Generator | None = None, device="cpu"):
    """Boxes of B (centre, neighbour) pairs: {"centre", "other": (B, 2) top-left (row, col), "size": (B, 2)
    patch side, "label": (B,) the neighbour's place 0..7 (NEIGHBOURS)}, long tensors.

    Per pair a patch side p (one draw for both axes), its gap g and jitter j, step s = p + g. The neighbour's
    cell corner is drawn uniformly over [s + j, side - p - s - j], the positions from which a centre at any of
    the 8 offsets stays inside the image, so where the neighbour sits says nothing about the label (on
    centred data, its content alone no longer names it). The centre's corner is that corner minus
    NEIGHBOURS[label] * s. Each patch then moves by up to +-j (the paper's jitter) and stays more than p
    apart from the other along a moved axis (g > 2j): no edge runs from one patch into the other. In a bounded
    image the two positions cannot both be independent of the label (a pair stays inside), so the centre's
    carries what the neighbour's no longer does: a classifier on the centre's (row, col) alone scores 0.61
    at 28 px (chance 0.125), against 1.0 on the neighbour's with the old fixed grid.
    """
    dev = device
    u = _rand(b, generator, dev)
    label = torch.minimum(torch.floor(_rand(b, generator, dev) * 8), torch.tensor(7.0, device=dev)).long()
    d = torch.tensor(NEIGHBOURS, device=dev)[label]  # d: B x 2
    size, centre, other = [], [], []
    for a in range(2):
        lo, hi, side = scales.lo[a], scales.hi[a], scales.size[a]
        p = lo + torch.minimum(torch.floor(u * (hi - lo + 1)).long(), torch.tensor(hi - lo, device=dev))
        g, j = _spacing(p, scales.gap, scales.jitter)
        s = p + g
        corner = _uniform_int(s + j, side - p - s - j, generator, dev)
        jn, jc = (_uniform_int(-j, j, generator, dev) for _ in range(2))
        size.append(p)
        other.append(corner + jn)
        centre.append(corner - d[:, a] * s + jc)
    return {"centre": torch.stack(centre, 1), "other": torch.stack(other, 1), "size": torch.stack(size, 1),
            "label": label}


def relative_pairs(x: torch.Tensor, boxes: dict, out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The centre and neighbour patches of `boxes` (``random_pair_boxes``), each (B, C, out, out): one bilinear
    resized crop per patch (patches of one batch differ in size), exact when a patch is already out px."""
    h, w = boxes["size"][:, 0], boxes["size"][:, 1]
    cut = lambda corner: resized_crop(x, corner[:, 0], corner[:, 1], h, w, out)  # noqa: E731
    return cut(boxes["centre"]), cut(boxes["other"])


def random_relative_pairs(x: torch.Tensor, scales: PairScales, out: int, generator: torch.Generator | None = None):
    """Random pairs of every image: (centre (B, C, out, out), neighbour, label (B,), boxes)."""
    boxes = random_pair_boxes(x.shape[0], scales, generator, x.device)
    centre, other = relative_pairs(x, boxes, out)
    return centre, other, boxes["label"], boxes


def drop_colour(x: torch.Tensor, keep: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Doersch et al.'s colour dropping: keep channel keep[i] of each (normalised) RGB patch and replace the
    other two with Gaussian noise of 1/100 the kept channel's std, so chromatic aberration (colour fringes
    that tell where a patch lay in the lens' field) cannot be used. x: (B, 3, h, w); keep: (B,); noise like x.
    Identity for one channel.
    """
    if x.shape[1] == 1:
        return x
    kept = x.gather(1, keep.view(-1, 1, 1, 1).expand(-1, 1, *x.shape[2:]))  # kept: B x 1 x h x w
    scale = 0.01 * kept.std(dim=(1, 2, 3), keepdim=True)
    mask = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1) == keep.view(-1, 1, 1, 1)
    return torch.where(mask, x, noise * scale)


def random_drop_colour(x: torch.Tensor, generator: torch.Generator | None = None):
    """Colour dropping with a uniformly chosen kept channel per patch: (patches, kept channel (B,))."""
    b = x.shape[0]
    keep = torch.minimum(torch.floor(_rand(b, generator, x.device) * x.shape[1]),
                         torch.tensor(x.shape[1] - 1.0, device=x.device)).long()
    gdev = generator.device if generator is not None else x.device
    noise = torch.randn(x.shape, generator=generator, device=gdev).to(x.device)
    return drop_colour(x, keep, noise), keep
