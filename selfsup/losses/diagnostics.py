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
