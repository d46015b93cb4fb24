"""Weighted k-nearest-neighbour classifier on cosine similarity (InstDisc / DINO protocol)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_predict_many(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, num_classes: int,
                     ks: Sequence[int], temperature: float = 0.1, chunk_size: int = 1024) -> dict[int, torch.Tensor]:
    """Predicted classes (M,) for every k in `ks`, from one nearest-neighbour search.

    Features are L2-normalised; each of the top-k most cosine-similar training rows (k capped at N_train)
    votes ``exp(sim / temperature)`` for its class; the class with the largest summed vote wins. The
    neighbours are found once for the largest k and sorted, so every smaller k reads a prefix of them.
    Runs on ``train_f``'s device, chunked over test rows.
    """
    device = train_f.device
    bank = F.normalize(train_f.float(), dim=1)
    bank_y = train_y.to(device).long()
    caps = {k: max(1, min(int(k), bank.shape[0])) for k in ks}
    preds: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    for start in range(0, test_f.shape[0], chunk_size):
        q = F.normalize(test_f[start:start + chunk_size].to(device).float(), dim=1)
        sim, idx = (q @ bank.T).topk(max(caps.values()), dim=1)  # sorted, most similar first
        # exp(sim/T) rescaled by the row's largest weight: same argmax, no overflow for small T.
        w = ((sim - sim[:, :1]) / temperature).exp()
        for k, kk in caps.items():
            votes = torch.zeros(q.shape[0], num_classes, device=device, dtype=w.dtype)
            votes.scatter_add_(1, bank_y[idx[:, :kk]], w[:, :kk])
            preds[k].append(votes.argmax(dim=1))
    return {k: torch.cat(p) if p else torch.empty(0, dtype=torch.long, device=device) for k, p in preds.items()}


def knn_predict(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, num_classes: int,
                k: int = 200, temperature: float = 0.1, chunk_size: int = 1024) -> torch.Tensor:
    """Predicted class (M,) for each test row with `k` neighbours (see :func:`knn_predict_many`)."""
    return knn_predict_many(train_f, train_y, test_f, num_classes, (k,), temperature, chunk_size)[k]


def knn_accuracy(train_f, train_y, test_f, test_y, num_classes: int, k: int = 200,
                 temperature: float = 0.1) -> float:
    """Accuracy in [0, 1] of :func:`knn_predict` on ``(test_f, test_y)``."""
    pred = knn_predict(train_f, train_y, test_f, num_classes, k=k, temperature=temperature)
    return (pred == test_y.to(pred.device)).float().mean().item()


def capped_k(labels: torch.Tensor, k: int = 200) -> int:
    """k capped at the smallest class's count among `labels` (the bank): with k=200 over classes of 50, most
    votes would come from other classes. The literature's k=200 stands wherever classes are larger."""
    counts = torch.bincount(labels.detach().cpu().long())
    return max(1, min(int(k), int(counts[counts > 0].min())))
