"""MoCo v2: a query encoder, a separate momentum key encoder, and a queue of negative keys.

Two presets of the settings (`--preset`): "cifar-demo" (the default) is the official MoCo CIFAR-10 demo
(facebookresearch/moco, colab/moco_cifar10_demo.ipynb), a recipe for small images on one GPU; "paper" is MoCo
v2's ImageNet recipe (Chen et al. 2020; He et al. 2020 for what v2 keeps of v1). A setting given explicitly
overrides its preset's value; the resolved values are what config.yaml records.
"""
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

DEMO = "the MoCo CIFAR-10 demo (facebookresearch/moco, colab/moco_cifar10_demo.ipynb)"
V1, V2 = "He et al. 2020 (MoCo)", "Chen et al. 2020 (MoCo v2)"
# preset -> the settings it fills in (where not given) and its SGD defaults. queue: the size before it is fitted
# to the data (at most half the training samples).
PRESETS = {
    "cifar-demo": dict(temperature=0.1, momentum=0.99, symmetric=True, key_bn_group=64, queue=4096,
                       sgd=OptimDefaults(lr=0.03, weight_decay=5e-4, source=f"{DEMO}: --lr 0.06 at its --batch-size "
                                         "512 (its comment: 'or 0.03 for batch 256'), --wd 5e-4, momentum 0.9")),
    "paper": dict(temperature=0.2, momentum=0.999, symmetric=False, key_bn_group=32, queue=65536,
                  sgd=OptimDefaults(lr=0.03, weight_decay=1e-4, source=f"{V2}, sec. 3: lr 0.03 at batch 256; {V1}, "
                                    "sec. 4: weight decay 1e-4, momentum 0.9")),
}
PRESET = "cifar-demo"  # the default


def per_preset(key: str) -> str:
    """'cifar-demo 0.1, paper 0.2': a setting's value under each preset, for its help."""
    return ", ".join(f"{name} {values[key]}" for name, values in PRESETS.items())


