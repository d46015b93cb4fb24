"""The encoder a method hands to evaluation, `embed` and export: raw batch in, pooled features out."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..data.types import DataSpec
from ..views import ops


class Encoder(nn.Module):
    """A backbone plus the input step that turns a batch, as the dataset holds it, into the backbone's input.

    Images: uint8 (B, C, H, W) as decoded, or float in [0, 1] (an augmented batch), normalised with the
    training split's mean and std (and made channels_last on a GPU). Token ids pass through unchanged.
    `prepare` replaces that step when a method's encoder takes something else (colorization: the L channel).
    Output: (B, feature_dim) pooled features. Its state dict is the backbone's under "backbone.".
    """

    def __init__(self, backbone: nn.Module, spec: DataSpec,
                 prepare: Callable[[torch.Tensor], torch.Tensor] | None = None):
        super().__init__()
        self.backbone = backbone
        self.spec = spec
        self.feature_dim = int(backbone.feature_dim)
        self._prepare = prepare
        self.train(backbone.training)  # a wrapper made around an eval-mode backbone is in eval mode too

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's input for a raw batch."""
        if self._prepare is not None:
            return self._prepare(x)
        if self.spec.kind != "image":
            return x
        x = ops.normalize(ops.to_float(x), self.spec.mean, self.spec.std)
        return x.contiguous(memory_format=torch.channels_last) if x.is_cuda else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.prepare(x))
