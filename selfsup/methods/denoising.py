"""Denoising autoencoder: reconstruct the clean image from a corrupted one (Gaussian or masking noise)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..losses import reconstruction_mse
from ..views.masks import fill_masked, random_gaussian_noise, random_pixel_mask
from ..views.ops import to_float
from .autoencoder import Autoencoder
from .base import OptimDefaults
from .hparams import setting
from .registry import register


@register
class DenoisingAutoencoder(Autoencoder):
    """The plain autoencoder's encoder and decoder (same construction, same --backbone rule), fed a corrupted
    input and scored against the clean one.

    Vincent et al. 2008 corrupt by masking noise: a fixed fraction of the input pixels, chosen at random per
    image, forced to 0. Gaussian corruption (Vincent et al. 2010) adds N(0, noise_std^2) in [0, 1] pixel units,
    unclipped. The loss is the squared error over every pixel, the plain autoencoder's, so the two compare
    directly (the paper's cross-entropy suits binary inputs, Fashion-MNIST is grey-level).
    """

    name = "denoising"
    aliases = ("dae", "denoising_autoencoder")
    paper = ("Vincent et al. 2008, Extracting and Composing Robust Features with Denoising Autoencoders "
             "(ICML)")
    optimizers = {"adamw": OptimDefaults(lr=1e-3, weight_decay=0.0, source="ours: the plain autoencoder's (Adam's "
                                         "default rate, no decay), so the two compare directly; Vincent et al. "
                                         "train by stochastic gradient descent")}

    @dataclass
    class Hparams:
        corruption: Literal["masking", "gaussian"] = setting(
            "masking", "'masking': a fraction of the pixels set to 0 (the paper's masking noise); 'gaussian': "
                       "additive N(0, noise_std^2)",
            source="Vincent et al. 2008: masking noise (a fixed number of inputs, chosen at random, forced to 0); "
                   "gaussian: Vincent et al. 2010 (JMLR)")
        mask_ratio: float = setting(0.25, "masking: the fraction of pixels zeroed per image (exactly that many)",
                                    source="ours: a moderate destruction fraction (the papers choose it on "
                                           "validation data); not tuned here")
        noise_std: float = setting(0.3, "gaussian: noise std in [0, 1] pixel units",
                                   source="ours: the papers choose it on validation data; not tuned here")

        def __post_init__(self):
            if not 0 < self.mask_ratio < 1 or self.noise_std <= 0:
                raise ValueError(f"mask_ratio must be in (0, 1) and noise_std > 0, got {self.mask_ratio}, "
                                 f"{self.noise_std}")

    def make_batch(self, x, generator):
        """The clean image in [0, 1] (the target) and its corrupted copy (the input), both B x C x H x W."""
        x01 = to_float(x)
        if self.hp.corruption == "masking":
            mask, _ = random_pixel_mask(x01.shape[0], *x01.shape[2:], self.hp.mask_ratio, generator, x01.device)
            noisy = fill_masked(x01, mask, 0.0)
        else:
            noisy, _ = random_gaussian_noise(x01, self.hp.noise_std, generator)
        return {"x": x01, "noisy": noisy}

    def forward(self, batch):
        x01, noisy = batch["x"], batch["noisy"]
        recon = self.reconstruct(noisy)  # recon: B x C x H x W in [0, 1]
        with torch.no_grad():
            corrupted_err = (noisy - x01).pow(2).mean()  # what returning the input unchanged would score
        return reconstruction_mse(recon, x01), {"input_mse": corrupted_err}
