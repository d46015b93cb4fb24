"""Augmentation preview: originals beside their views, as a PNG a person can check."""
from __future__ import annotations

from pathlib import Path

import torch


def save_preview(images_uint8: torch.Tensor, recipe, path, n: int = 8, n_views: int = 2,
                 generator: torch.Generator | None = None, mean=(0.5,), std=(0.5,)) -> Path:
    """Write a grid: each row is an original image followed by `n_views` augmented views."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = images_uint8[:n].cpu()
    g = generator or torch.Generator().manual_seed(0)
    views = [recipe(x, g) for _ in range(n_views)]
    m = torch.as_tensor(mean).view(1, -1, 1, 1)
    s = torch.as_tensor(std).view(1, -1, 1, 1)
    views = [(v.float() * s + m).clamp(0, 1) for v in views]
    cols = [x.float() / 255] + views
    rows = x.shape[0]
    fig, axes = plt.subplots(rows, len(cols), figsize=(1.6 * len(cols), 1.6 * rows), squeeze=False)
    for r in range(rows):
        for c, col in enumerate(cols):
            img = col[r].permute(1, 2, 0).numpy()
            ax = axes[r][c]
            if img.shape[2] == 1:
                ax.imshow(img[:, :, 0], cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(img)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title("original" if c == 0 else f"view {c}", fontsize=9)
    fig.suptitle("Augmentation preview", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
