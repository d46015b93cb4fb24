"""Pixel reconstruction loss (autoencoders)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .precision import fp32


@fp32
def reconstruction_mse(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error per pixel between a reconstruction and its target, both in [0,1]."""
    return F.mse_loss(recon.float(), target.float())
