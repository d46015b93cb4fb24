"""WebDataset tar shards as a source: brace patterns, samples grouped by key, labels, the shared cache."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.data import FolderOptions, load_data
from selfsup.data import shards as sh
from selfsup.data.shards import expand_braces
from selfsup.errors import SelfSupError


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFSUP_CACHE_DIR", str(tmp_path / "cache"))


def png_bytes(img: Image.Image, fmt: str = "png") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG" if fmt in ("jpg", "jpeg") else "PNG", quality=95)
    return buf.getvalue()


def write_shard(path, samples: list[dict[str, bytes]]) -> None:
    """A tar of samples {"__key__": key, ext: bytes, ...}, members in sample order as WebDataset writes them."""
    with tarfile.open(path, "w") as tar:
        for s in samples:
            for ext, data in s.items():
                if ext != "__key__":
                    info = tarfile.TarInfo(f"{s['__key__']}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


def make_shards(root, n_shards: int = 3, per_shard: int = 5, folder=None) -> list[np.ndarray]:
    """Shards of random RGB images of varied sizes with .cls labels; the same images also as files in `folder`."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    arrays = []
    for s in range(n_shards):
        samples = []
        for i in range(per_shard):
            k = s * per_shard + i
            w, h = int(rng.integers(12, 60)), int(rng.integers(12, 60))
            arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            arrays.append(arr)
            ext = ("png", "jpg")[k % 2]
            data = png_bytes(Image.fromarray(arr), ext)
            samples.append({"__key__": f"sub/{k:05d}", ext: data, "cls": str(k % 3).encode(), "json": b"{}"})
            if folder is not None:
                os.makedirs(folder, exist_ok=True)
                (folder / f"{k:05d}.{ext}").write_bytes(data)
        write_shard(root / f"train-{s:03d}.tar", samples)
    return arrays


def test_brace_expansion():
    assert expand_braces("a-{000..002}.tar") == ["a-000.tar", "a-001.tar", "a-002.tar"]
    assert expand_braces("{x,y}/s{8..10}.tar") == ["x/s8.tar", "x/s9.tar", "x/s10.tar", "y/s8.tar", "y/s9.tar",
                                                   "y/s10.tar"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    with pytest.raises(SelfSupError, match="counts down"):
        expand_braces("a-{5..1}.tar")
    with pytest.raises(SelfSupError, match="cannot expand"):
        expand_braces("a-{x}.tar")


def test_shards_decode_like_the_same_images_in_a_folder(tmp_path):
    make_shards(tmp_path / "shards", folder=tmp_path / "folder")
    pattern = str(tmp_path / "shards" / "train-{000..002}.tar")
    data = load_data(pattern, folder=FolderOptions(image_size=16, workers=2))
    same = load_data(str(tmp_path / "folder"), folder=FolderOptions(image_size=16, workers=1))
    assert data.x.shape == (15, 3, 16, 16) and torch.equal(data.x, same.x)  # the folder decoder's pixels
    assert data.labels.tolist() == [k % 3 for k in range(15)] and data.classes is None
    assert data.paths[0] == str(tmp_path / "shards" / "train-000.tar") + "/sub/00000.png"
    assert load_data(pattern, split="test") is None  # shards are one split: the run makes its holdout
    one = load_data(str(tmp_path / "shards" / "train-001.tar"), folder=FolderOptions(image_size=16))
    assert torch.equal(one.x, data.x[5:10])


def test_cache_hit_reads_the_shards_entry_without_decoding(tmp_path, monkeypatch, capsys):
    make_shards(tmp_path / "shards", 2, 4)
    pattern = str(tmp_path / "shards" / "train-{000..001}.tar")
    first = load_data(pattern, folder=FolderOptions(image_size=16))

    def no(*a, **k):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(sh, "_index_shard", no)
    again = load_data(pattern, folder=FolderOptions(image_size=16))
    assert torch.equal(first.x, again.x) and torch.equal(first.labels, again.labels) and first.paths == again.paths
    assert "8 samples from the cache" in capsys.readouterr().err


def test_txt_labels_become_classes_and_unlabelled_mixes_are_refused(tmp_path):
    img = png_bytes(Image.new("RGB", (8, 8), (1, 2, 3)))
    write_shard(tmp_path / "a.tar", [{"__key__": "k0", "png": img, "txt": b"zebra\n"},
                                     {"__key__": "k1", "png": img, "txt": b"ant"},
                                     {"__key__": "k2", "txt": b"no image: ignored"},
                                     {"__key__": "k3", "png": img, "txt": b"zebra"}])
    data = load_data(str(tmp_path / "a.tar"))
    assert data.classes == ["ant", "zebra"] and data.labels.tolist() == [1, 0, 1] and data.x.shape == (3, 3, 8, 8)
    write_shard(tmp_path / "b.tar", [{"__key__": "k0", "png": img, "cls": b"1"}, {"__key__": "k1", "png": img}])
    with pytest.raises(SelfSupError, match=r"b\.tar/k1\.png has no \.cls or \.txt label"):
        load_data(str(tmp_path / "b.tar"))


def test_bad_samples_missing_shards_and_non_tars_are_one_line(tmp_path, capsys):
    good = png_bytes(Image.new("L", (8, 8), 50))
    cut = png_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40), dtype=np.uint8)))
    write_shard(tmp_path / "s-0.tar", [{"__key__": "a", "png": good}, {"__key__": "b", "png": cut[: len(cut) // 2]},
                                       {"__key__": "c", "png": b"junk"}])
    with pytest.raises(SelfSupError) as e:
        load_data(str(tmp_path / "s-{0..0}.tar"))
    assert str(e.value).startswith(f"corrupt image: {tmp_path / 's-0.tar'}/c.png (") and "\n" not in str(e.value)
    data = load_data(str(tmp_path / "s-{0..0}.tar"), folder=FolderOptions(skip_bad=True))
    assert len(data) == 1 and data.x.eq(50).all()
    assert data.skipped == [str(tmp_path / "s-0.tar") + "/b.png", str(tmp_path / "s-0.tar") + "/c.png"]
    assert "skipped 2 bad file(s)" in capsys.readouterr().err
    with pytest.raises(SelfSupError, match=r"1 of the 2 shards of .* are missing, e\.g\. .*s-1\.tar"):
        load_data(str(tmp_path / "s-{0..1}.tar"))
    (tmp_path / "t.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(SelfSupError, match=r"cannot read shard .*t\.tar as a tar file"):
        load_data(str(tmp_path / "t.tar"))


RANK = """
import sys
from selfsup.data import FolderOptions, load_data
x = load_data(sys.argv[1], folder=FolderOptions(image_size=16, workers=1)).x
print(int(x.sum()))
"""


def test_processes_asking_at_once_decode_once_and_share_the_entry(tmp_path):
    """What torchrun's ranks do: each asks for the same shards; the first takes the entry's lock and decodes,
    the other waits, then maps the same file."""
    make_shards(tmp_path / "shards", 2, 6)
    pattern = str(tmp_path / "shards" / "train-{000..001}.tar")
    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""),
               SELFSUP_CACHE_DIR=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-c", RANK, pattern], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert outs[0][0] == outs[1][0]
    errs = sorted(err for _, err in outs)
    assert sum("decoded 12 samples" in e for e in errs) == 1 and sum("12 samples from the cache" in e for e in errs) == 1
