"""Seeded splits of a data set's sample indices: class-balanced label subsets (low-label evaluation), stratified
holdouts, the holdout a run sets aside before pretraining, and evaluation's (train, test) splits."""
from __future__ import annotations

import torch

from selfsup.data.types import Dataset
from selfsup.errors import SelfSupError


def class_balanced_subset(labels: torch.Tensor, fraction: float, seed: int = 0) -> torch.Tensor:
    """Sorted indices taking ``max(1, round(fraction * n_c))`` samples of every class c (seeded, deterministic).

    ``fraction == 1.0`` returns every index. Indices live on ``labels``' device.
    """
    if not 0.0 < fraction <= 1.0:
        raise SelfSupError(f"label fraction must be in (0, 1], got {fraction}")
    y = labels.detach().cpu().long()
    if fraction >= 1.0:
        return torch.arange(y.shape[0], device=labels.device)
    gen = torch.Generator().manual_seed(seed)
    chosen = []
    for c in torch.unique(y).tolist():
        idx = (y == c).nonzero(as_tuple=True)[0]
        take = max(1, round(fraction * idx.numel()))
        chosen.append(idx[torch.randperm(idx.numel(), generator=gen)[:take]])
    return torch.cat(chosen).sort().values.to(labels.device)


def stratified_holdout(labels: torch.Tensor, fraction: float = 0.2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) indices: a seeded class-balanced `fraction` held out as test, the rest for training."""
    test = class_balanced_subset(labels, fraction, seed).cpu()
    return complement(labels.shape[0], test), test


def eval_splits(train: Dataset, test: Dataset | None, seed: int = 0) -> tuple[Dataset, Dataset, str]:
    """(train, test, note): the source's own labelled test split, else a seeded stratified 80/20 holdout of train."""
    if test is not None and test.labels is not None:
        return train, test, "the source's own test split"
    train_idx, test_idx = stratified_holdout(train.labels, 0.2, seed)
    return train.subset(train_idx), train.subset(test_idx), "seeded stratified 80/20 holdout of the labelled data"


def holdout_indices(labels: torch.Tensor | None, n: int, fraction: float, seed: int = 0) -> torch.Tensor:
    """Sorted indices of a seeded holdout of `fraction` of n samples: class-balanced where labels exist."""
    if labels is not None:
        return stratified_holdout(labels, fraction, seed)[1]
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:max(1, round(fraction * n))].sort().values


def complement(n: int, index: torch.Tensor) -> torch.Tensor:
    """The sorted indices in range(n) that are not in `index`."""
    keep = torch.ones(n, dtype=torch.bool)
    keep[index] = False
    return keep.nonzero(as_tuple=True)[0]
