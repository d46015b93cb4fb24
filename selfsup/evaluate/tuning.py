"""Probe hyperparameters chosen by one rule for every row (ours, random init, raw input): on a validation
split carved, seeded and stratified, from the labelled training subset itself; the test split never decides.

A fair competitor would tune the raw-pixel baseline as carefully as the features it is compared with: cosine
kNN on Fashion-MNIST pixels gives 78.9% at the literature's k=200 but 86.1% at k=5.
"""
from __future__ import annotations

import torch

from .knn import capped_k, knn_predict_many
from .linear import fit_linear
from .subsets import stratified_holdout

KNN_KS = (1, 5, 10, 20, 50, 200)
L2_GRID = (1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5)  # strongest penalty first: each fit warm-starts the next
DEFAULT_L2 = 1e-3  # where the labels are too few to carve a validation split from
VAL_FRACTION = 0.2


def validation_split(labels: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(fit, val) indices: a seeded, class-balanced 20% for validation; None when a class has fewer than 2."""
    counts = torch.bincount(labels.detach().cpu().long())
    if int(counts[counts > 0].min()) < 2:
        return None
    fit, val = stratified_holdout(labels, VAL_FRACTION, seed)
    return fit.to(labels.device), val.to(labels.device)


def _first_best(scores: list[float]) -> int:
    """Index of the best score; ties go to the first (the smaller k, the stronger penalty)."""
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def knn_both(train_f, train_y, test_f, test_y, num_classes: int, k: int = 200, temperature: float = 0.1,
             seed: int = 0) -> dict:
    """kNN at the fixed protocol (k capped at the smallest class) and at the k chosen on validation.

    Returns knn (fixed), knn_k_fixed, knn_tuned and knn_k (the chosen k). One neighbour search on the test
    split serves both.
    """
    fixed_k = capped_k(train_y, k)
    split = validation_split(train_y, seed)
    if split is None:
        chosen = fixed_k
    else:
        fit, val = split
        preds = knn_predict_many(train_f[fit], train_y[fit], train_f[val], num_classes, KNN_KS, temperature)
        val_y = train_y[val].to(preds[KNN_KS[0]].device)
        chosen = KNN_KS[_first_best([(preds[c] == val_y).float().mean().item() for c in KNN_KS])]
    preds = knn_predict_many(train_f, train_y, test_f, num_classes, sorted({fixed_k, chosen}), temperature)
    test_y = test_y.to(preds[chosen].device)
    return dict(knn=(preds[fixed_k] == test_y).float().mean().item(), knn_k_fixed=fixed_k,
                knn_tuned=(preds[chosen] == test_y).float().mean().item(), knn_k=chosen)


def linear_tuned(train_f, train_y, test_f, test_y, num_classes: int, seed: int = 0) -> dict:
    """Logistic regression with the L2 penalty chosen on validation, refitted on the whole labelled subset.

    Returns linear (test accuracy) and linear_l2 (the chosen penalty, DEFAULT_L2 when untunable).
    """
    split = validation_split(train_y, seed)
    l2 = DEFAULT_L2
    if split is not None:
        fit, val = split
        clf, scores = None, []
        for penalty in L2_GRID:
            clf = fit_linear(train_f[fit], train_y[fit], num_classes, penalty, init=clf)
            scores.append(clf.accuracy(train_f[val], train_y[val]))
        l2 = L2_GRID[_first_best(scores)]
    final = fit_linear(train_f, train_y, num_classes, l2)
    return dict(linear=final.accuracy(test_f, test_y), linear_l2=l2)
