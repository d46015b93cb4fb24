"""Named layers a backbone can be probed at, each turned into one feature vector per sample.

A pretext task's last layers specialise in the task: RotNet's best features sit in its middle blocks, and
mmselfsup's relative-location ResNet-50 gives 51.2% linear from its stage-4 map against 39.7% from the pooled
output. So evaluation and `embed` take a layer (`--layer NAME`, or `best`: chosen on validation data).

The contract: a backbone declares ``layer_names`` (shallow to deep; "pooled", its ``forward`` output, is always
a layer and needs no declaration) and ``forward_layers(x) -> {name: tensor}`` holding each declared layer's
output as it is: a map (B, C, h, w), tokens (B, L, D) or a vector (B, D). A backbone that declares nothing has
only "pooled". :func:`to_vector` makes every output a vector the same way for every backbone.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SelfSupError

POOLED = "pooled"  # the backbone's own output: what evaluation used before layers existed (the default)
LAYER_DIM = 2048  # target size of a pooled feature map: about the same at every depth, so depths compare fairly


def layer_names(backbone: nn.Module) -> tuple[str, ...]:
    """The layers `backbone` can be probed at, shallow to deep; always ends with "pooled"."""
    declared = tuple(n for n in getattr(backbone, "layer_names", ()) if n != POOLED)
    return declared + (POOLED,)


def grid_size(channels: int, h: int, w: int, target: int = LAYER_DIM) -> int:
    """The side g of the g x g grid a (C, h, w) map is average-pooled to: the largest with C * g^2 <= target,
    at most the map's own size, at least 1.

    The rule of mmselfsup's and RotNet's linear probes on intermediate maps (adaptive average pooling to a grid
    chosen so every depth gives about the same number of features; ~9k there, 2,048 here so that CPU probes on
    60,000 samples stay in seconds). Global pooling alone would give a 32-channel block only 32 numbers.
    """
    return max(1, min(h, w, math.isqrt(max(1, target // channels))))


def to_vector(t: torch.Tensor, target: int = LAYER_DIM) -> torch.Tensor:
    """One layer's output as (B, D): a map (B, C, h, w) adaptively average-pooled to a g x g grid (see
    :func:`grid_size`) and flattened channel-major; tokens (B, L, D) averaged over L; a vector as it is."""
    if t.dim() == 4:
        g = grid_size(t.shape[1], t.shape[2], t.shape[3], target)
        return torch.flatten(F.adaptive_avg_pool2d(t, g), 1)  # B x C*g*g
    if t.dim() == 3:
        return t.mean(1)  # tokens: B x D
    if t.dim() == 2:
        return t
    raise SelfSupError(f"layer output of shape {tuple(t.shape)} is neither a map, tokens nor a vector")


def check_layer(backbone: nn.Module, name: str) -> str:
    """`name` if the backbone has that layer, else a one-line error listing the ones it has."""
    names = layer_names(backbone)
    if name not in names:
        raise SelfSupError(f"no layer {name!r} in {type(backbone).__name__}; choose from {', '.join(names)} "
                           "(or 'best' with selfsup eval: chosen on a validation split)")
    return name


def layer_vectors(backbone: nn.Module, x: torch.Tensor, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """{name: (B, D)} for the layers `names` of the backbone input x, from one forward pass.

    "pooled" is always the backbone's own ``forward`` output, so the default layer gives exactly the features
    evaluation gave before layers existed.
    """
    if names == (POOLED,):
        return {POOLED: backbone(x)}
    outs = backbone.forward_layers(x)
    return {n: to_vector(outs[n]) for n in names}
