"""The decoded-image cache: written in bounded memory, read memory-mapped, checked before it is read; the index."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.data import FolderOptions, load_data
from selfsup.data import cache, parallel
from selfsup.data.folder import find_images
from selfsup.data.index import has_images, scan

from test_folders import mixed_folder, save


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFSUP_CACHE_DIR", str(tmp_path / "cache"))


def entry(tmp_path) -> str:
    """The one cache entry's .npy path."""
    (npy,) = [n for n in os.listdir(tmp_path / "cache") if n.endswith(".npy") and not n.startswith(".")]
    return str(tmp_path / "cache" / npy)


def count_decodes(monkeypatch) -> list[int]:
    calls = []
    real = parallel.decode

    def counted(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(parallel, "decode", counted)
    return calls


# ---------------------------------------------------------------- memory-mapped, bounded memory

RSS_PROBE = """
import json, sys, torch
from selfsup.data import FolderOptions, load_data

def status(field):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(field + ":"))

before = status("VmRSS")
x = load_data(sys.argv[1], folder=FolderOptions(image_size=128, workers=2)).x
peak, after = status("VmHWM"), status("VmRSS")
maps = open("/proc/self/maps").read()
total = int(x.sum(dtype=torch.int64))  # reads every page: the map is real and holds the pixels
print(json.dumps(dict(before=before, peak=peak, after=after, bytes=x.numel(), n=len(x), total=total,
                      mapped=sys.argv[2] in maps, touched=status("VmRSS"))))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads RSS from /proc")
def test_decoding_writes_the_cache_without_the_parent_holding_it(tmp_path):
    root = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for i in range(10):
        save(Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)), root / f"{i:04d}.png")
    for i in range(10, 1600):  # hard links: 1,600 files to decode, 10 distinct
        os.link(root / f"{i % 10:04d}.png", root / f"{i:04d}.png")
    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""),
               SELFSUP_CACHE_DIR=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", RSS_PROBE, str(root), str(tmp_path / "cache")], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout.strip().splitlines()[-1])
    assert m["n"] == 1600 and m["bytes"] == 1600 * 3 * 128 * 128 and m["bytes"] > 75e6
    assert m["mapped"]  # the tensor is the cache file, memory-mapped
    assert m["peak"] - m["before"] < m["bytes"] // 8, m  # the 79 MB output never passed through the parent
    assert m["touched"] - m["after"] > m["bytes"] // 2, m  # reading it does bring it in: the probe can see growth
    x = np.load(entry(tmp_path), mmap_mode="r")
    assert int(x.sum(dtype=np.int64)) == m["total"]


def test_cached_tensor_is_memory_mapped_copy_on_write(tmp_path, recwarn):
    root = tmp_path / "imgs"
    mixed_folder(root, 12)
    first = load_data(str(root), folder=FolderOptions(image_size=16))
    again = load_data(str(root), folder=FolderOptions(image_size=16))
    assert torch.equal(first.x, again.x)
    assert not [w for w in recwarn if "not writable" in str(w.message)]  # nothing to silence: the map is writable
    again.x[0] = 7  # changes this process's copy of the page only
    assert not first.x[0].eq(7).all() and torch.equal(load_data(str(root), folder=FolderOptions(image_size=16)).x,
                                                      first.x)
    assert np.array_equal(np.load(entry(tmp_path), mmap_mode="r")[0], first.x[0].numpy())  # the file is unchanged


def test_skipped_rows_are_removed_from_the_file_and_no_temporary_is_left(tmp_path):
    root = tmp_path / "imgs"
    for i in range(6):
        save(Image.new("L", (8, 8), 10 * i), root / f"ok{i}.png")
    noisy = save(Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40), dtype=np.uint8)),
                 root / "ok2b.png")
    data = open(noisy, "rb").read()
    open(noisy, "wb").write(data[: len(data) // 2])  # decodes badly: its row is dropped after decoding
    x = load_data(str(root), folder=FolderOptions(skip_bad=True, image_size=8)).x
    assert x[:, 0, 0, 0].tolist() == [0, 10, 20, 30, 40, 50]
    npy = np.load(entry(tmp_path))
    assert npy.shape == (6, 1, 8, 8) and os.path.getsize(entry(tmp_path)) == cache.HEADER + 6 * 64
    assert not [n for n in os.listdir(tmp_path / "cache") if n.startswith(cache._TMP)]


def test_no_cache_decodes_into_a_temporary_file_that_is_gone(tmp_path):
    root = tmp_path / "imgs"
    mixed_folder(root, 6)
    x = load_data(str(root), folder=FolderOptions(image_size=16, cache=False)).x
    assert x.shape == (6, 3, 16, 16) and x.float().mean() > 0
    assert [n for n in os.listdir(tmp_path / "cache") if not n.startswith(".lock")] == []


# ---------------------------------------------------------------- integrity

@pytest.mark.parametrize("damage", ["truncate", "byte", "byte, mtime kept", "header", "record"])
def test_a_damaged_cache_entry_is_detected_and_rebuilt(tmp_path, monkeypatch, capsys, damage):
    root = tmp_path / "imgs"
    mixed_folder(root, 10)
    first = load_data(str(root), folder=FolderOptions(image_size=16, workers=1)).x.clone()
    path = entry(tmp_path)
    size, st = os.path.getsize(path), os.stat(path)
    if damage == "truncate":
        os.truncate(path, size - 100)
    elif damage.startswith("byte"):
        with open(path, "r+b") as f:  # a pixel in the middle of the data
            f.seek(size // 2)
            b = f.read(1)
            f.seek(size // 2)
            f.write(bytes([b[0] ^ 0xFF]))
        if damage == "byte, mtime kept":
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    elif damage == "header":  # another shape, same size, same mtime
        with open(path, "r+b") as f:
            f.write(cache.npy_header((5, 6, 16, 16)))
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    else:
        (tmp_path / "cache" / os.path.basename(path).replace(".npy", ".json")).write_text("{not json")
    capsys.readouterr()
    calls = count_decodes(monkeypatch)
    again = load_data(str(root), folder=FolderOptions(image_size=16, workers=1)).x
    err = capsys.readouterr().err
    why = {"truncate": f"is {size - 100:,} bytes, its record says {size:,}", "byte": "was modified",
           "byte, mtime kept": "does not match its checksum", "header": "has another header",
           "record": "has an unreadable record"}[damage]
    assert f"cache entry {path} {why}" in err and "decoding again" in err, err
    assert len(calls) == 10 and torch.equal(again, first)  # decoded again, never read as garbage
    calls.clear()
    assert torch.equal(load_data(str(root), folder=FolderOptions(image_size=16, workers=1)).x, first)
    assert calls == [] and "decoding again" not in capsys.readouterr().err  # the rebuilt entry is read


def test_checksum_samples_blocks_of_a_big_file(tmp_path):
    big = tmp_path / "big.bin"
    blocks = cache.SAMPLE_BLOCKS * 3
    big.write_bytes(bytes(blocks * cache.BLOCK))
    crc = cache.checksum(str(big), blocks * cache.BLOCK)
    with open(big, "r+b") as f:  # inside the last block: always sampled
        f.seek(blocks * cache.BLOCK - 10)
        f.write(b"\1")
    assert cache.checksum(str(big), blocks * cache.BLOCK) != crc


# ---------------------------------------------------------------- the index

def old_find_images(root: str) -> list[str]:
    """The os.walk version this replaced (regular files only): the index must list the same files in order."""
    found, seen = [], set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found += [os.path.join(dirpath, f) for f in filenames
                  if not f.startswith(".") and f.lower().endswith((".png", ".jpg", ".jpeg"))]
    return sorted(p for p in found if os.path.isfile(p))


def test_index_lists_what_os_walk_did_with_one_stat_a_file(tmp_path):
    root = tmp_path / "r"
    for rel in ("a/x.png", "a/y.JPG", "a b/z.jpeg", "a/deep/er/w.png", ".hidden/h.png", "a/._x.png", "b.png",
                "a/notes.txt", "c/d/e.jpg"):
        os.makedirs(os.path.dirname(root / rel), exist_ok=True)
        (root / rel).write_bytes(b"x" * len(rel))
    os.symlink(root / "a", root / "link")  # a symlinked class folder is followed
    os.symlink(root, root / "c" / "cycle")  # a cycle is walked once
    os.symlink(root / "gone.png", root / "dangling.png")
    os.mkfifo(root / "a" / "fifo.png")
    listing = scan(str(root))
    assert find_images(str(root)) == listing.paths == old_find_images(str(root))
    alias = "link" if "link/x.png" in listing.rel else "a"  # one folder, two names: walked once, by the first seen
    assert ("a/x.png" in listing.rel) != ("link/x.png" in listing.rel) and "c/d/e.jpg" in listing.rel
    assert len(listing.rel) == 6 and not any(r.startswith(".") or "/." in r for r in listing.rel)
    assert listing.special == sorted([f"{alias}/fifo.png", "dangling.png"])
    assert listing.sizes == [os.path.getsize(p) for p in listing.paths]
    assert listing.mtimes == [os.stat(p).st_mtime_ns for p in listing.paths]
    assert has_images(str(root)) and not has_images(str(root / "a" / "deep" / "nothing"))


def test_index_benchmark_prints_json(tmp_path):
    r = subprocess.run([sys.executable, "benchmarks/index_folder.py", "--n", "3000", "--root", str(tmp_path / "b")],
                       capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=os.getcwd()))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["files"] == 3000 and out["found"] == 3000 and out["scan_s"] > 0 and out["key_s"] > 0


def test_an_unwritable_cache_decodes_into_a_temporary_file(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFSUP_CACHE_DIR", str(tmp_path / "a-file"))
    (tmp_path / "a-file").write_text("not a folder")  # no cache can be made here
    mixed_folder(tmp_path / "imgs", 6)
    x = load_data(str(tmp_path / "imgs"), folder=FolderOptions(image_size=16, workers=1)).x
    assert x.shape == (6, 3, 16, 16)
    assert torch.equal(x, load_data(str(tmp_path / "imgs"), folder=FolderOptions(image_size=16, cache=False)).x)


def test_temporaries_of_dead_processes_are_swept(tmp_path):
    import socket

    os.makedirs(tmp_path / "cache")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / "cache" / f"{cache._TMP}{socket.gethostname()}-{int(dead.stdout)}-x.npy"
    live = tmp_path / "cache" / f"{cache._TMP}{socket.gethostname()}-{os.getpid()}-y.npy"
    stale.write_bytes(b"left by a killed decode")
    live.write_bytes(b"being written")
    mixed_folder(tmp_path / "imgs", 4)
    load_data(str(tmp_path / "imgs"), folder=FolderOptions(image_size=8, workers=1))
    assert not stale.exists() and live.exists()


def test_a_decode_that_fails_after_its_file_was_started_leaves_no_temporary(tmp_path):
    root = tmp_path / "imgs"
    for i in range(2):  # headers read fine, pixels do not: the error comes after the cache file exists
        noisy = save(Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 40), dtype=np.uint8)),
                     root / f"bad{i}.png")
        data = open(noisy, "rb").read()
        open(noisy, "wb").write(data[: len(data) // 2])
    with pytest.raises(Exception, match="every image in .* is unreadable"):
        load_data(str(root), folder=FolderOptions(skip_bad=True, image_size=8))
    assert not [n for n in os.listdir(tmp_path / "cache") if n.startswith(cache._TMP) or n.endswith(".npy")]
