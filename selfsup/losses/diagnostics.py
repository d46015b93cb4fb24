"""Training diagnostics that methods log beside the loss (pure functions, no gradient)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def top1(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Fraction of rows whose largest logit is the target: for contrastive logits, how often the positive
    is the most similar of all candidates (MoCo's reference code logs the same "Acc@1")."""
    return (logits.argmax(dim=1) == targets).float().mean()


@torch.no_grad()
def embedding_std(z: torch.Tensor) -> torch.Tensor:
    """Mean over dimensions of the batch std of L2-normalised embeddings (B x d).

    A collapsed representation gives 0; embeddings spread evenly over the sphere give about 1/sqrt(d)
    (SimSiam, Chen & He 2021, sec. 4.1, uses it to show collapse).
    """
    return F.normalize(z.detach().float(), dim=1).std(dim=0).mean()


@torch.no_grad()
def effective_rank(z: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """exp of the entropy of the normalised singular values of the L2-normalised embeddings z (N x d).

    Roy & Vetterli 2007 (The effective rank: a measure of effective dimensionality), as RankMe (Garrido et al.
    2023, eq. 1): p_k = s_k / sum(s) + eps, rank = exp(-sum_k p_k log p_k). Between 1 and min(N, d): 1 when every
    row is the same vector (a constant embedding: one non-zero singular value), min(N, d) when the singular
    values are all equal. The rows are not centred (as RankMe), so a constant embedding scores 1, not 0 / 0.
    """
    s = torch.linalg.svdvals(F.normalize(z.detach().float(), dim=1))
    p = s / s.sum().clamp(min=1e-12) + eps
    return torch.exp(-torch.special.xlogy(p, p).sum())  # 0 log 0 = 0
