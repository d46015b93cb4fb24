"""Optimizers (SGD, LARS, AdamW) with biases and norm weights kept out of decay, and warmup + cosine."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import SelfSupError


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise trust ratios (You et al.); groups with `lars_exclude` skip decay and adaptation."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.02):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars_exclude=False))

    @torch.no_grad()
    def step(self, closure=None):
        # Multi-tensor (foreach) ops: a few kernels per group instead of ~10 per parameter, which matters
        # on a GPU where a ResNet step is only milliseconds and every launch costs CPU time.
        for g in self.param_groups:
            params = [p for p in g["params"] if p.grad is not None]
            if not params:
                continue
            d = [p.grad for p in params]
            if not g["lars_exclude"]:
                d = torch._foreach_add(d, params, alpha=g["weight_decay"]) if g["weight_decay"] else list(d)
                p_norm = torch.stack(torch._foreach_norm(params))
                d_norm = torch.stack(torch._foreach_norm(d))
                trust = torch.where((p_norm > 0) & (d_norm > 0), g["eta"] * p_norm / d_norm, torch.ones_like(p_norm))
                d = torch._foreach_mul(d, list(trust.unbind()))
            bufs = [self.state[p].get("momentum_buffer") for p in params]
            if any(b is None for b in bufs):
                bufs = [torch.clone(x).detach() for x in d]
                for p, b in zip(params, bufs):
                    self.state[p]["momentum_buffer"] = b
            else:
                torch._foreach_mul_(bufs, g["momentum"])
                torch._foreach_add_(bufs, d)
            torch._foreach_add_(params, bufs, alpha=-g["lr"])


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weights (decayed, adapted) and biases/norm parameters (neither), trainable ones only."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [dict(params=decay, weight_decay=weight_decay, lars_exclude=False),
            dict(params=no_decay, weight_decay=0.0, lars_exclude=True)]


def _plain(groups: list[dict]) -> list[dict]:
    """The groups without LARS's own key (SGD and AdamW refuse unknown keys)."""
    return [{k: v for k, v in g.items() if k != "lars_exclude"} for g in groups]


# name -> (builder(groups, lr, momentum, nesterov), follows the linear scaling rule lr * batch_size / 256)
OPTIMIZERS = {
    "sgd": (lambda groups, lr, momentum, nesterov: torch.optim.SGD(_plain(groups), lr=lr, momentum=momentum,
                                                                   nesterov=nesterov), True),
    "lars": (lambda groups, lr, momentum, nesterov: LARS(groups, lr=lr, momentum=momentum), True),
    "adamw": (lambda groups, lr, momentum, nesterov: torch.optim.AdamW(_plain(groups), lr=lr), False),
}


def build_optimizer(name: str, model: nn.Module, lr: float, weight_decay: float, momentum: float = 0.9,
                    nesterov: bool = False, betas: tuple[float, float] | None = None):
    """An optimizer by name over the model's trainable parameters (`nesterov` applies to SGD, `betas` to AdamW)."""
    if name not in OPTIMIZERS:
        raise SelfSupError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")
    opt = OPTIMIZERS[name][0](param_groups(model, weight_decay), lr, momentum, nesterov)
    if betas is not None and name == "adamw":
        for g in opt.param_groups:
            g["betas"] = tuple(betas)
    return opt


def scaled_lr(name: str, base_lr: float, batch_size: int, per_256: bool | None = None) -> float:
    """A default learning rate for `batch_size`: per 256 samples for sgd and lars (Goyal et al. 2017), as is for
    adamw; `per_256` overrides the optimizer's rule (a method whose paper gives AdamW's lr per 256, as MAE)."""
    return base_lr * batch_size / 256 if (OPTIMIZERS[name][1] if per_256 is None else per_256) else base_lr


def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float, final_ratio: float = 0.0) -> float:
    """Linear warmup from 0 to base_lr, then cosine decay to base_lr * final_ratio."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    t = min(max(t, 0.0), 1.0)
    return base_lr * (final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * t)))
