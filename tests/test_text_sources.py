"""Text pretraining on several sources: the union, each labelled source's holdout never pretrained on nor seen
by the tokenizer, evaluation on one labelled source; gzip-compressed text files."""
import gzip
import json
import re

import pytest
import torch
import yaml

from selfsup import Config, SelfSupError
from selfsup.data.prepare import load_eval_splits
from selfsup.cli import main
from selfsup.data import load_data
from selfsup.data.tokenize import load_tokenizer
from selfsup.rundir import RunPaths
from selfsup.train.setup import open_run


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def own_word(label: str, i: int) -> str:
    """A made-up word for document i (seeded letters), written twice in it: frequent enough for a vocabulary."""
    g = torch.Generator().manual_seed(2 * i + (label == "sky"))
    return "".join(chr(ord("a") + int(c)) for c in torch.randint(0, 26, (7,), generator=g))


def labelled_folder(root, n=60):
    """Two categories of fortune-style files; every document has a word of its own, twice."""
    root.mkdir()
    for label, words in [("sea", "wave boat fish salt"), ("sky", "cloud bird wind star")]:
        docs = [f"{words} the {words.split()[i % 4]} and {own_word(label, i)} {own_word(label, i)}" for i in range(n)]
        (root / label).write_text("".join(d + "\n%\n" for d in docs))
    return root


def unlabelled_file(path, n=120):
    path.write_text("\n".join(f"the dictionary says word{i % 7} means lexicon{i % 5}" for i in range(n)) + "\n")
    return path


def config(tmp_path, data, **kw):
    return Config(**dict(method="mlm", data=data, out=str(tmp_path / "run"), device="cpu", batch_size=16,
                         backbone="transformer_tiny", epochs=1, vocab_size=1000, seq_len=16, knn_every=0, **kw))


def test_union_pretrains_on_every_source_without_the_labelled_holdout(tmp_path):
    fort, book = labelled_folder(tmp_path / "fort"), unlabelled_file(tmp_path / "book.txt")
    run = open_run(config(tmp_path, [str(book), str(fort)]), resume=False, device=torch.device("cpu"))
    try:
        seen = set(run.train.texts)
        paths = RunPaths(run.paths.root)
        saved = json.loads(paths.holdout.read_text())
        assert [p["data"] for p in saved["parts"]] == [str(book), str(fort)]
        assert [p["labelled"] for p in saved["parts"]] == [False, True]
        assert saved["n"] == 120 + 120 and len(saved["indices"]) == 24  # 20% of the labelled part only
        train, test, note = load_eval_splits(str(fort), seed=0, run=paths)
        assert "holdout" in note and len(test) == 24 and len(train) == 96
        assert not seen & set(test.texts)  # no evaluation document is pretrained on
        assert set(train.texts) <= seen and set(load_data(str(book)).texts) <= seen
        assert len(run.train) == 120 + 96
        vocab = load_tokenizer(paths.root / "tokenizer.json").get_vocab()
        own = lambda docs: {t.split()[-1] for t in docs}  # noqa: E731  each document's own word
        assert own(train.texts) <= set(vocab)  # a word twice in a pretraining document gets an entry...
        assert not own(test.texts) & set(vocab)  # ...one in an evaluation document never: the tokenizer never saw it
        assert "lexicon" in vocab  # ...but did see the unlabelled source
        assert yaml.safe_load(paths.config.read_text())["data"] == [str(book), str(fort)]
    finally:
        run.lock.release()


def test_the_labelled_holdout_is_the_one_a_single_source_run_sets_aside(tmp_path):
    fort, book = labelled_folder(tmp_path / "fort"), unlabelled_file(tmp_path / "book.txt")
    alone = open_run(config(tmp_path / "a", str(fort)), resume=False, device=torch.device("cpu"))
    alone.lock.release()
    union = open_run(config(tmp_path / "b", [str(book), str(fort)]), resume=False, device=torch.device("cpu"))
    union.lock.release()
    tests = [load_eval_splits(str(fort), seed=0, run=RunPaths(r.paths.root))[1].texts for r in (alone, union)]
    assert tests[0] == tests[1]


def test_cli_repeats_data_and_evaluates_on_the_labelled_source(tmp_path, capsys):
    fort, book = labelled_folder(tmp_path / "fort"), unlabelled_file(tmp_path / "book.txt")
    run = tmp_path / "run"
    base = ["pretrain", "--method", "mlm", "--device", "cpu", "--backbone", "transformer_tiny", "--epochs", "1",
            "--batch-size", "16", "--vocab-size", "200", "--seq-len", "16", "--no-progress", "--threads", "1"]
    assert main(base + ["--data", str(fort), "--data", str(book), "--out", str(run)]) == 0, capsys.readouterr().err
    assert main(["eval", str(run), "--protocols", "knn", "--fractions", "100%", "--no-progress"]) == 0  # the first
    captured = capsys.readouterr()
    out = captured.out
    assert "mlm (ours)" in out and "24 samples set aside" in out
    assert re.search(r"samples/s, \d+ tokens/s\)", captured.out + captured.err)  # the epoch line gives the rate
    assert main(["eval", str(run), "--data", str(book), "--no-progress"]) == 2  # unlabelled: nothing to evaluate
    resumed = open_run(Config(out=str(run), epochs=1), resume=True, device=torch.device("cpu"))  # same union
    resumed.lock.release()
    test = load_eval_splits(str(fort), seed=0, run=RunPaths(run))[1]
    assert len(resumed.train) == 120 + 96 and not set(resumed.train.texts) & set(test.texts)
    assert main(base + ["--data", str(fort), "--out", str(tmp_path / "one")]) == 0
    assert yaml.safe_load((tmp_path / "one" / "config.yaml").read_text())["data"] == str(fort)  # one stays a str
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["tokens_per_s"] > 0 and record["logs"]["tokens"] > 16 * 3  # real tokens a step, a second


def test_several_sources_are_text_only_and_named_once(tmp_path):
    book = unlabelled_file(tmp_path / "book.txt")
    with pytest.raises(SelfSupError, match="text pretraining only"):
        load_data([str(book), "digits"])
    with pytest.raises(SelfSupError, match="twice"):
        load_data([str(book), str(book)])


def test_gzip_compressed_text(tmp_path):
    p = tmp_path / "words.dict.dz"  # dictd's dictzip files are gzip-compatible
    p.write_bytes(gzip.compress(b"Abjure\n   To renounce.\n\nAbjurement\n   A renouncing.\n"))
    assert load_data(str(p)).texts == ["Abjure\n   To renounce.", "Abjurement\n   A renouncing."]
    (tmp_path / "bad.gz").write_bytes(b"\x1f\x8b\x08broken")
    with pytest.raises(SelfSupError, match="not valid gzip"):
        load_data(str(tmp_path / "bad.gz"))
