"""MoCo v2: a query encoder, a separate momentum key encoder, and a queue of negative keys."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ..distributed import gather_no_grad
from ..losses import embedding_std, info_nce_logits, top1
from ..models.heads import mlp_head
from ..views.recipes import moco_v2_views
from .base import Method, OptimDefaults
from .ema import EMATeacher
from .hparams import setting
from .registry import register


@register
class MoCo(Method):
    """backbone + projector (queries), their EMA copy (keys), InfoNCE against a queue."""

    name = "moco"
    aliases = ("mocov2", "moco_v2", "moco-v2")
    paper = ("Chen et al. 2020, Improved Baselines with Momentum Contrastive Learning (MoCo v2); "
             "He et al. 2020, Momentum Contrast for Unsupervised Visual Representation Learning (CVPR)")
    optimizers = {"sgd": OptimDefaults(lr=0.06, weight_decay=5e-4),
                  "lars": OptimDefaults(lr=0.3, weight_decay=1e-6),
                  "adamw": OptimDefaults(lr=1e-3, weight_decay=1e-6)}

    @dataclass
    class Hparams:
        temperature: float = setting(0.1, "softmax temperature of InfoNCE")
        proj_hidden: int = setting(2048, "projector hidden width")
        proj_dim: int = setting(128, "projector output width (the size of a queued key)")
        queue_size: int = setting(4096, "number of queued negative keys")
        momentum: float = setting(0.99, "key-encoder EMA momentum")
        momentum_schedule: Literal["constant", "cosine"] = setting(
            "constant", "'constant' (MoCo v2) or 'cosine' (from momentum up to 1, as BYOL)")
        symmetric: bool = setting(True, "symmetric loss: each view is the query for the other's key")

    def __init__(self, spec, hp, backbone):
        super().__init__(spec, hp, backbone)
        self.projector = mlp_head(self.backbone.feature_dim, hp.proj_hidden, hp.proj_dim)
        # The key encoder must be its own module: sharing it with the query encoder silently turns MoCo into
        # a stop-gradient-free Siamese net (the bug in the reference snippet).
        self.key_encoder = EMATeacher(self.backbone, self.projector, momentum=hp.momentum,
                                      schedule=hp.momentum_schedule)
        self.register_buffer("queue", F.normalize(torch.randn(hp.queue_size, hp.proj_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.view_recipe = moco_v2_views(spec.shape[-1], spec.mean, spec.std)

    def make_batch(self, x, generator):
        """Two independently augmented views of a uint8 batch."""
        return {"v1": self.view_recipe(x, generator), "v2": self.view_recipe(x, generator)}

    @torch.no_grad()
    def keys(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised keys from the momentum encoder: B x proj_dim."""
        return F.normalize(self.key_encoder(x).float(), dim=1)

    def forward(self, batch):
        """Loss and logs for one batch of view pairs; enqueues this batch's keys afterwards."""
        v1, v2, t = batch["v1"], batch["v2"], self.hp.temperature
        queue = self.queue.clone()  # queue: K x proj_dim, the negatives before this batch's keys go in
        if self.hp.symmetric:
            q = self.projector(self.backbone(torch.cat([v1, v2])))  # q: 2B x proj_dim
            q1, q2 = q.chunk(2)
            k1, k2 = self.keys(v1), self.keys(v2)  # k: B x proj_dim
            logits_a, targets = info_nce_logits(q1, k2, queue, t)  # logits: B x (1+K)
            logits_b, _ = info_nce_logits(q2, k1, queue, t)
            loss = 0.5 * (F.cross_entropy(logits_a, targets) + F.cross_entropy(logits_b, targets))
        else:
            q = self.projector(self.backbone(v1))
            k2 = self.keys(v2)
            logits_a, targets = info_nce_logits(q, k2, queue, t)
            loss = F.cross_entropy(logits_a, targets)
        self.enqueue(gather_no_grad(k2))
        return loss, {"pos_acc": top1(logits_a, targets), "q_std": embedding_std(q)}

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Replace the oldest entries of the ring-buffer queue by `keys` (wrapping around)."""
        size = self.queue.shape[0]
        n = min(keys.shape[0], size)
        idx = (self.queue_ptr + torch.arange(n, device=keys.device)) % size
        self.queue[idx] = keys[-n:].to(self.queue.dtype)
        self.queue_ptr.copy_((self.queue_ptr + n) % size)
