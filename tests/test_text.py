"""Text sources (plain, fortunes, TSV, folders), their one-line errors, and the run's tokenizer."""
import json
import os

import pytest
import torch

from selfsup import Config, SelfSupError, pretrain
from selfsup.data import load_data
from selfsup.data import text as text_mod
from selfsup.data.tokenize import (CLS_ID, MASK_ID, PAD_ID, SEP_ID, SPECIALS, UNK_ID, as_tokens, encode,
                                   load_tokenizer, save_tokenizer, train_tokenizer)

WORDS = ["apple", "river", "stone", "cloud", "tiger", "lemon", "piano", "candle", "forest", "rocket"]


@pytest.fixture(autouse=True)
def _one_thread():
    """One thread: these models are tiny, and on a shared CPU a second thread's spin-waits cost more than it gives."""
    torch.set_num_threads(1)


def test_plain_text_one_document_per_line(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("first line\n\n  second line  \nthird\n")  # a blank line at the start/end only is not a separator
    p.write_text("first line\n  second line  \nthird\n\n")
    d = load_data(str(p))
    assert d.kind == "text" and d.texts == ["first line", "second line", "third"] and d.labels is None
    assert d.x.shape == (3, 0) and len(d) == 3


def test_plain_text_blank_line_separated(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("para one\nstill one\n\n\npara two\n \npara three")
    assert load_data(str(p)).texts == ["para one\nstill one", "para two", "para three"]


def test_fortunes_format_file(tmp_path):
    p = tmp_path / "jokes"  # no extension, as in /usr/share/games/fortunes
    p.write_text("A joke.\n\nWith a blank line.\n%\nSecond.\n\t-- Someone\n%\n%\nThird.\n%\n")
    assert load_data(str(p)).texts == ["A joke.\n\nWith a blank line.", "Second.\n\t-- Someone", "Third."]


def test_tsv_labels(tmp_path):
    p = tmp_path / "a.tsv"
    p.write_text("pos\tgreat film\nneg\tawful\tplot\n\npos\tfine\n")
    d = load_data(str(p))
    assert d.texts == ["great film", "awful\tplot", "fine"] and d.classes == ["neg", "pos"]
    assert d.labels.tolist() == [1, 0, 1]


def test_folder_labels_from_file_and_subfolder_names(tmp_path):
    (tmp_path / "cats").write_text("meow\n%\npurr\n%\n")
    (tmp_path / "cats.dat").write_bytes(b"\x00\x01\xff")  # strfile index: skipped
    os.symlink(tmp_path / "cats", tmp_path / "cats.u8")  # fortune's .u8 links: skipped
    os.symlink(tmp_path / "cats", tmp_path / "again")  # any symlink: skipped
    (tmp_path / "dogs").mkdir()
    (tmp_path / "dogs" / "a.txt").write_text("woof\nbark\n")
    d = load_data(str(tmp_path))
    assert d.texts == ["meow", "purr", "woof", "bark"] and d.classes == ["cats", "dogs"]
    assert d.labels.tolist() == [0, 0, 1, 1]
    assert d.subset(torch.tensor([3, 0])).texts == ["bark", "meow"]  # texts follow every subset


def test_fortunes_builtin_categories(tmp_path, monkeypatch):
    for name, n in [("science", 200), ("tiny", 199), ("cookie", 300), ("songs-poems", 250)]:
        (tmp_path / name).write_text("".join(f"entry {i} of {name}\n%\n" for i in range(n)))
    monkeypatch.setattr(text_mod, "FORTUNES_DIR", str(tmp_path))
    d = load_data("fortunes")
    assert d.classes == ["science", "songs-poems"] and len(d) == 450 and d.name == "fortunes"
    assert load_data("fortunes", "test") is None  # one split: evaluation tests on the run's holdout


@pytest.mark.skipif(not os.path.isdir("/usr/share/games/fortunes"), reason="Debian package fortunes not installed")
def test_fortunes_installed():
    d = load_data("fortunes")
    assert len(d.classes) >= 15 and not set(d.classes) & set(text_mod.FORTUNES_MIXED)
    assert min(torch.bincount(d.labels).tolist()) >= text_mod.FORTUNES_MIN_ENTRIES
    assert all(t and "\n%\n" not in t for t in d.texts)


@pytest.mark.parametrize("content,match", [
    (b"", "no documents found in .*empty.txt \\(empty corpus\\)"),
    (b"\n  \n%\n%\n", "no documents found"),
    (b"good line\nbad \xff byte\n", "is not UTF-8 text: undecodable byte 0xff at byte offset 14"),
])
def test_text_file_errors(tmp_path, content, match):
    p = tmp_path / "empty.txt"
    p.write_bytes(content)
    with pytest.raises(SelfSupError, match=match):
        load_data(str(p))


def test_tsv_row_without_tab(tmp_path):
    p = tmp_path / "a.tsv"
    p.write_text("pos\tgood\nno tab here\n")
    with pytest.raises(SelfSupError, match=r"a\.tsv:2: expected label<TAB>text, found no tab"):
        load_data(str(p))


def test_empty_text_folder_and_labels_file(tmp_path):
    (tmp_path / "a").write_text("%\n")
    with pytest.raises(SelfSupError, match="empty corpus"):
        load_data(str(tmp_path))
    (tmp_path / "b.txt").write_text("x\n")
    with pytest.raises(SelfSupError, match="labels file cannot be given with a text source"):
        load_data(str(tmp_path / "b.txt"), labels="y.npy")


def corpus(n=120, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [" ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (int(torch.randint(3, 30, (1,), generator=g)),),
                                                     generator=g).tolist()) for _ in range(n)]


def test_tokenizer_specials_padding_and_round_trip(tmp_path):
    texts = corpus()
    tok = train_tokenizer(texts, vocab_size=200, seq_len=16)
    assert [tok.token_to_id(s) for s in SPECIALS] == [PAD_ID, CLS_ID, SEP_ID, MASK_ID, UNK_ID] == [0, 1, 2, 3, 4]
    ids = encode(tok, texts + ["Apple, RIVER! unseenword"])
    assert ids.dtype == torch.long and ids.shape == (len(texts) + 1, 16)
    assert (ids[:, 0] == CLS_ID).all() and ((ids == SEP_ID).sum(1) == 1).all()  # [CLS] ... [SEP], truncated too
    lengths = (ids != PAD_ID).sum(1)
    assert ((ids == PAD_ID) == (torch.arange(16) >= lengths[:, None])).all()  # right-padded only
    last = ids[-1]
    assert tok.decode(last.tolist()) == "apple river" and UNK_ID in last  # lower-cased; unseen characters: [UNK]
    save_tokenizer(tok, tmp_path / "tokenizer.json")
    again = load_tokenizer(tmp_path / "tokenizer.json")
    assert torch.equal(encode(again, texts + ["Apple, RIVER! unseenword"]), ids)
    assert again.get_vocab() == tok.get_vocab()
    with pytest.raises(SelfSupError, match="no tokenizer at"):
        load_tokenizer(tmp_path / "nope.json")


def test_run_tokenizer_is_fitted_on_the_pretraining_split_only(tmp_path):
    # every document has a word of its own, twice (min_frequency 2): the holdout's words must not be in the vocab
    words = ["".join("abcdefghij"[int(c)] for c in f"{i:03d}") + "q" for i in range(150)]
    lines = [f"{'ab'[i % 2]}\t{w} {w} {WORDS[i % 10]}" for i, w in enumerate(words)]
    (tmp_path / "c.tsv").write_text("\n".join(lines) + "\n")
    cfg = Config(method="mlm", data=str(tmp_path / "c.tsv"), out=str(tmp_path / "run"), device="cpu",
                 backbone="transformer_tiny", epochs=0, knn_every=0, vocab_size=3000, seq_len=8)
    run = pretrain(cfg, progress=False)
    held = set(json.loads((run / "holdout.json").read_text())["indices"])
    vocab = load_tokenizer(run / "tokenizer.json").get_vocab()
    assert len(held) == 30
    assert not [words[i] for i in held if words[i] in vocab]
    seen = [words[i] in vocab for i in range(150) if i not in held]
    assert sum(seen) / len(seen) > 0.9


def test_every_process_rebuilds_rank_0s_pretraining_data(tmp_path):
    # under torchrun rank 0 opens the run and broadcasts its holdout and tokenizer as plain values; the other
    # processes rebuild the same token ids from them (train/parallel.py through data/prepare.py)
    from selfsup.data.prepare import replica_data, shared_parts
    from selfsup.train.setup import open_run

    cfg = Config(method="mlm", data="fortunes", out=str(tmp_path / "run"), device="cpu",
                 backbone="transformer_tiny", epochs=0, knn_every=0, vocab_size=200, seq_len=8)
    run = open_run(cfg, False, torch.device("cpu"))
    try:
        parts = shared_parts(run.paths, given=False)
        again = replica_data(run.cfg, **parts)
    finally:
        run.lock.release()
    assert len(parts["index"]) > 0 and json.loads(parts["tokenizer"])["model"]["type"] == "WordPiece"
    assert again.kind == "tokens" and torch.equal(again.x, run.train.x) and again.texts == run.train.texts


def test_as_tokens_needs_a_tokenizer_for_text(tmp_path):
    (tmp_path / "a.txt").write_text("one\ntwo\n")
    d = load_data(str(tmp_path / "a.txt"))
    with pytest.raises(SelfSupError, match="holds text, but the run was not trained on text"):
        as_tokens(d, None)
    tok = train_tokenizer(["one two", "one two"], 50, 6)
    t = as_tokens(d, tok)
    assert t.kind == "tokens" and t.x.shape == (2, 6) and t.texts == ["one", "two"] and t.vocab_size > 5
