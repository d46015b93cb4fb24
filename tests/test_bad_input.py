"""Bad input as a careless or hostile user gives it: one line on stderr, exit status 2, nothing written.

Each row is (id, command line, setup). The command runs in-process (`selfsup.cli.main`) in a fresh folder
holding a copy of a tiny trained run (RUN) and whatever `setup` made; the row passes when the exit status is 2,
stderr is one `selfsup: error:` line naming the problem (the fragment), and no file under the folder changed.
"""
import importlib
import importlib.util
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from selfsup import Config, pretrain
from selfsup.cli import main

TEXT = "\n".join(f"document number {i} talks about {'cats' if i % 2 else 'dogs'} and more words here"
                 for i in range(40))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A one-epoch digits run (a few seconds) that every eval/embed/resume row gets a fresh copy of."""
    out = tmp_path_factory.mktemp("trained") / "run"
    pretrain(Config(data="digits", epochs=1, batch_size=64, out=str(out), threads=1, knn_every=0), progress=False)
    return out


def _png(path, size=(8, 8)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)


def _images(t):
    for c in ("a", "b"):
        for i in range(4):
            _png(t / "imgs" / c / f"{i}.png")


def _text(t):
    (t / "docs.txt").write_text(TEXT)


def _fifo_folder(t):
    _images(t)
    os.mkfifo(t / "imgs" / "a" / "pipe.png")


def _big_labels(t):
    np.savez(t / "big.npz", images=np.zeros((10, 8, 8), np.uint8), labels=np.array([0] * 9 + [10 ** 12]))


def _ckpt(t, content):
    (t / "RUN" / "checkpoints" / "last.pt").write_bytes(content) if isinstance(content, bytes) else \
        torch.save(content, t / "RUN" / "checkpoints" / "last.pt")


def _pickle_ckpt(t):
    """A checkpoint whose unpickling would call a function (os.getcwd here: harmless, but code all the same)."""
    (t / "RUN" / "checkpoints" / "last.pt").write_bytes(pickle.dumps({"x": 1, "evil": os.getcwd}))


def _fifo_text(t):
    (t / "texts").mkdir()
    (t / "texts" / "a.txt").write_text(TEXT)
    os.mkfifo(t / "texts" / "b.txt")


def _config(t, text):
    (t / "RUN" / "config.yaml").write_text(text)


def _bad_config_key(t):
    d = yaml.safe_load((t / "RUN" / "config.yaml").read_text())
    d["lr"] = -1.0
    _config(t, yaml.safe_dump(d))


def _other_files(t):
    (t / "stuff").mkdir()
    (t / "stuff" / "notes.md").write_text("mine")


def _regular_file(t):
    (t / "afile").write_text("x")


def _csv_folder(t):
    (t / "tab").mkdir()
    (t / "tab" / "a.csv").write_text("1,2,3\n")
    (t / "tab" / "b.txt").write_text("")


def _swapped_tsv(t):
    (t / "swapped.tsv").write_text("\n".join(f"some text number {i}\t{i % 2}" for i in range(30)))


def _long_line(t):
    (t / "long.txt").write_text("word " * 2_000_000)


def _huge_png(t):
    """A PNG whose header claims 20000 x 20000 RGB (1.1 GiB to decode) over a few rows of data: without pyvips
    refused for its size, not as corrupt; with it, libvips finds the rows missing (test_large_images has both)."""
    _images(t)
    p = t / "imgs" / "a" / "huge.png"
    _png(p)
    b = bytearray(p.read_bytes())
    b[16:24] = struct.pack(">II", 20000, 20000)  # IHDR width, height
    b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])))
    p.write_bytes(bytes(b))


def _empty_folder(t):
    (t / "empty").mkdir()


def _unlabelled(t):
    _png(t / "flat" / "a.png")
    _png(t / "flat" / "b.png")


HUGE = str(10 ** 12)
P = ["pretrain", "--data", "digits", "--threads", "1", "--no-progress", "--device", "cpu"]
ROWS = [
    # (id, argv, setup, fragment of the one line)
    ("proj-hidden huge", P + ["--proj-hidden", HUGE], None, "proj_hidden"),
    ("proj-dim huge", P + ["--proj-dim", HUGE], None, "proj_dim"),
    ("threads huge", P + ["--threads", HUGE], None, "--threads"),
    ("threads 0", P + ["--threads", "0"], None, "--threads"),
    ("batch huge", P + ["--batch-size", "999999999999"], None, "--batch-size"),
    ("batch above samples", P + ["--batch-size", "5000"], None, "--batch-size"),
    ("lr huge", P + ["--lr", "1e12"], None, "--lr"),
    ("lr nan", P + ["--lr", "nan"], None, "--lr"),
    ("seed negative", P + ["--seed", "-1"], None, "--seed"),
    ("set temperature inf", P + ["--set", "temperature=.inf"], None, "temperature"),
    ("set temperature nan", P + ["--set", "temperature=.nan"], None, "temperature"),
    ("temperature nan word", P + ["--temperature", "nan"], None, "finite"),
    ("momentum 2", P + ["--method", "moco", "--momentum", "2"], None, "momentum must be in [0, 1], got 2"),
    ("image-size huge pretrain", ["pretrain", "--data", "{t}/imgs", "--image-size", HUGE, "--threads", "1"],
     _images, "--image-size"),
    ("vocab huge", ["pretrain", "--method", "mlm", "--data", "{t}/docs.txt", "--vocab-size", HUGE,
                    "--threads", "1"], _text, "--vocab-size"),
    ("seq-len huge", ["pretrain", "--method", "mlm", "--data", "{t}/docs.txt", "--seq-len", HUGE,
                      "--threads", "1"], _text, "--seq-len"),
    ("labels 1e12", P[:2] + ["{t}/big.npz"] + P[3:], _big_labels, "label"),
    ("out name too long", P + ["--out", "{t}/" + "x" * 300], None, "--out"),
    ("out folder of other files", P + ["--out", "{t}/stuff"], _other_files, "not a run directory"),
    ("text method on images", P + ["--method", "mlm", "--out", "{t}/r"], None, "tokens"),
    ("simcse on images", P + ["--method", "simcse", "--out", "{t}/r"], None, "tokens"),
    ("simcse dropout 1", ["pretrain", "--method", "simcse", "--data", "{t}/docs.txt", "--dropout", "1",
                          "--threads", "1"], _text, "dropout in [0, 1)"),
    ("image method on text", ["pretrain", "--data", "{t}/docs.txt", "--out", "{t}/r", "--threads", "1"],
     _text, "image"),
    ("transformer on images", P + ["--backbone", "transformer", "--out", "{t}/r"], None, "transformer"),
    ("fifo in folder", ["pretrain", "--data", "{t}/imgs", "--threads", "1"], _fifo_folder, "not a regular file"),
    ("fifo in folder skip-bad", ["pretrain", "--data", "{t}/imgs", "--skip-bad", "--threads", "1", "--method",
                                 "mlm"], _fifo_folder, "tokens"),
    ("fifo in text folder", ["pretrain", "--method", "mlm", "--data", "{t}/texts", "--threads", "1"], _fifo_text,
     "not a regular file"),
    ("dev zero", P[:2] + ["/dev/zero"] + P[3:], None, "not a regular file"),
    ("csv folder", P[:2] + ["{t}/tab"] + P[3:], _csv_folder, "no documents"),
    ("swapped tsv", ["pretrain", "--method", "mlm", "--data", "{t}/swapped.tsv", "--threads", "1"], _swapped_tsv,
     "label"),
    ("one long line", ["pretrain", "--method", "mlm", "--data", "{t}/long.txt", "--threads", "1"], _long_line,
     "document"),
    ("huge png", ["pretrain", "--data", "{t}/imgs", "--threads", "1"], _huge_png,
     "corrupt image" if importlib.util.find_spec("pyvips") else "image too large"),
    ("mlm on empty folder", ["pretrain", "--method", "mlm", "--data", "{t}/empty"], _empty_folder, "or text files"),
    ("fractions abc", ["eval", "{t}/RUN", "--fractions", "abc"], None, "--fractions"),
    ("eval image-size negative", ["eval", "{t}/RUN", "--image-size", "-3"], None, "--image-size"),
    ("eval image-size 0", ["eval", "{t}/RUN", "--image-size", "0"], None, "--image-size"),
    ("eval image-size huge", ["eval", "{t}/RUN", "--image-size", HUGE], None, "--image-size"),
    ("embed image-size negative", ["embed", "{t}/RUN", "--data", "digits", "--out", "{t}/f.npy",
                                   "--image-size", "-3"], None, "--image-size"),
    ("embed image-size huge", ["embed", "{t}/RUN", "--data", "digits", "--out", "{t}/f.npy",
                               "--image-size", HUGE], None, "--image-size"),
    ("embed out under a file", ["embed", "{t}/RUN", "--data", "digits", "--out", "{t}/afile/f.npy"],
     _regular_file, "afile"),
    ("eval temperature inf", ["eval", "{t}/RUN", "--temperature-knn", "inf"], None, "--temperature-knn"),
    ("eval seed negative", ["eval", "{t}/RUN", "--eval-seed", "-1"], None, "--eval-seed"),
    ("eval no protocols", ["eval", "{t}/RUN", "--protocols", ""], None, "--protocols"),
    ("eval a regular file", ["eval", "{t}/afile"], _regular_file, "not a directory"),
    ("eval 0-byte checkpoint", ["eval", "{t}/RUN"], lambda t: _ckpt(t, b""), "checkpoint"),
    ("eval foreign checkpoint", ["eval", "{t}/RUN"], lambda t: _ckpt(t, {"weights": torch.zeros(2)}),
     "not a selfsup checkpoint"),
    ("eval pickle checkpoint", ["eval", "{t}/RUN"], _pickle_ckpt, "checkpoint"),
    ("eval broken config", ["eval", "{t}/RUN"], lambda t: _config(t, "a: [unclosed"), "config.yaml"),
    ("embed config not a mapping", ["embed", "{t}/RUN", "--data", "digits", "--out", "{t}/f.npy"],
     lambda t: _config(t, "- 1\n- 2\n"), "config.yaml"),
    ("resume broken yaml", ["pretrain", "--resume", "--out", "{t}/RUN", "--epochs", "2"],
     lambda t: _config(t, "a: [unclosed"), "config.yaml"),
    ("resume not a mapping", ["pretrain", "--resume", "--out", "{t}/RUN", "--epochs", "2"],
     lambda t: _config(t, "just a string"), "config.yaml"),
    ("resume bad value names the file", ["pretrain", "--resume", "--out", "{t}/RUN", "--epochs", "2"],
     _bad_config_key, "config.yaml"),
    ("resume different data", ["pretrain", "--resume", "--out", "{t}/RUN", "--data", "fashion-mnist"], None,
     "--data"),
    ("bench no methods", ["bench", "--methods", "", "--data", "digits", "--out", "{t}/b"], None, "--methods"),
    ("bench missing data", ["bench", "--methods", "simclr", "--data", "{t}/nope", "--out", "{t}/b"], None, "nope"),
    ("bench threads 0", ["bench", "--methods", "simclr", "--data", "digits", "--threads", "0", "--out", "{t}/b"],
     None, "--threads"),
    ("bench backbone bogus", ["bench", "--methods", "simclr", "--data", "digits", "--backbone", "bogus",
                              "--out", "{t}/b"], None, "bogus"),
    ("bench unlabelled", ["bench", "--methods", "simclr", "--data", "{t}/flat", "--out", "{t}/b"], _unlabelled,
     "labels"),
    ("bench text method on images", ["bench", "--methods", "mlm", "--data", "digits", "--out", "{t}/b"], None,
     "tokens"),
]


def _files(root):
    return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
            for d, _, fs in os.walk(root) for f in fs}


@pytest.mark.parametrize("argv,setup,fragment", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, monkeypatch, capsys, trained, argv, setup, fragment):
    shutil.copytree(trained, tmp_path / "RUN")
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # default run directories land here
    monkeypatch.setenv("SELFSUP_CACHE_DIR", str(tmp_path.parent / f"{tmp_path.name}-cache"))  # not a run's file
    if setup is not None:
        setup(tmp_path)
    def ran(*a, **k):
        raise AssertionError("bad input reached the work it should have stopped before")

    for module, name in (("selfsup.train.loop", "_train"), ("selfsup.bench.run", "_pretrain"),
                         ("selfsup.api", "evaluate_encoder"), ("selfsup.api", "extract_features")):
        monkeypatch.setattr(importlib.import_module(module), name, ran)
    before = _files(tmp_path)
    rc = main([a.replace("{t}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(str(tmp_path))]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("selfsup: error:"), err
    assert fragment in lines[0], (fragment, lines[0])
    print(lines[0])  # the messages, for review: pytest -s
    assert "_fraction_list" not in err and "weights_only" not in err
    assert _files(tmp_path) == before, "bad input wrote files"


def test_method_settings_read_exponent_notation_and_refuse_non_finite():
    from selfsup.methods import get_method
    from selfsup.methods.hparams import parse_hparams

    cls = get_method("simclr")
    assert parse_hparams("simclr", cls.Hparams, {"temperature": "1e-1"}).temperature == 0.1
    assert parse_hparams("simclr", cls.Hparams, {"temperature": "2E0"}).temperature == 2.0
    for bad in ("nan", "inf", "-.inf", float("nan")):
        with pytest.raises(Exception, match="finite"):
            parse_hparams("simclr", cls.Hparams, {"temperature": bad})


def _until_train(monkeypatch, exc):
    def stop(*a, **k):
        raise exc
    monkeypatch.setattr(importlib.import_module("selfsup.train.loop"), "_train", stop)


class Reached(Exception):
    pass


def test_resume_takes_flags_repeated_with_their_saved_values(tmp_path, monkeypatch, trained):
    run = tmp_path / "RUN"
    shutil.copytree(trained, run)
    _until_train(monkeypatch, Reached)
    with pytest.raises(Reached):  # the same command with --resume appended gets as far as training
        main(["pretrain", "--data", "digits", "--epochs", "1", "--batch-size", "64", "--threads", "1",
              "--method", "simclr", "--seed", "0", "--temperature", "2e-1", "--out", str(run), "--resume"])


def test_ctrl_c_before_the_first_checkpoint_says_there_is_none(tmp_path, monkeypatch, capsys):
    _until_train(monkeypatch, KeyboardInterrupt)
    assert main(P + ["--epochs", "1", "--out", str(tmp_path / "r")]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("selfsup: interrupted before the first epoch ended") and "no checkpoint" in err[-1]


def test_ctrl_c_while_importing_is_one_line_exit_130():
    """SIGINT half a second after `python -m selfsup` starts, while torch is still importing (it takes longer):
    one line, exit 130, no traceback (a signal that lands in main() instead gives its own one line)."""
    proc = subprocess.Popen([sys.executable, "-m", "selfsup", "methods"], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("selfsup: interrupted"), err


def test_ctrl_c_during_training_one_line_exit_130(tmp_path):
    """A real SIGINT to `python -m selfsup pretrain` after its first epoch: exit 130, one line, no traceback."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "selfsup", *P, "--epochs", "10000", "--knn-every", "0",
                             "--out", str(tmp_path / "r")], stderr=subprocess.PIPE, text=True, env=env)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if line.startswith("epoch 1/"):
            break
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 130, "".join(lines) + rest
    assert "Traceback" not in rest
    tail = [ln for ln in rest.splitlines() if ln.strip() and not ln.startswith("epoch ")]
    assert len(tail) == 1 and tail[0].startswith("selfsup: interrupted; the last finished epoch is in"), rest
