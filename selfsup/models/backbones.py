"""Backbones, registered by name and built from a DataSpec.

Each maps a batch to pooled features (B, feature_dim) with `forward`, and with `forward_features` to a dict
that also holds what it has of its intermediate outputs: "map" (B, C, h, w) for conv nets, "tokens" (B, L, D)
for sequence models. Methods that need more than a pooled vector (inpainting, MAE, MLM) read those.
Each also declares the layers evaluation can probe (``layer_names``, shallow to deep, and ``forward_layers``;
see models/layers.py): "pooled" is its ``forward`` output.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torchvision
from torch import nn

from ..data.types import DataSpec, image_spec
from ..errors import SelfSupError

# name -> (builder(spec) -> module, data kinds it takes)
BACKBONES: dict[str, tuple[Callable[[DataSpec], nn.Module], tuple[str, ...]]] = {}
# prefix -> (builder(name, spec) -> module, check(name) -> name or a one-line error): `--backbone PREFIX:NAME`,
# a model of another library (timm: models/timm_backbone.py), images only
BACKBONE_FAMILIES: dict[str, tuple[Callable[[str, DataSpec], nn.Module], Callable[[str], str]]] = {}


def register_backbone(name: str, kinds: tuple[str, ...] = ("image",)):
    """Decorator: make `builder(spec)` available as `--backbone NAME` for data of the given kinds."""
    def deco(builder):
        BACKBONES[name] = (builder, tuple(kinds))
        return builder
    return deco


def register_backbone_family(prefix: str, builder: Callable[[str, DataSpec], nn.Module],
                             check: Callable[[str], str]) -> None:
    """Make `builder(NAME, spec)` available as `--backbone PREFIX:NAME`; `check(NAME)` refuses unknown names."""
    BACKBONE_FAMILIES[prefix] = (builder, check)


def backbone_help() -> str:
    """The --backbone choices in words."""
    return ", ".join([*BACKBONES, *(f"{p}:NAME" for p in BACKBONE_FAMILIES)])


def check_backbone(name: str) -> str:
    """`name` if it names a backbone (a registered one, or PREFIX:NAME of a family that knows NAME), else a
    one-line error; builds nothing."""
    prefix, sep, rest = name.partition(":")
    if sep and prefix in BACKBONE_FAMILIES:
        BACKBONE_FAMILIES[prefix][1](rest)
    elif name not in BACKBONES:
        from ..methods.hparams import nearest
        raise SelfSupError(f"unknown backbone {name!r}{nearest(name, BACKBONES)}; choose from {backbone_help()}")
    return name


def build_backbone(name: str, spec: DataSpec | tuple) -> nn.Module:
    """Build a backbone by name for the data `spec` (a (C, H, W) tuple means images of that shape)."""
    if not isinstance(spec, DataSpec):
        spec = image_spec(spec)
    check_backbone(name)
    prefix, sep, rest = name.partition(":")
    if sep and prefix in BACKBONE_FAMILIES:
        if spec.kind != "image":
            raise SelfSupError(f"backbone {name} takes image data, not {spec.kind}")
        return BACKBONE_FAMILIES[prefix][0](rest, spec)
    builder, kinds = BACKBONES[name]
    if spec.kind not in kinds:
        raise SelfSupError(f"backbone {name} takes {' or '.join(kinds)} data, not {spec.kind}")
    return builder(spec)


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

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        fmap = n.layer4(n.layer3(n.layer2(n.layer1(x))))  # map: B x feature_dim x h x w
        return {"map": fmap, "pooled": torch.flatten(n.avgpool(fmap), 1)}

    layer_names = ("layer1", "layer2", "layer3", "layer4")

    def forward_layers(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each residual stage's map (B, C_i, h_i, w_i) and the pooled output (B, feature_dim)."""
        n = self.net
        out = {}
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        for name in self.layer_names:
            x = out[name] = getattr(n, name)(x)
        out["pooled"] = torch.flatten(n.avgpool(x), 1)
        return out


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

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        fmap = self.features[:4](x)  # map: B x 8w x h/8 x w/8 (stem stride 2)
        return {"map": fmap, "pooled": self.features[4:](fmap)}

    layer_names = ("block1", "block2", "block3", "block4")

    def forward_layers(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each conv block's map (B, C_i, h_i, w_i) and the pooled output (B, feature_dim)."""
        out = {}
        for name, block in zip(self.layer_names, self.features[:4]):
            x = out[name] = block(x)
        out["pooled"] = self.features[4:](x)
        return out


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

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"pooled": self.net(x)}

    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(f"hidden{i + 1}" for i in range((len(self.net) - 2) // 2))

    def forward_layers(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each hidden layer's activations after its ReLU (B, width_i) and the output (B, feature_dim)."""
        out = {}
        names = iter(self.layer_names)
        for module in self.net:
            x = module(x)
            if isinstance(module, nn.ReLU):
                out[next(names)] = x
        out["pooled"] = x
        return out


def _small_images(spec: DataSpec) -> bool:
    return max(spec.shape[1:]) <= 64


register_backbone("resnet18")(lambda spec: ResNet(18, spec.shape[0], _small_images(spec)))
register_backbone("resnet50")(lambda spec: ResNet(50, spec.shape[0], _small_images(spec)))
register_backbone("small_cnn")(lambda spec: SmallCNN(spec.shape[0], stem_stride=2 if min(spec.shape[1:]) >= 24 else 1))
register_backbone("mlp")(lambda spec: MLPEncoder(spec.shape))
