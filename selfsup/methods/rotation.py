"""RotNet: predict which of four rotations was applied to an image (Gidaris et al. 2018)."""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from ..losses import top1
from ..models.heads import mlp_head
from ..views.ops import normalize, random_hflip, to_float
from ..views.pretext import all_rotations
from .base import Method, OptimDefaults
from .hparams import setting
from .registry import register


def centre_square(x):
    """The centred S x S crop of (B, C, H, W), S = min(H, W): a quarter turn must keep the image's shape."""
    h, w = x.shape[-2:]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return x[..., top:top + s, left:left + s]


@register
class Rotation(Method):
    """backbone + 4-way classifier over the rotations 0/90/180/270 degrees of every image in the batch.

    Each step sees every image at all four rotations (4B inputs): the paper found this better than one random
    rotation per image. The only augmentation is a horizontal flip (the paper's CIFAR setup). Non-square images
    are centre-cropped to a square for the task; evaluation still sees them whole.
    """

    name = "rotation"
    aliases = ("rotnet",)
    paper = "Gidaris et al. 2018, Unsupervised Representation Learning by Predicting Image Rotations (ICLR)"
    optimizers = {"sgd": OptimDefaults(lr=0.1, weight_decay=5e-4, source="Gidaris et al. 2018, sec. 3.1 (CIFAR-10): "
                                       "SGD, momentum 0.9, wd 5e-4, lr 0.1 at batch 128 (here 0.1 per 256 samples: "
                                       "half the paper's rate per sample)"),
                  "adamw": OptimDefaults(lr=1e-3, weight_decay=0.05, source="ours: a common AdamW rate and decay; "
                                         "not tuned")}

    @dataclass
    class Hparams:
        hidden: int = setting(256, "hidden width of the rotation classifier (0: a linear head)",
                              source="ours: a small MLP head (the paper's classifier is the network's own last "
                                     "blocks); not tuned")
        flip: bool = setting(True, "mirror each image left-right with probability 0.5 before rotating it",
                             source="the authors' CIFAR-10 training code flips images (its random crops are not "
                                    "done here)")

        def __post_init__(self):
            if self.hidden < 0:
                raise ValueError("hidden must be >= 0")

    def __init__(self, spec, hp, backbone):
        super().__init__(spec, hp, backbone)
        d = self.backbone.feature_dim
        self.head = mlp_head(d, hp.hidden, 4) if hp.hidden else mlp_head(d, d, 4, layers=1)

    def make_batch(self, x, generator):
        """The four rotations of each (flipped) image, normalised, and their labels (quarter turns)."""
        x = centre_square(to_float(x))
        if self.hp.flip:
            x = random_hflip(x, 0.5, generator)
        views, labels = all_rotations(x)  # views: 4B x C x S x S, labels: 4B
        return {"x": normalize(views, self.spec.mean, self.spec.std), "rot": labels}

    def forward(self, batch):
        logits = self.head(self.backbone(batch["x"]))  # logits: 4B x 4
        return F.cross_entropy(logits, batch["rot"]), {"rot_acc": top1(logits, batch["rot"])}
