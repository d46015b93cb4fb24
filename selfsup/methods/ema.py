"""Momentum (EMA) teachers, written once for every method that has one (MoCo now; BYOL, DINO later)."""
from __future__ import annotations

import copy
import math

import torch
from torch import nn


def momentum_copy(module: nn.Module) -> nn.Module:
    """A separate deep copy of `module` whose parameters take no gradient (never the same object)."""
    teacher = copy.deepcopy(module)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, parameter by parameter."""
    t = [p for p in teacher.parameters()]
    s = [p.detach() for p in student.parameters()]
    if len(t) != len(s):
        raise ValueError("teacher and student have different parameter lists")
    torch._foreach_lerp_(t, s, 1.0 - momentum)


def cosine_momentum(base: float, progress: float) -> float:
    """BYOL's schedule: from `base` at progress 0 up to 1.0 at progress 1."""
    return 1.0 - (1.0 - base) * (math.cos(math.pi * min(max(progress, 0.0), 1.0)) + 1.0) / 2.0
