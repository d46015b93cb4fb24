"""Colour jitter on a batch with per-sample factors and a per-sample op order, each op computed once per sample.

torchvision's ColorJitter applies brightness, contrast, saturation and hue in a random order. Batched, the
obvious version runs each of the four ops at each of the four positions over the whole batch (16 full-batch
passes, four of them RGB -> HSV -> RGB round trips). Here instead:

* brightness, contrast and saturation are one blend ``clamp(f * x + (1 - f) * t)`` with a per-sample target t
  (0, the mean of the grey image, the grey image), so one pass applies whichever of the three a sample has
  next; a sample's three blends are its "slots" 0..2 in its own order;
* hue is the only op that does not blend, and each sample has it at one point of its order, so the batch runs
  the slots before its hue, one hue rotation for the whole batch, then the slots after it: each sample is
  rotated once, not at each of the four positions;
* the hue rotation works on RGB directly (max, min and the hue angle, then the closed-form HSV -> RGB), equal
  to torchvision's HSV round trip up to float rounding but with no (6, 3, H, W) selection tensor;
* an op whose factors are the identity (``None``, e.g. hue = 0, or saturation and hue on one channel) is
  left out entirely, as torchvision's ColorJitter leaves it out.

Rows a pass does not concern (another op in that slot, ``apply_mask`` False) are either left out by index
(``gather=True``: nothing computed for them, but the row count is data-dependent, which on a GPU costs a
device sync per pass) or computed and discarded by ``torch.where`` (``gather=False``: no sync). The default
gathers on the CPU and masks elsewhere.
"""
from __future__ import annotations

from typing import Callable

import torch

__all__ = ["rgb_to_gray", "adjust_brightness", "adjust_contrast", "adjust_saturation", "adjust_hue", "color_jitter"]

BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)


def _col(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B,1,1,1) on x's device/dtype."""
    return v.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)


def _check_channels(x: torch.Tensor) -> int:
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected a (B, C, H, W) batch with C in {{1, 3}}, got shape {tuple(x.shape)}")
    return x.shape[1]


