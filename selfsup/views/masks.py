"""Batched masks and corruptions on the device, for reconstruction pretext tasks.

As in ``ops``, every mask comes in two layers: a deterministic op taking explicit per-sample parameters, and a
``random_*`` sampler that draws them from the passed ``torch.Generator`` (on its device) and returns them with the
mask, so a resumed run draws exactly the same masks. Masks are boolean, True where a pixel or patch is hidden
(masked) and must be reconstructed. No per-sample Python loops: each op is a few batched tensor ops.

* block masks (context encoder, Pathak et al. 2016): the central block, or ``count`` disjoint blocks of a grid;
* pixel masks (denoising autoencoder's masking noise, Vincent et al. 2008): exactly ``round(ratio * H * W)``
  pixels per image, the same positions in every channel;
* patch masks (MAE, He et al. 2021): a random permutation of the patches per sample; the first ``n_keep`` are
  visible, the rest masked.
"""
from __future__ import annotations

import torch

from .ops import _rand

__all__ = [
    "block_mask", "center_block_params", "grid_blocks_params", "random_grid_blocks", "fill_masked",
    "mask_from_scores", "random_pixel_mask", "gaussian_noise", "random_gaussian_noise",
    "patch_mask", "n_visible", "random_patch_mask", "unshuffle_tokens",
]


# ------------------------------------------------------------------------------------------ block masks

def block_mask(h: int, w: int, top: torch.Tensor, left: torch.Tensor, height: torch.Tensor,
               width: torch.Tensor) -> torch.Tensor:
    """Union of K rectangles per sample as a (B, 1, H, W) bool mask, True inside any rectangle.

    top, left, height, width: long (B, K) (or (B,) for one rectangle each), in pixels. Row r of sample b is
    inside rectangle k when top[b,k] <= r < top[b,k] + height[b,k], likewise for columns.
    """
    top, left, height, width = (t.reshape(t.shape[0], -1) for t in (top, left, height, width))
    dev = top.device
    rows = torch.arange(h, device=dev).view(1, 1, h)
    cols = torch.arange(w, device=dev).view(1, 1, w)
    in_r = (rows >= top[..., None]) & (rows < (top + height)[..., None])  # in_r: B x K x H
    in_c = (cols >= left[..., None]) & (cols < (left + width)[..., None])  # in_c: B x K x W
    return (in_r[..., :, None] & in_c[..., None, :]).any(1, keepdim=True)  # B x 1 x H x W


