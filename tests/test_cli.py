"""The command line as a user meets it: --help, and bad input giving one clear line and a non-zero exit."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image


def selfsup(*args, cwd=None):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "selfsup", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def assert_one_line_error(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("selfsup: error:"), r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_help_explains_every_flag():
    for cmd in ([], ["pretrain"], ["eval"], ["embed"]):
        r = selfsup(*cmd, "--help")
        assert r.returncode == 0
        # argparse prints "--flag ... help text": every option must carry a help text.
        for line in r.stdout.splitlines():
            s = line.strip()
            if s.startswith("--") and "  " not in s:
                nxt = r.stdout.splitlines()[r.stdout.splitlines().index(line) + 1].strip()
                assert nxt and not nxt.startswith("-"), f"{cmd}: {s} has no help"
    assert "--resume" in selfsup("pretrain", "--help").stdout


def test_missing_path(tmp_path):
    r = selfsup("pretrain", "--data", tmp_path / "nope", "--out", tmp_path / "run", "--device", "cpu")
    assert_one_line_error(r, "no such file or directory", str(tmp_path / "nope"))


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    r = selfsup("pretrain", "--data", tmp_path / "empty", "--out", tmp_path / "run", "--device", "cpu")
    assert_one_line_error(r, "no images", str(tmp_path / "empty"))


def test_corrupt_png_among_good_ones(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(d / f"ok{i}.png")
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    r = selfsup("pretrain", "--data", d, "--out", tmp_path / "run", "--device", "cpu", "--epochs", "1")
    assert_one_line_error(r, str(d / "broken.png"))


def test_wrong_array_shape(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((5, 3), np.uint8))
    r = selfsup("pretrain", "--data", tmp_path / "a.npy", "--out", tmp_path / "run", "--device", "cpu")
    assert_one_line_error(r, "(5, 3)", "(N,H,W)")


def test_label_count_mismatch(tmp_path):
    np.savez(tmp_path / "a.npz", images=np.zeros((7, 8, 8), np.uint8), labels=np.arange(5))
    r = selfsup("pretrain", "--data", tmp_path / "a.npz", "--out", tmp_path / "run", "--device", "cpu")
    assert_one_line_error(r, "5 labels", "7 images")


def test_eval_of_missing_run(tmp_path):
    assert_one_line_error(selfsup("eval", tmp_path / "norun"), "no such run directory")


@pytest.mark.parametrize("flag", [["--method", "nope"], ["--fractions", "0"]])
def test_bad_flags_exit_nonzero(tmp_path, flag):
    r = selfsup("pretrain" if flag[0] == "--method" else "eval", *([] if flag[0] == "--method" else [tmp_path]),
                *flag, "--data", "digits", "--out", tmp_path / "r", "--device", "cpu")
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_pretrain_eval_embed_end_to_end(tmp_path):
    # A labelled folder of PNGs: class subfolders map to labels in sorted name order (like ImageFolder).
    rng = np.random.default_rng(0)
    for cls, level in (("b_dark", 40), ("a_light", 200)):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(12):
            img = np.clip(rng.normal(level, 20, (8, 8)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(tmp_path / "data" / cls / f"{i:02d}.png")
    run = tmp_path / "run"
    r = selfsup("pretrain", "--data", tmp_path / "data", "--out", run, "--device", "cpu", "--epochs", "2",
                "--batch-size", "8", "--proj-hidden", "32", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert (run / "checkpoints" / "last.pt").is_file()
    r = selfsup("pretrain", "--out", run, "--epochs", "2", "--resume", "--no-progress")
    assert r.returncode == 0 and "resuming" in r.stderr, r.stderr
    r = selfsup("eval", run, "--fractions", "100%", "--protocols", "knn,linear", "--k", "5", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "| features |" in r.stdout and "raw pixels" in r.stdout and "random init" in r.stdout
    r = selfsup("embed", run, "--data", tmp_path / "data", "--out", tmp_path / "f.npz")
    assert r.returncode == 0, r.stderr
    z = np.load(tmp_path / "f.npz")
    assert z["features"].shape[0] == 24
    assert list(z["labels"]) == [0] * 12 + [1] * 12  # a_light first
    assert z["paths"][0].endswith("a_light/00.png")
