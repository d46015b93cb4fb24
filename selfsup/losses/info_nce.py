"""InfoNCE with a queue of negatives (MoCo)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .precision import fp32


@fp32
def info_nce_logits(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor,
                    temperature: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, targets) of MoCo's loss: column 0 is each query's positive key, the rest the K queued keys.

    q, k: b x d (normalised here; k is a constant, the key encoder gets no gradient); queue: K x d of
    normalised keys from earlier batches. logits: b x (1+K) in fp32; targets: b zeros.
    """
    q = F.normalize(q, dim=1)
    k = F.normalize(k, dim=1).detach()
    pos = (q * k).sum(dim=1, keepdim=True)  # pos: b x 1
    neg = q @ queue.T  # neg: b x K
    logits = torch.cat([pos, neg], dim=1) / temperature  # logits: b x (1+K)
    return logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device)


@fp32
def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """MoCo's InfoNCE loss (He et al. 2020, eq. 1): cross-entropy of the positive against the queue."""
    return F.cross_entropy(*info_nce_logits(q, k, queue, temperature))
