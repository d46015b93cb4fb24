"""VICReg: invariance between two views, plus variance and covariance regularisation of each over the batch."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..losses import embedding_std, vicreg
from ..models.heads import mlp_head
from ..views.recipes import simclr_views
from .base import Method, OptimDefaults
from .hparams import setting
from .registry import register


@register
class VICReg(Method):
    """backbone + 3-layer expander + the variance-invariance-covariance loss."""

    name = "vicreg"
    paper = ("Bardes, Ponce & LeCun 2022, VICReg: Variance-Invariance-Covariance Regularization for "
             "Self-Supervised Learning (ICLR)")
    sync_bn = True  # the reference converts every BatchNorm to SyncBatchNorm
    optimizers = {"lars": OptimDefaults(lr=0.3, weight_decay=1e-4, source="solo-learn's CIFAR recipe "
                                        "(scripts/pretrain/cifar/vicreg.yaml): LARS, lr 0.3 per 256, wd 1e-4 (the "
                                        "paper: LARS, base lr 0.2 per 256, wd 1e-6, Bardes et al. 2022, sec. 4.1)")}

    @dataclass
    class Hparams:
        proj_hidden: int = setting(2048, "expander hidden width",
                                   source="solo-learn's CIFAR recipe (cifar/vicreg.yaml proj_hidden_dim 2048; the "
                                          "paper: 8192 on ImageNet, Bardes et al. 2022, sec. 4.1)")
        proj_dim: int = setting(2048, "expander output width",
                                source="solo-learn's CIFAR recipe (cifar/vicreg.yaml proj_output_dim 2048; the "
                                       "paper: 8192 on ImageNet, Bardes et al. 2022, sec. 4.1)")
        sim_coeff: float = setting(25.0, "lambda, weight of the invariance term",
                                   source="Bardes et al. 2022, sec. 4.1: lambda = 25 (also solo-learn's CIFAR "
                                          "recipe, sim_loss_weight)")
        std_coeff: float = setting(25.0, "mu, weight of the variance term",
                                   source="Bardes et al. 2022, sec. 4.1: mu = 25 (also solo-learn's CIFAR recipe, "
                                          "var_loss_weight)")
        cov_coeff: float = setting(1.0, "nu, weight of the covariance term",
                                   source="Bardes et al. 2022, sec. 4.1: nu = 1 (also solo-learn's CIFAR recipe, "
                                          "cov_loss_weight)")

        def __post_init__(self):
            if min(self.proj_hidden, self.proj_dim) < 1 or min(self.sim_coeff, self.std_coeff, self.cov_coeff) < 0:
                raise ValueError("the expander widths must be >= 1 and the coefficients >= 0")

    def __init__(self, spec, hp, backbone):
        super().__init__(spec, hp, backbone)
        # Sec. 4.1: three linear layers, BN and ReLU after the first two (one BatchNorm module each).
        self.projector = mlp_head(self.backbone.feature_dim, hp.proj_hidden, hp.proj_dim, layers=3)
        self.view_recipe = simclr_views(spec.shape[1:], spec.mean, spec.std)

    def make_batch(self, x, generator):
        """Two independently augmented views of a uint8 batch."""
        return self.view_recipe.pair(x, generator)

    def forward(self, batch):
        z1 = self.projector(self.backbone(batch["v1"]))  # z: b x proj_dim; each view through BN on its own
        z2 = self.projector(self.backbone(batch["v2"]))
        hp = self.hp
        loss, terms = vicreg(z1, z2, hp.sim_coeff, hp.std_coeff, hp.cov_coeff)  # v, c over the global batch
        return loss, {**terms, "z_std": embedding_std(torch.cat([z1, z2]))}
