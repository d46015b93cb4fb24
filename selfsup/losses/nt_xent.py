"""NT-Xent (SimCLR): normalised-temperature cross-entropy over the global batch of view pairs."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..distributed import gather, rank
from .precision import fp32


@fp32
def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """Mean NT-Xent loss of this process's 2b anchors against the 2B views of the whole (gathered) batch.

    z1[i] and z2[i] are the two views of sample i. Each anchor's positive is its other view; the
    negatives are the other 2B-2 views. On one process this is SimCLR's loss exactly.
    """
    b = z1.shape[0]
    z1 = F.normalize(z1, dim=1)
    z2 = F.normalize(z2, dim=1)
    all1, all2 = gather(z1), gather(z2)
    big_b = all1.shape[0]
    idx = torch.arange(b, device=z1.device) + rank() * b
    # Rows: local anchors. Columns: [other view of every sample | same view of every sample].
    logits1 = torch.cat([z1 @ all2.T, z1 @ all1.T], dim=1) / temperature
    logits2 = torch.cat([z2 @ all1.T, z2 @ all2.T], dim=1) / temperature
    self_mask = F.one_hot(idx + big_b, 2 * big_b).bool()
    logits1 = logits1.masked_fill(self_mask, float("-inf"))
    logits2 = logits2.masked_fill(self_mask, float("-inf"))
    logits = torch.cat([logits1, logits2], dim=0)
    return F.cross_entropy(logits, torch.cat([idx, idx]))
