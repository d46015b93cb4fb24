"""Images above PIL's decode budget: decoded by libvips (pyvips) in bounded memory, or refused as too large (never
"corrupt") with the command that installs it; pyvips's pixels against PIL's on an ordinary image."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.data import FolderOptions, load_data
from selfsup.data import decode as dec
from selfsup.errors import SelfSupError

from test_folders import raw_png, save

# looked for, not imported: a test process that loaded libvips would fork its workers from a fork server
HAVE_PYVIPS = importlib.util.find_spec("pyvips") is not None
needs_pyvips = pytest.mark.skipif(not HAVE_PYVIPS, reason="pyvips (the `images` extra) is not installed")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFSUP_CACHE_DIR", str(tmp_path / "cache"))


def half_and_half(path, w: int, h: int) -> str:
    """A w x h 8-bit gray PNG, left half black and right half white (compresses to almost nothing)."""
    return raw_png(path, w, h, bytes(w // 2) + b"\xff" * (w - w // 2))


LARGE_PROBE = """
import json, sys
from selfsup.data import FolderOptions, load_data
from selfsup.data import decode as dec

def status(field):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(field + ":"))

dec.MAX_DECODE_BYTES = 32 << 20  # PIL would need 137 MiB for this image: above the budget, so libvips decodes it
dec.IN_WORKER = True  # in this process, as in a pool worker, where its memory is measured
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets the peak (VmHWM) to the current RSS: the import's peak does not hide the decode's
before = status("VmRSS")
x = load_data(sys.argv[1], folder=FolderOptions(image_size=16, workers=1, cache=False)).x
grown = status("VmHWM") - before
print(json.dumps(dict(grown=grown, shape=list(x.shape), left=int(x[0, 0, :, :7].max()), right=int(x[0, 0, :, 9:].min()))))
"""


@needs_pyvips
@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="resets the peak RSS through /proc")
def test_png_above_the_budget_decodes_through_pyvips_in_bounded_memory(tmp_path):
    half_and_half(tmp_path / "scan.png", 12000, 12000)
    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", LARGE_PROBE, str(tmp_path)], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout.strip().splitlines()[-1])
    assert m["shape"] == [1, 1, 16, 16] and m["left"] <= 2 and m["right"] >= 253, m  # (lanczos rings by 1 level)
    assert m["grown"] < 48 << 20, m  # a full decode is 12000 x 12000 bytes = 137 MiB; rows are streamed


def test_without_pyvips_a_large_png_is_too_large_not_corrupt_and_skip_bad_lists_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(dec, "_VIPS", None)  # pyvips hidden
    monkeypatch.setattr(dec, "MAX_DECODE_BYTES", 64 << 20)
    half_and_half(tmp_path / "big.png", 12000, 12000)  # 137 MiB for PIL: above the (lowered) budget
    save(Image.new("L", (20, 20), 99), tmp_path / "small.png")
    with pytest.raises(SelfSupError) as e:
        load_data(str(tmp_path), folder=FolderOptions(image_size=16, workers=1))
    msg = str(e.value)
    assert msg.startswith(f"image too large: {tmp_path / 'big.png'} (12000x12000 px would need 0.1 GiB") and "\n" not in msg
    assert "too large to decode without pyvips" in msg and "pip install pyvips pyvips-binary" in msg
    assert "corrupt" not in msg
    data = load_data(str(tmp_path), folder=FolderOptions(image_size=16, workers=1, skip_bad=True))
    assert data.skipped == [str(tmp_path / "big.png")] and len(data) == 1 and data.x.eq(99).all()
    assert "skipped 1 bad file(s) (1 too large to decode without pyvips)" in capsys.readouterr().err


@needs_pyvips
def test_pyvips_pixels_are_close_to_pils(tmp_path):
    """The tolerance: pyvips resamples with another kernel, so a mean absolute difference of at most 3 levels
    (of 255) on a smooth image, with transparency composited on the same background and EXIF applied the same."""
    yy, xx = np.mgrid[0:900, 0:1400].astype(np.float32)
    rgb = np.stack([xx / 1400 * 255, yy / 900 * 255, (xx + yy) / 2300 * 255], -1).astype(np.uint8)
    alpha = np.where(xx < 700, 255, 128).astype(np.uint8)[..., None]
    save(Image.fromarray(np.concatenate([rgb, alpha], -1), "RGBA"), tmp_path / "rgba.png")
    save(Image.fromarray(rgb[..., 0]), tmp_path / "gray.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    save(Image.fromarray(rgb), tmp_path / "turned.jpg", exif=exif, quality=95)
    for name, gray in (("rgba.png", False), ("gray.png", True), ("turned.jpg", False)):
        p = str(tmp_path / name)
        pil = dec.decode(p, 48, gray, (0, 0, 255)).astype(np.float32)
        vips = dec.decode_large(p, 48, gray, (0, 0, 255)).astype(np.float32)
        assert pil.shape == vips.shape == ((1 if gray else 3), 48, 48)
        assert np.abs(pil - vips).mean() <= 3.0, (name, np.abs(pil - vips).mean())
    with open(tmp_path / "rgba.png", "rb") as f:  # a file object (a tar member) decodes the same way
        assert np.array_equal(dec.decode_large(f, 48, False, (0, 0, 255)),
                              dec.decode_large(str(tmp_path / "rgba.png"), 48, False, (0, 0, 255)))
    assert sys.modules.get("pyvips") is None  # libvips ran in forked children: this process can still fork


@needs_pyvips
def test_a_large_png_with_missing_rows_is_corrupt_under_pyvips(tmp_path, monkeypatch):
    monkeypatch.setattr(dec, "MAX_DECODE_BYTES", 64 << 20)
    raw_png(tmp_path / "cut.png", 12000, 12000, b"\0" * 50)  # a header, then far too little data
    with pytest.raises(SelfSupError, match=r"^corrupt image: .*cut\.png \(.*read error"):
        load_data(str(tmp_path), folder=FolderOptions(image_size=16, workers=1))


AFTER_VIPS = """
import sys
import pyvips
from selfsup.data import FolderOptions, load_data

assert pyvips.Image.new_from_file(sys.argv[1] + "/a.png").avg() == 0  # the caller's own libvips use
x = load_data(sys.argv[1], folder=FolderOptions(image_size=8, workers=2, cache=False)).x
print(x[:, 0, 0, 0].tolist())
"""


@needs_pyvips
def test_workers_still_start_after_libvips_ran_in_the_parent(tmp_path):
    """A child forked from a process whose libvips has run hangs at its first call: selfsup never runs it in the
    pool's parent, but a caller may have, and the pool then uses a fork server. In a subprocess with a timeout,
    so a hang fails the test instead of stopping the suite."""
    for i in range(4):
        save(Image.new("L", (30, 20), 10 * i), tmp_path / f"{'abcd'[i]}.png")
    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", AFTER_VIPS, str(tmp_path)], capture_output=True, text=True, env=env,
                       timeout=240)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[0, 10, 20, 30]"
