"""Colorization: predict a pixel's colour (ab in CIE Lab) from the lightness L alone (Zhang et al. 2016)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..distributed import world_size
from ..errors import SelfSupError
from ..losses import top1
from ..models.backbones import MLPEncoder
from ..models.encoder import Encoder
from ..views.color import ab_bins, rebalance_weights, rgb_to_lab, soft_encode
from ..views.ops import random_hflip, to_float
from .base import Method, OptimDefaults
from .hparams import setting
from .registry import register

# The encoder's input: L / 100 standardised with fixed statistics (L is a fixed function of the pixels, so a
# data-independent scale keeps the encoder's input the same on any data it is evaluated on).
L_MEAN, L_STD = 0.5, 0.25


def lightness(x: torch.Tensor) -> torch.Tensor:
    """The encoder's input for raw RGB images (uint8, or float in [0, 1]): standardised L, (B, 1, H, W)."""
    return (rgb_to_lab(to_float(x))[:, :1] / 100.0 - L_MEAN) / L_STD


def needs_colour(kind: str, shape: tuple[int, ...]) -> None:
    """A one-line error unless the data are RGB images."""
    if kind != "image" or shape[0] != 3:
        what = f"{shape[0]}-channel images" if kind == "image" else f"{kind} data"
        raise SelfSupError(f"colorization predicts colour from lightness, so it needs RGB images; this data holds "
                           f"{what}")


