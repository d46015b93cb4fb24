"""Reconstruction losses restricted to what was hidden: the masked region (context encoder) or masked patches
(MAE). What the model could see carries no weight, so copying the input earns nothing."""
from __future__ import annotations

import torch

from .precision import fp32


@fp32
def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the masked pixels only (Pathak et al. 2016, eq. 1: the L2 loss on the hole).

    pred, target: (B, C, H, W); mask: (B, 1, H, W) bool or {0, 1}, True = hidden. The mean is over the masked
    pixels of every channel; a visible pixel's prediction has no effect on the value or its gradient.
    """
    m = mask.to(torch.float32).expand_as(target)
    err = (pred.float() - target.float()).pow(2) * m
    return err.sum() / m.sum().clamp(min=1.0)


def normalized_patches(target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Each patch's values standardised by its own mean and variance (MAE's norm_pix_loss target).

    target: (B, N, P) patchified pixels -> (B, N, P). He et al. 2021 (sec. 4, "reconstruction target") report
    that per-patch normalised pixels give better representations than raw pixels.
    """
    mean = target.mean(-1, keepdim=True)
    var = target.var(-1, keepdim=True)  # unbiased, as MAE's code
    return (target - mean) / (var + eps).sqrt()


@fp32
def masked_patch_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MAE's loss: per-patch mean squared error, averaged over the masked patches only (He et al. 2021).

    pred, target: (B, N, P); mask: (B, N) bool, True = masked (removed from the encoder's input).
    """
    per_patch = (pred.float() - target.float()).pow(2).mean(-1)  # per_patch: B x N
    m = mask.to(torch.float32)
    return (per_patch * m).sum() / m.sum().clamp(min=1.0)
