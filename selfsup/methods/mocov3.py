"""MoCo v3: a query encoder with a predictor, its momentum copy for the keys, InfoNCE over the global batch.

Chen, Xie & He 2021 (An Empirical Study of Training Self-Supervised Vision Transformers, sec. 2 and Algorithm 1;
reference code facebookresearch/moco-v3, moco/builder.py and main_moco.py): no queue, the keys of the other
images in the (global) batch are the negatives; the loss is symmetric; the key encoder is an EMA of the query
backbone + projector (not the predictor) on BYOL's cosine schedule. The heads and the temperature depend on
the backbone, as the reference's MoCo_ResNet / MoCo_ViT: a ViT gets a 3-layer projector, a predictor ending in
BatchNorm and tau 0.2; a CNN a 2-layer projector, a predictor without it and tau 1.0.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..losses import embedding_std, mocov3_logits, top1
from ..models.global_bn import follow_global_bn
from ..models.heads import mlp_head
from ..views.recipes import simclr_views
from .base import Method, OptimDefaults
from .ema import EMATeacher
from .hparams import setting
from .registry import register

PAPER = "Chen, Xie & He 2021 (MoCo v3)"
REF = "the reference code (facebookresearch/moco-v3)"


@register
class MoCoV3(Method):
    """backbone + projector + predictor (queries), an EMA copy of backbone + projector (keys), symmetric
    contrastive loss against the keys of the global batch.

    `encoder()` is the query (base) encoder's backbone, the one the paper evaluates: the reference's linear
    classification keeps `base_encoder` up to before its head (main_lincls.py), not the momentum encoder.
    """

    name = "mocov3"
    aliases = ("moco_v3", "moco-v3")
    paper = f"{PAPER}, An Empirical Study of Training Self-Supervised Vision Transformers (ICCV)"
    # The reference converts the whole model, momentum encoder included, to SyncBatchNorm (main_moco.py).
    sync_bn = True
    optimizers = {
        "lars": OptimDefaults(lr=0.3, weight_decay=1e-6, source=f"{REF}, CONFIG.md (ResNet-50, 300 epochs): LARS, "
                              "lr 0.3 per 256, wd 1e-6 (main_moco.py's default wd); also solo-learn's CIFAR recipe "
                              "(scripts/pretrain/cifar/mocov3.yaml: LARS lr 0.3, wd 1e-6, eta 0.02)"),
        "adamw": OptimDefaults(lr=1.5e-4, weight_decay=0.1, per_256=True, source=f"{REF}, CONFIG.md (ViT-Small and "
                               "ViT-Base): AdamW, lr 1.5e-4 per 256 (main_moco.py scales every optimizer's lr by "
                               f"batch / 256), wd 0.1; {PAPER}, sec. 4 and appendix: the ViT recipe"),
    }

    @dataclass
    class Hparams:
        temperature: float | None = setting(
            None, "softmax temperature; None: 0.2 with a ViT backbone, 1.0 with a CNN",
            source=f"{REF}: main_moco.py's --moco-t default 1.0 (its ResNet-50 recipes), CONFIG.md's --moco-t=.2 "
                   "for every ViT (solo-learn's CIFAR ResNet-18 recipe uses 0.2)")
        proj_hidden: int = setting(4096, "projector and predictor hidden width",
                                   source=f"{PAPER}, appendix (MLP heads with 4096-d hidden layers); {REF}: "
                                          "--moco-mlp-dim 4096")
        proj_dim: int = setting(256, "projector and predictor output width (the space the loss compares in)",
                                source=f"{PAPER}, appendix (256-d outputs); {REF}: --moco-dim 256")
        proj_layers: int | None = setting(
            None, "projector layers; None: 3 with a ViT backbone, 2 with a CNN",
            source=f"{REF}, moco/builder.py: MoCo_ViT builds a 3-layer projector, MoCo_ResNet a 2-layer one; the "
                   "predictor has 2 layers in both")
        momentum: float = setting(0.99, "key-encoder EMA momentum at the first step, raised to 1 by the last step of "
                                        "the run on a cosine",
                                  source=f"{REF}: --moco-m 0.99 with --moco-m-cos in every CONFIG.md recipe (the "
                                         "1000-epoch ResNet-50 one: 0.996); the cosine schedule is BYOL's")
        freeze_patch_embed: bool = setting(
            True, "ViT backbones only: keep the random patch embedding fixed (no gradient)",
            source=f"{PAPER}, sec. 4.1 ('random patch projection' stabilises training); {REF}: "
                   "--stop-grad-conv1 in every ViT recipe of CONFIG.md")

        def __post_init__(self):
            if self.temperature is not None and self.temperature <= 0:
                raise ValueError(f"temperature must be > 0, got {self.temperature}")
            if self.proj_layers is not None and self.proj_layers < 1:
                raise ValueError(f"proj_layers must be >= 1, got {self.proj_layers}")
            if min(self.proj_hidden, self.proj_dim) < 1 or not 0 <= self.momentum <= 1:
                raise ValueError("the head widths must be >= 1 and momentum in [0, 1]")

    def __init__(self, spec, hp, backbone):
        super().__init__(spec, hp, backbone)
        # "transformer": our ViT (and any plugin backbone that declares itself one); everything else is a CNN here.
        self.vit = getattr(self.backbone, "finetune_family", None) == "transformer"
        self.temperature = hp.temperature if hp.temperature is not None else (0.2 if self.vit else 1.0)
        self.proj_layers = layers = hp.proj_layers if hp.proj_layers is not None else (3 if self.vit else 2)
        # The reference's _build_mlp: bias-free Linears, BN + ReLU between them, a BN without affine at the end
        # of the projector; the predictor ends in that BN for a ViT, in a bias-free Linear for a ResNet.
        self.projector = mlp_head(self.backbone.feature_dim, hp.proj_hidden, hp.proj_dim, layers=layers,
                                  last_bn=True)
        self.predictor = mlp_head(hp.proj_dim, hp.proj_hidden, hp.proj_dim, last_bn=self.vit, last_bias=False)
        self.frozen_patches = self.vit and hp.freeze_patch_embed and hasattr(self.backbone, "patch_embed")
        if self.frozen_patches:  # sec. 4.1: the patch projection stays at its random initialisation
            for p in self.backbone.patch_embed.parameters():
                p.requires_grad_(False)
        # A separate copy moved after every optimizer step by Method.on_step_end, over the whole run's steps.
        self.momentum_encoder = EMATeacher(self.backbone, self.projector, momentum=hp.momentum, schedule="cosine")
        self.view_recipe = simclr_views(spec.shape[1:], spec.mean, spec.std)

    def make_batch(self, x, generator):
        """Two independently augmented views of a uint8 batch."""
        return self.view_recipe.pair(x, generator)

    def describe(self):
        kind = "ViT" if self.vit else "CNN"
        frozen = "; patch embedding frozen (random patch projection)" if self.frozen_patches else ""
        return f"{kind} recipe: projector of {self.proj_layers} layers, temperature {self.temperature:g}{frozen}"

    @torch.no_grad()
    def keys(self, v: torch.Tensor) -> torch.Tensor:
        """The momentum encoder's projection of a view (b x proj_dim), a constant; its BatchNorm is global when
        the query encoder's is (torchrun with sync_bn), as the reference's SyncBatchNorm over the whole model."""
        follow_global_bn(self.momentum_encoder.net, [self.backbone, self.projector], v.device)
        return self.momentum_encoder(v)

    def forward(self, batch):
        v1, v2, t = batch["v1"], batch["v2"], self.temperature
        # Each view through BatchNorm on its own, as the reference's two calls of base_encoder.
        q1 = self.predictor(self.projector(self.backbone(v1)))  # q: b x proj_dim
        q2 = self.predictor(self.projector(self.backbone(v2)))
        k1, k2 = self.keys(v1), self.keys(v2)  # k: b x proj_dim, no gradient
        logits_a, targets = mocov3_logits(q1, k2, t)  # logits: b x B (the keys of every process)
        logits_b, _ = mocov3_logits(q2, k1, t)
        ce = torch.nn.functional.cross_entropy
        loss = 2 * t * (ce(logits_a, targets) + ce(logits_b, targets))  # ctr(q1, k2) + ctr(q2, k1), Algorithm 1
        return loss, {"pos_acc": top1(logits_a, targets), "z_std": embedding_std(torch.cat([q1, q2]))}
