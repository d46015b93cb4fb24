"""`selfsup embed --out X.parquet`: one row a sample (path, label, embedding), in input order, equal to the .npz."""
import sys

import numpy as np
import pytest
from PIL import Image

import selfsup
from selfsup import Config, pretrain
from selfsup.cli import main
from selfsup.data import load_data

pa = pytest.importorskip("pyarrow", reason="pyarrow is not installed (pip install 'selfsup[parquet]')")
pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is not installed (pip install 'selfsup[parquet]')")


@pytest.fixture(scope="module")
def run_and_folder(tmp_path_factory):
    """A digits run and a folder of 30 of digits' test images (8x8 PNGs in class folders; names chosen so the
    folder's order is not the digits' order)."""
    root = tmp_path_factory.mktemp("parquet")
    run = pretrain(Config(method="simclr", data="digits", epochs=0, batch_size=64, threads=1, device="cpu",
                          knn_every=0, out=str(root / "run")), progress=False)
    test = load_data("digits", "test")
    for i in range(30):
        d = root / "imgs" / f"c{int(test.labels[i])}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(test.x[i, 0].numpy(), "L").save(d / f"{(7 * i) % 30:02d}.png")
    return run, root / "imgs"


def test_parquet_rows_keep_the_input_order_and_equal_the_npz(run_and_folder, tmp_path):
    run, folder = run_and_folder
    for out in ("f.npz", "f.parquet"):
        assert main(["embed", str(run), "--data", str(folder), "--out", str(tmp_path / out), "--device", "cpu"]) == 0
    npz = np.load(tmp_path / "f.npz")
    table = pq.read_table(tmp_path / "f.parquet")
    kind = table.schema.field("embedding").type
    assert table.column_names == ["path", "label", "embedding"] and kind.value_type == pa.float32()
    assert pa.types.is_list(kind)  # list<float>: one list a row
    rows = table.to_pydict()
    emb = np.array(rows["embedding"], dtype=np.float32)
    np.testing.assert_array_equal(emb, npz["features"])  # the same float32 values, row for row
    assert rows["path"] == list(npz["paths"]) and rows["label"] == npz["labels"].tolist()
    # the input order: row i is the folder's i-th image (by its own path), not a sorted or shuffled copy
    src = load_data(str(folder), "train")
    assert rows["path"] == list(src.paths) and len(rows["path"]) == 30
    np.testing.assert_allclose(emb, selfsup.load(run).encode(rows["path"]), rtol=0, atol=1e-5)


def test_parquet_without_paths_has_null_paths(run_and_folder, tmp_path):
    run, _ = run_and_folder
    assert main(["embed", str(run), "--data", "digits", "--split", "test", "--out", str(tmp_path / "d.parquet"),
                 "--device", "cpu"]) == 0
    rows = pq.read_table(tmp_path / "d.parquet").to_pydict()
    assert rows["path"] == [None] * 540 and rows["label"] == load_data("digits", "test").labels.tolist()


def test_missing_pyarrow_is_a_one_line_error(run_and_folder, tmp_path, monkeypatch, capsys):
    run, _ = run_and_folder
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    assert main(["embed", str(run), "--data", "digits", "--out", str(tmp_path / "x.parquet")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "pip install 'selfsup[parquet]'" in err and not (tmp_path / "x.parquet").exists()
