"""Decoding speed of an image folder: images/s on 1, 2 ... workers, and the start time from the cache.

    python benchmarks/decode_folder.py [--count 10000] [--workers 1,2] [--image-size 64] [--root .data/decode_folder]

The folder is generated once into --root (git-ignored; reused while its recipe is unchanged): a mix of icons
(16-128 px PNG: RGBA, palette, gray, RGB), small images (160-640 px, PNG and JPEG), medium photos (800-1600 px
JPEG) and camera-size photos (4000x3000: JPEG, a few PNG). Pixels are gradients + blobs + noise, so JPEGs have
realistic sizes and PNGs do not compress to nothing. To keep generation affordable, each size class has
--distinct different images and the rest of its files are hard links to them (same bytes, same decoding cost).
Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import time
import zlib

import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# class -> (share of the files, (min, max) longer side, formats, distinct images)
MIX = {
    "icon": (0.40, (16, 128), ("png",), 4000),
    "small": (0.30, (160, 640), ("png", "jpg"), 600),
    "medium": (0.20, (800, 1600), ("jpg",), 150),
    "photo": (0.10, (4000, 4000), ("jpg", "jpg", "jpg", "png"), 24),
}


def pixels(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """H x W x 3 uint8: a colour gradient and a few soft blobs (drawn at 1/4 size, upscaled), plus noise (sigma 6)."""
    sw, sh = max(w // 4, 2), max(h // 4, 2)
    yy, xx = np.mgrid[0:sh, 0:sw].astype(np.float32)
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = (xx / sw)[..., None]
    img = c0 * (1 - t) + c1 * t
    for _ in range(3):
        cx, cy, r = rng.uniform(0, sw), rng.uniform(0, sh), rng.uniform(0.05, 0.3) * max(sw, sh)
        img += (rng.uniform(-80, 80, 3) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))[..., None])
    smooth = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)
    noisy = np.asarray(smooth, dtype=np.int16) + rng.normal(0, 6, (h, w, 1)).astype(np.int16)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def make_one(job: tuple[str, str, int, int, str]) -> None:
    path, kind, w, h, fmt = job
    rng = np.random.default_rng(zlib.crc32(path.encode()))
    img = Image.fromarray(pixels(rng, w, h))
    if kind == "icon":
        mode = ("RGBA", "P", "L", "RGB")[int(rng.integers(4))]
        if mode == "RGBA":
            img = img.convert("RGBA")
            img.putalpha(Image.fromarray((pixels(rng, w, h)[..., 0] > 128).astype(np.uint8) * 255))
        else:
            img = img.convert(mode)
    img.save(path, quality=90) if fmt == "jpg" else img.save(path)


def plan(root: str, count: int, seed: int = 0) -> tuple[list, list]:
    """(distinct images to generate, [(link, target)]) for `count` files."""
    rng = np.random.default_rng(seed)
    jobs, links = [], []
    for kind, (share, (lo, hi), formats, distinct) in MIX.items():
        n = int(round(share * count))
        made = []
        for i in range(n):
            path = os.path.join(root, kind, f"{kind}{i:05d}")
            if i < distinct:
                side = int(rng.integers(lo, hi + 1))
                w, h = (side, side * 3 // 4) if kind == "photo" else (side, int(side * rng.uniform(0.5, 1.5)))
                fmt = formats[i % len(formats)]
                jobs.append((f"{path}.{fmt}", kind, w, max(h, 8), fmt))
                made.append(f"{path}.{fmt}")
            else:
                target = made[i % len(made)]
                links.append((path + os.path.splitext(target)[1], target))
    return jobs, links


def generate(root: str, count: int) -> dict:
    stamp = os.path.join(root, "RECIPE.json")
    recipe = dict(count=count, mix={k: list(map(str, v)) for k, v in MIX.items()})
    if os.path.exists(stamp) and json.load(open(stamp)) == recipe:
        return dict(generated=False)
    t0 = time.perf_counter()
    jobs, links = plan(root, count)
    for kind in MIX:
        os.makedirs(os.path.join(root, kind), exist_ok=True)
    with multiprocessing.Pool() as pool:
        pool.map(make_one, jobs, chunksize=8)
    for link, target in links:
        if os.path.exists(link):
            os.remove(link)
        os.link(target, link)
    json.dump(recipe, open(stamp, "w"))
    return dict(generated=True, generate_s=round(time.perf_counter() - t0, 1))


def timed_load(root: str, workers: int, size: int, cache: bool) -> tuple[float, int]:
    from selfsup.data import FolderOptions, load_data

    t0 = time.perf_counter()
    data = load_data(root, folder=FolderOptions(image_size=size, workers=workers, cache=cache, progress=False))
    return time.perf_counter() - t0, len(data)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=10000)
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts to time")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--root", default=".data/decode_folder")
    a = p.parse_args()
    sys.path.insert(0, REPO)
    root = os.path.abspath(a.root)
    gen = generate(root, a.count)
    disk = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs if f != "RECIPE.json")
    out = dict(count=a.count, image_size=a.image_size, mix={k: v[0] for k, v in MIX.items()}, **gen,
               folder_mb=round(disk / 1e6), cpu=platform.processor() or platform.machine(),
               cores=len(os.sched_getaffinity(0)), loadavg_before=[round(v, 2) for v in os.getloadavg()])
    for w in (int(v) for v in a.workers.split(",")):
        seconds, n = timed_load(root, w, a.image_size, cache=False)
        out[f"images_per_s_{w}_workers"] = round(n / seconds, 1)
        out[f"seconds_{w}_workers"] = round(seconds, 2)
    with tempfile.TemporaryDirectory() as cache_dir:
        os.environ["SELFSUP_CACHE_DIR"] = cache_dir
        out["first_run_with_cache_write_s"] = round(timed_load(root, len(os.sched_getaffinity(0)), a.image_size, True)[0], 2)
        out["cached_load_s"] = round(timed_load(root, 1, a.image_size, True)[0], 3)
        # a fresh process, as the second `selfsup pretrain` would be: interpreter + imports + cached load
        t0 = time.perf_counter()
        code = (f"from selfsup.data import FolderOptions, load_data; "
                f"load_data({root!r}, folder=FolderOptions(image_size={a.image_size}))")
        env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
        subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True)
        out["cached_start_fresh_process_s"] = round(time.perf_counter() - t0, 2)
    out["loadavg_after"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
