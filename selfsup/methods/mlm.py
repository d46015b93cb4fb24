"""Masked language modelling: predict the masked tokens of a sequence from their context (BERT's MLM)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..data.tokenize import MASK_ID, NUM_SPECIAL, UNK_ID
from ..views.masking import IGNORE, random_mask_tokens
from .base import Method, OptimDefaults
from .hparams import setting
from .registry import register


BERT = "Devlin et al. 2019 (BERT)"
# [UNK] is the last special id: from it on, every id is a token BERT's masking may select (it selects [UNK] like
# any word; only [PAD] [CLS] [SEP] [MASK] are never selected) and may draw as a random replacement.
FIRST_MASKABLE = UNK_ID
assert FIRST_MASKABLE == NUM_SPECIAL - 1, "the masking relies on [UNK] being the last special token"


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
    """A Transformer encoder + a tied MLM head; the loss is cross-entropy on the 15% of tokens selected.

    As BERT: [UNK] is selected like any word, and the global gradient norm is clipped at 1.0 (`grad_clip`, the
    reference code's clip_by_global_norm). Each setting's source: `selfsup methods mlm`.
    """

    name = "mlm"
    aliases = ("bert",)
    paper = ("Devlin et al. 2019, BERT: Pre-training of Deep Bidirectional Transformers for Language "
             "Understanding (NAACL)")
    modality = "tokens"
    backbone_default = "transformer"
    optimizers = {"adamw": OptimDefaults(lr=1e-3, weight_decay=0.01, source=f"wd: {BERT}, appendix A.2 (Adam, "
                                         "L2 weight decay 0.01); lr: ours, 10x BERT's 1e-4 for a tiny Transformer "
                                         "on a small corpus (not tuned)")}
    hardware_defaults = {"cpu": dict(batch_size=128, steps=600)}

    @dataclass
    class Hparams:
        mask_p: float = setting(0.15, "share of the tokens ([UNK] included; never [PAD] [CLS] [SEP] [MASK]) "
                                      "selected for prediction", source=f"{BERT}, sec. 3.1 (15%)")
        mask_token_p: float = setting(0.8, "share of the selected tokens replaced by [MASK]",
                                      source=f"{BERT}, sec. 3.1 and appendix C.2 (80/10/10)")
        random_token_p: float = setting(0.1, "share of the selected tokens replaced by a random token, [UNK] or a "
                                             "word (the rest stay unchanged)",
                                        source=f"{BERT}, sec. 3.1 and appendix C.2 (80/10/10)")
        pool: Literal["mean", "cls"] = setting("mean", "the pooled feature evaluation sees: mean over the tokens, "
                                                       "or the [CLS] position",
                                               source="ours: frozen features are probed, and mean pooling is "
                                                      "Sentence-BERT's default (Reimers & Gurevych 2019); BERT "
                                                      "classifies from [CLS] after fine-tuning (sec. 3)")
        grad_clip: float | None = setting(1.0, "largest global gradient norm, clipped after backward (None: none)",
                                          source="BERT's reference code (google-research/bert, optimization.py: "
                                                 "clip_by_global_norm, clip_norm 1.0); not stated in the paper")

        def __post_init__(self):
            if not 0 < self.mask_p < 1 or self.mask_token_p < 0 or self.random_token_p < 0 \
                    or self.mask_token_p + self.random_token_p > 1:
                raise ValueError("mask_p must be in (0, 1); mask_token_p and random_token_p >= 0, summing to <= 1")
            if self.grad_clip is not None and self.grad_clip <= 0:
                raise ValueError(f"grad_clip must be > 0 (or None), got {self.grad_clip}")

    def __init__(self, spec, hp, backbone):
        super().__init__(spec, hp, backbone)
        if not isinstance(getattr(self.backbone, "tok", None), nn.Embedding):
            raise ValueError(f"mlm needs a backbone with a token embedding `tok` (a transformer), not {backbone}")
        self.backbone.pool = hp.pool
        self.grad_clip = hp.grad_clip  # the training loop clips the gradient norm to this
        self.head = MLMHead(self.backbone.feature_dim, spec.vocab_size)

    def make_batch(self, ids, generator):
        """Dynamic masking (RoBERTa, Liu et al. 2019): fresh masks every batch, drawn on the device. Every id from
        [UNK] on may be selected and drawn as a replacement (BERT draws from the whole vocabulary; a special token
        as replacement would change the sequence's structure, so those four are left out)."""
        inputs, labels = random_mask_tokens(ids, generator, FIRST_MASKABLE, self.spec.vocab_size, MASK_ID,
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
