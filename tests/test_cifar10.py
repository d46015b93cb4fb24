"""The cifar10 source: the binary format parsed against its definition, download + MD5 through file://, offline."""
import hashlib
import io
import os
import tarfile

import numpy as np
import pytest
import torch

from selfsup.cli import main
from selfsup.data import cifar10 as cf
from selfsup.data import load_data
from selfsup.errors import SelfSupError

COUNTS = {"train": 10, "test": 3}  # 2 records in each of the 5 training batches, 3 in the test batch


def batch_bytes(n: int, seed: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    """n records in the CIFAR-10 binary layout: 1 label byte, then the R, G, B 32x32 planes row-major."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 256, (n, 3, 32, 32)).astype(np.uint8)
    out = bytearray()
    for lab, img in zip(labels, images):
        out.append(int(lab))
        for c in range(3):
            for row in range(32):
                out += bytes(img[c, row].tolist())
    return bytes(out), images, labels


def fake_archive(path, monkeypatch) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A small cifar-10-binary.tar.gz; its MD5 and split sizes patched in. Returns split -> (images, labels)."""
    parts = {"train": [], "test": []}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for split, names in cf.FILES.items():
            for i, name in enumerate(names):
                data, images, labels = batch_bytes(2 if split == "train" else 3, seed=i + (10 if split == "test" else 0))
                info = tarfile.TarInfo(f"{cf.FOLDER}/{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                parts[split].append((images, labels))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    monkeypatch.setattr(cf, "MD5", hashlib.md5(buf.getvalue()).hexdigest())
    monkeypatch.setattr(cf, "EXPECTED_COUNTS", COUNTS)
    return {s: (np.concatenate([p[0] for p in v]), np.concatenate([p[1] for p in v])) for s, v in parts.items()}


@pytest.fixture
def no_local(tmp_path, monkeypatch):
    monkeypatch.delenv("SELFSUP_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "selfsup" / "cifar10"


def test_parse_batch_follows_the_binary_layout():
    data, images, labels = batch_bytes(4, seed=0)
    assert len(data) == 4 * 3073
    x, y = cf.parse_batch(data, "mem")
    assert x.dtype == torch.uint8 and x.shape == (4, 3, 32, 32)
    assert y.tolist() == labels.tolist()
    assert np.array_equal(x.numpy(), images)
    # one pixel by the format's definition: record i, byte 1 + c*1024 + row*32 + col
    i, c, row, col = 2, 1, 5, 30
    assert x[i, c, row, col] == data[i * 3073 + 1 + c * 1024 + row * 32 + col]


def test_parse_batch_rejects_bad_files():
    data, _, _ = batch_bytes(2, seed=1)
    with pytest.raises(SelfSupError, match="not a multiple of 3073"):
        cf.parse_batch(data[:-1], "short.bin")
    bad = bytes([12]) + data[1:]
    with pytest.raises(SelfSupError, match="label 12"):
        cf.parse_batch(bad, "bad.bin")


def test_download_verifies_md5_and_is_then_found_in_the_cache(tmp_path, monkeypatch, no_local):
    arrays = fake_archive(tmp_path / "mirror" / cf.ARCHIVE, monkeypatch)
    monkeypatch.setenv("SELFSUP_CIFAR10_URL", f"file://{tmp_path}/mirror/{cf.ARCHIVE}")
    train = load_data("cifar10", "train")
    assert os.listdir(no_local) == [cf.ARCHIVE]
    assert train.x.shape == (10, 3, 32, 32) and train.classes[0] == "airplane"
    assert np.array_equal(train.x.numpy(), arrays["train"][0])
    assert train.labels.tolist() == arrays["train"][1].tolist()
    monkeypatch.setenv("SELFSUP_CIFAR10_URL", f"file://{tmp_path}/gone/{cf.ARCHIVE}")  # no second download
    test = load_data("cifar-10", "test")
    assert np.array_equal(test.x.numpy(), arrays["test"][0])


def test_checksum_mismatch_keeps_nothing(tmp_path, monkeypatch, no_local):
    fake_archive(tmp_path / "mirror" / cf.ARCHIVE, monkeypatch)
    monkeypatch.setattr(cf, "MD5", "0" * 32)
    monkeypatch.setenv("SELFSUP_CIFAR10_URL", f"file://{tmp_path}/mirror/{cf.ARCHIVE}")
    with pytest.raises(SelfSupError, match="checksum mismatch"):
        load_data("cifar10")
    assert os.listdir(no_local) == []


def test_extracted_folder_in_selfsup_data_needs_no_network(tmp_path, monkeypatch, no_local):
    arrays = fake_archive(tmp_path / "a" / cf.ARCHIVE, monkeypatch)
    with tarfile.open(tmp_path / "a" / cf.ARCHIVE) as tar:
        tar.extractall(tmp_path / "data" / "cifar10", filter="data")
    monkeypatch.setenv("SELFSUP_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("SELFSUP_CIFAR10_URL", f"file://{tmp_path}/gone/{cf.ARCHIVE}")
    assert np.array_equal(load_data("cifar10", "test").x.numpy(), arrays["test"][0])


def test_offline_is_one_line(tmp_path, monkeypatch, no_local, capsys):
    monkeypatch.setenv("SELFSUP_CIFAR10_URL", f"file://{tmp_path}/nowhere/{cf.ARCHIVE}")
    assert main(["pretrain", "--data", "cifar10", "--out", str(tmp_path / "run"), "--device", "cpu"]) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("selfsup: error: cifar10 is not in"), lines
    assert "cannot download file://" in lines[0] and str(no_local) in lines[0]
    assert not (tmp_path / "run").exists()


def test_the_published_checksum():
    # From the dataset's page (https://www.cs.toronto.edu/~kriz/cifar.html), "CIFAR-10 binary version".
    assert cf.MD5 == "c32a1d4ab5d03f1284b67883e8d87530" and cf.DEFAULT_URL.endswith("/cifar-10-binary.tar.gz")
