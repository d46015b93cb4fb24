"""Indexing a big image folder: seconds to list it (one os.scandir walk, one stat a file) and to hash its key.

    python benchmarks/index_folder.py [--n 200000] [--per-folder 1000] [--root .data/index_folder]

Generates --n empty files named like images (in class folders of --per-folder files; reused while the count is
unchanged), then times `scan` (what `find_images` does) and `cache.folder_key` on them, in a fresh process
(the files' metadata are in the OS's cache after generation: a cold disk is slower). Prints one JSON object.
Run `--n 1000000` on a quiet machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from selfsup.data import cache  # noqa: E402
from selfsup.data.index import scan  # noqa: E402


def generate(root: str, n: int, per_folder: int) -> float:
    """n empty .jpg files under root/cNNNN/; seconds taken (0 when already there)."""
    stamp = os.path.join(root, f".made-{n}-{per_folder}")
    if os.path.exists(stamp):
        return 0.0
    t0 = time.perf_counter()
    for i in range(n):
        folder = os.path.join(root, f"c{i // per_folder:04d}")
        if i % per_folder == 0:
            os.makedirs(folder, exist_ok=True)
        open(os.path.join(folder, f"{i:07d}.jpg"), "wb").close()
    open(stamp, "w").close()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000, help="files to generate and index")
    ap.add_argument("--per-folder", type=int, default=1000, help="files per class folder")
    ap.add_argument("--root", default=os.path.join(REPO, ".data", "index_folder"), help="where the files go")
    a = ap.parse_args()
    root = os.path.join(os.path.abspath(a.root), str(a.n))
    made = generate(root, a.n, a.per_folder)
    t0 = time.perf_counter()
    listing = scan(root)
    t1 = time.perf_counter()
    key = cache.folder_key(root, listing.entries(), {})
    t2 = time.perf_counter()
    print(json.dumps(dict(files=a.n, found=len(listing.rel), generate_s=round(made, 2), scan_s=round(t1 - t0, 3),
                          key_s=round(t2 - t1, 3), files_per_s=round(a.n / (t2 - t0)), key=key,
                          machine=platform.machine(), cpus=os.cpu_count(), load=os.getloadavg()[0])))


if __name__ == "__main__":
    main()
