"""The encoder a method hands to evaluation, `embed` and export: raw batch in, pooled features out."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..data.types import DataSpec
from ..views import ops
from .layers import POOLED, check_layer, layer_names, layer_vectors


class Encoder(nn.Module):
    """A backbone plus the input step that turns a batch, as the dataset holds it, into the backbone's input.

    Images: uint8 (B, C, H, W) as decoded, or float in [0, 1] (an augmented batch), normalised with the
    training split's mean and std (and made channels_last on a GPU). Token ids pass through unchanged.
    `prepare` replaces that step when a method's encoder takes something else (colorization: the L channel).
    Output: (B, feature_dim) pooled features, or with `layer` that layer's vector (models/layers.py; see
    :meth:`at_layer`). Its state dict is the backbone's under "backbone.".
    """

    def __init__(self, backbone: nn.Module, spec: DataSpec,
                 prepare: Callable[[torch.Tensor], torch.Tensor] | None = None, layer: str = POOLED):
        super().__init__()
        self.backbone = backbone
        self.spec = spec
        self.layer = check_layer(backbone, layer)
        self._prepare = prepare
        self.feature_dim = int(backbone.feature_dim) if layer == POOLED else self.layer_dims()[layer]
        self.train(backbone.training)  # a wrapper made around an eval-mode backbone is in eval mode too

    def layers(self) -> tuple[str, ...]:
        """The layers this encoder can be probed at, shallow to deep ("pooled" last)."""
        return layer_names(self.backbone)

    def at_layer(self, layer: str) -> "Encoder":
        """The same backbone (shared, not copied) and input step, giving the vector of `layer` (itself when it
        already does: a method's own Encoder subclass is then kept as it is)."""
        if layer == self.layer:
            return self
        return Encoder(self.backbone, self.spec, self._prepare, layer)

    @torch.no_grad()
    def layer_dims(self) -> dict[str, int]:
        """{layer: D} from one forward pass of a two-sample blank batch in eval mode (no statistic changes)."""
        param = next(self.backbone.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = torch.uint8 if self.spec.kind == "image" else torch.long
        was_training = self.backbone.training
        self.backbone.eval()
        try:
            outs = self.all_layers(torch.zeros((2, *self.spec.shape), dtype=dtype, device=device))
        finally:
            self.backbone.train(was_training)
        return {n: int(v.shape[1]) for n, v in outs.items()}

    def all_layers(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """{layer: (B, D)} for every layer, from one forward pass of the raw batch x."""
        return layer_vectors(self.backbone, self.prepare(x), self.layers())

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's input for a raw batch."""
        if self._prepare is not None:
            return self._prepare(x)
        if self.spec.kind != "image":
            return x
        x = ops.normalize(ops.to_float(x), self.spec.mean, self.spec.std)
        return x.contiguous(memory_format=torch.channels_last) if x.is_cuda else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layer == POOLED:
            return self.backbone(self.prepare(x))
        return layer_vectors(self.backbone, self.prepare(x), (self.layer,))[self.layer]
