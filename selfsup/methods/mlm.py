"""Masked language modelling: predict the masked tokens of a sequence from their context (BERT's MLM)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..data.tokenize import MASK_ID, NUM_SPECIAL, PAD_ID, UNK_ID
from ..views.masking import IGNORE, UNITS, mask_tokens, random_mask_tokens, unit_mask_params
from ..views.packing import LAYOUTS, pack
from .base import Method, OptimDefaults
from .hparams import setting
from .registry import register


BERT = "Devlin et al. 2019 (BERT)"
SPANBERT = "Joshi et al. 2020 (SpanBERT), sec. 3.1"
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
    """A Transformer encoder + a tied MLM head; the loss is cross-entropy on the selected tokens (`mask_p` of
    them: single tokens, whole words or spans, `masking`), a step's documents packed end to end (`packing`).

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
    # 2,400 steps: what the image main job's ten minutes buy (465 s on one thread for fortunes); measured on
    # fortunes at 10% labels, linear 35.3 / fine-tune 33.5 against 30.5 / 31.9 after 600 (README, Text).
    hardware_defaults = {"cpu": dict(batch_size=128, steps=2400)}
    counted_log = "tokens"  # metrics.jsonl gets tokens_per_s: real tokens a second, padding not counted

    @dataclass
    class Hparams:
        mask_p: float = setting(0.4, "share of the tokens ([UNK] included; never [PAD] [CLS] [SEP] [MASK]) "
                                     "selected for prediction",
                                source="Wettig et al. 2023 (Should You Mask 15% in MLM?, EACL): 40% beats BERT's 15% "
                                       "(sec. 3.1); measured here on fortunes, 400 steps, 2 seeds: linear probe at "
                                       "10% labels +2.3 points over 15% (README, Text)")
        masking: Literal["token", "whole_word", "span"] = setting(
            "whole_word", "what is selected: single tokens (each with probability mask_p), whole words (every "
                          "WordPiece of a word), or spans of whole words; words and spans until mask_p of the "
                          "tokens are selected",
            source=f"token: {BERT}, sec. 3.1; whole_word: BERT's reference code (google-research/bert, "
                   f"--do_whole_word_mask); span: {SPANBERT}. Default measured on fortunes at 40%, 2 seeds: "
                   "whole_word's kNN +1.6 (k=200) and +2.0 (tuned) points over token, linear -0.3 (README, Text)")
        span_p: float = setting(0.2, "span masking: span lengths in words ~ Geometric(span_p), cut to span_max",
                                source=f"{SPANBERT} (p=0.2; mean span 3.8 words)")
        span_max: int = setting(10, "span masking: the longest span, in words", source=f"{SPANBERT} (10)")
        packing: Literal["none", "documents", "full_sentences"] = setting(
            "documents", "how a step's documents fill its rows: none (one padded row each, cut to the longest), "
                         "documents (end to end, attention and positions kept per document: the same loss "
                         "without the padding compute), full_sentences (end to end, attention across documents)",
            source="ours: documents computes what the padded batch computes (tests/test_mlm_packing.py); "
                   "full_sentences is RoBERTa's FULL-SENTENCES input (Liu et al. 2019, sec. 4.2)")
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
            if not 0 < self.span_p <= 1 or self.span_max < 1:
                raise ValueError("span_p must be in (0, 1] and span_max >= 1")
            if self.grad_clip is not None and self.grad_clip <= 0:
                raise ValueError(f"grad_clip must be > 0 (or None), got {self.grad_clip}")

    def __init__(self, spec, hp, backbone):
        super().__init__(spec, hp, backbone)
        if not isinstance(getattr(self.backbone, "tok", None), nn.Embedding):
            raise ValueError(f"mlm needs a backbone with a token embedding `tok` (a transformer), not {backbone}")
        self.backbone.pool = hp.pool
        self.grad_clip = hp.grad_clip  # the training loop clips the gradient norm to this
        self.head = MLMHead(self.backbone.feature_dim, spec.vocab_size)
        continues = torch.zeros(spec.vocab_size, dtype=torch.bool)
        continues[list(spec.continuation_ids)] = True  # WordPiece's "##" ids: a word's later pieces
        self.register_buffer("continues", continues, persistent=False)

    def make_batch(self, ids, generator):
        """Dynamic masking (RoBERTa, Liu et al. 2019): fresh masks every batch, drawn on the device. Every id from
        [UNK] on may be selected and drawn as a replacement (BERT draws from the whole vocabulary; a special token
        as replacement would change the sequence's structure, so those four are left out).

        The cost then follows the real tokens: columns that are padding in every row are cut, and with `packing`
        the documents are laid end to end in R <= B full rows (selfsup.views.packing)."""
        hp = self.hp
        keep = ids != PAD_ID  # keep: B x L, a prefix of each row
        ids = ids[:, :max(int(keep.sum(1).max()), 1)] if ids.numel() else ids  # ids: B x L', L' the longest
        if hp.masking == UNITS[0]:
            inputs, labels = random_mask_tokens(ids, generator, FIRST_MASKABLE, self.spec.vocab_size, MASK_ID,
                                                hp.mask_p, hp.mask_token_p, hp.random_token_p)
        else:
            params = unit_mask_params(ids, generator, FIRST_MASKABLE, self.spec.vocab_size, self.continues,
                                      hp.masking, hp.mask_p, hp.mask_token_p, hp.random_token_p, hp.span_p,
                                      hp.span_max)
            inputs, labels = mask_tokens(ids, params["selected"], params["action"], params["random_ids"], MASK_ID)
        if hp.packing not in LAYOUTS:
            return {"inputs": inputs, "labels": labels}
        keep = keep[:, :ids.shape[1]]
        return pack({"inputs": inputs, "labels": labels}, keep, hp.packing,
                    fill={"inputs": PAD_ID, "labels": IGNORE})  # inputs, labels, positions, segments: R x L'

    def forward(self, batch):
        labels = batch["labels"]
        inputs = batch["inputs"]
        hidden = self.backbone.forward_features(inputs, batch.get("positions"),
                                                batch.get("segments"))["tokens"]  # hidden: B x L x D
        chosen = labels != IGNORE
        logits = self.head(hidden[chosen], self.backbone.tok.weight).float()  # logits: M x vocab, M selected
        target = labels[chosen]
        m = chosen.sum().clamp(min=1)  # a batch with nothing selected gives loss 0, not NaN
        loss = F.cross_entropy(logits, target, reduction="sum") / m
        with torch.no_grad():
            acc = (logits.argmax(1) == target).sum() / m
        # perplexity of this step's masked tokens; the epoch's log is the mean over steps (>= exp(mean loss))
        # tokens: the real (non-pad) tokens of the step; the loop records their rate (counted_log, tokens_per_s)
        return loss, {"mlm_acc": acc, "perplexity": loss.detach().exp(), "tokens": (inputs != PAD_ID).sum()}
