"""Unsupervised SimCSE: the same sentence twice through the encoder with dropout on, InfoNCE over the batch."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Literal

import torch
from torch import nn

from ..losses import embedding_std, top1
from ..losses.simcse import simcse_logits
from .base import Method, OptimDefaults
from .hparams import setting
from .registry import register

SIMCSE = "Gao, Yao & Chen 2021 (SimCSE)"
REF = "princeton-nlp/SimCSE, run_unsup_example.sh"


def dropout_sites(backbone: nn.Module) -> int:
    """How many B x L x D dropout masks one pass of `backbone` takes: BERT's hidden dropout sites (Devlin et al.
    2019; Hugging Face BertEmbeddings/BertSelfOutput/BertOutput): the embedding sum, then in every block the
    attention output and the MLP output, each before its residual addition."""
    blocks = getattr(backbone, "blocks", None)
    if not isinstance(blocks, nn.ModuleList) or not len(blocks) \
            or not all(hasattr(b, "proj") and hasattr(b, "mlp") for b in blocks):
        raise ValueError("simcse needs a transformer backbone (at least one block with `proj` and `mlp`), "
                         f"not {type(backbone).__name__}")
    return 1 + 2 * len(blocks)


@contextlib.contextmanager
def applied_dropout(backbone: nn.Module, keep: torch.Tensor, p: float) -> Iterator[None]:
    """Within the block, every forward pass of `backbone` applies the dropout masks `keep` (S x N x L x D bool,
    S = dropout_sites; True = kept, scaled by 1/(1-p) as inverted dropout). The masks are drawn by the caller
    from the run's seeded generator, so a resumed run draws the same ones; the backbone itself has no dropout
    (models/transformer.py) and is left as it was when the block ends."""
    scale = 1.0 / (1.0 - p)

    def drop(site: int):
        return lambda x: x * keep[site].to(x.dtype) * scale

    first = drop(0)
    handles = []
    try:
        handles.append(backbone.blocks[0].register_forward_pre_hook(lambda m, args: (first(args[0]), *args[1:])))
        for i, block in enumerate(backbone.blocks):
            for j, part in enumerate((block.proj, block.mlp)):
                fn = drop(1 + 2 * i + j)
                handles.append(part.register_forward_hook(lambda m, args, out, fn=fn: fn(out)))
        yield
    finally:
        for h in handles:
            h.remove()


class PoolerMLP(nn.Module):
    """SimCSE's training-only MLP over the pooled vector: dense + tanh, BERT's pooler (the reference's MLPLayer)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dense = nn.Linear(dim, dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(h))


@register
class SimCSE(Method):
    """A Transformer encoder run twice on each batch of sentences with independent dropout masks; the two passes
    of a sentence are its positive pair, the other sentences' second passes its negatives (Gao et al. 2021,
    sec. 3). Each setting's source: `selfsup methods simcse`."""

    name = "simcse"
    paper = "Gao, Yao & Chen 2021, SimCSE: Simple Contrastive Learning of Sentence Embeddings (EMNLP)"
    modality = "tokens"
    backbone_default = "transformer"
    optimizers = {"adamw": OptimDefaults(lr=3e-4, weight_decay=0.0, source=(
        f"wd: {REF} (the Hugging Face Trainer's default 0); lr: ours, for a tiny Transformer trained from scratch "
        "(the paper fine-tunes pretrained BERT-base at 3e-5, appendix A): on fortunes, 150 steps of batch 64, the "
        "linear probe at 10% labels gave 22.6 / 23.2 / 21.0 / 18.4 at 3e-5 / 3e-4 / 1e-3 / 3e-3 (a larger rate "
        "solves the in-batch task sooner and probes worse)"))}
    hardware_defaults = {"cpu": dict(batch_size=64, steps=600)}

    @dataclass
    class Hparams:
        temperature: float = setting(0.05, "softmax temperature of the contrastive loss",
                                     source=f"{SIMCSE}, sec. 3 and appendix D (0.05)")
        dropout: float = setting(0.1, "dropout rate of the two passes (the embedding sum and every attention and "
                                      "MLP output; attention probabilities are not dropped)",
                                 source=f"{SIMCSE}, sec. 3 (BERT's default p = 0.1)")
        pool: Literal["mean", "cls"] = setting("mean", "the sentence vector: the mean over the tokens, or the "
                                                       "[CLS] position (also what evaluation sees)",
                                               source=f"ours: on fortunes (150 steps, lr 3e-4) mean pooling probed "
                                                      "better than [CLS]: linear 24.1 vs 23.2, kNN 20.6 vs 17.6 at "
                                                      "10% labels (one seed); the paper uses [CLS] on pretrained "
                                                      f"BERT ({SIMCSE}, appendix A; pooling ablation, sec. 6.3)")
        mlp: bool = setting(True, "a dense+tanh layer over the sentence vector during training only (dropped for "
                                  "evaluation)", source=f"{SIMCSE}, appendix A; {REF} (--mlp_only_train)")
        grad_clip: float | None = setting(1.0, "largest global gradient norm, clipped after backward (None: none)",
                                          source=f"{REF}: the Hugging Face Trainer's default max_grad_norm 1.0")

        def __post_init__(self):
            if self.temperature <= 0 or not 0 <= self.dropout < 1:
                raise ValueError("temperature must be > 0 and dropout in [0, 1)")
            if self.grad_clip is not None and self.grad_clip <= 0:
                raise ValueError(f"grad_clip must be > 0 (or None), got {self.grad_clip}")

    def __init__(self, spec, hp, backbone):
        super().__init__(spec, hp, backbone)
        self.sites = dropout_sites(self.backbone)
        self.backbone.pool = hp.pool
        self.grad_clip = hp.grad_clip  # the training loop clips the gradient norm to this
        self.mlp = PoolerMLP(self.backbone.feature_dim) if hp.mlp else nn.Identity()

    def make_batch(self, ids, generator):
        """The sentences and, per sentence, a dropout mask for each pass and site, drawn on the device from the
        run's generator: keep B x 2 x S x L x D bool (per sentence, so a process's rows of a global batch carry
        their own masks)."""
        b, length = ids.shape
        shape = (b, 2, self.sites, length, self.backbone.feature_dim)
        keep = torch.rand(shape, generator=generator, device=generator.device).to(ids.device) >= self.hp.dropout
        return {"ids": ids, "keep": keep}

    def forward(self, batch):
        ids = torch.cat([batch["ids"], batch["ids"]])  # ids: 2B x L, one batch so both passes share the kernels
        keep = batch["keep"].transpose(0, 1).flatten(0, 1).transpose(0, 1)  # keep: S x 2B x L x D, rows as ids
        with applied_dropout(self.backbone, keep, self.hp.dropout):
            h = self.mlp(self.backbone(ids))  # h: 2B x D
        h1, h2 = h.chunk(2)
        logits, targets = simcse_logits(h1, h2, self.hp.temperature)  # logits: b x B, fp32
        loss = nn.functional.cross_entropy(logits, targets)
        return loss, {"pos_acc": top1(logits, targets), "z_std": embedding_std(h)}
