"""InfoNCE with a queue of negatives (MoCo)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .precision import fp32


@fp32
def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """MoCo's loss: each query's positive is its key; the negatives are the K queued keys.

    q, k: (b, d) (normalised here); queue: (K, d) of normalised keys from earlier batches.
    k is treated as a constant (the key encoder gets no gradient).
    """
    q = F.normalize(q, dim=1)
    k = F.normalize(k, dim=1).detach()
    pos = (q * k).sum(dim=1, keepdim=True)
    neg = q @ queue.T
    logits = torch.cat([pos, neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))
