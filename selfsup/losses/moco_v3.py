"""MoCo v3's contrastive loss: each query against the keys of the whole global batch, no queue."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..distributed import gather_no_grad, rank
from .precision import fp32


@fp32
def mocov3_logits(q: torch.Tensor, k: torch.Tensor, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, targets) of MoCo v3's `ctr` for this process's b queries against the B keys of every process.

    q: b x d, the query encoder's predictions of one view (with gradient); k: b x d, the momentum encoder's
    projections of the other view (a constant: that encoder takes no gradient, so the keys are detached and
    gathered without autograd, as the reference's concat_all_gather). Both are L2-normalised here.
    logits: b x B in fp32, q . k^T / temperature; targets: arange(b) + rank * b, the column of each query's own
    image among the gathered keys (the other B - 1 keys are its negatives, the queue of MoCo v1/v2 is gone).
    """
    b = q.shape[0]
    q = F.normalize(q, dim=1)
    keys = gather_no_grad(F.normalize(k.detach(), dim=1))  # keys: B x d over every process, in rank order
    logits = q @ keys.T / temperature  # logits: b x B
    return logits, torch.arange(b, device=q.device) + rank() * b


@fp32
def mocov3_loss(q: torch.Tensor, k: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """2 tau x cross-entropy of `mocov3_logits` over this process's b queries (Chen, Xie & He 2021, An Empirical
    Study of Training Self-Supervised Vision Transformers, eq. 1 and Algorithm 1; the reference code's
    `contrastive_loss`, facebookresearch/moco-v3 moco/builder.py).

    The factor 2 tau is the paper's and the reference's: the gradient of CE(q.k / tau) grows like 1 / tau, and
    the factor keeps its scale about the same whatever tau (ours: the reason; the factor is theirs). The
    symmetric loss of the paper is mocov3_loss(q1, k2) + mocov3_loss(q2, k1). On several processes each one
    averages over its own queries against every key; DDP's average of the gradients is then the gradient of
    the mean over the global batch, which is what one process computes on that batch.
    """
    return 2.0 * temperature * F.cross_entropy(*mocov3_logits(q, k, temperature))
