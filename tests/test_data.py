"""Tests for selfsup.data: every source form, its errors, and the Fashion-MNIST download path."""
from __future__ import annotations

import gzip
import hashlib
import os
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.data import Dataset, load_data, read_idx
from selfsup.data import fashion_mnist as fm
from selfsup.errors import SelfSupError

DEBIAN = "/usr/share/datasets/fashion-mnist"


def write_idx(path, arr: np.ndarray, gz: bool = False) -> str:
    """Write a uint8 array as an IDX file (optionally gzipped)."""
    arr = np.asarray(arr, dtype=np.uint8)
    data = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    path = str(path)
    with (gzip.open(path, "wb") if gz else open(path, "wb")) as f:
        f.write(data)
    return path


def png(path, size=(6, 5), mode="L", value=100) -> str:
    """Write a small solid PNG (size is (W, H))."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    color = value if mode in ("L", "1") else (value, value // 2, 255 - value)
    Image.new(mode, size, color).save(path)
    return str(path)


@pytest.fixture
def no_local_fmnist(tmp_path, monkeypatch):
    """Make the local Fashion-MNIST search come up empty and point the cache at tmp_path."""
    monkeypatch.delenv("SELFSUP_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(fm, "DEBIAN_DIR", str(tmp_path / "nonexistent"))
    return tmp_path / "cache" / "selfsup" / "fashion-mnist"


def fake_mirror(root, monkeypatch, n_train=12, n_test=4) -> dict[str, np.ndarray]:
    """Write tiny fake Fashion-MNIST .gz files, serve them via file:// and expect their MD5s."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": np.arange(n_test) % 10,
    }
    md5 = {}
    for name, arr in arrays.items():
        path = write_idx(root / f"{name}.gz", arr, gz=True)
        md5[name] = hashlib.md5(open(path, "rb").read()).hexdigest()
    monkeypatch.setattr(fm, "MD5", md5)
    monkeypatch.setattr(fm, "EXPECTED_COUNTS", {"train": n_train, "test": n_test})
    monkeypatch.setenv("SELFSUP_FASHION_MNIST_URL", f"file://{root}/")
    return {k: np.asarray(v, dtype=np.uint8) for k, v in arrays.items()}


# ---------------------------------------------------------------- Fashion-MNIST

