"""Momentum (EMA) teachers, written once for every method that has one (MoCo now; BYOL, DINO, MoCo v3 later)."""
from __future__ import annotations

import copy
import math
from typing import Literal

import torch
from torch import nn


def momentum_copy(module: nn.Module) -> nn.Module:
    """A separate deep copy of `module` whose parameters take no gradient (never the same object)."""
    teacher = copy.deepcopy(module)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, students: nn.Module | list[nn.Module], momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, parameter by parameter (one foreach kernel)."""
    students = [students] if isinstance(students, nn.Module) else students
    t = list(teacher.parameters())
    s = [p.detach() for m in students for p in m.parameters()]
    if len(t) != len(s):
        raise ValueError("teacher and student have different parameter lists")
    torch._foreach_lerp_(t, s, 1.0 - momentum)


def cosine_momentum(base: float, progress: float, final: float = 1.0) -> float:
    """BYOL's schedule: from `base` at progress 0 up to `final` (1.0) at progress 1."""
    progress = min(max(progress, 0.0), 1.0)
    return final - (final - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


class EMATeacher(nn.Module):
    """A momentum copy of one or more student modules (applied in sequence), updated after every optimizer step.

    A method declares one by assigning it to an attribute, e.g. MoCo's key encoder:
    ``self.key_encoder = EMATeacher(self.backbone, self.projector, momentum=0.99)``; ``Method.on_step_end``
    then updates every declared teacher after ``optimizer.step()``, so no method writes this logic again.
    The teacher takes no gradient and the optimizer never sees it (its parameters do not require grad).

    schedule "constant": the momentum stays at `momentum` (MoCo v2). "cosine": BYOL's schedule (Grill et al.
    2020, sec. 3.2), from `momentum` at the first step to `final` at the last. The current momentum and the
    number of updates are buffers, so they are in the checkpoint and a resumed run continues the schedule.
    """

    def __init__(self, *students: nn.Module, momentum: float,
                 schedule: Literal["constant", "cosine"] = "constant", final: float = 1.0):
        super().__init__()
        if schedule not in ("constant", "cosine"):
            raise ValueError(f"unknown momentum schedule {schedule!r}: expected 'constant' or 'cosine'")
        self.net = momentum_copy(students[0] if len(students) == 1 else nn.Sequential(*students))
        # The students belong to the method (their parameters are trained there): held, not registered.
        object.__setattr__(self, "_students", list(students))
        self.base, self.final, self.schedule = float(momentum), float(final), schedule
        self.register_buffer("momentum", torch.tensor(float(momentum), dtype=torch.float64))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def momentum_at(self, step: int, total: int) -> float:
        """The momentum used after optimizer step `step` (0-based) of `total`."""
        if self.schedule == "constant":
            return self.base
        return cosine_momentum(self.base, step / max(1, total - 1), self.final)

    @torch.no_grad()
    def update(self, step: int, total: int) -> None:
        """Move the teacher towards the students with the scheduled momentum."""
        m = self.momentum_at(step, total)
        ema_update(self.net, self._students, m)
        self.momentum.fill_(m)
        self.updates.add_(1)
