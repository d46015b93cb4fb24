"""Barlow Twins: the cross-correlation of two views' embeddings over the global batch, pushed to the identity."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..losses import barlow_twins, embedding_std
from ..models.heads import mlp_head
from ..views.recipes import simclr_views
from .base import Method, OptimDefaults
from .hparams import setting
from .registry import register


@register
class BarlowTwins(Method):
    """backbone + 3-layer projector + Barlow Twins' redundancy-reduction loss."""

    name = "barlow_twins"
    aliases = ("barlow", "barlowtwins", "barlow-twins")
    paper = "Zbontar et al. 2021, Barlow Twins: Self-Supervised Learning via Redundancy Reduction (ICML)"
    sync_bn = True  # the reference converts every BatchNorm to SyncBatchNorm
    optimizers = {"lars": OptimDefaults(lr=0.3, weight_decay=1e-4, source="solo-learn's CIFAR recipe "
                                        "(scripts/pretrain/cifar/barlow.yaml): LARS, lr 0.3 per 256, wd 1e-4 (the "
                                        "paper: LARS, lr 0.2 per 256 for the weights, wd 1.5e-6, batches of 2048, "
                                        "Zbontar et al. 2021, sec. 2)")}

    @dataclass
    class Hparams:
        proj_hidden: int = setting(2048, "projector hidden width",
                                   source="solo-learn's CIFAR recipe (cifar/barlow.yaml proj_hidden_dim 2048; the "
                                          "paper: 8192 on ImageNet, Zbontar et al. 2021, sec. 2)")
        proj_dim: int = setting(2048, "projector output width, the size of the cross-correlation matrix",
                                source="solo-learn's CIFAR recipe (cifar/barlow.yaml proj_output_dim 2048; the "
                                       "paper: 8192 on ImageNet, Zbontar et al. 2021, sec. 2)")
        lambd: float = setting(0.0051, "weight of the off-diagonal terms",
                               source="Zbontar et al. 2021, sec. 2 and the reference code (--lambd 0.0051), also "
                                      "solo-learn's CIFAR default (lightly uses 5e-3)")
        scale_loss: float = setting(0.1, "factor on the whole loss",
                                    source="solo-learn's CIFAR recipe (cifar/barlow.yaml scale_loss 0.1; the paper "
                                           "has no such factor, i.e. 1)")

        def __post_init__(self):
            if min(self.proj_hidden, self.proj_dim) < 1 or self.lambd < 0 or self.scale_loss <= 0:
                raise ValueError("the projector widths must be >= 1, lambd >= 0 and scale_loss > 0")

    def __init__(self, spec, hp, backbone):
        super().__init__(spec, hp, backbone)
        # Sec. 2: three linear layers, BN and ReLU after the first two (one BatchNorm module each).
        self.projector = mlp_head(self.backbone.feature_dim, hp.proj_hidden, hp.proj_dim, layers=3)
        self.view_recipe = simclr_views(spec.shape[1:], spec.mean, spec.std)

    def make_batch(self, x, generator):
        """Two independently augmented views of a uint8 batch."""
        return self.view_recipe.pair(x, generator)

    def forward(self, batch):
        z1 = self.projector(self.backbone(batch["v1"]))  # z: b x proj_dim; each view through BN on its own
        z2 = self.projector(self.backbone(batch["v2"]))
        loss = barlow_twins(z1, z2, self.hp.lambd, self.hp.scale_loss)  # over the global batch (gathered)
        return loss, {"z_std": embedding_std(torch.cat([z1, z2]))}
