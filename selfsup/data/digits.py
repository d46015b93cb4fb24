"""scikit-learn's bundled 8x8 handwritten digits, with a fixed stratified train/test split."""
from __future__ import annotations

import numpy as np
import torch

from selfsup.data.types import Dataset

CLASSES = [str(i) for i in range(10)]
TEST_SIZE = 0.3
SEED = 0


def load_digits(split: str = "train") -> Dataset:
    """Return the "train" (70%) or "test" (30%) part of sklearn's digits as (N,1,8,8) uint8."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    ds = sk_load_digits()
    # pixel values are 0..16; stretch to the full uint8 range
    images = np.round(ds.images * 255.0 / 16.0).astype(np.uint8)
    y = ds.target.astype(np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(y)), test_size=TEST_SIZE, stratify=y, random_state=SEED
    )
    idx = train_idx if split == "train" else test_idx
    return Dataset(
        x=torch.from_numpy(images[idx]).unsqueeze(1).contiguous(),
        labels=torch.from_numpy(y[idx]),
        classes=list(CLASSES),
        name=f"digits:{split}",
    )
