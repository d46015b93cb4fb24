"""Frozen-feature extraction: the encoder in eval mode, no gradients, batches moved to the device in chunks."""
from __future__ import annotations

import torch
from torch import nn

from ..device import autocast


@torch.no_grad()
def extract_features(encoder: nn.Module, x: torch.Tensor, device, batch_size: int = 1024) -> torch.Tensor:
    """Features of the raw samples ``x`` (uint8 images or token ids) as a float32 (N, D) tensor on ``device``.

    The encoder (an ``Encoder``: it prepares the raw batch itself; expected to live on ``device``) runs in
    eval mode, so BatchNorm uses its running statistics and none of its buffers change; its previous
    train/eval mode is restored afterwards.
    """
    device = torch.device(device)
    was_training = encoder.training
    encoder.eval()
    try:
        out = []
        for start in range(0, x.shape[0], batch_size):
            with autocast(device):
                f = encoder(x[start:start + batch_size].to(device, non_blocking=True))
            out.append(f.float())
        if not out:
            return torch.empty(0, int(getattr(encoder, "feature_dim", 0)), dtype=torch.float32, device=device)
        return torch.cat(out)
    finally:
        encoder.train(was_training)
