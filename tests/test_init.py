"""--init RUN_DIR: a run whose encoder starts from another run's; the same tokenizer for text, and no test
sample of the new run ever pretrained on by the init run."""
import pytest
import torch

from selfsup import Config, SelfSupError, pretrain
from selfsup.rundir import load_run
from test_text_sources import labelled_folder, unlabelled_file


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def image_run(out, **kw):
    base = dict(data="digits", out=str(out), device="cpu", batch_size=64, steps=3, epochs=None, knn_every=0)
    return pretrain(Config(**{**base, **kw}), progress=False)


def same_backbone(a, b) -> bool:
    sa, sb = load_run(a).encoder.backbone.state_dict(), load_run(b).encoder.backbone.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_new_method_starts_from_the_init_runs_encoder(tmp_path):
    first = image_run(tmp_path / "simclr", method="simclr")
    start = pretrain(Config(method="byol", data="digits", out=str(tmp_path / "byol0"), device="cpu", epochs=0,
                            init=str(first), knn_every=0), progress=False)  # --epochs 0: the starting point
    assert same_backbone(first, start)
    assert load_run(start).config.backbone == load_run(first).config.backbone  # taken, not the method's default
    cold = pretrain(Config(method="byol", data="digits", out=str(tmp_path / "cold"), device="cpu", epochs=0,
                           knn_every=0), progress=False)
    assert not same_backbone(first, cold)  # without --init: random weights
    moved = image_run(tmp_path / "byol", method="byol", init=str(first))
    assert not same_backbone(first, moved)  # and it trains on from there


def test_init_refuses_another_architecture_or_a_missing_run(tmp_path):
    first = image_run(tmp_path / "simclr", method="simclr")
    with pytest.raises(SelfSupError, match="its encoder is a small_cnn, not the --backbone mlp"):
        image_run(tmp_path / "b", method="simclr", init=str(first), backbone="mlp")
    with pytest.raises(SelfSupError, match="no finished epoch there"):
        image_run(tmp_path / "c", method="simclr", init=str(tmp_path / "nothing"))
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()  # refused before anything is written


def text_config(tmp_path, name, data, method="mlm", **kw):
    base = dict(method=method, data=data, out=str(tmp_path / name), device="cpu", batch_size=16,
                backbone="transformer_tiny", epochs=1, vocab_size=300, seq_len=16, knn_every=0)
    return Config(**{**base, **kw})


def test_text_init_takes_the_tokenizer_and_keeps_the_test_documents_out(tmp_path):
    fort, book = labelled_folder(tmp_path / "fort"), unlabelled_file(tmp_path / "book.txt")
    mlm = pretrain(text_config(tmp_path, "mlm", [str(fort), str(book)]), progress=False)
    # SimCSE on the labelled source alone, from the MLM run: the same holdout of it, the same ids
    cse = pretrain(text_config(tmp_path, "cse", str(fort), method="simcse", epochs=0, init=str(mlm),
                               vocab_size=4096, seq_len=64), progress=False)
    assert (cse / "tokenizer.json").read_text() == (mlm / "tokenizer.json").read_text()
    assert load_run(cse).spec.shape == (16,)  # the init run's sequence length, adopted from the defaults
    assert same_backbone(mlm, cse)
    with pytest.raises(SelfSupError, match="held out other documents of it"):  # another seed: another holdout
        pretrain(text_config(tmp_path, "seed1", str(fort), method="simcse", init=str(mlm), seed=1), progress=False)
    whole = pretrain(text_config(tmp_path, "whole", [str(fort), str(book)], holdout=0.0), progress=False)
    with pytest.raises(SelfSupError, match=f"pretrained on all of it, so it has seen samples of {fort}"):
        pretrain(text_config(tmp_path, "leak", str(fort), method="simcse", init=str(whole)), progress=False)
    unseen = pretrain(text_config(tmp_path, "book-only", str(book)), progress=False)  # never read fort
    pretrain(text_config(tmp_path, "ok", str(fort), method="simcse", init=str(unseen)), progress=False)
    with pytest.raises(SelfSupError, match="tokenizer has --seq-len 16, not 32"):
        pretrain(text_config(tmp_path, "len", str(fort), method="simcse", init=str(mlm), seq_len=32), progress=False)
