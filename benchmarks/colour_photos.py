"""Real colour images that install offline: 32 x 32 crops of the photographs in two Debian wallpaper packages.

    apt-get install lomiri-wallpapers-16.04 mate-backgrounds
    python benchmarks/colour_photos.py --out data/photos32.npz

Photographs: /usr/share/backgrounds/*.jpg (lomiri-wallpapers-16.04; umang_by_Abhishek_Mudgal.jpg is left out:
it is a synthetic gradient, not a photograph) and /usr/share/backgrounds/mate/nature/*.jpg (mate-backgrounds).
Each photograph is resized so its short side is 96, 160 and 256 px and cut into non-overlapping 32 x 32 crops;
a crop's label is its photograph (26 classes: "which scene is this crop from"). Prints a JSON summary.
"""
from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path

import numpy as np
from PIL import Image

SOURCES = ("/usr/share/backgrounds/*.jpg", "/usr/share/backgrounds/mate/nature/*.jpg")
NOT_PHOTOS = ("umang_by_Abhishek_Mudgal.jpg",)


def crops(path: str, side: int, scales: tuple[int, ...]) -> list[np.ndarray]:
    img = Image.open(path).convert("RGB")
    out = []
    for short in scales:
        w, h = img.size
        f = short / min(w, h)
        im = np.asarray(img.resize((round(w * f), round(h * f)), Image.BICUBIC))
        for top in range(0, im.shape[0] - side + 1, side):
            for left in range(0, im.shape[1] - side + 1, side):
                out.append(im[top:top + side, left:left + side])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="data/photos32.npz")
    ap.add_argument("--side", type=int, default=32)
    ap.add_argument("--scales", default="96,160,256")
    a = ap.parse_args()
    files = [f for pattern in SOURCES for f in sorted(glob.glob(pattern)) if Path(f).name not in NOT_PHOTOS]
    if not files:
        raise SystemExit("no photographs found: apt-get install lomiri-wallpapers-16.04 mate-backgrounds")
    scales = tuple(int(s) for s in a.scales.split(","))
    images, labels = [], []
    for i, f in enumerate(files):
        c = crops(f, a.side, scales)
        images += c
        labels += [i] * len(c)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(a.out, images=np.stack(images).astype(np.uint8), labels=np.array(labels, dtype=np.int64))
    print(json.dumps({"out": a.out, "images": len(images), "classes": len(files), "side": a.side,
                      "scales": scales, "photos": [Path(f).name for f in files]}))


if __name__ == "__main__":
    main()
