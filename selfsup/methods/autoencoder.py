"""Autoencoder: reconstruct the input pixels from the encoder's features (MLP as in the reference, or conv)."""
from __future__ import annotations

from ..losses import reconstruction_mse
from ..models.backbones import MLPEncoder
from ..models.heads import ConvDecoder, MLPDecoder
from ..views.ops import normalize, to_float
from .base import Method, OptimDefaults
from .registry import register


def build_decoder(backbone, out_shape):
    """The decoder that mirrors `backbone`: the MLP one for the reference MLP encoder, else transposed convs.
    Shared by every pixel-reconstruction method (autoencoder, denoising autoencoder, inpainting)."""
    decoder = MLPDecoder if isinstance(backbone, MLPEncoder) else ConvDecoder
    return decoder(backbone.feature_dim, out_shape)


@register
class Autoencoder(Method):
    """backbone (encoder) + decoder + MSE; the decoder mirrors the MLP encoder or is a transposed-conv net."""

    name = "autoencoder"
    aliases = ("ae",)
    paper = "Hinton & Salakhutdinov 2006, Reducing the Dimensionality of Data with Neural Networks (Science)"
    backbone_default = "mlp"
    optimizers = {"adamw": OptimDefaults(lr=1e-3, weight_decay=0.0, source="ours: Adam's default rate (Kingma & Ba "
                                         "2015), no decay; the paper pretrains RBMs layer by layer and fine-tunes "
                                         "with conjugate gradients, which has no counterpart here")}

    def __init__(self, spec, hp, backbone):
        super().__init__(spec, hp, backbone)
        self.decoder = build_decoder(self.backbone, spec.shape)

    def make_batch(self, x, generator):
        """The un-augmented image in [0,1]: both the input and the target."""
        return {"x": to_float(x)}

    def forward(self, batch):
        x01 = batch["x"]
        return reconstruction_mse(self.reconstruct(x01), x01), {}

    def reconstruct(self, x01):
        """Decoded image in [0, 1] (B x C x H x W) from an input in [0, 1] (normalised before the encoder)."""
        return self.decoder(self.backbone(normalize(x01, self.spec.mean, self.spec.std)))
