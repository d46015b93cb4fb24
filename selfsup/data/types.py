"""The in-memory image dataset every source decodes to."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ImageData:
    """Decoded images (uint8, N×C×H×W) with optional labels, paths and class names."""

    images: torch.Tensor
    labels: torch.Tensor | None
    paths: list[str] | None = None
    classes: list[str] | None = None
    name: str = ""

    def __len__(self) -> int:
        """Number of images."""
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        """Number of classes: from the class names if known, else from the labels (0 if unlabeled)."""
        if self.classes:
            return len(self.classes)
        if self.labels is None or self.labels.numel() == 0:
            return 0
        return int(self.labels.max().item()) + 1

    def to(self, device: torch.device | str) -> "ImageData":
        """Return a copy with images and labels on `device`."""
        labels = None if self.labels is None else self.labels.to(device)
        return ImageData(self.images.to(device), labels, self.paths, self.classes, self.name)

    def subset(self, index: torch.Tensor) -> "ImageData":
        """Return the rows selected by `index` (integer indices or a boolean mask)."""
        index = torch.as_tensor(index)
        if index.dtype == torch.bool:
            index = index.nonzero().flatten()
        index = index.to(device=self.images.device, dtype=torch.long)
        labels = None if self.labels is None else self.labels[index.to(self.labels.device)]
        paths = None if self.paths is None else [self.paths[i] for i in index.tolist()]
        return ImageData(self.images[index].contiguous(), labels, paths, self.classes, self.name)
