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


BN_SAMPLES = 10_000  # training images the random-init baseline's BatchNorm statistics are estimated on


@torch.no_grad()
def reestimate_batchnorm(encoder: nn.Module, x: torch.Tensor, device, seed: int = 0,
                         max_samples: int = BN_SAMPLES, batch_size: int = 512) -> int:
    """Re-estimate every BatchNorm's running mean and variance of ``encoder`` on training samples ``x``.

    x: (N, ...) raw training samples (never the test split); a seeded random ``max_samples`` of them pass in
    batches through the whole backbone with only the BatchNorm layers in train mode, momentum None (a
    cumulative average over all batches, as torch.optim.swa_utils.update_bn does), no gradient; everything
    returns to its previous mode afterwards. Why: a freshly initialised network holds the initial statistics
    (mean 0, variance 1), so in eval mode every BatchNorm is an identity and deep layers' features shrink or
    blow up; the random-init baseline's frozen features would then measure that, not the architecture
    (fine-tuning re-estimates them anyway). Returns the number of samples used (0: no BatchNorm, untouched).
    """
    norms = [m for m in encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or x.shape[0] < 2:
        return 0
    device = torch.device(device)
    idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:max_samples].sort().values
    was_training = encoder.training
    momenta = [m.momentum for m in norms]
    encoder.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    # the whole backbone, whatever layer the encoder gives: every BatchNorm sees its input
    forward = (lambda b: encoder.backbone(encoder.prepare(b))) if hasattr(encoder, "prepare") else encoder
    try:
        for start in range(0, idx.numel(), batch_size):
            batch = idx[start:start + batch_size]
            if batch.numel() < 2:  # a lone ragged sample: train-mode BatchNorm needs two
                continue
            with autocast(device):
                forward(x[batch.to(x.device)].to(device, non_blocking=True))
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        encoder.train(was_training)
    return int(idx.numel())
