"""Batched label-making ops of the classic pretext tasks: rotations, patch grids, jigsaw permutations.

Like ``views/ops.py``, each op is deterministic given explicit per-sample parameters, and a ``random_*``
sampler draws those parameters from the passed ``torch.Generator`` (so a resumed run draws the same labels)
and returns them beside the result. Inputs are float batches (B, C, H, W); patches are cut exactly (integer
boxes, gathered by index: no interpolation), so the tests can check every pixel against the geometry.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from .ops import _rand

__all__ = [
    "rotate90", "all_rotations",
    "Grid", "patch_grid", "grid_boxes", "random_grid_params", "crop_patches",
    "NEIGHBOURS", "relative_pairs", "random_relative_pairs", "drop_colour", "random_drop_colour",
    "hamming_permutations", "min_hamming", "shuffle_tiles", "unshuffle_tiles", "jigsaw_boxes",
    "random_jigsaw", "standardize_tiles", "resize_patches",
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


def grid_boxes(grid: Grid, origin: torch.Tensor, jitter: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-left corners (top, left), each (B, 9), of the nine patches, cell index r * 3 + c (row-major).

    origin: (B, 2) long in [0, slack] per axis (where the grid sits), jitter: (B, 9, 2) long in [-j, j].
    """
    dev = origin.device
    rc = torch.arange(9, device=dev)
    r, c = rc // 3, rc % 3  # cells: 9
    step_h, step_w = grid.patch[0] + grid.gap[0], grid.patch[1] + grid.gap[1]
    top = origin[:, :1] + grid.jitter[0] + r * step_h + jitter[..., 0]
    left = origin[:, 1:] + grid.jitter[1] + c * step_w + jitter[..., 1]
    return top, left


def random_grid_params(b: int, grid: Grid, generator: torch.Generator | None, device) -> tuple[torch.Tensor, torch.Tensor]:
    """A uniformly placed grid origin (B, 2) and independent per-patch jitter (B, 9, 2), long tensors."""
    u = _rand((b, 2), generator, device)
    slack = torch.tensor(grid.slack, device=device, dtype=torch.float32)
    origin = torch.minimum(torch.floor(u * (slack + 1)), slack).long()
    j = torch.tensor(grid.jitter, device=device, dtype=torch.float32)
    v = _rand((b, 9, 2), generator, device)
    jitter = (torch.minimum(torch.floor(v * (2 * j + 1)), 2 * j) - j).long()
    return origin, jitter


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