def rgb_to_gray(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 luma with torchvision's weights, one channel (B,1,H,W); identity for C=1."""
    if x.shape[1] == 1:
        return x
    gray = x[:, 0:1] * 0.2989  # torchvision's (0.2989 r + 0.587 g) + 0.114 b, with fewer new tensors
    return gray.add_(x[:, 1:2] * 0.587).add_(x[:, 2:3] * 0.114)


def _blend_ops(x: torch.Tensor, op: torch.Tensor, f: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """Brightness (op 0), contrast (1) or saturation (2) per sample: clamp(f * x + (1 - f) * target, 0, 1).

    x: (R, C, H, W); op, f: (R,). The target is 0, the mean of the sample's grey image, or the grey image, picked
    by per-sample 0/1 weights (gray * w_s + mean * w_c is exactly one of the three), then torchvision's ``_blend``
    expression, so the result is the same float for float. Saturation on one channel blends x with itself:
    unchanged up to rounding, as torchvision leaves it (callers skip it there). With `inplace` x is overwritten:
    on a CPU each fresh batch-sized tensor costs page faults comparable to the arithmetic.
    """
    op = op.to(x.device).view(-1, 1, 1, 1)
    r = _col(f, x)
    gray = rgb_to_gray(x)  # (R, 1, H, W)
    mean = gray.mean(dim=(-3, -2, -1), keepdim=True)  # (R, 1, 1, 1)
    w_sat = (op == SATURATION).to(x.dtype)
    target = gray.mul_(w_sat) if gray is not x else gray * w_sat
    target.add_(mean * (op == CONTRAST).to(x.dtype)).mul_(1.0 - r)
    return (x.mul_(r) if inplace else x * r).add_(target).clamp_(0.0, 1.0)


def _rotate_hue(x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of (R, 3, H, W) RGB by h (R,) turns, without building HSV.

    torchvision's hue (rgb_to_hsv) in sixths of a turn is (g - b) / C where r is the max, 2 + (b - r) / C where g
    is (and r is not), 4 + (r - g) / C otherwise, C = max - min (chroma). The rotation keeps the max (value) and
    C, and HSV -> RGB is then channel = max - C * t, with t = clamp(2 - d, 0, 1) and d the distance (mod 6) from
    the new hue to the hue where that channel is the min (3, 5, 1 for r, g, b): the closed form of torchvision's
    p, q, t (v * s = C). For a hue in [0, 6] and e = |hue - centre| in [0, 6], d = min(e, 6 - e), so
    2 - d = max(2 - e, e - 4) = |e - 3| - 1. Equal to torchvision's round trip up to float rounding; a grey
    pixel (C = 0) is returned as is, like torchvision.
    """
    maxc = x.amax(dim=1, keepdim=True)  # (R, 1, H, W)
    cr = x.amin(dim=1, keepdim=True).neg_().add_(maxc)
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    # which channel is the max, as 0/1 floats (float arithmetic is several times faster than where/== on a CPU)
    not_r = (maxc - r).sign_()  # 0 where r is the max, else 1
    not_g = (maxc - g).sign_()
    is_g = (1.0 - not_g).mul_(not_r)
    is_b = not_g.mul_(not_r)
    hue = (g - b).mul_(not_r.neg_().add_(1.0))  # each term is exact (times 1) or 0: the sum is torchvision's branch
    hue.add_((b - r).add_(cr, alpha=2.0).mul_(is_g)).add_((r - g).add_(cr, alpha=4.0).mul_(is_b))
    hue.div_(cr.clamp(min=1e-30)).add_(6.0 * h.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1))
    hue.sub_(torch.floor(hue * (1.0 / 6.0)).mul_(6.0))  # into [0, 6]
    centre = torch.tensor([3.0, 5.0, 1.0], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    t = (hue - centre).abs_().sub_(3.0).abs_().sub_(1.0).clamp_(0.0, 1.0)  # (R, 3, H, W)
    return t.mul_(cr).neg_().add_(maxc)


def adjust_brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """x * f clamped to [0,1], per-sample f (TF.adjust_brightness)."""
    return _blend_ops(x, torch.full_like(f, BRIGHTNESS, dtype=torch.long), f)


def adjust_contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Blend with the mean of each sample's grayscale image (TF.adjust_contrast)."""
    return _blend_ops(x, torch.full_like(f, CONTRAST, dtype=torch.long), f)


def adjust_saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Blend with the grayscale image (TF.adjust_saturation); unchanged for one channel, like torchvision."""
    if x.shape[1] == 1:
        return x
    return _blend_ops(x, torch.full_like(f, SATURATION, dtype=torch.long), f)


def adjust_hue(x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Rotate hue by per-sample h in [-0.5, 0.5] turns (TF.adjust_hue); unchanged for one channel."""
    if x.shape[1] == 1:
        return x
    return _rotate_hue(x, h)


def _update(out: torch.Tensor, rows: torch.Tensor, fn: Callable, gather: bool) -> torch.Tensor:
    """out with fn applied to the rows flagged in `rows` (B,) bool. fn(sub_batch, index, owned) gets the row
    indices, and owned=True when it may overwrite sub_batch (gather mode, where out is the caller's own copy)."""
    if gather:
        idx = rows.nonzero().squeeze(1)  # a device sync: the number of rows decides the shapes below
        if idx.numel() == out.shape[0]:
            return fn(out, idx, True)
        if idx.numel() > 0:
            out.index_copy_(0, idx, fn(out.index_select(0, idx), idx, True))
        return out
    idx = torch.arange(out.shape[0], device=out.device)
    return torch.where(rows.view(-1, 1, 1, 1), fn(out, idx, False), out)


def color_jitter(x: torch.Tensor, brightness: torch.Tensor | None, contrast: torch.Tensor | None,
                 saturation: torch.Tensor | None, hue: torch.Tensor | None, order: torch.Tensor,
                 apply_mask: torch.Tensor | None = None, gather: bool | None = None) -> torch.Tensor:
    """ColorJitter with per-sample factors (B,) and per-sample op order (B, 4) of op ids
    (0=brightness, 1=contrast, 2=saturation, 3=hue): sample i gets torchvision's ops in order[i].

    A factor given as None is the identity for every sample and computes nothing (as in torchvision's
    ColorJitter, which skips an op whose range is the identity); saturation and hue are skipped on one channel
    (torchvision leaves it unchanged). Samples with ``apply_mask`` False are returned unchanged (RandomApply).
    ``gather``: compute only the rows each pass concerns (default on the CPU) or the whole batch masked (default
    elsewhere: no device sync). See the module docstring for why this is one hue rotation and three blends per
    sample. Returns a new (B, C, H, W) tensor.
    """
    c = _check_channels(x)
    b, dev = x.shape[0], x.device
    gather = dev.type == "cpu" if gather is None else gather
    apply = torch.ones(b, dtype=torch.bool, device=dev) if apply_mask is None else apply_mask.to(dev, torch.bool)
    factors = [None if f is None else f.to(device=dev, dtype=x.dtype) for f in (brightness, contrast, saturation)]
    if c == 1:
        factors[SATURATION] = None
    h = None if hue is None or c == 1 else hue.to(device=dev, dtype=x.dtype)
    blends = [k for k in (BRIGHTNESS, CONTRAST, SATURATION) if factors[k] is not None]
    if not blends and h is None:
        return x.clone()

    position = torch.argsort(order.to(dev), dim=1)  # position[i, k]: where op k comes in sample i's order
    ops = torch.tensor(blends, device=dev, dtype=torch.long)
    slots = torch.argsort(position[:, ops], dim=1)  # (B, n): slot j of sample i is its blend ops[slots[i, j]]
    slot_op = ops[slots]
    slot_f = torch.stack([factors[k] for k in blends], 1).gather(1, slots) if blends else x.new_zeros(b, 0)
    if h is None:
        before = torch.zeros(b, dtype=torch.long, device=dev)  # no hue: every slot runs "after" it
    else:
        before = (position[:, ops] < position[:, HUE:HUE + 1]).sum(dim=1)  # blends ahead of the hue rotation

    def blend_slot(j: int):
        return lambda rows, idx, owned: _blend_ops(rows, slot_op[idx, j], slot_f[idx, j], inplace=owned)

    out = x.clone() if gather else x
    n = len(blends)
    if h is not None:
        for j in range(n):  # the blends a sample has before its hue
            out = _update(out, apply & (before > j), blend_slot(j), gather)
        out = _update(out, apply, lambda rows, idx, owned: _rotate_hue(rows, h[idx]), gather)
    for j in range(n):  # the blends after it (all of them when there is no hue)
        out = _update(out, apply & (before <= j), blend_slot(j), gather)
    return out if out is not x else x.clone()
