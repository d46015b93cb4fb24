"""A small Vision Transformer for 8-64 px images, whose forward can take only a subset of the patches (MAE).

Patch size adapts to the image: the one of 16, 8, 4, 2 that divides both sides and gives the patch count
closest to 64 (28x28 -> 4, 49 patches; 32x32 -> 4, 64; 64x64 -> 8, 64; 8x8 digits -> 2, 16). Fixed 2-D
sine-cosine position embeddings (MAE), pre-norm blocks, no CLS token: the pooled feature is the mean of the
patch tokens after the final LayerNorm (MAE's global pooling for fine-tuning).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..data.types import DataSpec
from ..errors import SelfSupError
from .backbones import register_backbone

PATCH_SIZES = (16, 8, 4, 2)
TARGET_PATCHES = 64


def choose_patch_size(h: int, w: int) -> int:
    """The patch size of PATCH_SIZES dividing h and w whose patch count is nearest TARGET_PATCHES (log scale)."""
    fits = [p for p in PATCH_SIZES if h % p == 0 and w % p == 0]
    if not fits:
        raise SelfSupError(f"the vit backbone needs image sides divisible by a patch size of {PATCH_SIZES}; "
                           f"got {h}x{w} (resize or crop the images to even sides)")
    return min(fits, key=lambda p: abs(math.log((h // p) * (w // p) / TARGET_PATCHES)))


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, p*p*C) with N = (H/p)(W/p) in row-major patch order; each patch's values are
    ordered (row, column, channel), as MAE's patchify."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(t: torch.Tensor, p: int, c: int, h: int, w: int) -> torch.Tensor:
    """The inverse of patchify: (B, N, p*p*C) -> (B, C, H, W)."""
    b = t.shape[0]
    t = t.reshape(b, h // p, w // p, p, p, c)
    return t.permute(0, 5, 1, 3, 2, 4).reshape(b, c, h, w)


def sincos_pos_embed(dim: int, gh: int, gw: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embeddings (gh*gw, dim): half the channels encode the row, half the
    column, each as sin/cos at geometric frequencies (MAE, after Vaswani et al. 2017)."""
    if dim % 4:
        raise ValueError(f"sine-cosine position embeddings need a width divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))

    def axis(n: int) -> torch.Tensor:
        out = torch.arange(n, dtype=torch.float64)[:, None] * omega[None]  # n x dim/4
        return torch.cat([out.sin(), out.cos()], 1)  # n x dim/2

    rows = axis(gh)[:, None].expand(gh, gw, dim // 2)
    cols = axis(gw)[None].expand(gh, gw, dim // 2)
    return torch.cat([rows, cols], -1).reshape(gh * gw, dim).float()


def transformer_blocks(dim: int, depth: int, heads: int, mlp_ratio: float) -> nn.ModuleList:
    """Pre-norm Transformer blocks (LayerNorm -> attention, LayerNorm -> GELU MLP), as ViT and MAE."""
    return nn.ModuleList(nn.TransformerEncoderLayer(dim, heads, int(dim * mlp_ratio), dropout=0.0, activation="gelu",
                                                    batch_first=True, norm_first=True) for _ in range(depth))


class ViT(nn.Module):
    """Patch embedding + position embedding + Transformer blocks + LayerNorm; the forward may keep only some
    patches (``ids_keep``), so a masked autoencoder's encoder never sees the masked ones."""

    # Transformers fine-tune with AdamW (BERT; MAE, He et al. 2021, appendix A.2), not the CNNs' SGD
    # (evaluate/report.py FINETUNE_STARTS).
    finetune_family = "transformer"

    def __init__(self, in_shape: tuple[int, int, int], patch_size: int | None = None, dim: int = 96,
                 depth: int = 4, heads: int = 4, mlp_ratio: float = 4.0):
        super().__init__()
        c, h, w = in_shape
        self.patch_size = p = patch_size or choose_patch_size(h, w)
        self.in_shape = (c, h, w)
        self.grid = (h // p, w // p)
        self.num_patches = self.grid[0] * self.grid[1]
        self.patch_embed = nn.Conv2d(c, dim, p, p)  # a linear map of each flattened patch
        self.register_buffer("pos_embed", sincos_pos_embed(dim, *self.grid)[None], persistent=False)
        self.blocks = transformer_blocks(dim, depth, heads, mlp_ratio)
        self.norm = nn.LayerNorm(dim)
        self.feature_dim = dim
        self.apply(_init)
        w_ = self.patch_embed.weight.data
        nn.init.xavier_uniform_(w_.view(w_.shape[0], -1))  # as a Linear layer (MAE)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens with position embeddings: (B, C, H, W) -> (B, N, dim)."""
        t = self.patch_embed(x).flatten(2).transpose(1, 2)  # t: B x N x dim
        return t + self.pos_embed.to(t.dtype)

    def forward_features(self, x: torch.Tensor, ids_keep: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """{"tokens": (B, N_kept, dim) per-patch outputs after the final norm, "pooled": (B, dim) their mean}.

        ids_keep: long (B, n_keep), the patches to keep (in that order); None keeps all N. Masked patches are
        dropped before the first block, so attention never sees them.
        """
        t = self.embed(x)
        if ids_keep is not None:
            t = torch.gather(t, 1, ids_keep[..., None].expand(-1, -1, t.shape[-1]))  # t: B x n_keep x dim
        for blk in self.blocks:
            t = blk(t)
        t = self.norm(t)
        return {"tokens": t, "pooled": t.mean(1)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)["pooled"]


def _init(m: nn.Module) -> None:
    """MAE's initialisation: Xavier-uniform Linear weights, zero biases, unit LayerNorms."""
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.MultiheadAttention):
        nn.init.xavier_uniform_(m.in_proj_weight)
        nn.init.zeros_(m.in_proj_bias)


@register_backbone("vit")
def _vit(spec: DataSpec) -> ViT:
    """--backbone vit: width 96, 4 blocks, 4 heads (0.45 M parameters), patch size fitted to the images.

    Small on purpose: on two CPU cores a 28 px image through all 49 patches costs ~22 M multiply-adds, so
    extracting features of Fashion-MNIST's 70,000 images for evaluation takes minutes, not an hour."""
    return ViT(spec.shape)
