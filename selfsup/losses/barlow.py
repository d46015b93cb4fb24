"""Barlow Twins: the cross-correlation of two views' embeddings over the global batch, pushed to the identity."""
from __future__ import annotations

import torch

from ..distributed import gather
from .precision import fp32


def off_diagonal(c: torch.Tensor) -> torch.Tensor:
    """The d*(d-1) off-diagonal entries of a square d x d matrix, as one vector."""
    d = c.shape[0]
    return c.flatten()[:-1].view(d - 1, d + 1)[:, 1:].flatten()


def standardize(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """(z - mean) / sqrt(var + eps) per column over the N rows, var biased: BatchNorm1d(affine=False) in
    training mode, the normalisation of Barlow Twins' reference code (eps 1e-5, BatchNorm's default)."""
    mean = z.mean(dim=0)
    var = (z - mean).square().mean(dim=0)
    return (z - mean) * torch.rsqrt(var + eps)


@fp32
def barlow_twins(z1: torch.Tensor, z2: torch.Tensor, lambd: float = 0.0051, scale: float = 1.0,
                 eps: float = 1e-5) -> torch.Tensor:
    """scale * (sum_i (1 - C_ii)^2 + lambd * sum_i sum_{j != i} C_ij^2) (Zbontar et al. 2021, eq. 1).

    z1, z2: b x d, this process's rows of the two views' embeddings. C (d x d) is the cross-correlation over the
    global batch of N rows (eq. 2): C_ij = sum_n za_ni zb_nj / (sqrt(sum_n za_ni^2) sqrt(sum_n zb_nj^2)) with
    each column centred over the batch, which is (1/N) standardize(z1)^T standardize(z2) up to `eps`.
    Every process gathers all N rows (distributed.gather: autograd-aware, its backward sums the gradients of
    every process's copy of the loss) and computes the same loss; DDP's average of the gradients is then the
    gradient of that one loss. A plain all_reduce of C instead, which autograd cannot see, leaves gradients
    1/world_size too small (lightly #1977); normalising before gathering would use per-process statistics.
    lambd 0.0051: the paper's (sec. 2, appendix); `scale` multiplies the whole loss (solo-learn's scale_loss).
    """
    a, b = standardize(gather(z1), eps), standardize(gather(z2), eps)  # a, b: N x d over every process
    c = a.T @ b / a.shape[0]  # c: d x d
    on_diag = (1.0 - torch.diagonal(c)).square().sum()
    off_diag = off_diagonal(c).square().sum()
    return scale * (on_diag + lambd * off_diag)
