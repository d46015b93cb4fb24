"""Masked language modelling: predict the masked tokens of a sequence from their context (BERT's MLM)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..data.tokenize import MASK_ID, NUM_SPECIAL
from ..views.masking import IGNORE, random_mask_tokens
from .base import Method, OptimDefaults
from .hparams import setting
from .registry import register


class MLMHead(nn.Module):
    """BERT's prediction head (Devlin et al. 2019): dense + GELU + LayerNorm, then the output layer tied to the
    input token embedding (Press & Wolf 2017), plus a per-token bias. Tying halves the parameters a small corpus
    must fit and keeps the head out of the encoder: fine-tuning and evaluation drop it with no weight lost."""

    def __init__(self, dim: int, vocab_size: int):
        super().__init__()
        self.transform = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim))
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, h: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """h: M x D hidden states of the selected positions, embedding: vocab x D (the backbone's, passed in so
        the tied weight lives, and is saved, in one place) -> M x vocab logits."""
        return F.linear(self.transform(h), embedding, self.bias)


@register
class MLM(Method):
    """A Transformer encoder + a tied MLM head; the loss is cross-entropy on the 15% of tokens selected."""

    name = "mlm"
    aliases = ("bert",)
    paper = ("Devlin et al. 2019, BERT: Pre-training of Deep Bidirectional Transformers for Language "
             "Understanding (NAACL)")
    modality = "tokens"
    backbone_default = "transformer"
    optimizers = {"adamw": OptimDefaults(lr=1e-3, weight_decay=0.01)}
    hardware_defaults = {"cpu": dict(batch_size=128, steps=600)}

    @dataclass
    class Hparams:
        mask_p: float = setting(0.15, "share of non-special, non-pad tokens selected for prediction")
        mask_token_p: float = setting(0.8, "share of the selected tokens replaced by [MASK]")
        random_token_p: float = setting(0.1, "share of the selected tokens replaced by a random token (the rest "
                                             "stay unchanged)")
        pool: Literal["mean", "cls"] = setting("mean", "the pooled feature evaluation sees: mean over the tokens, "
                                                       "or the [CLS] position")

        def __post_init__(self):
            if not 0 < self.mask_p < 1 or self.mask_token_p < 0 or self.random_token_p < 0 \
                    or self.mask_token_p + self.random_token_p > 1:
                raise ValueError("mask_p must be in (0, 1); mask_token_p and random_token_p >= 0, summing to <= 1")

    def __init__(self, spec, hp, backbone):
        super().__init__(spec, hp, backbone)
        if not isinstance(getattr(self.backbone, "tok", None), nn.Embedding):
            raise ValueError(f"mlm needs a backbone with a token embedding `tok` (a transformer), not {backbone}")
        self.backbone.pool = hp.pool
        self.head = MLMHead(self.backbone.feature_dim, spec.vocab_size)

    def make_batch(self, ids, generator):
        """Dynamic masking (RoBERTa, Liu et al. 2019): fresh masks every batch, drawn on the device."""
        inputs, labels = random_mask_tokens(ids, generator, NUM_SPECIAL, self.spec.vocab_size, MASK_ID,
                                            self.hp.mask_p, self.hp.mask_token_p, self.hp.random_token_p)
        return {"inputs": inputs, "labels": labels}

    def forward(self, batch):
        labels = batch["labels"]
        hidden = self.backbone.forward_features(batch["inputs"])["tokens"]  # hidden: B x L x D
        chosen = labels != IGNORE
        logits = self.head(hidden[chosen], self.backbone.tok.weight).float()  # logits: M x vocab, M selected
        target = labels[chosen]
        m = chosen.sum().clamp(min=1)  # a batch with nothing selected gives loss 0, not NaN
        loss = F.cross_entropy(logits, target, reduction="sum") / m
        with torch.no_grad():
            acc = (logits.argmax(1) == target).sum() / m
        # perplexity of this step's masked tokens; the epoch's log is the mean over steps (>= exp(mean loss))
        return loss, {"mlm_acc": acc, "perplexity": loss.detach().exp()}
