"""Choosing the layer to probe (`--layer best`) on a validation split carved from the training labels.

The rule is the one that tunes k and the L2 penalty (evaluate/tuning.py), and it runs per label fraction on
that fraction's own labelled subset (evaluate/report.py): a seeded, class-balanced 20% of the subset validates,
the rest fits, and the test split never decides; a 1% row's layer is chosen with its 1% of labels, not more.
Above SELECT_SAMPLES labels a seeded class-balanced part of the subset is used (the 100% row), for time. It
takes only training data: there is no argument a test split could come in by.
"""
from __future__ import annotations

import torch

from ..data.splits import class_balanced_subset
from ..device import autocast
from ..errors import SelfSupError
from .knn import knn_predict_many
from .tuning import KNN_KS, _first_best, search_l2, validation_split

SELECT_SAMPLES = 10_000  # the layer is chosen on at most this many of a subset's labelled samples (seconds on a CPU)
CRITERIA = ("linear", "knn")


@torch.no_grad()
def extract_layers(encoder, x: torch.Tensor, device, batch_size: int = 512) -> dict[str, torch.Tensor]:
    """{layer: (N, D) float32 on device}: every layer of an ``Encoder`` for the raw samples x, in one pass per
    batch, in eval mode (BatchNorm's running statistics; the encoder's mode is restored afterwards)."""
    device = torch.device(device)
    was_training = encoder.training
    encoder.eval()
    try:
        parts: dict[str, list[torch.Tensor]] = {n: [] for n in encoder.layers()}
        for start in range(0, x.shape[0], batch_size):
            with autocast(device):
                outs = encoder.all_layers(x[start:start + batch_size].to(device, non_blocking=True))
            for n, v in outs.items():
                parts[n].append(v.float())
        return {n: torch.cat(v) for n, v in parts.items()}
    finally:
        encoder.train(was_training)


def _linear_score(f: torch.Tensor, y: torch.Tensor, fit: torch.Tensor, val: torch.Tensor, num_classes: int) -> float:
    """Best validation accuracy over the L2 grid, extended past a winning edge (tuning.search_l2, the search
    that tunes the probe itself)."""
    search = search_l2(f[fit], y[fit], f[val], y[val], num_classes)
    return search["scores"][search["l2"]]


def _knn_score(f: torch.Tensor, y: torch.Tensor, fit: torch.Tensor, val: torch.Tensor, num_classes: int) -> float:
    """Best validation accuracy over the k grid (cosine kNN, T=0.1)."""
    preds = knn_predict_many(f[fit], y[fit], f[val], num_classes, KNN_KS, 0.1)
    return max((p == y[val].to(p.device)).float().mean().item() for p in preds.values())


def choose_layer(encoder, train_x: torch.Tensor, train_y: torch.Tensor, num_classes: int, device, *,
                 by: str = "linear", seed: int = 0, max_samples: int = SELECT_SAMPLES) -> dict:
    """The layer of `encoder` whose features validate best, from training samples only.

    A seeded class-balanced subset of at most `max_samples` of (train_x, train_y) is split 80/20 (fit /
    validation, :func:`tuning.validation_split`); each layer scores its best validation accuracy over the
    probe's own grid (L2 for `by="linear"`, k for `by="knn"`). Ties go to the deeper layer, "pooled" first, so
    a layer must validate strictly better to replace the default. With a class of fewer than 2 labelled
    samples there is no validation split: the default layer ("pooled"), with no scores.

    Returns {"layer": name, "by": by, "scores": {layer: validation accuracy}, "samples": n, "validation": m}.
    """
    if by not in CRITERIA:
        raise SelfSupError(f"layer selection by {by!r}: choose from {', '.join(CRITERIA)}")
    train_y = train_y.long()
    n = int(train_y.shape[0])
    sub = class_balanced_subset(train_y.cpu(), min(1.0, max_samples / max(1, n)), seed)
    y = train_y.cpu()[sub].to(device)
    split = validation_split(y, seed)
    if split is None:  # nothing to validate on (as k and L2 then keep their defaults): the default layer
        return dict(layer=encoder.layers()[-1], by=by, scores={}, samples=int(len(sub)), validation=0)
    fit, val = split
    feats = extract_layers(encoder, train_x[sub.to(train_x.device)], device)
    score = _linear_score if by == "linear" else _knn_score
    order = list(reversed(encoder.layers()))  # deepest first: ties keep the default
    scores = {name: score(feats[name], y, fit, val, num_classes) for name in order}
    best = order[_first_best([scores[name] for name in order])]
    return dict(layer=best, by=by, scores={n: scores[n] for n in encoder.layers()}, samples=int(len(sub)),
                validation=int(len(val)))
