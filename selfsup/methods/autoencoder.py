"""Autoencoder: reconstruct the input pixels from the encoder's features (MLP as in the reference, or conv)."""
from __future__ import annotations

import torch
from torch import nn

from ..losses import reconstruction_mse
from ..models.backbones import MLPEncoder
from ..models.heads import ConvDecoder, MLPDecoder
from ..views.ops import normalize, to_float


class Autoencoder(nn.Module):
    """backbone (encoder) + decoder + MSE; the decoder mirrors the MLP encoder or is a transposed-conv net."""

    defaults = dict(optimizer="adamw", lr=1e-3, weight_decay=0.0, backbone="mlp")

    def __init__(self, backbone: nn.Module, in_shape, mean, std, **_):
        super().__init__()
        self.backbone = backbone
        if isinstance(backbone, MLPEncoder):
            self.decoder = MLPDecoder(backbone.feature_dim, tuple(in_shape))
        else:
            self.decoder = ConvDecoder(backbone.feature_dim, tuple(in_shape))
        self.mean, self.std = list(mean), list(std)

    def make_views(self, x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor]:
        """The un-augmented image in [0,1]: both the input and the target."""
        return (to_float(x),)

    def forward(self, x01: torch.Tensor):
        """Reconstruction loss for one batch."""
        recon = self.decoder(self.backbone(normalize(x01, self.mean, self.std)))
        return reconstruction_mse(recon, x01), {}
