"""Batched ops of Noroozi & Favaro 2016's jigsaw puzzles: the permutation set, the tile layout, the cut, the shuffle.

Like ``views/ops.py``, each op is deterministic given explicit per-sample parameters, and ``random_jigsaw`` draws
them from the passed ``torch.Generator`` and returns them beside the result. Tiles are cut exactly (integer boxes,
gathered by index: no interpolation), so the tests can check every pixel against the geometry.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from .ops import _rand

__all__ = ["hamming_permutations", "min_hamming", "shuffle_tiles", "unshuffle_tiles", "Puzzle", "puzzle_layout",
           "jigsaw_boxes", "crop_channel_patches", "random_jigsaw", "standardize_tiles"]


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


# ------------------------------------------------------------------------------------------ layout

@dataclass(frozen=True)
class Puzzle:
    """A 3x3 puzzle's geometry per axis (rows, columns): grid cell, tile side, guaranteed gap, channel shift.

    Tile (r, c) channel k covers rows origin + r * cell + offset + shift_k ... + tile - 1, with offset in
    [0, free] and shift_k in [0, shift]; so over all its channels a tile stays inside the first
    cell - gap pixels of its cell, and any two tiles are at least `gap` pixels apart along one axis.
    """

    cell: tuple[int, int]
    tile: tuple[int, int]
    gap: tuple[int, int]
    shift: int
    size: tuple[int, int]

    @property
    def free(self) -> tuple[int, int]:
        """The largest random offset of a tile in its cell."""
        return tuple(c - t - self.shift - g for c, t, g in zip(self.cell, self.tile, self.gap))

    @property
    def slack(self) -> tuple[int, int]:
        """How far the grid's origin can move: the image's pixels beyond 3 cells."""
        return tuple(s - 3 * c for s, c in zip(self.size, self.cell))


def _min_side(gap: float, shift: int) -> int:
    side = 3
    while side // 3 - max(1, round(gap * (side // 3))) - shift < 2:
        side += 1
    return side


def puzzle_layout(height: int, width: int, channels: int, tile: float = 0.75, gap: float = 0.1,
                  shift: int = 2) -> Puzzle:
    """The puzzle of an H x W image: cells side // 3, a gap of max(1, round(gap * cell)) px that every pair of
    tiles keeps for every offset drawn, tiles of round(tile * cell) px (smaller where the gap and shift need it).

    Noroozi & Favaro cut 64 px tiles from 75 px cells at a random offset; the 11 px of play leave gaps that
    are 11 px on average, so the network cannot join tiles by lines running over their edges. At 28 px the same
    fractions leave 2 px of play, and two tiles touched in one pair of neighbours out of 9: the gap is
    therefore reserved first. Their chromatic-aberration guard shifts each colour channel of a tile by
    0-2 px (`shift`, RGB only: for 1-channel images it would move the whole tile, so it is 0). At 28 px:
    1-channel tiles of 7 px with gaps of 1-3 px, RGB tiles of 6 px with a 1 px gap (the shift is the play).
    Raises ValueError when the tiles would be under 2 px (1-channel images under 9 px, RGB under 15 px).
    """
    shift = shift if channels > 1 else 0
    axes = []
    for side in (height, width):
        cell = side // 3
        g = max(1, round(gap * cell))
        t = min(max(1, round(tile * cell)), cell - g - shift)
        if t < 2:
            what = f" and {shift} px channel shifts" if shift else ""
            raise ValueError(f"an image side of {side} px is too small for a 3x3 jigsaw with gaps{what} "
                             f"({_min_side(gap, shift)} px at least)")
        axes.append((cell, t, g))
    (ch, th, gh), (cw, tw, gw) = axes
    return Puzzle((ch, cw), (th, tw), (gh, gw), shift, (height, width))


def jigsaw_boxes(puzzle: Puzzle, origin: torch.Tensor, offset: torch.Tensor, shift: torch.Tensor):
    """Top-left corners (top, left), each (B, 9, C), of every channel of the nine tiles in grid order.

    origin: (B, 2) in [0, slack]; offset: (B, 9, 2) in [0, free]; shift: (B, 9, C, 2) in [0, puzzle.shift].
    """
    rc = torch.arange(9, device=origin.device)
    top = origin[:, :1] + (rc // 3) * puzzle.cell[0] + offset[..., 0]  # top: B x 9
    left = origin[:, 1:] + (rc % 3) * puzzle.cell[1] + offset[..., 1]
    return top[..., None] + shift[..., 0], left[..., None] + shift[..., 1]


def crop_channel_patches(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: tuple[int, int]):
    """Exact crops with a box per channel: x (B, C, H, W), top/left (B, K, C) -> (B, K, C, h, w) with
    out[b, k, c] = x[b, c, t:t+h, l:l+w] (t, l = top[b, k, c], left[b, k, c]); one gather, no loop."""
    b, c = x.shape[:2]
    h, w = size
    rows = top.unsqueeze(-1) + torch.arange(h, device=x.device)  # rows: B x K x C x h
    cols = left.unsqueeze(-1) + torch.arange(w, device=x.device)  # cols: B x K x C x w
    bi = torch.arange(b, device=x.device).view(b, 1, 1, 1, 1)
    ci = torch.arange(c, device=x.device).view(1, 1, c, 1, 1)
    return x[bi, ci, rows.unsqueeze(-1), cols.unsqueeze(-2)]


def _randint(shape, high: torch.Tensor | int, generator, device) -> torch.Tensor:
    """Uniform integers in [0, high] (high broadcast against `shape`'s last axes), long."""
    high = torch.as_tensor(high, device=device, dtype=torch.float32)
    return torch.minimum(torch.floor(_rand(shape, generator, device) * (high + 1)), high).long()


def random_jigsaw(x: torch.Tensor, perms: torch.Tensor, puzzle: Puzzle, generator: torch.Generator | None = None):
    """Cut a random 3x3 puzzle from each image and shuffle it by a random permutation of the set.

    x: (B, C, H, W) with (H, W) = puzzle.size. Returns (shuffled tiles (B, 9, C, t, t'), permutation index
    (B,) = the label, (origin (B, 2), offset (B, 9, 2), shift (B, 9, C, 2))).
    """
    b, c = x.shape[:2]
    dev = x.device
    origin = _randint((b, 2), list(puzzle.slack), generator, dev)
    offset = _randint((b, 9, 2), list(puzzle.free), generator, dev)
    shift = _randint((b, 9, c, 2), puzzle.shift, generator, dev)
    n = perms.shape[0]
    index = _randint(b, n - 1, generator, dev)
    top, left = jigsaw_boxes(puzzle, origin, offset, shift)
    tiles = crop_channel_patches(x, top, left, puzzle.tile)  # tiles: B x 9 x C x t x t'
    return shuffle_tiles(tiles, perms, index), index, (origin, offset, shift)


def standardize_tiles(t: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Each tile (over its channels and pixels) to zero mean and unit std: Noroozi & Favaro normalise every
    tile independently so the network cannot match tiles by their brightness or contrast. t: (..., C, h, w)."""
    mean = t.mean(dim=(-3, -2, -1), keepdim=True)
    std = t.std(dim=(-3, -2, -1), keepdim=True)
    return (t - mean) / (std + eps)
