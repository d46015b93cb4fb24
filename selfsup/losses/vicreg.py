"""VICReg: invariance between two views, variance and covariance of each view over the global batch."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..distributed import gather
from .barlow import off_diagonal
from .precision import fp32


def variance_term(z: torch.Tensor, gamma: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """v(Z) = (1/d) sum_j max(0, gamma - sqrt(Var(z_j) + eps)), Var unbiased over the N rows (Bardes et al. 2022,
    eq. 1): a hinge on each dimension's std keeps the embeddings from collapsing to a point. z: N x d."""
    return F.relu(gamma - torch.sqrt(z.var(dim=0) + eps)).mean()


def covariance_term(z: torch.Tensor) -> torch.Tensor:
    """c(Z) = (1/d) sum_{i != j} C(Z)_ij^2, C(Z) = (1/(N-1)) sum_n (z_n - mean)(z_n - mean)^T (eq. 3 and 4):
    decorrelates the dimensions, so they do not all carry the same information. z: N x d."""
    z = z - z.mean(dim=0)
    cov = z.T @ z / (z.shape[0] - 1)  # cov: d x d
    return off_diagonal(cov).square().sum() / z.shape[1]


@fp32
def vicreg(z1: torch.Tensor, z2: torch.Tensor, sim: float = 25.0, var: float = 25.0, cov: float = 1.0,
           ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(loss, terms): lambda s(Z, Z') + mu [v(Z) + v(Z')] + nu [c(Z) + c(Z')] (Bardes et al. 2022, eq. 6),
    lambda = mu = 25, nu = 1 (sec. 4.2).

    z1, z2: b x d, this process's rows of the two views' embeddings. s is the mean squared distance per row and
    dimension (the reference code's F.mse_loss; eq. 5 sums over the d dimensions, the coefficients were set
    with the code's mean), over this process's rows: DDP's gradient average makes it the global mean. v and c
    are over the global batch of N rows, gathered with gradients (distributed.gather): a per-process variance
    and covariance are other statistics (lightly's default), and a plain all_reduce would hide gradients.
    v follows eq. 6 (the reference code halves the variance term; solo-learn does not). terms: the three
    unweighted parts, for the logs.
    """
    s = F.mse_loss(z1, z2)
    a, b = gather(z1), gather(z2)  # a, b: N x d over every process
    v = variance_term(a) + variance_term(b)
    c = covariance_term(a) + covariance_term(b)
    return sim * s + var * v + cov * c, {"invariance": s.detach(), "variance": v.detach(), "covariance": c.detach()}
