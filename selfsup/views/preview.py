"""Augmentation preview: originals beside their views, as a PNG a person can check (headless, Agg)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch


def save_preview(images_uint8: torch.Tensor, recipe, path, n: int = 8, n_views: int = 2,
                 generator: torch.Generator | None = None, mean: Sequence[float] = (0.5,),
                 std: Sequence[float] = (0.5,), title: str = "Augmentation preview") -> Path:
    """Write a PNG grid: each row is one original image followed by `n_views` augmented views (a recipe with a
    `preview(x, generator)` method gives its own list of views instead: multi-crop's globals and locals).

    Views are de-normalised with (mean, std) back to [0,1] for display; one-channel images use a gray
    colormap. Uses matplotlib's Agg canvas directly (no pyplot state, works without a display).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    x = images_uint8[:n]
    if x.dim() == 3:
        x = x.unsqueeze(1)
    g = generator if generator is not None else torch.Generator(device=x.device).manual_seed(0)
    with torch.no_grad():
        if hasattr(recipe, "preview"):  # a recipe of several kinds of view (multi-crop) shows each kind
            views = [v.float().cpu() for v in recipe.preview(x, g)]
        else:
            views = [recipe(x, g).float().cpu() for _ in range(n_views)]
    m = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    views = [(v * s + m).clamp(0, 1) for v in views]
    cols = [x.cpu().float() / 255.0] + views
    rows = x.shape[0]

    fig = Figure(figsize=(1.6 * len(cols), 1.6 * rows + 0.4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, len(cols), squeeze=False)
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
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    return path