def center_block_params(b: int, h: int, w: int, frac: float, device=None):
    """The central block of side round(frac * side), per axis; (top, left, height, width), each long (B, 1).

    Pathak et al. 2016 mask the central 64 x 64 of a 128 x 128 image: frac 0.5, a quarter of the area.
    """
    bh, bw = max(1, round(frac * h)), max(1, round(frac * w))
    full = lambda v: torch.full((b, 1), v, dtype=torch.long, device=device)  # noqa: E731
    return full((h - bh) // 2), full((w - bw) // 2), full(bh), full(bw)


def grid_blocks_params(order: torch.Tensor, h: int, w: int, grid: int, count: int):
    """The blocks of the first `count` cells of `order` on a grid x grid tiling (cells of H//grid x W//grid).

    order: long (B, grid*grid), a permutation of the cells per sample (cell i is row i // grid, column
    i % grid). Returns (top, left, height, width), each long (B, count). The cells are distinct, so the blocks
    never overlap and exactly count * (H//grid) * (W//grid) pixels are masked in every image.
    """
    ch, cw = h // grid, w // grid
    cells = order[:, :count]
    top, left = (cells // grid) * ch, (cells % grid) * cw
    return top, left, torch.full_like(top, ch), torch.full_like(left, cw)


def random_grid_blocks(b: int, h: int, w: int, grid: int, count: int, generator: torch.Generator | None = None,
                       device=None):
    """`count` distinct random cells of a grid x grid tiling per sample: (mask (B,1,H,W), (top, left, height,
    width)).

    Pathak et al.'s "random block" masks cover about a quarter of the image with smaller, possibly overlapping
    blocks; here the blocks are disjoint grid cells (grid 4, count 4: exactly a quarter), so every image
    carries the same number of masked pixels and the loss weighs images equally.
    """
    order = _rand((b, grid * grid), generator, device or "cpu").argsort(1)
    params = grid_blocks_params(order, h, w, grid, count)
    return block_mask(h, w, *params), params


def fill_masked(x: torch.Tensor, mask: torch.Tensor, value: float = 0.0) -> torch.Tensor:
    """x (B, C, H, W) with the masked pixels (mask (B, 1, H, W), True = hidden) set to `value` in every channel.

    On normalised images value 0 is the training mean: the context encoder fills the hole with the mean pixel.
    """
    return x.masked_fill(mask, value)


# ------------------------------------------------------------------------------------------ pixel masks

def mask_from_scores(scores: torch.Tensor, k: int) -> torch.Tensor:
    """True at the k smallest scores of each row. scores: (B, ...) with distinct values; same-shape bool mask.

    Ranks, not a threshold: exactly k entries per sample, whatever the scores' distribution.
    """
    flat = scores.reshape(scores.shape[0], -1)
    rank = flat.argsort(1).argsort(1)
    return (rank < k).view_as(scores)


def random_pixel_mask(b: int, h: int, w: int, ratio: float, generator: torch.Generator | None = None,
                      device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exactly round(ratio * H * W) random pixels per image: (mask (B, 1, H, W), scores (B, 1, H, W)).

    Vincent et al. 2008's masking noise sets a fixed fraction of the inputs, chosen at random, to 0.
    """
    scores = _rand((b, 1, h, w), generator, device or "cpu")
    return mask_from_scores(scores, round(ratio * h * w)), scores


def gaussian_noise(x: torch.Tensor, noise: torch.Tensor, std: float) -> torch.Tensor:
    """x + std * noise: additive isotropic Gaussian corruption (Vincent et al. 2010), no clipping."""
    return x + std * noise.to(x)


def random_gaussian_noise(x: torch.Tensor, std: float, generator: torch.Generator | None = None):
    """(gaussian_noise(x, N(0, 1) draws, std), the draws)."""
    noise = torch.randn(x.shape, generator=generator, device=generator.device if generator else x.device)
    return gaussian_noise(x, noise, std), noise


# ------------------------------------------------------------------------------------------ patch masks

def n_visible(n: int, ratio: float) -> int:
    """Visible patches out of n at masking ratio `ratio`: int(n * (1 - ratio)) as in MAE, at least 1."""
    return max(1, int(n * (1 - ratio)))


def patch_mask(ids_shuffle: torch.Tensor, n_keep: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAE's masking from a per-sample permutation of the N patches (long (B, N)).

    Returns ids_keep (B, n_keep): the visible patches, in the permutation's order; ids_restore (B, N): the
    inverse permutation (where each patch sits in [visible..., masked...]); mask (B, N) bool, True = masked.
    """
    ids_restore = ids_shuffle.argsort(1)
    mask = ids_restore >= n_keep  # patch j is masked when it comes after the first n_keep of the shuffle
    return ids_shuffle[:, :n_keep], ids_restore, mask


def random_patch_mask(b: int, n: int, ratio: float, generator: torch.Generator | None = None, device=None):
    """A random permutation of the patches per sample (argsort of uniform noise, as MAE) and its masking:
    (ids_keep, ids_restore, mask, ids_shuffle); exactly n - n_visible(n, ratio) patches masked per sample."""
    ids_shuffle = _rand((b, n), generator, device or "cpu").argsort(1)
    return (*patch_mask(ids_shuffle, n_visible(n, ratio)), ids_shuffle)


def unshuffle_tokens(visible: torch.Tensor, fill: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
    """MAE's decoder input in patch order: (B, N, D) where patch ids_keep[b, k] holds visible[b, k] and every
    masked patch holds `fill` (the mask token, broadcast to (B, N - n_keep, D)).

    visible: (B, n_keep, D) in the shuffle's order; ids_restore: (B, N) from ``patch_mask``. The visible
    tokens are followed by the fills ([visible..., masked...] is the shuffled order) and gathered back by
    ids_restore, as in He et al.'s code.
    """
    b, n_keep, d = visible.shape
    t = torch.cat([visible, fill.to(visible.dtype).expand(b, ids_restore.shape[1] - n_keep, d)], 1)
    return torch.gather(t, 1, ids_restore[..., None].expand(-1, -1, d))