@register
class MoCo(Method):
    """backbone + projector (queries), their EMA copy (keys), InfoNCE against a queue.

    Defaults: the official CIFAR-10 demo's (preset "cifar-demo", for small images on one device); `--preset
    paper` gives MoCo v2's ImageNet values (temperature 0.2, momentum 0.999, sgd lr 0.03 per 256 and wd 1e-4,
    the asymmetric loss, a 65,536-key queue, key BatchNorm groups of 32 as on the paper's 8 GPUs). Each
    setting's source: `selfsup methods moco`.
    """

    name = "moco"
    aliases = ("mocov2", "moco_v2", "moco-v2")
    paper = (f"{V2}, Improved Baselines with Momentum Contrastive Learning; {V1}, Momentum Contrast for "
             "Unsupervised Visual Representation Learning (CVPR); defaults: the official MoCo CIFAR-10 demo "
             "(--preset paper: MoCo v2's ImageNet recipe)")
    optimizers = {"sgd": PRESETS[PRESET]["sgd"],
                  "lars": OptimDefaults(lr=0.3, weight_decay=1e-6, source="ours: SimCLR's LARS recipe (Chen et al. "
                                        "2020, SimCLR, sec. B.1); no MoCo paper uses LARS; not tuned for MoCo"),
                  "adamw": OptimDefaults(lr=1e-3, weight_decay=1e-6, source="ours: a common AdamW rate, with "
                                         "SimCLR's wd; no MoCo paper uses AdamW; not tuned")}

    @dataclass
    class Hparams:
        preset: Literal["cifar-demo", "paper"] = setting(
            PRESET, "where the defaults of temperature, momentum, symmetric, key_bn_group, queue_size and the sgd "
                    "lr/wd come from: 'cifar-demo' (small images) or 'paper' (MoCo v2 on ImageNet)",
            source=f"cifar-demo: {DEMO}; paper: {V2} and {V1}")
        temperature: float = setting(None, f"softmax temperature of InfoNCE ({per_preset('temperature')})",
                                     source=f"cifar-demo: the demo's --moco-t 0.1; paper: {V2}, sec. 3 (0.2 with "
                                            "the MLP head)")
        proj_hidden: int = setting(2048, "projector hidden width",
                                   source=f"{V2}, sec. 3: a 2-layer MLP head with a 2048-d hidden layer (the CIFAR "
                                          "demo has a linear 128-d head instead)")
        proj_dim: int = setting(128, "projector output width (the size of a queued key)",
                                source=f"{V1}, sec. 3.3 (128-D keys); the demo's --moco-dim 128")
        queue_size: int | None = setting(None, "number of queued negative keys; None: the preset's ("
                                               f"{per_preset('queue')}), or half the training samples when that is "
                                               "fewer (never more than all of them)",
                                         source=f"cifar-demo: the demo's --moco-k 4096 (it saturates there on "
                                                f"CIFAR-10); paper: {V1}, sec. 4 (K = 65536); the cap at half the "
                                                "data is ours (a larger queue holds an image's own last keys)")
        momentum: float = setting(None, f"key-encoder EMA momentum ({per_preset('momentum')})",
                                  source=f"cifar-demo: the demo's --moco-m 0.99; paper: {V1}, sec. 4.1 (m = 0.999, "
                                         "its momentum ablation)")
        momentum_schedule: Literal["constant", "cosine"] = setting(
            "constant", "'constant' (MoCo v2) or 'cosine' (from momentum up to 1, as BYOL)",
            source=f"{V2} and the demo: constant; cosine: Grill et al. 2020 (BYOL), sec. 3.2")
        symmetric: bool = setting(None, "symmetric loss: each view is the query for the other's key; both keys are "
                                        f"enqueued ({per_preset('symmetric')})",
                                  source="cifar-demo: the demo's --symmetric option (its table: kNN 85.3 vs 82.6 "
                                         f"asymmetric at 200 epochs); paper: asymmetric, as {V1} and {V2}")
        key_bn_group: int = setting(None, "samples per BatchNorm group of the key encoder (shuffle BN): the "
                                          "shuffled global batch is normalised in groups of this many, the same on "
                                          "any number of processes when it divides each process's batch; at most "
                                          f"half the global batch, at least 16 ({per_preset('key_bn_group')})",
                                    source="cifar-demo: the demo's --bn-splits 8 of its batch 512 (groups of 64); "
                                           f"paper: {V1}, sec. 3.3 (per-GPU BN, batch 256 on 8 GPUs: 32); the caps "
                                           "are ours (two groups at least, none under 16)")

        def __post_init__(self):
            if self.preset not in PRESETS:
                raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")
            for key, value in PRESETS[self.preset].items():  # settings not given take the preset's value
                if key in ("temperature", "momentum", "symmetric", "key_bn_group") and getattr(self, key) is None:
                    setattr(self, key, value)
            if self.queue_size is not None and self.queue_size < 1:
                raise ValueError(f"queue_size must be >= 1, got {self.queue_size}")
            for bad, what in ((self.key_bn_group < 2, "key_bn_group must be >= 2"),
                              (not 0 <= self.momentum <= 1, "momentum must be in [0, 1]"),
                              (self.temperature <= 0, "temperature must be > 0")):
                if bad:
                    raise ValueError(f"{what}, got {getattr(self, what.split()[0])}")

    @classmethod
    def optimizer_defaults(cls, hp):
        """The preset's SGD defaults (lars and adamw are the same under both presets)."""
        return {**cls.optimizers, "sgd": PRESETS[hp.preset]["sgd"]}

    @classmethod
    def fit_to_data(cls, hp, n, batch_size):
        """The default queue holds the preset's number of keys, or half as many as there are training samples: a
        queue as large as the data would hold each image's own keys from the last epoch, to be used as its
        negatives."""
        if hp.queue_size is None:
            return dataclasses.replace(hp, queue_size=max(1, min(PRESETS[hp.preset]["queue"], n // 2)))
        if hp.queue_size > n:
            raise SelfSupError(f"moco queue_size {hp.queue_size} exceeds the {n} training samples: images would meet "
                               f"their own earlier keys as negatives (use at most {n}; the default is "
                               f"{max(1, min(PRESETS[hp.preset]['queue'], n // 2))})")
        return hp

    def __init__(self, spec, hp, backbone):
        super().__init__(spec, hp, backbone)
        self.projector = mlp_head(self.backbone.feature_dim, hp.proj_hidden, hp.proj_dim)
        # The key encoder must be its own module: sharing it with the query encoder silently turns MoCo into
        # a stop-gradient-free Siamese net (the bug in the reference snippet).
        self.key_encoder = EMATeacher(self.backbone, self.projector, momentum=hp.momentum,
                                      schedule=hp.momentum_schedule)
        size = hp.queue_size or PRESETS[hp.preset]["queue"]
        self.register_buffer("queue", F.normalize(torch.randn(size, hp.proj_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.view_recipe = moco_v2_views(spec.shape[1:], spec.mean, spec.std)

    def make_batch(self, x, generator):
        """Two independently augmented views of a uint8 batch, and the shuffle of the keys' BatchNorm batches."""
        # key_perm shuffles the global batch (every process's rows); under torchrun rank 0's is used everywhere.
        return {**self.view_recipe.pair(x, generator),
                "key_perm": torch.randperm(x.shape[0] * world_size(), generator=generator, device=x.device)}

    def describe(self):
        source = DEMO if self.hp.preset == "cifar-demo" else f"{V2}'s ImageNet recipe"
        return (f"preset {self.hp.preset} ({source}); queue of {self.queue.shape[0]} keys; key BatchNorm in groups "
                f"of {self.hp.key_bn_group} samples (at most half the batch)")

    def key_groups(self, b: int) -> int:
        """How many key BatchNorm groups this process's b samples form (at least 1).

        The group size depends on the global batch B = b x processes only: key_bn_group, at most B / 2 (two
        groups at least) but not under 16. So one process at batch 512 and four at 128 both normalise 8 groups
        of 64 (the demo's 8 splits of 512); a group never spans two processes.
        """
        group = min(self.hp.key_bn_group, max(16, b * world_size() // 2))
        return max(1, b // group)

    @torch.no_grad()
    def keys(self, x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
        """Normalised keys from the momentum encoder, B x proj_dim, in the order of x.

        Shuffle BN (He et al. 2020, sec. 3.3): the global batch is permuted and split into groups (`key_groups`),
        each through the encoder on its own, so BatchNorm normalises every key with the statistics of a random
        group, never those of the whole query batch; the statistics cannot tell the model which key is whose.
        On one device this is the demo's split BN; under torchrun the shuffle spans every process (the
        reference's batch_shuffle_ddp): perm is over the global batch and each process encodes a random part of
        it, then the keys are unshuffled (see distributed.shuffled_apply).
        """
        k = shuffled_apply(self.key_encoder, x, perm, self.key_groups(x.shape[0]))
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
