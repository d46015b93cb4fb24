"""DINO's self-distillation loss, its centre update and its teacher-temperature schedule (Caron et al. 2021,
Emerging Properties in Self-Supervised Vision Transformers, ICCV; the reference code's DINOLoss in main_dino.py)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..distributed import mean_over_processes
from .precision import fp32


def _rows(logits: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    return logits if torch.is_tensor(logits) else torch.cat(list(logits))


def dino_loss(student: torch.Tensor | Sequence[torch.Tensor], teacher: torch.Tensor | Sequence[torch.Tensor],
              center: torch.Tensor, teacher_temp: float | torch.Tensor, student_temp: float = 0.1,
              n_global: int = 2) -> torch.Tensor:
    """Cross-entropy of the student's crops against the centred, sharpened teacher (Caron et al. 2021, eq. 3 and
    Algorithm 1; the reference's DINOLoss.forward).

    student: the student's logits of every crop, a list of n tensors b x K or one (n*b) x K tensor, crop-major;
    the first crops are the globals, in the teacher's order. teacher: the teacher's logits of the `n_global`
    global crops (a list of n_global tensors b x K, or one (n_global*b) x K tensor), a constant (detached here).
    center: 1 x K (or K), the running centre. teacher_temp: a float or a 0-dim tensor.

    P_t = softmax((t - center) / teacher_temp) and log P_s = log_softmax(s / student_temp) over the K prototypes;
    the loss sums -P_t(global i) . log P_s(crop j) over every pair with i != j (a global crop is not its own
    target: sec. 3.1; the reference: "we skip cases where student and teacher operate on the same view"), each
    term the mean over the b samples, and divides by the number of terms, n_global * (n - 1), as the reference
    does. Centring (a bias on the teacher, against one prototype dominating) and sharpening (a low teacher
    temperature, against a uniform output) together avoid collapse (sec. 3.1, 5.3). Per-sample terms over this
    process's rows: under DDP the processes' averaged gradients are the global batch's; only the centre is a
    statistic across processes (`dino_center`).
    """
    if not torch.is_tensor(teacher):
        n_global = len(teacher)
    return _dino_loss(_rows(student), _rows(teacher), center, teacher_temp, student_temp, n_global)


@fp32
def _dino_loss(student: torch.Tensor, teacher: torch.Tensor, center: torch.Tensor,
               teacher_temp: float | torch.Tensor, student_temp: float, n_global: int) -> torch.Tensor:
    b = teacher.shape[0] // max(1, n_global)
    if n_global < 1 or b < 1 or teacher.shape[0] % n_global or student.shape[0] % b or student.shape[0] <= b:
        raise ValueError(f"{student.shape[0]} student rows and {teacher.shape[0]} teacher rows are not whole crops "
                         f"of {n_global} global crops and at least one more")
    log_p = F.log_softmax(student / student_temp, dim=-1).chunk(student.shape[0] // b)  # n x (b x K)
    q = F.softmax((teacher.detach() - center.reshape(1, -1)) / teacher_temp, dim=-1).chunk(n_global)  # g x (b x K)
    terms = [-(q[i] * log_p[j]).sum(dim=-1).mean() for i in range(n_global) for j in range(len(log_p)) if i != j]
    return torch.stack(terms).sum() / len(terms)


@torch.no_grad()
def dino_center(center: torch.Tensor, teacher: torch.Tensor | Sequence[torch.Tensor],
                momentum: float = 0.9) -> torch.Tensor:
    """The next centre: momentum * center + (1 - momentum) * the batch mean of the teacher's logits over every
    process (Caron et al. 2021, eq. 4; the reference's DINOLoss.update_center, an all-reduced sum over
    len(teacher_output) * world_size rows; every process has as many rows, so this is the mean of the processes'
    means). center: 1 x K; teacher: (g*b) x K raw logits (before centring and sharpening). Returns 1 x K, float32,
    the same on every process. A centre from this process's rows alone would drift apart across processes and
    make the loss differ from one process on the global batch (tests/test_distributed_joint.py shows it)."""
    batch_center = mean_over_processes(_rows(teacher).detach().float().mean(dim=0, keepdim=True))  # 1 x K
    return center.float() * momentum + batch_center * (1.0 - momentum)


def teacher_temperature(step: int, total: int, steps_per_epoch: int | None = None, start: float = 0.04,
                        end: float = 0.07, warmup_epochs: float = 30, warmup_share: float = 0.3) -> float:
    """The teacher temperature at optimizer step `step` (0-based) of `total`: linear from `start` at step 0 to
    `end` at step W, then `end` (Caron et al. 2021, sec. 3.2: 0.04 warmed up to 0.07 over the first
    30 epochs; the reference's teacher_temp_schedule, np.linspace per epoch, here per step).

    W = min(warmup_epochs * steps_per_epoch, warmup_share * total) rounded: the paper's 30 epochs, but at most
    30% of the run (30 of the paper's 100-epoch runs), so a short run still trains at the final temperature for
    most of its steps. Without `steps_per_epoch` W is the share alone. A function of the step: a resumed run
    continues the schedule exactly.
    """
    limits = [warmup_share * total] + ([warmup_epochs * steps_per_epoch] if steps_per_epoch else [])
    w = round(min(limits))
    if w <= 0 or step >= w:
        return float(end)
    return start + (end - start) * step / w
