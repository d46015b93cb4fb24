"""Image folders as users have them: mixed sizes and modes, EXIF rotation, huge and broken files, nested classes,
parallel decoding, the cache. Every image here is generated, so each expected pixel value is known."""
from __future__ import annotations

import os
import struct
import zlib

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from selfsup.data import FolderOptions, load_data
from selfsup.data import decode as dec
from selfsup.data import parallel
from selfsup.errors import SelfSupError


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFSUP_CACHE_DIR", str(tmp_path / "cache"))


def save(img: Image.Image, path, **kw) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img.save(path, **kw)
    return str(path)


def raw_png(path, w: int, h: int, row: bytes, mode_bytes=(8, 0)) -> str:
    """A PNG written by hand (8-bit gray by default): the same filtered row h times, zlib-compressed.

    Fast for huge images that compress to almost nothing (PIL's encoder filters every row adaptively)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(1)
    body = b"".join(z.compress(b"\0" + row) for _ in range(h)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", w, h, *mode_bytes, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return str(path)


# ---------------------------------------------------------------- modes, transparency, orientation

def mode_zoo(root) -> None:
    """One 8x8 image of each mode, each with a known colour after decoding onto white."""
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))  # fully transparent black: must come out white
    rgba.paste((255, 0, 0, 255), (0, 0, 4, 8))  # left half opaque red
    save(rgba, root / "a_rgba.png")
    pal = Image.new("P", (8, 8), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    save(pal, root / "b_p.png")
    save(Image.new("LA", (8, 8), (0, 128)), root / "c_la.png")  # black at alpha 128 over white: 127
    save(Image.new("L", (8, 8), 77), root / "d_l.png")
    save(Image.fromarray(np.full((8, 8), 257 * 200, np.uint16)), root / "e_i16.png")  # 16-bit 51400 -> 200
    save(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), root / "f_cmyk.jpg", quality=95)  # CMYK red


def test_modes_mixed_become_rgb_on_white(tmp_path):
    mode_zoo(tmp_path)
    assert Image.open(tmp_path / "e_i16.png").mode.startswith("I;16")
    data = load_data(str(tmp_path))
    x = data.x.int()
    assert data.x.shape == (6, 3, 8, 8)
    assert x[0, :, :, :4].eq(torch.tensor([255, 0, 0]).view(3, 1, 1)).all()
    assert (x[0, :, :, 4:] == 255).all()  # transparent black composited on white, not left black
    assert x[1, :, 0, 0].tolist() == [10, 200, 30]  # palette applied
    assert (x[2] - 127).abs().max() <= 1  # LA: 0 * a + 255 * (1 - a), a = 128/255
    assert (x[3] == 77).all() and (x[4] == 200).all()  # gray replicated; 16-bit scaled, not saturated
    assert x[5, 0].float().mean() > 230 and x[5, 1:].float().mean() < 25  # CMYK through PIL's conversion


def test_all_gray_folder_stays_one_channel_and_background_is_configurable(tmp_path):
    save(Image.new("LA", (8, 8), (0, 0)), tmp_path / "a.png")
    save(Image.new("L", (8, 8), 9), tmp_path / "b.png")
    save(Image.fromarray(np.full((8, 8), 65535, np.uint16)), tmp_path / "c.png")
    save(Image.new("1", (8, 8), 1), tmp_path / "d.png")
    x = load_data(str(tmp_path)).x
    assert x.shape == (4, 1, 8, 8)
    assert x[:, 0, 0, 0].tolist() == [255, 9, 255, 255]
    black = load_data(str(tmp_path), folder=FolderOptions(background="black")).x
    assert black[0].max() == 0 and torch.equal(black[1:], x[1:])
    with pytest.raises(SelfSupError, match="--background must be"):
        load_data(str(tmp_path), folder=FolderOptions(background="nope"))


def test_exif_rotated_jpeg_stands_up(tmp_path):
    img = Image.new("L", (40, 20), 0)
    img.paste(255, (20, 0, 40, 20))  # stored: left half black, right half white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display": the left side goes to the top
    save(img, tmp_path / "phone.jpg", exif=exif, quality=95)
    x = load_data(str(tmp_path)).x
    assert x.shape == (1, 1, 40, 20)  # the header's 40x20 turned: own size is the displayed 20 wide x 40 high
    assert x[0, 0, :18].float().mean() < 10 and x[0, 0, 22:].float().mean() > 245


def test_resize_crop_matches_torchvision(tmp_path):
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate([(50, 37), (23, 61), (64, 64), (10, 12)]):  # wide, tall, square, upscaled
        save(Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)), tmp_path / f"{i}.png")
    x = load_data(str(tmp_path), folder=FolderOptions(image_size=24)).x
    for i, p in enumerate(sorted(tmp_path.glob("*.png"))):
        ref = TF.center_crop(TF.resize(Image.open(p), 24, antialias=True), 24)
        assert torch.equal(x[i], torch.from_numpy(np.array(ref)).permute(2, 0, 1))


def test_big_jpeg_decodes_at_draft_scale_close_to_the_full_decode(tmp_path):
    yy, xx = np.mgrid[0:1200, 0:1600]
    arr = np.stack([xx * 255 // 1600, yy * 255 // 1200, (xx + yy) * 255 // 2800], -1).astype(np.uint8)
    p = save(Image.fromarray(arr), tmp_path / "photo.jpg", quality=92)
    with dec.open_image(p) as img:
        img.draft(None, dec.resized_size(1600, 1200, 32))
        assert img.size == (200, 150)  # libjpeg decodes at 1/8: 64x fewer pixels
    x = load_data(str(tmp_path), folder=FolderOptions(image_size=32)).x[0].float()
    ref = TF.center_crop(TF.resize(Image.open(p), 32, antialias=True), 32)
    assert (x - torch.from_numpy(np.array(ref)).permute(2, 0, 1).float()).abs().mean() < 3


# ---------------------------------------------------------------- huge images and the bomb rule

def test_png_above_the_bomb_limit_is_decoded_when_real(tmp_path):
    w, h = 14000, 13000  # 182 Mpx: above twice PIL's limit, so PIL itself refuses it; 0.4 MB on disk
    p = raw_png(tmp_path / "scan.png", w, h, bytes(7000) + b"\xff" * 7000)
    assert w * h > 2 * Image.MAX_IMAGE_PIXELS and os.path.getsize(p) < 1 << 20
    with pytest.raises(Image.DecompressionBombError):
        Image.open(p)
    x = load_data(str(tmp_path), folder=FolderOptions(image_size=16)).x
    assert x.shape == (1, 1, 16, 16)
    assert (x[0, 0, :, :7] == 0).all() and (x[0, 0, :, 9:] == 255).all()  # left black, right white, kept


def test_bombs_are_refused_with_one_line(tmp_path, monkeypatch):
    raw_png(tmp_path / "a.png", 60000, 60000, b"", mode_bytes=(8, 2))  # claims 60000^2 RGB, holds nothing
    monkeypatch.setattr(dec, "_VIPS", None)  # without pyvips: refused for its size, never called corrupt
    with pytest.raises(SelfSupError) as e:
        load_data(str(tmp_path / ""), folder=FolderOptions(image_size=16))
    assert str(e.value).startswith("image too large: ") and "corrupt" not in str(e.value)
    assert "a.png (60000x60000 px would need 13.4 GiB to decode with PIL, above its 1 GiB limit" in str(e.value)
    assert "too large to decode without pyvips" in str(e.value) and dec.INSTALL_PYVIPS in str(e.value)
    assert "\n" not in str(e.value)
    if _has_pyvips():
        monkeypatch.undo()
        with pytest.raises(SelfSupError, match=r"corrupt image: .*a\.png \(.*read error"):  # libvips: no rows
            load_data(str(tmp_path), folder=FolderOptions(image_size=16, cache=False))
    os.remove(tmp_path / "a.png")
    raw_png(tmp_path / "b.png", 12000, 12000, b"\0" * 50)  # fits the limit, but its rows are not all there
    with pytest.raises(SelfSupError, match=r"corrupt image: .*b\.png"):
        load_data(str(tmp_path), folder=FolderOptions(image_size=16))


def _has_pyvips() -> bool:
    import importlib.util

    return importlib.util.find_spec("pyvips") is not None  # not imported: this process keeps forking its workers


# ---------------------------------------------------------------- bad files

def good_and_truncated(root) -> str:
    for i in range(5):
        save(Image.new("L", (8, 8), 10 * i), root / f"ok{i}.png")
    good = open(root / "ok0.png", "rb").read()
    noisy = save(Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40), dtype=np.uint8)),
                 root / "cut.png")
    data = open(noisy, "rb").read()
    open(noisy, "wb").write(data[: len(data) // 2])  # header fine, pixels missing: found only when decoded
    assert len(good) > 0
    return noisy


@pytest.mark.parametrize("workers", [1, 2])
def test_truncated_file_error_by_default_skipped_with_skip_bad(tmp_path, capsys, workers):
    bad = good_and_truncated(tmp_path)
    with pytest.raises(SelfSupError) as e:
        load_data(str(tmp_path), folder=FolderOptions(workers=workers))
    assert f"corrupt image: {bad} (" in str(e.value) and "--skip-bad" in str(e.value) and "\n" not in str(e.value)
    data = load_data(str(tmp_path), folder=FolderOptions(skip_bad=True, workers=workers))
    assert data.skipped == [bad] and bad not in data.paths and len(data) == 5
    assert data.x[:, 0, 0, 0].tolist() == [0, 10, 20, 30, 40]  # the good rows, in order, no hole
    assert "skipped 1 bad file(s)" in capsys.readouterr().err


def test_cli_skip_bad_lists_the_files_in_the_run(tmp_path, capsys):
    from selfsup.cli import main

    for c in ("a", "b"):
        bad = good_and_truncated(tmp_path / "imgs" / c)
    (tmp_path / "imgs" / "b" / "junk.jpg").write_bytes(b"not a jpeg")
    run = tmp_path / "run"
    args = ["pretrain", "--data", str(tmp_path / "imgs"), "--out", str(run), "--device", "cpu", "--epochs", "0",
            "--no-progress"]
    assert main(args) == 2 and "corrupt image" in capsys.readouterr().err
    assert main(args + ["--skip-bad", "--image-size", "12"]) == 0
    assert "skipped 3 bad file(s)" in capsys.readouterr().err
    listed = (run / "skipped.txt").read_text().splitlines()
    assert listed == sorted([str(tmp_path / "imgs" / "a" / "cut.png"), bad, str(tmp_path / "imgs" / "b" / "junk.jpg")])
    assert "image_size: 12" in (run / "config.yaml").read_text() and "skip_bad: true" in (run / "config.yaml").read_text()
    # embed reuses the run's size and skip rule on its own folder
    assert main(["embed", str(run), "--data", str(tmp_path / "imgs"), "--out", str(tmp_path / "f.npz"),
                 "--device", "cpu"]) == 0
    z = np.load(tmp_path / "f.npz")
    assert len(z["features"]) == 10 and len(z["labels"]) == 10


# ---------------------------------------------------------------- classes, parallel decoding, the cache

def test_nested_class_folders_label_is_the_top_level_folder(tmp_path):
    for rel, v in (("cat/2019/jan/a.png", 1), ("cat/b.png", 2), ("dog/x/y/z/c.png", 3), ("dog/d.png", 4)):
        save(Image.new("L", (4, 4), v), tmp_path / rel)
    data = load_data(str(tmp_path))
    assert data.classes == ["cat", "dog"]
    by_value = dict(zip(data.x[:, 0, 0, 0].tolist(), data.labels.tolist()))
    assert by_value == {1: 0, 2: 0, 3: 1, 4: 1}


def mixed_folder(root, n: int = 40) -> None:
    rng = np.random.default_rng(1)
    for i in range(n):
        w, h = int(rng.integers(8, 120)), int(rng.integers(8, 120))
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        fmt = ("png", "jpg")[i % 2]
        mode = ("RGB", "L", "RGBA", "P")[i % 4]
        mode = "RGB" if fmt == "jpg" and mode == "P" else mode  # JPEG has no palette
        save(Image.fromarray(arr).convert(mode),
             root / f"c{i % 3}" / f"{i:03d}.{fmt}")


def test_parallel_equals_sequential(tmp_path):
    mixed_folder(tmp_path)
    one = load_data(str(tmp_path), folder=FolderOptions(workers=1, cache=False))
    two = load_data(str(tmp_path), folder=FolderOptions(workers=2, cache=False))
    assert one.x.shape == (40, 3, 64, 64) and torch.equal(one.x, two.x) and torch.equal(one.labels, two.labels)


def test_cache_hit_gives_the_same_tensor_without_decoding(tmp_path, monkeypatch):
    root = tmp_path / "imgs"
    mixed_folder(root)
    first = load_data(str(root), folder=FolderOptions(image_size=20))
    assert len([n for n in os.listdir(tmp_path / "cache") if not n.startswith(".")]) == 2  # KEY.npy + KEY.json

    def no(*a, **k):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(parallel, "header", no)
    monkeypatch.setattr(parallel, "decode", no)
    # the files' bytes become garbage of the same size with the same mtime: only a decode could notice
    for p in root.rglob("*.*"):
        st = os.stat(p)
        p.write_bytes(b"x" * st.st_size)
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    again = load_data(str(root), folder=FolderOptions(image_size=20))
    assert torch.equal(first.x, again.x) and torch.equal(first.labels, again.labels) and first.paths == again.paths
    monkeypatch.undo()
    monkeypatch.setenv("SELFSUP_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(SelfSupError, match="corrupt image"):  # another option is another key: decoded
        load_data(str(root), folder=FolderOptions(image_size=21))
    with pytest.raises(SelfSupError, match="corrupt image"):  # --no-cache decodes
        load_data(str(root), folder=FolderOptions(image_size=20, cache=False))
    os.utime(next(root.rglob("*.png")))  # one touched file: the key changes
    with pytest.raises(SelfSupError, match="corrupt image"):
        load_data(str(root), folder=FolderOptions(image_size=20))
