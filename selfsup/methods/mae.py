"""Masked autoencoder (MAE): a ViT encodes only the visible patches, a light decoder restores the masked ones."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import SelfSupError
from ..losses.masked import masked_patch_mse, normalized_patches
from ..models.vit import ViT, patchify, sincos_pos_embed, transformer_blocks
from ..views.masks import n_visible, random_patch_mask, unshuffle_tokens
from ..views.ops import normalize, random_hflip, random_resized_crop, to_float
from .base import Method, OptimDefaults
from .hparams import setting
from .registry import register


@register
class MAE(Method):
    """ViT encoder on the visible 25% of the patches; decoder: a linear map to its width, one shared mask token
    per missing patch, position embeddings, a few Transformer blocks, a linear map to pixels. The loss is the
    MSE on the masked patches only, against per-patch normalised pixels (He et al. 2021, norm_pix_loss).
    Evaluation's ``encoder()`` is the ViT on all patches, mean-pooled."""

    name = "mae"
    paper = "He et al. 2021, Masked Autoencoders Are Scalable Vision Learners (CVPR 2022)"
    backbone_default = "vit"
    # The paper's pretraining optimizer: AdamW, base lr 1.5e-4 per 256 samples, wd 0.05, betas (0.9, 0.95).
    optimizers = {"adamw": OptimDefaults(lr=1.5e-4, weight_decay=0.05, betas=(0.9, 0.95), per_256=True,
                               source="He et al. 2021, appendix A.1: AdamW, base lr 1.5e-4 per 256, weight decay "
                                      "0.05, betas (0.9, 0.95)")}

    @dataclass
    class Hparams:
        mask_ratio: float = setting(0.75, "fraction of the patches removed from the encoder's input (the paper's "
                                          "0.75; int(N * 0.25) stay visible)",
            source="He et al. 2021, sec. 4.1 and Fig. 5: 75% masking")
        decoder_dim: int = setting(64, "decoder width (narrower than the encoder's 96, as the paper's 512 for "
                                       "ViT-L's 1024)",
            source="ours: scaled down from the paper's 512-wide decoder (Table 1) for the small ViT")
        decoder_depth: int = setting(2, "decoder Transformer blocks (the paper's light decoder has 8; 1 already "
                                        "works, sec. 4.1)",
            source="ours: scaled down from the paper's 8 blocks (Table 1a; 1 block already works)")
        decoder_heads: int = setting(4, "decoder attention heads",
            source="ours: not tuned (the paper's decoder has 16 heads)")
        crop_scale: tuple[float, float] = setting((0.2, 1.0), "random resized crop's area range before masking (He "
                                                              "et al. 2021: 0.2-1; [1, 1]: no crop)",
            source="He et al. 2021, appendix A.1: RandomResizedCrop with scale (0.2, 1.0)")
        flip_p: float = setting(0.5, "probability of a horizontal flip before masking (He et al. 2021: 0.5)",
            source="He et al. 2021, appendix A.1: random horizontal flip")
        norm_pix_loss: bool = setting(True, "targets are each patch's pixels standardised by the patch's own mean "
                                            "and variance",
            source="He et al. 2021, sec. 3 and Table 1d: per-patch normalised pixels as targets")

        def __post_init__(self):
            if not 0 < self.mask_ratio < 1:
                raise ValueError(f"mask_ratio must be in (0, 1), got {self.mask_ratio}")
            if self.decoder_dim % 4 or self.decoder_dim % self.decoder_heads or self.decoder_depth < 1:
                raise ValueError("decoder_dim must be divisible by 4 and by decoder_heads, decoder_depth >= 1")
            if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1 or not 0 <= self.flip_p <= 1:
                raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1 and flip_p be in [0, 1], got "
                                 f"{list(self.crop_scale)} and {self.flip_p}")

    def __init__(self, spec, hp, backbone):
        super().__init__(spec, hp, backbone)
        vit = self.backbone
        if not isinstance(vit, ViT):
            raise SelfSupError(f"mae needs a ViT backbone (--backbone vit), not {backbone}: its encoder must be "
                               f"able to drop the masked patches")
        c, p = spec.shape[0], vit.patch_size
        self.decoder_embed = nn.Linear(vit.feature_dim, hp.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, hp.decoder_dim))
        self.register_buffer("decoder_pos", sincos_pos_embed(hp.decoder_dim, *vit.grid)[None], persistent=False)
        self.decoder_blocks = transformer_blocks(hp.decoder_dim, hp.decoder_depth, hp.decoder_heads, 4.0)
        self.decoder_norm = nn.LayerNorm(hp.decoder_dim)
        self.decoder_pred = nn.Linear(hp.decoder_dim, p * p * c)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in (self.decoder_embed, self.decoder_pred):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)

    def describe(self):
        vit = self.backbone
        return (f"patch {vit.patch_size}: {vit.num_patches} patches, {n_visible(vit.num_patches, self.hp.mask_ratio)}"
                f" visible to the encoder")

    def make_batch(self, x, generator):
        """The augmented, normalised image and its patch masking: ids_keep (B x n_keep), ids_restore and mask
        (B x N). He et al. pretrain on a random resized crop (area 0.2-1) with a horizontal flip, and nothing
        more (masking is the regulariser; colour jitter hurt, Table 1f); without them a small data set seen
        for hundreds of epochs is reconstructed from memory."""
        v = to_float(x)
        if self.hp.crop_scale[0] < 1:
            v = random_resized_crop(v, tuple(v.shape[-2:]), scale=self.hp.crop_scale, generator=generator)
        if self.hp.flip_p > 0:
            v = random_hflip(v, self.hp.flip_p, generator=generator)
        img = normalize(v, self.spec.mean, self.spec.std)
        ids_keep, ids_restore, mask, _ = random_patch_mask(img.shape[0], self.backbone.num_patches,
                                                           self.hp.mask_ratio, generator, img.device)
        return {"img": img, "ids_keep": ids_keep, "ids_restore": ids_restore, "mask": mask}

    def decode(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Visible tokens (B, n_keep, dim) -> predicted pixels of every patch (B, N, p*p*C): mask tokens fill
        the missing places, the sequence is unshuffled into patch order before the position embeddings."""
        t = unshuffle_tokens(self.decoder_embed(latent), self.mask_token, ids_restore)  # t: B x N x d, patch order
        t = t + self.decoder_pos.to(t.dtype)
        for blk in self.decoder_blocks:
            t = blk(t)
        return self.decoder_pred(self.decoder_norm(t))

    def targets(self, img: torch.Tensor) -> torch.Tensor:
        """What each patch should be reconstructed as: (B, N, p*p*C), normalised per patch by default."""
        t = patchify(img.float(), self.backbone.patch_size)
        return normalized_patches(t) if self.hp.norm_pix_loss else t

    def forward(self, batch):
        img, mask = batch["img"], batch["mask"]
        latent = self.backbone.forward_features(img, batch["ids_keep"])["tokens"]  # latent: B x n_keep x dim
        pred = self.decode(latent, batch["ids_restore"])  # pred: B x N x p*p*C
        return masked_patch_mse(pred, self.targets(img), mask), {}
