"""Decoding a folder whose full-resolution pixels take 3.7 GB, in a subprocess, measuring its peak memory."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from test_folders import raw_png, save

MEMORY_PROBE = """
import glob, json, os, sys
from selfsup.data import FolderOptions, load_data, parallel

def status(field):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(field + ":"))

START = {}
original = parallel._decode_chunk

def measured(*args):  # runs in the forked worker: its peak RSS above its RSS when it got its first chunk
    START.setdefault("rss", status("VmRSS"))
    START["png"] = START.get("png", False) or any(p.endswith(".png") for p in args[0])
    out = original(*args)
    with open(os.path.join(sys.argv[3], str(os.getpid())), "w") as f:
        json.dump([status("VmHWM") - START["rss"], START["png"]], f)
    return out

parallel._decode_chunk = measured
before = status("VmRSS")
x = load_data(sys.argv[1], folder=FolderOptions(image_size=int(sys.argv[2]), workers=2, cache=False)).x
grown = [json.load(open(p)) for p in glob.glob(os.path.join(sys.argv[3], "*"))]
print(json.dumps(dict(before=before, peak=status("VmHWM"), tensor=x.numel(), n=len(x), workers=grown)))
"""
MIB = 1 << 20
MAIN_MARGIN = 64 * MIB  # the parent: the output tensor plus this (chunks in flight, bookkeeping)
WORKER_MARGIN = 160 * MIB  # each worker: one 6000x4000 PNG as PIL holds it (4 bytes a pixel, 92 MiB), plus slack
JPEG_MARGIN = 32 * MIB  # a worker that only decoded JPEGs: drafted at 1/8, 750x500, not 92 MiB each


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads peak RSS from /proc")
def test_decoding_memory_is_the_output_plus_a_fixed_margin(tmp_path):
    root = tmp_path / "big"
    root.mkdir()
    w, h = 6000, 4000
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    photo = np.stack([xx / w * 255, yy / h * 255, (xx + yy) / (w + h) * 255], -1).astype(np.uint8)
    save(Image.fromarray(photo), root / "p000.jpg", quality=85)
    raw_png(root / "s000.png", w, h, photo[0].tobytes(), mode_bytes=(8, 2))  # RGB, one gradient row repeated
    for i in range(1, 48):  # hard links: 48 JPEGs and 4 PNGs to decode, a few MB on disk
        os.link(root / "p000.jpg", root / f"p{i:03d}.jpg")
    for i in range(1, 4):
        os.link(root / "s000.png", root / f"s{i:03d}.png")
    full_res = 52 * w * h * 3
    assert full_res > 3.7e9  # 3.7 GB of pixels at full resolution (3 bytes a pixel)
    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    (tmp_path / "workers").mkdir()
    r = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(root), "128", str(tmp_path / "workers")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout.strip().splitlines()[-1])
    assert m["n"] == 52 and m["tensor"] == 52 * 3 * 128 * 128
    assert m["peak"] - m["before"] <= m["tensor"] + MAIN_MARGIN, m
    # each worker's growth is bounded by one image (a forked worker shares the parent's pages: its own growth counts)
    assert len(m["workers"]) == 2 and max(g for g, _ in m["workers"]) <= WORKER_MARGIN, m
    jpeg_only = [g for g, png in m["workers"] if not png]
    assert jpeg_only and max(jpeg_only) <= JPEG_MARGIN, m  # the PNGs are one chunk: one worker saw JPEGs only