@pytest.mark.skipif(not os.path.isdir(DEBIAN), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_local(monkeypatch, tmp_path):
    monkeypatch.delenv("SELFSUP_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # empty cache: must be found in the Debian dir
    train = load_data("fashion-mnist", "train")
    test = load_data("fmnist", "test")
    assert train.x.shape == (60000, 1, 28, 28) and test.x.shape == (10000, 1, 28, 28)
    assert train.x.dtype == torch.uint8 and train.x.is_contiguous()
    assert train.labels.dtype == torch.int64
    assert torch.equal(train.labels.bincount(), torch.full((10,), 6000))
    assert test.labels.min() == 0 and test.labels.max() == 9
    assert train.classes[0] == "T-shirt/top" and train.num_classes == 10
    assert train.name == "fashion-mnist:train" and train.paths is None
    assert train.x.float().std() > 10  # not blank


@pytest.mark.skipif(not os.path.isdir(DEBIAN), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_dir_as_src():
    data = load_data(DEBIAN, "test")
    assert data.x.shape == (10000, 1, 28, 28) and len(data.labels) == 10000
    assert data.name.startswith(DEBIAN)


def test_fashion_mnist_bad_local_header(tmp_path, monkeypatch, no_local_fmnist):
    d = tmp_path / "mine"
    d.mkdir()
    for name in fm.MD5:
        shape = (3, 28, 28) if "images" in name else (3,)
        write_idx(d / name, np.zeros(shape))
    monkeypatch.setenv("SELFSUP_DATA", str(d))
    with pytest.raises(SelfSupError, match="not a Fashion-MNIST file: .*mine"):
        load_data("fashion-mnist")


def test_fashion_mnist_download(tmp_path, monkeypatch, no_local_fmnist):
    arrays = fake_mirror(tmp_path / "mirror", monkeypatch)
    train = load_data("fashion-mnist", "train")
    assert sorted(os.listdir(no_local_fmnist)) == sorted(f"{n}.gz" for n in fm.MD5)
    assert train.x.shape == (12, 1, 28, 28)
    assert np.array_equal(train.x[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    assert train.labels.tolist() == (np.arange(12) % 10).tolist()
    # now found in the cache: no second download (the mirror can disappear)
    monkeypatch.setenv("SELFSUP_FASHION_MNIST_URL", f"file://{tmp_path}/gone/")
    test = load_data("fashion-mnist", "test")
    assert test.x.shape == (4, 1, 28, 28)


def test_fashion_mnist_download_checksum_mismatch(tmp_path, monkeypatch, no_local_fmnist):
    fake_mirror(tmp_path / "mirror", monkeypatch)
    bad = tmp_path / "mirror" / "t10k-images-idx3-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:-5] + b"xxxxx")
    with pytest.raises(SelfSupError, match=r"checksum.*t10k-images-idx3-ubyte\.gz"):
        load_data("fashion-mnist", "train")
    left = os.listdir(no_local_fmnist)
    assert "t10k-images-idx3-ubyte.gz" not in left
    assert not any(".part" in f or f.startswith(".") for f in left)  # no temp files left behind


def test_fashion_mnist_download_unreachable(tmp_path, monkeypatch, no_local_fmnist):
    monkeypatch.setenv("SELFSUP_FASHION_MNIST_URL", f"file://{tmp_path}/nothing-here/")
    with pytest.raises(SelfSupError, match="cannot download file://"):
        load_data("fashion-mnist")


# ---------------------------------------------------------------- digits

def test_digits_split():
    train, test = load_data("digits", "train"), load_data("digits", "test")
    assert train.x.shape[1:] == (1, 8, 8) and train.x.dtype == torch.uint8
    assert len(train) + len(test) == 1797 and len(test) == 540
    assert train.x.max() == 255 and train.x.min() == 0
    again = load_data("digits", "train")
    assert torch.equal(train.x, again.x) and torch.equal(train.labels, again.labels)
    # stratified: each class's share in test is ~30% of its total
    tr, te = train.labels.bincount(minlength=10), test.labels.bincount(minlength=10)
    frac = te.float() / (tr + te).float()
    assert ((frac - 0.3).abs() < 0.02).all()
    assert train.num_classes == 10


def test_digits_values_scaled():
    from sklearn.datasets import load_digits

    ds = load_digits()
    allimgs = torch.cat([load_data("digits", "train").x, load_data("digits", "test").x])
    expected = set(np.round(np.unique(ds.images) * 255 / 16).astype(int).tolist())
    assert set(allimgs.unique().tolist()) == expected


# ---------------------------------------------------------------- folders

def test_folder_labeled(tmp_path):
    root = tmp_path / "ds"
    for cls, v in (("zebra", 10), ("apple", 200)):
        for i in range(3):
            png(root / cls / f"{i}.png", value=v)
    data = load_data(str(root))
    assert data.classes == ["apple", "zebra"]
    assert data.x.shape == (6, 1, 5, 6)
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert data.paths == sorted(str(p) for p in root.rglob("*.png"))
    # labels line up with the image contents and with the paths
    assert (data.x[data.labels == 0] == 200).all() and (data.x[data.labels == 1] == 10).all()
    assert all(f"{os.sep}{data.classes[l]}{os.sep}" in p for p, l in zip(data.paths, data.labels.tolist()))
    assert load_data(str(root), "test") is None


def test_folder_unlabeled_flat_and_case_insensitive(tmp_path):
    png(tmp_path / "b.PNG")
    png(tmp_path / "a.png")
    Image.new("L", (6, 5), 7).save(tmp_path / "c.JPEG", format="JPEG")
    (tmp_path / "notes.txt").write_text("ignore me")
    data = load_data(str(tmp_path))
    assert data.labels is None and data.num_classes == 0 and data.classes is None
    assert [os.path.basename(p) for p in data.paths] == ["a.png", "b.PNG", "c.JPEG"]


def test_folder_images_beside_class_folders_refused(tmp_path):
    png(tmp_path / "cat" / "1.png")
    png(tmp_path / "loose.png")
    with pytest.raises(SelfSupError, match=r"1 image\(s\) directly in it \(e.g. loose.png\) beside class folders \(cat\)"):
        load_data(str(tmp_path))


def test_folder_rgb_vs_gray(tmp_path):
    png(tmp_path / "gray" / "a.png", mode="L")
    png(tmp_path / "gray" / "b.png", mode="1")
    assert load_data(str(tmp_path / "gray")).x.shape[1] == 1
    png(tmp_path / "mixed" / "a.png", mode="L", value=50)
    png(tmp_path / "mixed" / "b.png", mode="RGBA")
    png(tmp_path / "mixed" / "c.png", mode="P", value=3)
    data = load_data(str(tmp_path / "mixed"))
    assert data.x.shape == (3, 3, 5, 6)
    assert (data.x[0] == 50).all()  # gray replicated to 3 channels


def test_folder_mixed_sizes_default_64(tmp_path, capsys):
    png(tmp_path / "a.png", size=(10, 4))
    png(tmp_path / "b.png", size=(7, 9))
    png(tmp_path / "c.png", size=(7, 9))
    data = load_data(str(tmp_path))
    assert data.x.shape == (3, 1, 64, 64)  # mixed sizes: shorter side to 64, centre crop, and the run says so
    assert (data.x == 100).all()  # bilinear on a solid image keeps its value
    assert "mixed sizes: shorter side resized to 64" in capsys.readouterr().err


def test_folder_one_size_above_64_becomes_64(tmp_path):
    png(tmp_path / "a.png", size=(80, 80))
    png(tmp_path / "b.png", size=(80, 80))
    assert load_data(str(tmp_path)).x.shape == (2, 1, 64, 64)


def test_folder_empty(tmp_path):
    (tmp_path / "sub").mkdir()
    with pytest.raises(SelfSupError, match=f"no images .* found in folder {tmp_path}"):
        load_data(str(tmp_path))


def test_folder_corrupt_image(tmp_path):
    png(tmp_path / "a.png")
    good = (tmp_path / "a.png").read_bytes()
    (tmp_path / "b.png").write_bytes(good[: len(good) // 2])  # truncated: header OK, data not
    (tmp_path / "c.png").write_bytes(b"not an image at all")
    with pytest.raises(SelfSupError) as e:
        load_data(str(tmp_path))
    assert f"corrupt image: {tmp_path / 'b.png'}" in str(e.value)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- npy / npz

def test_npy_nhw_and_nhwc(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (4, 5, 6), dtype=np.uint8)
    np.save(tmp_path / "a.npy", a)
    data = load_data(str(tmp_path / "a.npy"))
    assert data.x.shape == (4, 1, 5, 6) and data.labels is None
    assert np.array_equal(data.x[:, 0].numpy(), a)
    b = np.random.default_rng(1).integers(0, 256, (4, 5, 6, 3), dtype=np.uint8)
    np.save(tmp_path / "b.npy", b)
    data = load_data(str(tmp_path / "b.npy"))
    # x is a (N, C, H, W) view of the memory-mapped (N, H, W, C) file; what is read from it is contiguous
    assert data.x.shape == (4, 3, 5, 6) and data.mapped and data.read().is_contiguous()
    assert np.array_equal(data.x.permute(0, 2, 3, 1).numpy(), b)
    assert load_data(str(tmp_path / "b.npy"), "test") is None


def test_npy_wrong_shape_and_dtype(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((5, 3), dtype=np.uint8))
    with pytest.raises(SelfSupError, match=r"got shape \(5, 3\) dtype uint8"):
        load_data(str(tmp_path / "a.npy"))
    np.save(tmp_path / "b.npy", np.zeros((2, 4, 4, 2), dtype=np.uint8))
    with pytest.raises(SelfSupError, match=r"got shape \(2, 4, 4, 2\)"):
        load_data(str(tmp_path / "b.npy"))
    np.save(tmp_path / "f.npy", np.zeros((2, 4, 4)))
    with pytest.raises(SelfSupError, match=f"{tmp_path / 'f.npy'}, got shape .* dtype float64"):
        load_data(str(tmp_path / "f.npy"))


def test_npy_pickle_refused(tmp_path):
    np.save(tmp_path / "o.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(SelfSupError, match="o.npy"):
        load_data(str(tmp_path / "o.npy"))


def test_npy_with_label_file(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((3, 4, 4), dtype=np.uint8))
    np.save(tmp_path / "y.npy", np.array([2, 0, 1], dtype=np.int32))
    data = load_data(str(tmp_path / "a.npy"), labels=str(tmp_path / "y.npy"))
    assert data.labels.tolist() == [2, 0, 1] and data.labels.dtype == torch.int64
    write_idx(tmp_path / "y.idx1", np.array([1, 1, 0]))
    assert load_data(str(tmp_path / "a.npy"), labels=str(tmp_path / "y.idx1")).labels.tolist() == [1, 1, 0]
    np.save(tmp_path / "short.npy", np.array([1, 2]))
    with pytest.raises(SelfSupError, match=f"2 labels for 3 images in {tmp_path / 'short.npy'}"):
        load_data(str(tmp_path / "a.npy"), labels=str(tmp_path / "short.npy"))


def test_npz_with_labels(tmp_path):
    x = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    np.savez(tmp_path / "a.npz", x=x, y=np.array([1, 0]))
    data = load_data(str(tmp_path / "a.npz"))
    assert data.x.shape == (2, 1, 3, 3) and data.labels.tolist() == [1, 0]
    np.savez(tmp_path / "only.npz", whatever=x)
    assert load_data(str(tmp_path / "only.npz")).labels is None


def test_npz_label_errors(tmp_path):
    x = np.zeros((7, 3, 3), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", images=x, labels=np.arange(5))
    with pytest.raises(SelfSupError, match=f"5 labels for 7 images in {tmp_path / 'a.npz'}"):
        load_data(str(tmp_path / "a.npz"))
    np.savez(tmp_path / "b.npz", images=x, labels=np.zeros(7, dtype=np.float32))
    with pytest.raises(SelfSupError, match="integer labels"):
        load_data(str(tmp_path / "b.npz"))
    np.savez(tmp_path / "c.npz", foo=x, bar=x)
    with pytest.raises(SelfSupError, match="no image array"):
        load_data(str(tmp_path / "c.npz"))


# ---------------------------------------------------------------- IDX

@pytest.mark.parametrize("gz", [False, True])
def test_idx_roundtrip(tmp_path, gz):
    a = np.random.default_rng(0).integers(0, 256, (5, 7, 6), dtype=np.uint8)
    p = write_idx(tmp_path / ("x-images-idx3-ubyte" + (".gz" if gz else "")), a, gz=gz)
    assert np.array_equal(read_idx(p), a)
    data = load_data(p)
    assert data.x.shape == (5, 1, 7, 6) and data.labels is None
    assert np.array_equal(data.x[:, 0].numpy(), a)
    assert load_data(p, "test") is None


def test_idx_gz_detected_by_magic_and_sniffed_name(tmp_path):
    a = np.ones((2, 3, 3), dtype=np.uint8)
    p = write_idx(tmp_path / "weird.bin", a, gz=True)  # no .gz suffix, no idx name
    assert np.array_equal(read_idx(p), a)
    assert load_data(p).x.shape == (2, 1, 3, 3)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_sibling_labels(tmp_path, gz):
    ext = ".gz" if gz else ""
    p = write_idx(tmp_path / f"train-images-idx3-ubyte{ext}", np.zeros((3, 4, 4)), gz=gz)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{ext}", np.array([4, 5, 6]), gz=gz)
    assert load_data(p).labels.tolist() == [4, 5, 6]
    # an explicit label file wins over the sibling
    write_idx(tmp_path / "other", np.array([0, 0, 1]))
    assert load_data(p, labels=str(tmp_path / "other")).labels.tolist() == [0, 0, 1]
    write_idx(tmp_path / "short", np.array([0]))
    with pytest.raises(SelfSupError, match="1 labels for 3 images"):
        load_data(p, labels=str(tmp_path / "short"))


@pytest.mark.parametrize("gz", [False, True])
def test_idx_truncated(tmp_path, gz):
    p = write_idx(tmp_path / "t-images-idx3-ubyte", np.zeros((4, 5, 5)))
    raw = open(p, "rb").read()[:-10]
    target = tmp_path / ("cut-images-idx3-ubyte" + (".gz" if gz else ""))
    if gz:
        target.write_bytes(gzip.compress(open(p, "rb").read())[:-12])
    else:
        target.write_bytes(raw)
    with pytest.raises(SelfSupError, match=f"truncated .*{target}"):
        load_data(str(target))


# ---------------------------------------------------------------- errors & Dataset

def test_missing_path():
    with pytest.raises(SelfSupError, match="no such file or directory: /nope/really"):
        load_data("/nope/really")


def test_unsupported_file(tmp_path):
    (tmp_path / "a.csv").write_text("hello")  # (.txt is a text source now)
    with pytest.raises(SelfSupError, match=r"unsupported data source: .*a\.csv.*\.npy.*\.txt/\.tsv"):
        load_data(str(tmp_path / "a.csv"))


def test_bad_split():
    with pytest.raises(SelfSupError, match="split"):
        load_data("digits", "val")


def test_dataset_subset_and_to():
    d = Dataset(torch.arange(5, dtype=torch.uint8).view(5, 1, 1, 1), torch.tensor([0, 1, 2, 1, 0]),
                paths=list("abcde"), classes=None, name="n")
    s = d.subset(torch.tensor([4, 1]))
    assert s.x.flatten().tolist() == [4, 1] and s.labels.tolist() == [0, 1] and s.paths == ["e", "b"]
    assert len(s) == 2 and d.num_classes == 3
    m = d.subset(torch.tensor([True, False, True, False, False]))
    assert m.paths == ["a", "c"]
    assert d.to("cpu").x.device.type == "cpu"
