"""MoCo v2: a query encoder, a separate momentum key encoder, and a queue of negative keys."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import gather_no_grad
from ..losses import info_nce
from ..models.heads import mlp_head
from ..views.recipes import moco_v2_views
from .ema import ema_update, momentum_copy


class MoCo(nn.Module):
    """backbone + projector (queries), EMA copies of both (keys), InfoNCE against a queue."""

    defaults = dict(optimizer="sgd", lr=0.06, weight_decay=5e-4, temperature=0.1, proj_hidden=2048, proj_dim=128,
                    queue_size=4096, momentum=0.99)

    def __init__(self, backbone: nn.Module, in_shape, mean, std, temperature: float = 0.1, proj_hidden: int = 2048,
                 proj_dim: int = 128, queue_size: int = 4096, momentum: float = 0.99, symmetric: bool = True, **_):
        super().__init__()
        self.backbone = backbone
        self.projector = mlp_head(backbone.feature_dim, proj_hidden, proj_dim)
        # The key encoder must be its own module: sharing it with the query encoder silently turns MoCo into
        # a stop-gradient-free Siamese net (the bug in the reference snippet).
        self.key_backbone = momentum_copy(backbone)
        self.key_projector = momentum_copy(self.projector)
        self.temperature = temperature
        self.momentum = momentum
        self.symmetric = symmetric
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, proj_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.views = moco_v2_views(in_shape[-1], mean, std)

    def make_views(self, x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Two independently augmented views of a uint8 batch."""
        return self.views(x, generator), self.views(x, generator)

    @torch.no_grad()
    def keys(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised keys from the momentum encoder."""
        return F.normalize(self.key_projector(self.key_backbone(x)).float(), dim=1)

    def forward(self, v1: torch.Tensor, v2: torch.Tensor):
        """Loss and logs for one batch of view pairs; enqueues this batch's keys afterwards."""
        queue = self.queue.clone()
        if self.symmetric:
            q = self.projector(self.backbone(torch.cat([v1, v2])))
            q1, q2 = q.chunk(2)
            k1, k2 = self.keys(v1), self.keys(v2)
            loss = 0.5 * (info_nce(q1, k2, queue, self.temperature) + info_nce(q2, k1, queue, self.temperature))
        else:
            q1 = self.projector(self.backbone(v1))
            k2 = self.keys(v2)
            loss = info_nce(q1, k2, queue, self.temperature)
        self.enqueue(gather_no_grad(k2))
        return loss, {}

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Replace the oldest entries of the ring-buffer queue by `keys` (wrapping around)."""
        size = self.queue.shape[0]
        n = min(keys.shape[0], size)
        idx = (self.queue_ptr + torch.arange(n, device=keys.device)) % size
        self.queue[idx] = keys[-n:].to(self.queue.dtype)
        self.queue_ptr.copy_((self.queue_ptr + n) % size)

    @torch.no_grad()
    def on_step_end(self, progress: float) -> None:
        """Move the key encoder towards the query encoder (after the optimizer step)."""
        ema_update(self.key_backbone, self.backbone, self.momentum)
        ema_update(self.key_projector, self.projector, self.momentum)
