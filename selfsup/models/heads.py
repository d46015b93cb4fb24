"""Heads: MLP projectors/predictors and reconstruction decoders."""
from __future__ import annotations

import math

import torch
from torch import nn


def mlp_head(in_dim: int, hidden_dim: int, out_dim: int, layers: int = 2, last_bn: bool = False,
             last_bias: bool | None = None) -> nn.Sequential:
    """Linear-BN-ReLU blocks then a Linear: the SimCLR/MoCo v2 projector (layers=2) or a BYOL predictor.
    `last_bias`: whether the last Linear has a bias (None: only when no BatchNorm follows it)."""
    mods: list[nn.Module] = []
    d = in_dim
    for _ in range(layers - 1):
        mods += [nn.Linear(d, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
        d = hidden_dim
    mods.append(nn.Linear(d, out_dim, bias=not last_bn if last_bias is None else last_bias))
    if last_bn:
        mods.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*mods)


class MLPDecoder(nn.Module):
    """Mirror of the reference MLP encoder: 64 -> 256 -> 512 -> pixels (sigmoid, in [0,1])."""

    def __init__(self, feature_dim: int, out_shape: tuple[int, int, int], hidden: tuple[int, ...] = (256, 512)):
        super().__init__()
        dims = [feature_dim, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU(inplace=True)]
        layers += [nn.Linear(dims[-1], math.prod(out_shape)), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)
        self.out_shape = tuple(out_shape)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(z.shape[0], *self.out_shape)


class ConvDecoder(nn.Module):
    """Features -> small spatial map -> transposed convs -> image in [0,1], resized to the exact output size."""

    def __init__(self, feature_dim: int, out_shape: tuple[int, int, int], width: int = 32):
        super().__init__()
        c, h, w = out_shape
        self.out_shape = tuple(out_shape)
        self.base = (max(1, math.ceil(h / 8)), max(1, math.ceil(w / 8)))
        self.fc = nn.Linear(feature_dim, 4 * width * self.base[0] * self.base[1])
        self.width = width

        def up(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.ConvTranspose2d(cin, cout, 4, 2, 1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

        self.net = nn.Sequential(up(4 * width, 2 * width), up(2 * width, width), up(width, width), nn.Conv2d(width, c, 3, 1, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.fc(z).view(z.shape[0], 4 * self.width, *self.base)
        x = self.net(x)
        if x.shape[-2:] != self.out_shape[1:]:
            x = nn.functional.interpolate(x, size=self.out_shape[1:], mode="bilinear", align_corners=False)
        return torch.sigmoid(x)
