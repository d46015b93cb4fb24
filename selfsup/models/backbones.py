"""Backbones: each maps an image batch (B,C,H,W) to features (B, feature_dim)."""
from __future__ import annotations

import math

import torch
import torchvision
from torch import nn


class ResNet(nn.Module):
    """torchvision ResNet without its classifier; a 3x3 stride-1 stem and no max-pool for small images."""

    def __init__(self, depth: int, in_chans: int, small_stem: bool):
        super().__init__()
        net = {18: torchvision.models.resnet18, 50: torchvision.models.resnet50}[depth](weights=None)
        if small_stem:
            # 28-64 px images would be 7-16 px after the ImageNet stem; keep the resolution instead.
            net.conv1 = nn.Conv2d(in_chans, 64, 3, 1, 1, bias=False)
            net.maxpool = nn.Identity()
        elif in_chans != 3:
            net.conv1 = nn.Conv2d(in_chans, 64, 7, 2, 3, bias=False)
        self.feature_dim = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    """A four-stage conv net that trains in minutes on a CPU; width sets the channels of the first stage."""

    def __init__(self, in_chans: int, width: int = 32, stem_stride: int = 2):
        super().__init__()
        w = width
        # Downsampling in the stem keeps the full-resolution activations (the CPU's bottleneck) small.
        self.features = nn.Sequential(
            _conv_bn(in_chans, w, stem_stride),
            _conv_bn(w, 2 * w, 2),
            _conv_bn(2 * w, 4 * w, 2),
            _conv_bn(4 * w, 8 * w, 1),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.feature_dim = 8 * w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class MLPEncoder(nn.Module):
    """The reference autoencoder's encoder: flattened pixels -> 512 -> 256 -> 64."""

    def __init__(self, in_shape: tuple[int, int, int], hidden: tuple[int, ...] = (512, 256), feature_dim: int = 64):
        super().__init__()
        dims = [math.prod(in_shape), *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(dims[-1], feature_dim))
        self.net = nn.Sequential(*layers)
        self.in_shape = tuple(in_shape)
        self.feature_dim = feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


BACKBONES = ("resnet18", "resnet50", "small_cnn", "mlp")


def build_backbone(name: str, in_shape: tuple[int, int, int]) -> nn.Module:
    """Build a backbone by name for images of shape (C,H,W)."""
    c, h, w = in_shape
    small = max(h, w) <= 64
    if name == "resnet18":
        return ResNet(18, c, small)
    if name == "resnet50":
        return ResNet(50, c, small)
    if name == "small_cnn":
        return SmallCNN(c, stem_stride=2 if min(h, w) >= 24 else 1)
    if name == "mlp":
        return MLPEncoder(in_shape)
    raise ValueError(f"unknown backbone {name!r}; choose from {', '.join(BACKBONES)}")