def relative_pairs(x: torch.Tensor, grid: Grid, origin: torch.Tensor, jitter: torch.Tensor,
                   label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The centre patch and the neighbour named by `label` (0..7, see NEIGHBOURS), each (B, C, h, w)."""
    top, left = grid_boxes(grid, origin, jitter)
    cell = label + (label >= 4).long()  # skip the centre, cell 4
    idx = torch.stack([torch.full_like(cell, 4), cell], dim=1)  # idx: B x 2
    pairs = crop_patches(x, top.gather(1, idx), left.gather(1, idx), grid.patch)  # B x 2 x C x h x w
    return pairs[:, 0], pairs[:, 1]


def random_relative_pairs(x: torch.Tensor, grid: Grid, generator: torch.Generator | None = None):
    """A random grid placement, jitter and neighbour per sample: (centre, neighbour, label, (origin, jitter))."""
    b = x.shape[0]
    origin, jitter = random_grid_params(b, grid, generator, x.device)
    label = torch.minimum(torch.floor(_rand(b, generator, x.device) * 8), torch.tensor(7.0, device=x.device)).long()
    centre, other = relative_pairs(x, grid, origin, jitter, label)
    return centre, other, label, (origin, jitter)


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


# ------------------------------------------------------------------------------------------ jigsaw

@lru_cache(maxsize=8)
def _permutations(n: int, tiles: int, seed: int) -> tuple[tuple[int, ...], ...]:
    every = np.array(list(itertools.permutations(range(tiles))), dtype=np.int8)  # every: T! x T, lexicographic
    first = int(torch.randint(len(every), (1,), generator=torch.Generator().manual_seed(seed)))
    chosen = [first]
    nearest = (every != every[first]).sum(1, dtype=np.int8)  # Hamming distance of each one to the chosen set
    for _ in range(n - 1):
        j = int(np.argmax(nearest))  # the farthest from the set; ties -> the lowest index (deterministic)
        chosen.append(j)
        np.minimum(nearest, (every != every[j]).sum(1, dtype=np.int8), out=nearest)
    return tuple(tuple(int(v) for v in every[j]) for j in chosen)


def hamming_permutations(n: int = 100, tiles: int = 9, seed: int = 0) -> torch.Tensor:
    """A fixed set of n permutations of `tiles` tiles, far apart in Hamming distance: (n, tiles) long.

    Noroozi & Favaro 2016, Algorithm 1, greedily adds the permutation farthest from those chosen so far,
    starting from a random one. The paper scores a candidate by its summed distance to the set (1^T D); this
    takes the minimum instead (max-min, farthest-point selection), which is what guarantees a minimum distance
    between any two classes. The first permutation comes from `seed`, ties go to the lowest index in
    lexicographic order, so the set is the same on every machine. 100 of 9 tiles: minimum distance 6, in ~2 s (cached per process).
    """
    import math

    if not 2 <= n <= math.factorial(tiles):
        raise ValueError(f"a permutation set of {tiles} tiles holds 2 to {math.factorial(tiles)} permutations, not {n}")
    return torch.tensor(_permutations(n, tiles, seed), dtype=torch.long)


def min_hamming(perms: torch.Tensor) -> int:
    """The smallest Hamming distance between two rows of a permutation set (N, T)."""
    d = (perms.unsqueeze(0) != perms.unsqueeze(1)).sum(-1)
    d.fill_diagonal_(perms.shape[1] + 1)
    return int(d.min())


def shuffle_tiles(tiles: torch.Tensor, perms: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """out[b, i] = tiles[b, perms[index[b], i]]: tiles (B, T, ...) in grid order, index (B,) into perms (N, T)."""
    p = perms.to(tiles.device)[index]  # p: B x T
    return tiles.gather(1, p.view(*p.shape, *([1] * (tiles.dim() - 2))).expand_as(tiles))


def unshuffle_tiles(shuffled: torch.Tensor, perms: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The inverse of shuffle_tiles: the tiles back in grid order (the inverse permutation is argsort)."""
    return shuffle_tiles(shuffled, perms.argsort(dim=1), index)


def jigsaw_boxes(height: int, width: int, tile: float, origin: torch.Tensor, offset: torch.Tensor):
    """Corners (top, left), each (B, 9), and the tile size of Noroozi & Favaro's 3x3 puzzle.

    The image's largest 3x3 grid of cells (side // 3) is placed at `origin` (B, 2) in [0, side % 3]; each tile
    covers `tile` of its cell (64/75 px in the paper) at `offset` (B, 9, 2) in [0, cell - tile], so the tiles
    are separated by a random gap (averaging 11 px in the paper) and cannot be joined by their edges.
    """
    cell = (height // 3, width // 3)
    size = (max(1, round(tile * cell[0])), max(1, round(tile * cell[1])))
    rc = torch.arange(9, device=origin.device)
    top = origin[:, :1] + (rc // 3) * cell[0] + offset[..., 0]
    left = origin[:, 1:] + (rc % 3) * cell[1] + offset[..., 1]
    return top, left, size


def random_jigsaw(x: torch.Tensor, perms: torch.Tensor, tile: float = 0.85,
                  generator: torch.Generator | None = None):
    """Cut a random 3x3 puzzle from each image and shuffle it by a random permutation of the set.

    Returns (shuffled tiles (B, 9, C, t, t'), permutation index (B,) = the label, (origin, offset)).
    """
    b, _, h, w = x.shape
    dev = x.device
    cell = torch.tensor([h // 3, w // 3], device=dev, dtype=torch.float32)
    size = torch.tensor([max(1, round(tile * (h // 3))), max(1, round(tile * (w // 3)))], device=dev,
                        dtype=torch.float32)
    rest = torch.tensor([h - 3 * (h // 3), w - 3 * (w // 3)], device=dev, dtype=torch.float32)
    origin = torch.minimum(torch.floor(_rand((b, 2), generator, dev) * (rest + 1)), rest).long()
    free = cell - size
    offset = torch.minimum(torch.floor(_rand((b, 9, 2), generator, dev) * (free + 1)), free).long()
    n = perms.shape[0]
    index = torch.minimum(torch.floor(_rand(b, generator, dev) * n), torch.tensor(n - 1.0, device=dev)).long()
    top, left, tsize = jigsaw_boxes(h, w, tile, origin, offset)
    tiles = crop_patches(x, top, left, tsize)  # tiles: B x 9 x C x t x t'
    return shuffle_tiles(tiles, perms, index), index, (origin, offset)


def standardize_tiles(t: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Each tile (over its channels and pixels) to zero mean and unit std: Noroozi & Favaro normalise every
    tile independently so the network cannot match tiles by their brightness or contrast. t: (..., C, h, w)."""
    mean = t.mean(dim=(-3, -2, -1), keepdim=True)
    std = t.std(dim=(-3, -2, -1), keepdim=True)
    return (t - mean) / (std + eps)
