"""A run's tokenizer: WordPiece (Hugging Face `tokenizers`) trained on the pretraining split only, saved as
RUN_DIR/tokenizer.json; pretraining, `eval` and `embed` all turn text into ids with that one file.

Special tokens come first, in the order of SPECIALS, so their ids are fixed (PAD 0, CLS 1, SEP 2, MASK 3, UNK 4)
and methods (MLM's masking) can rely on them. Every document becomes "[CLS] text [SEP]", truncated and
right-padded to exactly `seq_len` ids; the padding and truncation settings are saved inside tokenizer.json.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from selfsup.data.types import Dataset
from selfsup.errors import SelfSupError

os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")  # fitted before any fork; silences the fork warning

SPECIALS = ("[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]")
PAD_ID, CLS_ID, SEP_ID, MASK_ID, UNK_ID = range(len(SPECIALS))
NUM_SPECIAL = len(SPECIALS)  # ids from here on are words; MLM also masks [UNK] (the last special), as BERT
FILENAME = "tokenizer.json"


def train_tokenizer(texts: list[str], vocab_size: int, seq_len: int):
    """A lower-casing WordPiece tokenizer (BERT's normaliser and pre-tokeniser) fitted to `texts`.

    WordPiece as in BERT (Devlin et al. 2019). Words seen fewer than twice get no vocabulary entry of their own
    (min_frequency=2), so a small corpus yields fewer than `vocab_size` entries rather than memorised rarities.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    if seq_len < 3:
        raise SelfSupError(f"--seq-len must be at least 3 ([CLS] text [SEP]), got {seq_len}")
    if vocab_size <= NUM_SPECIAL:
        raise SelfSupError(f"--vocab-size must exceed the {NUM_SPECIAL} special tokens, got {vocab_size}")
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=list(SPECIALS),
                                        show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    got = [tok.token_to_id(s) for s in SPECIALS]
    if got != list(range(NUM_SPECIAL)):  # the trainer puts the specials first; the masking relies on it
        raise RuntimeError(f"special token ids {got}, expected 0..{NUM_SPECIAL - 1}")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                       special_tokens=[("[CLS]", CLS_ID), ("[SEP]", SEP_ID)])
    tok.enable_truncation(max_length=seq_len)
    tok.enable_padding(pad_id=PAD_ID, pad_token="[PAD]", length=seq_len)
    return tok


def load_tokenizer(path: str | Path):
    """A tokenizer saved by `save_tokenizer` (its truncation and padding settings included)."""
    from tokenizers import Tokenizer

    path = Path(path)
    if not path.is_file():
        raise SelfSupError(f"no tokenizer at {path}")
    return Tokenizer.from_file(str(path))


def tokenizer_from_json(text: str | None):
    """The tokenizer held in the text of a saved tokenizer.json (as sent between processes); None for None."""
    if text is None:
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_str(text)


def save_tokenizer(tok, path: str | Path) -> None:
    """Write the tokenizer (vocabulary, normaliser, template, truncation, padding) as one JSON file."""
    tok.save(str(path))


def encode(tok, texts: list[str]) -> torch.Tensor:
    """int64 (N, seq_len) ids of `texts`: [CLS] ... [SEP] then [PAD]s, truncated to the saved length."""
    if not texts:
        return torch.zeros(0, tok.padding["length"], dtype=torch.long)
    return torch.tensor([e.ids for e in tok.encode_batch(texts)], dtype=torch.long)


def as_tokens(data: Dataset | None, tok) -> Dataset | None:
    """Text made token ids with `tok` (the raw texts kept); data of any other kind is returned as it is."""
    if data is None or data.kind != "text":
        return data
    if tok is None:
        raise SelfSupError(f"{data.name} holds text, but the run was not trained on text (it has no {FILENAME})")
    return dataclasses.replace(data, x=encode(tok, data.texts), kind="tokens", vocab_size=tok.get_vocab_size(),
                               pad_id=PAD_ID, continuation_ids=continuation_ids(tok))


def continuation_ids(tok) -> tuple[int, ...]:
    """The ids of WordPiece's word continuations ("##ing"): whole-word and span masking keep them with their word."""
    prefix = tok.model.continuing_subword_prefix
    return tuple(sorted(i for t, i in tok.get_vocab().items() if t.startswith(prefix) and len(t) > len(prefix)))


def fit_for(data: Dataset, vocab_size: int, seq_len: int):
    """The tokenizer a new run trains on its pretraining split (the holdout already removed); None for non-text."""
    return train_tokenizer(data.texts, vocab_size, seq_len) if data.kind == "text" else None


def run_tokenizer(run_dir: str | Path):
    """The tokenizer a run saved, or None when it trained on data that needed none."""
    path = Path(run_dir) / FILENAME
    return load_tokenizer(path) if path.is_file() else None
