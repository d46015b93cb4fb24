"""SimCLR: two augmented views, an MLP projector, NT-Xent over the global batch."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..losses import embedding_std, nt_xent_logits, top1
from ..models.heads import mlp_head
from ..views.recipes import simclr_views
from .base import Method, OptimDefaults
from .hparams import setting
from .registry import register


@register
class SimCLR(Method):
    """backbone + projector + NT-Xent + the SimCLR view recipe."""

    name = "simclr"
    paper = "Chen et al. 2020, A Simple Framework for Contrastive Learning of Visual Representations (ICML)"
    sync_bn = True  # global BN (sec. 2.3): per-device statistics would leak which views are positives
    optimizers = {"lars": OptimDefaults(lr=0.3, weight_decay=1e-6, source="Chen et al. 2020, sec. 3 ('Default "
                                        "setting'): LARS, lr 0.3 x batch / 256, weight decay 1e-6"),
                  "sgd": OptimDefaults(lr=0.06, weight_decay=5e-4, source="ours: not from the paper (it uses LARS); "
                                       "not tuned"),
                  "adamw": OptimDefaults(lr=1e-3, weight_decay=1e-6, source="ours: a common AdamW rate with the "
                                         "paper's weight decay; not tuned")}

    @dataclass
    class Hparams:
        temperature: float = setting(0.2, "softmax temperature of NT-Xent",
                                     source="ours: solo-learn's CIFAR SimCLR recipe uses 0.2; the paper uses 0.1 at "
                                            "its large ImageNet batches and compares 0.1-1.0 (Chen et al. 2020, "
                                            "sec. 5.1, and appendix B.9 for CIFAR-10)")
        proj_hidden: int = setting(2048, "projector hidden width",
                                   source="Chen et al. 2020, sec. 2.1: a 1-hidden-layer MLP; 2048 is ResNet-50's "
                                          "width there (kept here whatever the backbone's)")
        proj_dim: int = setting(128, "projector output width (the space the loss compares in)",
                                source="Chen et al. 2020, sec. 3 ('Default setting'): a 128-d latent space")

        crop_min: float | None = setting(None, "smallest crop, as a share of the image area (None: 0.08 from 64 px, "
                                         "0.2 below)", source="Chen et al. 2020, appendix A (0.08); 0.2 below 64 px "
                                         "is ours, as in MoCo v2's and solo-learn's CIFAR recipes")
        jitter_strength: float | None = setting(None, "colour-jitter strength s (0.8s, 0.8s, 0.8s, 0.2s); 0: none "
                                                "(None: 1 from 64 px, 0.5 below)",
                                                source="Chen et al. 2020, appendix A (1.0 ImageNet, 0.5 CIFAR-10)")

        def __post_init__(self):
            if self.temperature <= 0 or self.proj_hidden < 1 or self.proj_dim < 1:
                raise ValueError("temperature must be > 0 and the projector widths >= 1")
            if self.crop_min is not None and not 0 < self.crop_min <= 1:
                raise ValueError(f"crop_min must be in (0, 1], got {self.crop_min}")
            if self.jitter_strength is not None and self.jitter_strength < 0:
                raise ValueError(f"jitter_strength must be >= 0, got {self.jitter_strength}")

    def __init__(self, spec, hp, backbone):
        super().__init__(spec, hp, backbone)
        self.projector = mlp_head(self.backbone.feature_dim, hp.proj_hidden, hp.proj_dim)
        self.view_recipe = simclr_views(spec.shape[1:], spec.mean, spec.std, hp.crop_min, hp.jitter_strength)

    def make_batch(self, x, generator):
        """Two independently augmented views of a uint8 batch."""
        return self.view_recipe.pair(x, generator)

    def forward(self, batch):
        z = self.projector(self.backbone(torch.cat([batch["v1"], batch["v2"]])))  # z: 2B x proj_dim
        z1, z2 = z.chunk(2)
        logits, targets = nt_xent_logits(z1, z2, self.hp.temperature)  # logits: 2B x 2B, fp32
        loss = F.cross_entropy(logits, targets)
        return loss, {"pos_acc": top1(logits, targets), "z_std": embedding_std(z)}
