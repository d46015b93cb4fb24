"""Frozen-feature extraction: the backbone in eval mode, no gradients, data normalised on the device."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..device import autocast
from ..errors import SelfSupError
from ..views import ops


def normalizer(mean: Sequence[float], std: Sequence[float], device: torch.device):
    """Return ``f(u8_batch) -> float batch`` computing ``(x/255 - mean[c]) / std[c]`` on ``device``."""

    def normalize(x_u8: torch.Tensor) -> torch.Tensor:
        if x_u8.dtype != torch.uint8:
            raise SelfSupError(f"expected uint8 images, got {x_u8.dtype}")
        x = ops.normalize(ops.to_float(x_u8.to(device, non_blocking=True)), mean, std)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    return normalize


@torch.no_grad()
def extract_features(backbone: nn.Module, images_u8: torch.Tensor, mean, std, device,
                     batch_size: int = 1024) -> torch.Tensor:
    """Features of ``images_u8`` (N,C,H,W uint8) as a float32 (N, D) tensor on ``device``.

    The backbone (expected to live on ``device``) runs in eval mode, so BatchNorm uses its running
    statistics and none of its buffers change; its previous train/eval mode is restored afterwards.
    """
    device = torch.device(device)
    normalize = normalizer(mean, std, device)
    was_training = backbone.training
    backbone.eval()
    try:
        out = []
        for start in range(0, images_u8.shape[0], batch_size):
            x = normalize(images_u8[start:start + batch_size])
            with autocast(device):
                f = backbone(x)
            out.append(f.float())
        if not out:
            dim = int(getattr(backbone, "feature_dim", 0))
            return torch.empty(0, dim, dtype=torch.float32, device=device)
        return torch.cat(out)
    finally:
        backbone.train(was_training)
