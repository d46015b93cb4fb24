"""NT-Xent (SimCLR): normalised-temperature cross-entropy over the global batch of view pairs."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..distributed import gather, rank
from .precision import fp32


@fp32
def nt_xent_logits(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, targets) of NT-Xent for this process's 2b anchors against the 2B views of the whole batch.

    z1[i] and z2[i] are the two views of sample i (b x d each, normalised here). logits: 2b x 2B in fp32,
    each anchor's own column masked to -inf; targets: 2b column indices of each anchor's other view.
    """
    b = z1.shape[0]
    z1 = F.normalize(z1, dim=1)
    z2 = F.normalize(z2, dim=1)
    all1, all2 = gather(z1), gather(z2)  # all: B x d over every process
    big_b = all1.shape[0]
    idx = torch.arange(b, device=z1.device) + rank() * b
    # Rows: local anchors. Columns: [other view of every sample | same view of every sample].
    logits1 = torch.cat([z1 @ all2.T, z1 @ all1.T], dim=1) / temperature  # logits1: b x 2B
    logits2 = torch.cat([z2 @ all1.T, z2 @ all2.T], dim=1) / temperature
    self_mask = F.one_hot(idx + big_b, 2 * big_b).bool()
    logits1 = logits1.masked_fill(self_mask, float("-inf"))
    logits2 = logits2.masked_fill(self_mask, float("-inf"))
    return torch.cat([logits1, logits2], dim=0), torch.cat([idx, idx])


@fp32
def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """Mean NT-Xent loss of this process's 2b anchors; each anchor's negatives are the other 2B-2 views.

    On one process this is SimCLR's loss exactly (Chen et al. 2020, eq. 1).
    """
    return F.cross_entropy(*nt_xent_logits(z1, z2, temperature))
