"""`selfsup eval` writes RUN_DIR/plots/: the test embeddings' 2-D map and the nearest-neighbour grid (images) or
list (text); the neighbours drawn are the true cosine nearest neighbours; --no-plots writes none of them."""
import json

import numpy as np
import pytest
from PIL import Image

import selfsup
from selfsup import Config, pretrain
from selfsup.cli import main
from selfsup.data import load_data

from test_mlm import write_corpus

EVAL = ["--protocols", "knn", "--fractions", "1", "--no-baselines", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("plots")
    return pretrain(Config(method="simclr", data="digits", epochs=1, batch_size=64, threads=1, device="cpu",
                           knn_every=0, out=str(root / "run")), progress=False)


def test_eval_writes_a_readable_map_and_neighbour_grid(digits_run):
    assert main(["eval", str(digits_run), *EVAL]) == 0
    plots = digits_run / "plots"
    for name, (min_w, min_h) in {"embedding_map.png": (600, 450), "neighbours.png": (600, 500)}.items():
        with Image.open(plots / name) as im:
            w, h = im.size
            colours = len(im.convert("RGB").resize((200, 200)).getcolors(40_000))
        assert min_w <= w <= 2500 and min_h <= h <= 2500 and 20_000 < (plots / name).stat().st_size < 2_000_000
        assert colours > 10  # not a blank canvas
    rec = json.loads((plots / "neighbours.json").read_text())
    assert rec["projection"] in ("t-SNE", "UMAP") and rec["map_points"] == 540  # digits' whole test split (< 2,000)
    assert json.loads((digits_run / "eval.json").read_text())["plots"][0].endswith("embedding_map.png")


def test_the_grid_shows_the_true_cosine_nearest_neighbours(digits_run):
    if not (digits_run / "plots" / "neighbours.json").is_file():
        assert main(["eval", str(digits_run), *EVAL]) == 0
    rec = json.loads((digits_run / "plots" / "neighbours.json").read_text())
    enc = selfsup.load(digits_run)
    train = enc.encode(load_data("digits", "train").x).astype(np.float64)
    queries = enc.encode(load_data("digits", "test").x[rec["queries"]]).astype(np.float64)
    train /= np.linalg.norm(train, axis=1, keepdims=True)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    sims = queries @ train.T  # brute force: every training sample
    got = np.array(rec["neighbours"])
    assert got.shape == (6, 6) and all(len(set(row)) == 6 for row in got)
    want = -np.sort(-sims, axis=1)[:, :6]
    np.testing.assert_allclose(np.take_along_axis(sims, got, 1), want, rtol=0, atol=1e-5)  # the top 6, in order


def test_eval_no_plots_writes_none(digits_run, tmp_path):
    import shutil
    run = shutil.copytree(digits_run, tmp_path / "copy")
    shutil.rmtree(run / "plots")
    assert main(["eval", str(run), *EVAL, "--no-plots"]) == 0
    assert not (run / "plots").exists() and "plots" not in json.loads((run / "eval.json").read_text())


def test_text_neighbours_are_written_as_markdown(tmp_path):
    corpus = write_corpus(tmp_path / "c.tsv", n=96)
    run = pretrain(Config(method="mlm", data=str(corpus), epochs=0, backbone="transformer_tiny", vocab_size=100,
                          seq_len=16, batch_size=32, threads=1, device="cpu", knn_every=0, out=str(tmp_path / "r")),
                   progress=False)
    assert main(["eval", str(run), *EVAL]) == 0
    md = (run / "plots" / "neighbours.md").read_text()
    assert md.count("## Query") == 6 and md.count("\n6. [") == 6 and ("sea" in md and "sky" in md)
    assert (run / "plots" / "embedding_map.png").stat().st_size > 10_000
