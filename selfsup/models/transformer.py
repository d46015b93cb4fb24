"""A small Transformer encoder for token ids: pre-norm blocks, learned positions, padding-masked attention.

Registered as backbones for token data ("transformer_tiny", "transformer", "transformer_base"). `forward` gives
the pooled vector (mean over non-pad positions by default, or the [CLS] position); `forward_features` also the
per-token outputs. The token embedding `tok` is what an MLM head ties its output layer to.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..data.types import DataSpec
from .backbones import register_backbone

POOLS = ("mean", "cls")


class Block(nn.Module):
    """x + attn(LN(x)); x + mlp(LN(x)) — the pre-norm order (Xiong et al. 2020), stable without warmup tricks."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """x: B x L x D; keep: B x 1 x 1 x L (or B x 1 x L x L) bool, True where a key may be attended to (not
        padding; with packed documents, the query's own document)."""
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)  # a: B x heads x L x D/heads
        x = x + self.proj(a.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))


class TransformerEncoder(nn.Module):
    """Token + learned position embeddings, `depth` pre-norm blocks, a final LayerNorm (BERT-style encoder,
    Devlin et al. 2019, in the pre-norm arrangement). No dropout: every random draw of a run comes from its
    seeded generators, so a resumed run is exact."""

    # Transformers fine-tune with AdamW (BERT; MAE, He et al. 2021, appendix A.2), not the CNNs' SGD
    # (evaluate/report.py FINETUNE_STARTS).
    finetune_family = "transformer"

    def __init__(self, vocab_size: int, max_len: int, pad_id: int = 0, dim: int = 128, depth: int = 4,
                 heads: int = 4, mlp_ratio: int = 4, pool: str = "mean"):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        self.pad_id, self.pool, self.feature_dim = pad_id, pool, dim
        self.tok = nn.Embedding(vocab_size, dim)
        self.pos = nn.Parameter(torch.zeros(1, max_len, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        nn.init.normal_(self.tok.weight, std=0.02)
        nn.init.normal_(self.pos, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward_features(self, ids: torch.Tensor, positions: torch.Tensor | None = None,
                         segments: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """ids: B x L int64 -> tokens (B x L x D, final-normed), pooled (B x D), keep (B x L, not padding).

        Packed rows (selfsup.views.packing) also pass `positions` (B x L, the position embedding each token
        takes) and `segments` (B x L): a token then attends only to tokens of its own segment (padding to
        padding, so no query row is all masked). Pooling is for unpacked rows (one document each).
        """
        keep = ids != self.pad_id  # keep: B x L
        pos = self.pos[:, :ids.shape[1]] if positions is None else self.pos[0, positions]  # pos: (1|B) x L x D
        x = self.tok(ids) + pos
        if segments is None:
            mask = keep[:, None, None, :]  # every row keeps its [CLS], so no query sees an all-masked row
        else:
            mask = (segments[:, :, None] == segments[:, None, :])[:, None]  # mask: B x 1 x L x L
        for block in self.blocks:
            x = block(x, mask)
        x = self.norm(x)
        if self.pool == "cls":
            pooled = x[:, 0]
        else:
            w = keep.unsqueeze(-1).to(x.dtype)
            pooled = (x * w).sum(1) / w.sum(1).clamp(min=1)
        return {"tokens": x, "pooled": pooled, "keep": keep}

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.forward_features(ids)["pooled"]


# name -> (width, depth, heads): tiny for tests, the CPU default (the text demo in minutes on 2 cores), a GPU size
SIZES = {"transformer_tiny": (32, 2, 2), "transformer": (64, 2, 2), "transformer_base": (256, 6, 8)}


def _builder(dim: int, depth: int, heads: int):
    return lambda spec: TransformerEncoder(spec.vocab_size, spec.shape[0], spec.pad_id, dim, depth, heads)


for _name, (_dim, _depth, _heads) in SIZES.items():
    register_backbone(_name, kinds=("tokens",))(_builder(_dim, _depth, _heads))


def build_transformer(spec: DataSpec, dim: int, depth: int, heads: int, pool: str = "mean") -> TransformerEncoder:
    """A TransformerEncoder of any size for token data `spec` (the registered names fix three sizes)."""
    return TransformerEncoder(spec.vocab_size, spec.shape[0], spec.pad_id, dim, depth, heads, pool=pool)
