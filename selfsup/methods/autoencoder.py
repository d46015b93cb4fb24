"""Autoencoder: reconstruct the input pixels from the encoder's features (MLP as in the reference, or conv)."""
from __future__ import annotations

from ..losses import reconstruction_mse
from ..models.backbones import MLPEncoder
from ..models.heads import ConvDecoder, MLPDecoder
from ..views.ops import normalize, to_float
from .base import Method, OptimDefaults
from .registry import register


@register
class Autoencoder(Method):
    """backbone (encoder) + decoder + MSE; the decoder mirrors the MLP encoder or is a transposed-conv net."""

    name = "autoencoder"
    aliases = ("ae",)
    paper = "Hinton & Salakhutdinov 2006, Reducing the Dimensionality of Data with Neural Networks (Science)"
    backbone_default = "mlp"
    optimizers = {"adamw": OptimDefaults(lr=1e-3, weight_decay=0.0)}

    def __init__(self, spec, hp, backbone):
        super().__init__(spec, hp, backbone)
        decoder = MLPDecoder if isinstance(self.backbone, MLPEncoder) else ConvDecoder
        self.decoder = decoder(self.backbone.feature_dim, spec.shape)

    def make_batch(self, x, generator):
        """The un-augmented image in [0,1]: both the input and the target."""
        return {"x": to_float(x)}

    def forward(self, batch):
        x01 = batch["x"]
        recon = self.decoder(self.backbone(normalize(x01, self.spec.mean, self.spec.std)))  # recon: B x C x H x W
        return reconstruction_mse(recon, x01), {}