class ColorHead(nn.Module):
    """Feature map (B, D, h, w) -> per-pixel logits over the Q ab bins at (H / stride, W / stride).

    Zhang et al. predict at a quarter of the input resolution; the backbone's map is coarser (1/8 for the
    small CNN and the ResNets), so it is upsampled once and refined by a 3x3 conv before the 1x1 classifier.
    """

    def __init__(self, in_dim: int, bins: int, width: int):
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(in_dim, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.refine = nn.Sequential(nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                    nn.ReLU(inplace=True), nn.Conv2d(width, bins, 1))

    def forward(self, fmap: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        y = F.interpolate(self.reduce(fmap), size=size, mode="bilinear", align_corners=False)
        return self.refine(y)  # logits: B x Q x h' x w'


@register
class Colorization(Method):
    """Encoder on L, a conv head classifying each output pixel's ab into Q quantised bins, soft targets and
    class rebalancing (Zhang et al.'s full method).

    Classification rather than regression: colour is multimodal (a shirt may be red or blue), and an L2
    regression averages the modes into grey, so its gradient says little about objects whose colour varies;
    the paper's classification with rebalancing keeps rare saturated colours in the loss, and it is the variant
    the paper evaluates as a representation. The bins are the sRGB-gamut cells of a 10-unit ab lattice; the
    empirical bin distribution behind the rebalancing weights is accumulated over the training batches seen
    so far (a buffer, so it is in the checkpoint and a resumed run continues it; the paper counts ImageNet once
    beforehand, which a streaming count approaches within a few batches); under torchrun the counts are summed
    over the processes every step, so every process weighs pixels as one process would at the global batch.
    The encoder takes one channel: `encoder_spec` says so and `encoder()` turns raw RGB batches into
    standardised L, so evaluation and `embed` feed it correctly. Grayscale data is refused (there is no colour
    to predict).
    """

    name = "colorization"
    aliases = ("colorize", "colourization")
    paper = "Zhang et al. 2016, Colorful Image Colorization (ECCV)"
    optimizers = {"adamw": OptimDefaults(lr=1e-3, weight_decay=1e-3, source="wd: Zhang et al. 2016's Adam with "
                                         "weight decay 1e-3; lr: ours (the paper's 3e-5 is for a long ImageNet run); "
                                         "not tuned"),
                  "sgd": OptimDefaults(lr=0.1, weight_decay=5e-4, source="ours: not from the paper; not tuned")}

    @dataclass
    class Hparams:
        grid: int = setting(10, "spacing of the ab lattice whose in-gamut cells are the classes (the paper: 10)",
                            source="Zhang et al. 2016, sec. 2.1: ab space quantised with grid size 10 (313 in-gamut "
                                   "bins on ImageNet)")
        rebalance: float = setting(0.5, "lambda of class rebalancing: mix of the bin distribution with uniform "
                                        "(1 = no rebalancing; the paper: 0.5)",
                                   source="Zhang et al. 2016, sec. 2.2: lambda = 1/2")
        neighbours: int = setting(5, "bins each target pixel is soft-encoded over (the paper: 5)",
                                  source="Zhang et al. 2016, sec. 2.1: soft-encoding over the 5 nearest bins")
        sigma: float = setting(5.0, "Gaussian width of the soft encoding and of the smoothing, in ab units",
                               source="Zhang et al. 2016, sec. 2.1-2.2: sigma = 5")
        out_stride: int = setting(4, "prediction at 1/out_stride of the input resolution (the paper: 4)",
                                  source="Zhang et al. 2016, Fig. 2: the network predicts at a quarter of the input "
                                         "resolution")
        width: int = setting(128, "channels of the colour head", source="ours: not tuned")

        def __post_init__(self):
            if self.grid < 2 or not 0 < self.rebalance <= 1 or self.neighbours < 1 or self.sigma <= 0:
                raise ValueError("grid must be >= 2, rebalance in (0, 1], neighbours >= 1 and sigma > 0")
            if self.out_stride < 1 or self.width < 1:
                raise ValueError("out_stride and width must be >= 1")

    def __init__(self, spec, hp, backbone):
        super().__init__(spec, hp, backbone)
        if isinstance(self.backbone, MLPEncoder) or not hasattr(self.backbone, "forward_features"):
            raise SelfSupError("colorization needs a conv backbone with a feature map (small_cnn, resnet18, resnet50)")
        self.register_buffer("bins", ab_bins(hp.grid))
        self.register_buffer("bin_counts", torch.zeros(len(self.bins), dtype=torch.float64))
        self.head = ColorHead(self.backbone.feature_dim, len(self.bins), hp.width)
        h, w = spec.shape[1:]
        self.out_size = (max(1, h // hp.out_stride), max(1, w // hp.out_stride))

    @classmethod
    def check_data(cls, data, hp):
        needs_colour(data.kind, tuple(data.x.shape[1:]))

    @classmethod
    def encoder_spec(cls, spec):
        """One channel: the standardised lightness."""
        needs_colour(spec.kind, spec.shape)
        return spec.with_channels(1, mean=(L_MEAN,), std=(L_STD,))

    def encoder(self) -> Encoder:
        """Raw RGB batch -> L -> backbone: what evaluation, `embed` and export use."""
        return Encoder(self.backbone, self.spec, prepare=_prepare)

    def describe(self):
        return f"{len(self.bins)} ab bins, predicted at {self.out_size[0]}x{self.out_size[1]}"

    @torch.no_grad()
    def make_batch(self, x, generator):
        """L input (B, 1, H, W), soft ab targets (B*h*w, Q) at the output resolution and per-pixel weights."""
        x = random_hflip(to_float(x), 0.5, generator)
        lab = rgb_to_lab(x)
        ab = F.adaptive_avg_pool2d(lab[:, 1:], self.out_size)  # ab: B x 2 x h' x w'
        ab = ab.permute(0, 2, 3, 1).reshape(-1, 2)  # ab: B*h'*w' x 2
        target = soft_encode(ab, self.bins, self.hp.neighbours, self.hp.sigma)  # target: B*h'*w' x Q
        hard = target.argmax(dim=1)  # the nearest bin
        counts = torch.bincount(hard, minlength=len(self.bins)).to(self.bin_counts)
        if world_size() > 1:  # under torchrun: the global batch's counts, the same on every process (no autograd:
            dist.all_reduce(counts)  # counts, not gradients), so the weights are one process's at the global batch
        self.bin_counts += counts
        w = rebalance_weights(self.bin_counts, self.bins, self.hp.rebalance, self.hp.sigma)[hard]
        return {"L": (lab[:, :1] / 100.0 - L_MEAN) / L_STD, "target": target, "weight": w, "bin": hard}

    def forward(self, batch):
        fmap = self.backbone.forward_features(batch["L"])["map"]
        logits = self.head(fmap, self.out_size)  # logits: B x Q x h' x w'
        logits = logits.permute(0, 2, 3, 1).reshape(-1, logits.shape[1]).float()  # logits: B*h'*w' x Q
        ce = -(batch["target"] * F.log_softmax(logits, dim=1)).sum(dim=1)  # soft cross-entropy per pixel
        loss = (batch["weight"] * ce).mean()
        return loss, {"bin_acc": top1(logits, batch["bin"]), "ce": ce.mean()}


def _prepare(x: torch.Tensor) -> torch.Tensor:
    y = lightness(x)
    return y.contiguous(memory_format=torch.channels_last) if y.is_cuda else y
