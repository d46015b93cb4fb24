"""MoCo v2: a query encoder, a separate momentum key encoder, and a queue of negative keys."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ..distributed import gather_no_grad, shuffled_apply, world_size
from ..errors import SelfSupError
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
        queue_size: int | None = setting(None, "number of queued negative keys; None: 4096, or half the training "
                                                "samples when that is fewer (never more than all of them)")
        momentum: float = setting(0.99, "key-encoder EMA momentum")
        momentum_schedule: Literal["constant", "cosine"] = setting(
            "constant", "'constant' (MoCo v2) or 'cosine' (from momentum up to 1, as BYOL)")
        symmetric: bool = setting(True, "symmetric loss: each view is the query for the other's key; both keys are "
                                        "enqueued")
        key_bn_splits: int = setting(8, "the key encoder's BatchNorm runs on this many shuffled sub-batches (of 16 "
                                        "or more), so a key never shares its query's batch statistics (1: off)")

        def __post_init__(self):
            if self.queue_size is not None and self.queue_size < 1:
                raise ValueError(f"queue_size must be >= 1, got {self.queue_size}")
            for bad, what in ((self.key_bn_splits < 1, "key_bn_splits must be >= 1"),
                              (not 0 <= self.momentum <= 1, "momentum must be in [0, 1]"),
                              (self.temperature <= 0, "temperature must be > 0")):
                if bad:
                    raise ValueError(f"{what}, got {getattr(self, what.split()[0])}")

    @classmethod
    def fit_to_data(cls, hp, n, batch_size):
        """The default queue holds 4096 keys, or half as many as there are training samples: a queue as large as
        the data would hold each image's own keys from the last epoch, to be used as its negatives."""
        if hp.queue_size is None:
            return dataclasses.replace(hp, queue_size=max(1, min(4096, n // 2)))
        if hp.queue_size > n:
            raise SelfSupError(f"moco queue_size {hp.queue_size} exceeds the {n} training samples: images would meet "
                               f"their own earlier keys as negatives (use at most {n}; the default is {max(1, n // 2)})")
        return hp

    def __init__(self, spec, hp, backbone):
        super().__init__(spec, hp, backbone)
        self.projector = mlp_head(self.backbone.feature_dim, hp.proj_hidden, hp.proj_dim)
        # The key encoder must be its own module: sharing it with the query encoder silently turns MoCo into
        # a stop-gradient-free Siamese net (the bug in the reference snippet).
        self.key_encoder = EMATeacher(self.backbone, self.projector, momentum=hp.momentum,
                                      schedule=hp.momentum_schedule)
        self.register_buffer("queue", F.normalize(torch.randn(hp.queue_size or 4096, hp.proj_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.view_recipe = moco_v2_views(spec.shape[1:], spec.mean, spec.std)

    def make_batch(self, x, generator):
        """Two independently augmented views of a uint8 batch, and the shuffle of the keys' BatchNorm batches."""
        # key_perm shuffles the global batch (every process's rows); under torchrun rank 0's is used everywhere.
        return {"v1": self.view_recipe(x, generator), "v2": self.view_recipe(x, generator),
                "key_perm": torch.randperm(x.shape[0] * world_size(), generator=generator, device=x.device)}

    def describe(self):
        return f"queue of {self.queue.shape[0]} keys"

    @torch.no_grad()
    def keys(self, x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
        """Normalised keys from the momentum encoder, B x proj_dim, in the order of x.

        Shuffle BN on one device (He et al. 2020, sec. 3.3): the batch is permuted and split into sub-batches,
        each through the encoder on its own, so BatchNorm normalises every key with the statistics of a random
        group, never those of the whole query batch; the statistics cannot tell the model which key is whose.
        Under torchrun the shuffle spans every process (the reference's batch_shuffle_ddp): perm is over the
        global batch and each process encodes a random part of it (see distributed.shuffled_apply).
        """
        splits = max(1, min(self.hp.key_bn_splits, x.shape[0] // 16))
        if world_size() > 1:
            return F.normalize(shuffled_apply(self.key_encoder, x, perm, splits).float(), dim=1)
        shuffled = torch.cat([self.key_encoder(chunk) for chunk in x[perm].chunk(splits)])
        k = torch.empty_like(shuffled)
        k[perm] = shuffled  # unshuffle
        return F.normalize(k.float(), dim=1)

    def forward(self, batch):
        """Loss and logs for one batch of view pairs; enqueues this batch's keys afterwards."""
        v1, v2, perm, t = batch["v1"], batch["v2"], batch["key_perm"], self.hp.temperature
        queue = self.queue.clone()  # queue: K x proj_dim, the negatives before this batch's keys go in
        if self.hp.symmetric:
            q = self.projector(self.backbone(torch.cat([v1, v2])))  # q: 2B x proj_dim
            q1, q2 = q.chunk(2)
            k1, k2 = self.keys(v1, perm), self.keys(v2, perm)  # k: B x proj_dim
            logits_a, targets = info_nce_logits(q1, k2, queue, t)  # logits: B x (1+K)
            logits_b, _ = info_nce_logits(q2, k1, queue, t)
            loss = 0.5 * (F.cross_entropy(logits_a, targets) + F.cross_entropy(logits_b, targets))
            new_keys = torch.stack([k1, k2])  # both keys (2 x B x d), after both terms used the old queue
        else:
            q = self.projector(self.backbone(v1))
            k = self.keys(v2, perm)
            logits_a, targets = info_nce_logits(q, k, queue, t)
            loss = F.cross_entropy(logits_a, targets)
            new_keys = k[None]
        # Keys of every process, in the order one process would enqueue the global batch: all k1, then all k2.
        views, b, d = new_keys.shape
        all_keys = gather_no_grad(new_keys.reshape(views * b, d)).view(-1, views, b, d)  # W x views x b x d
        self.enqueue(all_keys.transpose(0, 1).reshape(-1, d))
        return loss, {"pos_acc": top1(logits_a, targets), "q_std": embedding_std(q)}

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Replace the oldest entries of the ring-buffer queue by `keys` (wrapping around)."""
        size = self.queue.shape[0]
        n = min(keys.shape[0], size)
        idx = (self.queue_ptr + torch.arange(n, device=keys.device)) % size
        self.queue[idx] = keys[-n:].to(self.queue.dtype)
        self.queue_ptr.copy_((self.queue_ptr + n) % size)
