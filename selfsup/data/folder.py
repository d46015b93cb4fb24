"""Loading a folder of image files (optionally one subfolder per class)."""
from __future__ import annotations

import os
from collections import Counter

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from selfsup.data.types import Dataset
from selfsup.errors import SelfSupError

EXTENSIONS = (".png", ".jpg", ".jpeg")
PROGRESS_MIN = 2000
_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


def find_images(root: str) -> list[str]:
    """Sorted absolute paths of all .png/.jpg/.jpeg files under `root`, skipping hidden entries."""
    found: list[str] = []
    seen: set[str] = set()
    # followlinks so symlinked class folders work; `seen` stops symlink cycles
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        # hidden entries are things like macOS "._x.png" resource forks, not images
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for f in filenames:
            if not f.startswith(".") and f.lower().endswith(EXTENSIONS):
                found.append(os.path.join(dirpath, f))
    return sorted(found)


def _class_of(path: str, root: str) -> str | None:
    """The immediate subfolder of `root` holding `path`, or None if it lies directly in `root`."""
    parts = os.path.relpath(path, root).split(os.sep)
    return parts[0] if len(parts) > 1 else None


def _decode(path: str) -> np.ndarray:
    """Fully decode one image to uint8: (H,W) for grayscale modes, (H,W,3) otherwise."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I", "F") or img.mode.startswith("I;16"):
                arr = np.asarray(img, dtype=np.float64)
                # 16-bit images would saturate under PIL's convert("L"); rescale instead
                if img.mode.startswith("I;16") or (img.mode == "I" and arr.max() > 255):
                    arr = arr / 257.0
                return np.clip(np.round(arr), 0, 255).astype(np.uint8)
            if img.mode in _GRAY_MODES:
                return np.array(img.convert("L"), dtype=np.uint8)
            return np.array(img.convert("RGB"), dtype=np.uint8)
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, DecompressionBombError...)
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SelfSupError(f"corrupt image: {path} ({reason})") from None


def _fit(arr: np.ndarray, channels: int, size: tuple[int, int]) -> np.ndarray:
    """Bring one decoded image to the common channel count and (H, W) size, returned as (H,W,C)."""
    if arr.shape[:2] != size:
        arr = np.array(Image.fromarray(arr).resize((size[1], size[0]), Image.BILINEAR))
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if channels == 3 and arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return arr


def load_folder(root: str) -> Dataset:
    """Decode every image under `root`; labels come from immediate subfolders when all images are in one."""
    root = os.path.abspath(root)
    paths = find_images(root)
    if not paths:
        raise SelfSupError(f"no images ({'/'.join(EXTENSIONS)}) found in folder {root}")

    owners = [_class_of(p, root) for p in paths]
    classes: list[str] | None = None
    labels: torch.Tensor | None = None
    if all(o is not None for o in owners):
        classes = sorted(set(owners))  # type: ignore[arg-type]
        index = {c: i for i, c in enumerate(classes)}
        labels = torch.tensor([index[o] for o in owners], dtype=torch.int64)

    arrays = [_decode(p) for p in tqdm(paths, desc="decoding images", unit="img", disable=len(paths) <= PROGRESS_MIN)]
    channels = 1 if all(a.ndim == 2 for a in arrays) else 3
    # Counter keeps insertion order, so most_common breaks ties in favour of the first size seen
    size = Counter(a.shape[:2] for a in arrays).most_common(1)[0][0]

    out = torch.empty((len(arrays), channels, size[0], size[1]), dtype=torch.uint8)
    for i, a in enumerate(arrays):
        out[i] = torch.from_numpy(np.ascontiguousarray(_fit(a, channels, size))).permute(2, 0, 1)
        arrays[i] = None  # type: ignore[call-overload]  # free as we go: peak memory ~1x the dataset, not 2x
    return Dataset(out, labels, paths=paths, classes=classes, name=root)
