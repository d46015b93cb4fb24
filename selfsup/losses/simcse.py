"""Unsupervised SimCSE's contrastive loss (Gao, Yao & Chen 2021): each sentence against every second view."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..distributed import gather, rank
from .precision import fp32


@fp32
def simcse_logits(h1: torch.Tensor, h2: torch.Tensor, temperature: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, targets) of SimCSE for this process's b sentences against the B second views of the global batch.

    h1[i], h2[i]: the two dropout passes of sentence i, b x d each. logits: b x B in fp32, the cosine
    similarity of h1[i] and h2[j] over the temperature; targets: each row's own second view (its global index).

    Why not NT-Xent: SimCSE's eq. 4 takes h1[i] as the only anchor and the second views h2[j] as the only
    candidates (the reference code's `cos_sim(z1, z2)` with labels arange(B)); NT-Xent also makes h2 an anchor
    and adds the same-view rows as negatives, a different loss. Why only h2 is gathered: with the local anchors
    against the gathered keys, the gather's backward (summed over processes) and DDP's gradient average give
    the gradient of the global-batch mean loss, exactly one process's on the global batch.
    """
    b = h1.shape[0]
    h1 = F.normalize(h1, dim=1)
    keys = gather(F.normalize(h2, dim=1))  # keys: B x d over every process, gradients flowing back
    logits = h1 @ keys.T / temperature  # logits: b x B
    return logits, torch.arange(b, device=h1.device) + rank() * b


@fp32
def simcse_loss(h1: torch.Tensor, h2: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    """Mean unsupervised SimCSE loss of this process's b sentences (Gao et al. 2021, eq. 4):

        l_i = -log( exp(sim(h1_i, h2_i) / t) / sum_j exp(sim(h1_i, h2_j) / t) ),  j over the global batch,

    sim the cosine similarity, t = 0.05 in the paper (sec. 3; appendix D's table of temperatures).
    On one process this is eq. 4 over the batch; on several, the global batch's (see `simcse_logits`).
    """
    return F.cross_entropy(*simcse_logits(h1, h2, temperature))
