"""Linear probe (multinomial logistic regression) on frozen, precomputed features."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..train.optim import lr_at


def linear_probe(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, test_y: torch.Tensor,
                 num_classes: int, epochs: int = 100, batch_size: int = 1024, lr: float = 1e-3,
                 weight_decay: float = 1e-4, seed: int = 0, min_steps: int = 1000) -> float:
    """Train one ``nn.Linear`` on ``train_f`` and return its test accuracy in [0, 1].

    Features are standardised with the TRAIN mean/std (constant dimensions left unscaled). Training runs on
    ``train_f``'s device: AdamW, per-step cosine schedule, cross-entropy, minibatches from a seeded randperm,
    zero-initialised weights (the problem is convex, so this loses nothing and is deterministic).
    Small training sets (e.g. 1% label subsets, one minibatch per epoch) would be badly under-trained by a fixed
    epoch count, so the number of epochs is raised until at least ``min_steps`` optimizer steps are taken.
    """
    device = train_f.device
    x = train_f.detach().float()
    y = train_y.to(device).long()
    mu = x.mean(0, keepdim=True)
    sd = x.std(0, unbiased=False, keepdim=True)
    sd = torch.where(sd > 1e-6, sd, torch.ones_like(sd))
    x = (x - mu) / sd

    layer = nn.Linear(x.shape[1], num_classes).to(device)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    opt = torch.optim.AdamW(layer.parameters(), lr=lr, weight_decay=weight_decay)
    n = x.shape[0]
    steps_per_epoch = max(1, math.ceil(n / batch_size))
    epochs = max(epochs, math.ceil(min_steps / steps_per_epoch))
    total = max(1, epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_at(step, total, 0, 1.0))
    gen = torch.Generator().manual_seed(seed)

    with torch.enable_grad():
        for _ in range(epochs):
            perm = torch.randperm(n, generator=gen).to(device)
            for start in range(0, n, batch_size):
                idx = perm[start:start + batch_size]
                loss = F.cross_entropy(layer(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()

    with torch.no_grad():
        correct = 0
        ty = test_y.to(device)
        for start in range(0, test_f.shape[0], 8192):
            xt = (test_f[start:start + 8192].to(device).float() - mu) / sd
            correct += (layer(xt).argmax(1) == ty[start:start + 8192]).sum().item()
    return correct / max(1, test_f.shape[0])
