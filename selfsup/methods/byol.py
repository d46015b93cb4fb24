"""BYOL: an online network predicts a slowly moving (EMA) target network's projection of another view."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..losses import byol_loss, embedding_std
from ..models.global_bn import follow_global_bn
from ..models.heads import mlp_head
from ..views.recipes import simclr_views
from .base import Method, OptimDefaults
from .ema import EMATeacher
from .hparams import setting
from .registry import register


@register
class BYOL(Method):
    """backbone + projector + predictor (online), an EMA copy of backbone + projector (target), symmetric loss."""

    name = "byol"
    paper = "Grill et al. 2020, Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning (NeurIPS)"
    # BatchNorm over the global batch in both networks, as the reference's cross-replica BN (sec. 3.3, app. C).
    sync_bn = True
    optimizers = {"lars": OptimDefaults(lr=1.0, weight_decay=1e-5, source="solo-learn's CIFAR recipe "
                                        "(scripts/pretrain/cifar/byol.yaml): LARS, lr 1.0 per 256, wd 1e-5 (the "
                                        "paper: LARS, lr 0.2 per 256, wd 1.5e-6, batches of 4096, Grill et al. "
                                        "2020, sec. 3.3)")}

    @dataclass
    class Hparams:
        proj_hidden: int = setting(4096, "projector hidden width",
                                   source="Grill et al. 2020, sec. 3.3: a hidden layer of 4096 (also solo-learn's "
                                          "CIFAR recipe, cifar/byol.yaml proj_hidden_dim)")
        proj_dim: int = setting(256, "projector and predictor output width",
                                source="Grill et al. 2020, sec. 3.3: an output of 256 (also solo-learn's CIFAR "
                                       "recipe, cifar/byol.yaml proj_output_dim)")
        pred_hidden: int = setting(4096, "predictor hidden width",
                                   source="Grill et al. 2020, sec. 3.3: the predictor has the projector's "
                                          "architecture (also solo-learn's CIFAR recipe, cifar/byol.yaml "
                                          "pred_hidden_dim)")
        momentum: float = setting(0.99, "target EMA momentum at the first step, raised to 1 by the last step of the "
                                        "run on a cosine",
                                  source="solo-learn's CIFAR recipe (scripts/pretrain/cifar/byol.yaml): base_tau "
                                         "0.99, final_tau 1.0 (the paper: 0.996 with batches of 4096, Grill et "
                                         "al. 2020, sec. 3.3)")

        def __post_init__(self):
            if min(self.proj_hidden, self.proj_dim, self.pred_hidden) < 1 or not 0 <= self.momentum <= 1:
                raise ValueError("the head widths must be >= 1 and momentum in [0, 1]")

    def __init__(self, spec, hp, backbone):
        super().__init__(spec, hp, backbone)
        self.projector = mlp_head(self.backbone.feature_dim, hp.proj_hidden, hp.proj_dim)
        self.predictor = mlp_head(hp.proj_dim, hp.pred_hidden, hp.proj_dim)
        # The target is a separate copy (never the online modules themselves), moved by Method.on_step_end with
        # the cosine schedule over the whole run's steps (not per epoch: solo-learn #247).
        self.target = EMATeacher(self.backbone, self.projector, momentum=hp.momentum, schedule="cosine")
        self.view_recipe = simclr_views(spec.shape[1:], spec.mean, spec.std)

    def make_batch(self, x, generator):
        """Two independently augmented views of a uint8 batch."""
        return self.view_recipe.pair(x, generator)

    @torch.no_grad()
    def targets(self, v: torch.Tensor) -> torch.Tensor:
        """The target network's projection of a view (b x proj_dim), a constant.

        When the online network's BatchNorm normalises over the global batch (torchrun with sync_bn), the target's
        does too, as in the reference; parallel.wrap keeps EMA teachers' BatchNorm per process (MoCo needs that),
        so the target is converted here, once, sharing its parameters and buffers with the EMA copy."""
        follow_global_bn(self.target.net, [self.backbone, self.projector], v.device)
        return self.target(v)

    def forward(self, batch):
        v1, v2 = batch["v1"], batch["v2"]
        z1, z2 = self.projector(self.backbone(v1)), self.projector(self.backbone(v2))  # z: b x proj_dim each
        p1, p2 = self.predictor(z1), self.predictor(z2)  # each view through BatchNorm on its own, as the reference
        t1, t2 = self.targets(v1), self.targets(v2)
        loss = byol_loss(p1, t2) + byol_loss(p2, t1)  # symmetric (eq. 2): each view predicts the other's target
        return loss, {"z_std": embedding_std(torch.cat([z1, z2]))}
