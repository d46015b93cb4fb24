"""SimSiam: a Siamese network whose predictor regresses the other view's projection through a stop-gradient."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..losses import embedding_std, negative_cosine
from ..models.heads import mlp_head
from ..views.recipes import simclr_views
from .base import Method, OptimDefaults
from .hparams import setting
from .registry import register


@register
class SimSiam(Method):
    """backbone + 3-layer projector (BN on every layer) + bottleneck predictor; no EMA, no negatives."""

    name = "simsiam"
    paper = "Chen & He 2021, Exploring Simple Siamese Representation Learning (CVPR)"
    sync_bn = True  # the reference trains with SyncBatchNorm
    optimizers = {"sgd": OptimDefaults(lr=0.03, weight_decay=5e-4, source="Chen & He 2021, appendix D (CIFAR-10): "
                                       "SGD, lr 0.03 per 256, weight decay 5e-4, momentum 0.9 (solo-learn's CIFAR "
                                       "recipe: lr 0.5, wd 1e-5)")}

    @dataclass
    class Hparams:
        proj_hidden: int = setting(2048, "projector hidden width",
                                   source="Chen & He 2021, sec. 3 ('Baseline settings'): hidden fc 2048-d")
        proj_dim: int = setting(2048, "projector output width",
                                source="Chen & He 2021, sec. 3 ('Baseline settings'): z and p are d = 2048")
        pred_hidden: int = setting(512, "predictor bottleneck width",
                                   source="Chen & He 2021, sec. 3 ('Baseline settings'): the predictor's hidden layer "
                                          "is 512-d")

        def __post_init__(self):
            if min(self.proj_hidden, self.proj_dim, self.pred_hidden) < 1:
                raise ValueError("the head widths must be >= 1")

    def __init__(self, spec, hp, backbone):
        super().__init__(spec, hp, backbone)
        # Sec. 3: BN on each layer of the projector, its output included (no ReLU there, affine off as in the
        # reference); the predictor has BN on its hidden layer only. One BatchNorm module per layer.
        self.projector = mlp_head(self.backbone.feature_dim, hp.proj_hidden, hp.proj_dim, layers=3, last_bn=True)
        self.predictor = mlp_head(hp.proj_dim, hp.pred_hidden, hp.proj_dim)
        self.view_recipe = simclr_views(spec.shape[1:], spec.mean, spec.std)

    def make_batch(self, x, generator):
        """Two independently augmented views of a uint8 batch."""
        return self.view_recipe.pair(x, generator)

    def forward(self, batch):
        z1 = self.projector(self.backbone(batch["v1"]))  # z: b x proj_dim; each view through BN on its own
        z2 = self.projector(self.backbone(batch["v2"]))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        loss = 0.5 * negative_cosine(p1, z2) + 0.5 * negative_cosine(p2, z1)  # eq. 4; stop-gradient on z
        # A loss at -1 with z_std near 0 is collapse (sec. 4.1): the std is logged to tell it from success.
        return loss, {"z_std": embedding_std(torch.cat([z1, z2]))}
