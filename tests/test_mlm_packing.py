"""MLM's cost follows the real tokens (packing), and its whole-word and span masking."""
import pytest
import torch

from selfsup.data import DataSpec
from selfsup.data.tokenize import CLS_ID, NUM_SPECIAL, PAD_ID, SEP_ID, UNK_ID
from selfsup.methods.mlm import MLM
from selfsup.views.masking import IGNORE, span_lengths_pmf, span_starts, unit_mask_params, word_starts
from selfsup.views.packing import first_fit_decreasing, pack

VOCAB, FIRST_PIECE = 80, 50  # ids from FIRST_PIECE on continue a word ("##...")
CONTINUES = torch.arange(VOCAB) >= FIRST_PIECE


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def word_batch(n=256, length=64, seed=0):
    """(ids B x L, word B x L): [CLS] words [SEP] [PAD]...; a word is a start id in [UNK, FIRST_PIECE) and 0-2
    continuation ids; `word` numbers each position's word (-1 on special tokens and padding)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((n, length), PAD_ID)
    word = torch.full((n, length), -1)
    for r in range(n):
        size = int(torch.randint(6, length + 1, (1,), generator=g))
        row, w, k = [CLS_ID], [-1], 0
        while len(row) < size - 1:
            pieces = [int(torch.randint(UNK_ID, FIRST_PIECE, (1,), generator=g))]
            pieces += torch.randint(FIRST_PIECE, VOCAB, (int(torch.randint(0, 3, (1,), generator=g)),),
                                    generator=g).tolist()
            pieces = pieces[:size - 1 - len(row)]
            row += pieces
            w += [k] * len(pieces)
            k += 1
        ids[r, :len(row) + 1] = torch.tensor(row + [SEP_ID])
        word[r, :len(w)] = torch.tensor(w)
    return ids, word


def mlm(**hp):
    spec = DataSpec("tokens", (64,), vocab_size=VOCAB, pad_id=PAD_ID,
                    continuation_ids=tuple(range(FIRST_PIECE, VOCAB)))
    torch.manual_seed(0)
    return MLM(spec, MLM.Hparams(**hp), "transformer_tiny").eval()


def test_first_fit_decreasing_places_every_document_once():
    rows, offsets = first_fit_decreasing([5, 9, 3, 7, 1, 10], 10)
    # longest first: 10 -> row 0, 9 -> 1, 7 -> 2, 5 fits none -> 3, 3 -> row 2 after the 7, 1 -> row 1 after the 9
    assert rows == [3, 1, 2, 2, 1, 0] and offsets == [0, 0, 7, 0, 9, 0]


def test_packed_rows_hold_every_token_once_with_padding_only_at_the_tail():
    ids, _ = word_batch(64, 48)
    keep = ids != PAD_ID
    out = pack({"inputs": ids}, keep, "documents")
    packed, seg, pos = out["inputs"], out["segments"], out["positions"]
    assert packed.shape[0] < 64 * 0.75  # fewer rows than documents: the padding compute is gone
    real = packed != PAD_ID
    assert torch.equal(real, seg > 0)
    last = real.long().cumsum(1).argmax(1)  # the last real token of each row
    assert all(real[r, :last[r] + 1].all() for r in range(len(packed)))  # padding only after it
    for d in range(64):  # each document whole, in order, in one row, positions from 0
        r, c = (seg == d + 1).nonzero(as_tuple=True)
        assert r.unique().numel() == 1 and torch.equal(c, torch.arange(c[0], c[0] + keep[d].sum()))
        assert torch.equal(packed[r, c], ids[d][keep[d]]) and torch.equal(pos[r, c], torch.arange(len(c)))
    full = pack({"inputs": ids}, keep, "full_sentences")
    assert torch.equal(full["inputs"], packed) and torch.equal(full["segments"], real.long())


@pytest.mark.parametrize("masking", ["token", "whole_word", "span"])
def test_packed_batches_give_the_loss_of_unpacked_ones(masking):
    """The same documents and masked positions, packed with attention per document: the same loss (and
    hidden states); across documents (RoBERTa's FULL-SENTENCES) the loss differs."""
    ids, _ = word_batch(48, 40)
    model = mlm(masking=masking, packing="none", mask_p=0.3)
    batch = model.make_batch(ids, torch.Generator().manual_seed(1))  # masks drawn once
    keep = batch["inputs"] != PAD_ID
    packed = pack(batch, keep, "documents", fill={"inputs": PAD_ID, "labels": IGNORE})
    assert packed["inputs"].numel() < 0.7 * batch["inputs"].numel()
    with torch.no_grad():
        loss, logs = model(batch)
        loss_packed, logs_packed = model(packed)
        crossing, _ = model(pack(batch, keep, "full_sentences", fill={"inputs": PAD_ID, "labels": IGNORE}))
    assert torch.allclose(loss, loss_packed, atol=1e-5), (loss, loss_packed)
    assert logs["tokens"] == logs_packed["tokens"] == keep.sum()
    assert not torch.allclose(loss, crossing, atol=1e-4)


def test_make_batch_packs_and_counts_real_tokens():
    ids, _ = word_batch(32, 64)
    model = mlm(packing="documents")
    batch = model.make_batch(ids, torch.Generator().manual_seed(0))
    assert batch["inputs"].shape[0] < 32 and (batch["inputs"] != PAD_ID).sum() == (ids != PAD_ID).sum()
    padded = mlm(packing="none").make_batch(ids[:, :40].clone().masked_fill_(ids[:, :40] > 0, 7),
                                            torch.Generator())
    assert padded["inputs"].shape == (32, 40)  # unpacked: cut to the longest document, not the run's seq_len


@pytest.mark.parametrize("unit", ["whole_word", "span"])
@pytest.mark.parametrize("rate", [0.15, 0.4])
def test_whole_words_and_spans_at_the_requested_rate_never_special_tokens(unit, rate):
    ids, word = word_batch()
    p = unit_mask_params(ids, torch.Generator().manual_seed(2), UNK_ID, VOCAB, CONTINUES, unit, rate)
    sel = p["selected"]
    maskable = ids >= UNK_ID
    assert not (sel & ~maskable).any()  # never [PAD] [CLS] [SEP] [MASK]
    share = sel.sum() / maskable.sum()
    assert abs(share - rate) < 0.015, share
    for r in range(len(ids)):  # whole words: every piece of a word or none
        for w in word[r].unique().tolist():
            if w >= 0:
                s = sel[r][word[r] == w]
                assert s.all() or not s.any()
    if unit == "span":  # one action per span: a span's [MASK] positions are all or none of it
        mask_pos = sel & (p["action"] == 0)
        runs = (sel[:, 1:] & sel[:, :-1] & (mask_pos[:, 1:] != mask_pos[:, :-1])).sum()
        assert runs < 0.2 * sel.sum()  # only where two selected spans meet


def test_span_lengths_follow_spanbert():
    """Spans in words: Geometric(0.2) on 1..10 renormalised, mean 3.8 (SpanBERT); spans start at word starts."""
    ids, _ = word_batch(64, 64)
    words = word_starts(ids, ids >= UNK_ID, CONTINUES)
    assert not (span_starts(words, torch.Generator().manual_seed(0)) & ~words).any()
    words = torch.ones(4, 5000, dtype=torch.bool)  # long rows: the cut at a row's end does not matter
    starts = span_starts(words, torch.Generator().manual_seed(0), 0.2, 10)
    lengths = torch.cat([row.nonzero().flatten().diff() for row in starts])
    expected = float((span_lengths_pmf(0.2, 10) * torch.arange(1, 11)).sum())
    assert lengths.min() >= 1 and lengths.max() == 10
    assert abs(expected - 3.8) < 0.01 and abs(lengths.float().mean().item() - expected) < 0.1
    share_of_ones = (lengths == 1).float().mean().item()
    assert abs(share_of_ones - float(span_lengths_pmf(0.2, 10)[0])) < 0.02


def test_without_continuation_ids_every_token_is_a_word():
    ids, _ = word_batch(64)
    p = unit_mask_params(ids, torch.Generator().manual_seed(0), UNK_ID, VOCAB, torch.zeros(VOCAB, dtype=torch.bool),
                         "whole_word", 0.4)
    assert abs(p["selected"].sum() / (ids >= NUM_SPECIAL - 1).sum() - 0.4) < 0.02
