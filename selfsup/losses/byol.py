"""BYOL's regression loss and SimSiam's negative cosine: a prediction against a stop-gradient target."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .precision import fp32


@fp32
def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Mean over the b rows of ||p/|p| - z/|z|||^2 = 2 - 2 cos(p, z) (Grill et al. 2020, BYOL, eq. 2).

    p: b x d, the online network's prediction of one view; z: b x d, the target network's projection of the
    other view. z is a constant (the target takes no gradient, sec. 3.1: it is detached here too, so a caller
    that forgets no_grad cannot train it). The symmetric loss of the paper (eq. 2, L + L~) is the sum of two
    calls with the views swapped. Per-row terms, averaged over this process's rows: under DDP the average of
    the processes' gradients is the gradient of the global-batch mean.
    """
    return (2.0 - 2.0 * F.cosine_similarity(p, z.detach(), dim=1)).mean()


@fp32
def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """D(p, z) = -mean over the b rows of cos(p, stopgrad(z)) (Chen & He 2021, SimSiam, eq. 1 and 3).

    p: b x d, the predictor's output for one view; z: b x d, the projection of the other view. The stop-gradient
    on z is what keeps SimSiam from collapsing (sec. 4.1: without it the loss reaches -1 at once); the
    symmetrised loss (eq. 4) is D(p1, z2)/2 + D(p2, z1)/2. Its minimum, -1, is also what a collapsed
    representation reaches: log the embeddings' std beside it (losses.embedding_std).
    """
    return -F.cosine_similarity(p, z.detach(), dim=1).mean()
