"""Online kNN accuracy of the encoder during pretraining."""
from __future__ import annotations

import torch

from ..data import Dataset
from ..evaluate.features import extract_features
from ..evaluate.knn import capped_k, knn_accuracy


class KNNMonitor:
    """Weighted kNN (k=200 capped at the smallest class in the bank, T=0.1) of a bank against queries, on frozen
    features; labels stay on the device."""

    def __init__(self, bank: Dataset, queries: Dataset, device: torch.device, k: int = 200, temperature: float = 0.1):
        self.bank, self.queries = bank, queries
        self.device = device
        self.k, self.temperature = capped_k(bank.labels, k), temperature
        self.num_classes = int(max(bank.labels.max(), queries.labels.max())) + 1

    def __call__(self, encoder: torch.nn.Module) -> float:
        fb = extract_features(encoder, self.bank.x, self.device)
        fq = extract_features(encoder, self.queries.x, self.device)
        return knn_accuracy(fb, self.bank.labels.to(self.device), fq, self.queries.labels.to(self.device),
                            self.num_classes, k=self.k, temperature=self.temperature)
