"""Loading a folder of image files (optionally one subfolder per class), decoded in parallel and cached.

Labels follow torchvision's ImageFolder: an image's class is the top-level subfolder of the root that holds it,
at any depth below (root/cat/2019/a.png is a "cat"); a folder with every image directly in it is unlabelled.
Images directly in the root beside class folders are refused (they would have no class).
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

import torch

from selfsup.data import cache
from selfsup.data.decode import GRAY_MODES, TOO_LARGE, parse_background
from selfsup.data.parallel import Pool, decode_into, default_workers, read_headers
from selfsup.data.types import Dataset
from selfsup.errors import SelfSupError

EXTENSIONS = (".png", ".jpg", ".jpeg")
OWN_SIZE_MAX = 64  # images that all share one size up to this many pixels a side are kept as they are
DEFAULT_SIZE = 64  # otherwise, without --image-size, they are brought to 64 x 64


@dataclass(frozen=True)
class FolderOptions:
    """How a folder is decoded. image_size None: the images' own size when they all share one of at most
    OWN_SIZE_MAX px, else DEFAULT_SIZE. workers None: every core. progress None: a bar from 500 files on."""

    image_size: int | None = None
    background: str = "white"
    skip_bad: bool = False
    cache: bool = True
    workers: int | None = None
    progress: bool | None = None

    def key(self) -> dict:
        """What changes the decoded tensor (workers and progress do not)."""
        return dict(image_size=self.image_size, background=parse_background(self.background),
                    skip_bad=self.skip_bad)


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


def class_names(paths: list[str], root: str) -> list[str | None]:
    """Each path's top-level subfolder of `root` (None for files directly in it); refuses a mix of both."""
    owners = [p[0] if len(p) > 1 else None for p in (os.path.relpath(q, root).split(os.sep) for q in paths)]
    loose = [p for p, o in zip(paths, owners) if o is None]
    if loose and len(loose) < len(paths):
        classes = sorted({o for o in owners if o is not None})
        shown = ", ".join(classes[:3]) + (", ..." if len(classes) > 3 else "")
        raise SelfSupError(f"{root} holds {len(loose)} image(s) directly in it (e.g. {os.path.basename(loose[0])}) "
                           f"beside class folders ({shown}): move them into a class folder, or point at one layout")
    return owners


def _plan(headers: list[tuple[int, int, str]], size: int | None) -> tuple[int | None, int, tuple[int, int], str]:
    """(resize target or None, channels, (H, W), a note when the size was chosen for the user)."""
    gray = all(mode in GRAY_MODES for _, _, mode in headers)
    sizes = {(h, w) for w, h, _ in headers}
    if size is None and len(sizes) == 1 and max(next(iter(sizes))) <= OWN_SIZE_MAX:
        return None, 1 if gray else 3, next(iter(sizes)), ""
    note = ""
    if size is None:
        size = DEFAULT_SIZE
        kind = "mixed sizes" if len(sizes) > 1 else f"{next(iter(sizes))[1]}x{next(iter(sizes))[0]} px"
        note = (f"images have {kind}: shorter side resized to {size}, centre-cropped to {size}x{size} "
                "(--image-size N to choose)")
    return size, 1 if gray else 3, (size, size), note


def load_folder(root: str, options: FolderOptions | None = None) -> Dataset:
    """Decode every image under `root` to uint8 (N, C, H, W); labels from class folders (see the module doc)."""
    opts = options or FolderOptions()
    try:
        background = parse_background(opts.background)
    except ValueError:
        raise SelfSupError(f"--background must be a colour name, #rrggbb or R,G,B, got {opts.background!r}") from None
    root = os.path.abspath(root)
    paths = find_images(root)
    if not paths:
        raise SelfSupError(f"no images ({'/'.join(EXTENSIONS)}) found in folder {root}")
    special = [p for p in paths if not os.path.isfile(p)]  # a FIFO named x.png would block the reader forever
    if special and not opts.skip_bad:
        raise SelfSupError(f"{special[0]} is not a regular file (a FIFO, device or socket), so not an image; "
                           "--skip-bad to go on without such files")
    paths = [p for p in paths if p not in set(special)]
    if not paths:
        raise SelfSupError(f"no image files in folder {root}, only {len(special)} FIFO(s), device(s) or socket(s)")
    owners = class_names(paths, root)

    key = cache.folder_key(root, paths, opts.key()) if opts.cache else None
    hit = cache.load(key) if key else None
    if hit is not None:
        x, meta = hit
        _say(f"{root}: {len(x)} images from the cache ({cache.cache_dir()})"
             + (f"; {len(meta['skipped'])} bad file(s) skipped" if meta["skipped"] else ""))
        skipped = [os.path.join(root, p) for p in meta["skipped"]]
        if meta.get("note"):
            _say(f"{root}: {meta['note']}")
    else:
        x, skipped, note = _decode_folder(root, paths, opts, background)
    keep = set(skipped)
    kept = [(p, o) for p, o in zip(paths, owners) if p not in keep]
    paths = [p for p, _ in kept]
    skipped = sorted(skipped + special)
    if not paths:
        raise SelfSupError(f"every image in {root} is unreadable ({len(skipped)} skipped)")
    classes = labels = None
    if kept[0][1] is not None:
        classes = sorted({o for _, o in kept})
        index = {c: i for i, c in enumerate(classes)}
        labels = torch.tensor([index[o] for _, o in kept], dtype=torch.int64)
    if key and hit is None:
        cache.save(key, x, dict(skipped=[os.path.relpath(p, root) for p in skipped], note=note))
    return Dataset(x, labels, paths=paths, classes=classes, name=root, skipped=skipped)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _decode_folder(root: str, paths: list[str], opts: FolderOptions, background) -> tuple[torch.Tensor, list[str], str]:
    """Headers, then pixels, on a pool: the tensor (bad files' rows removed), the bad files, the size note."""
    bad: dict[int, str] = {}

    def on_bad(i: int, reason: str) -> None:
        if not opts.skip_bad:
            what = "image too large" if reason.startswith(TOO_LARGE) else "corrupt image"
            raise SelfSupError(f"{what}: {paths[i]} ({reason.removeprefix(TOO_LARGE)}); --skip-bad to go on "
                               "without such files")
        bad[i] = reason

    t0 = time.perf_counter()
    pool = Pool(opts.workers or default_workers(), len(paths))
    try:
        headers = read_headers(pool, paths, on_bad, opts.progress)
        good = [i for i in range(len(paths)) if headers[i] is not None]
        if not good:
            raise SelfSupError(f"every image in {root} is unreadable ({len(bad)} skipped)")
        size, channels, hw, note = _plan([headers[i] for i in good], opts.image_size)
        if note:
            _say(f"{root}: {note}")
        out = torch.empty((len(good), channels, *hw), dtype=torch.uint8)
        decode_into(out, pool, [paths[i] for i in good], size, channels == 1, background,
                    lambda j, reason: on_bad(good[j], reason), opts.progress)
    finally:
        pool.close()
    seconds = time.perf_counter() - t0
    rows = [j for j, i in enumerate(good) if i not in bad]
    if len(rows) < len(good):  # move the good rows up in place; the tail is dropped with a view, not a copy
        for dst, src in enumerate(rows):
            if dst != src:
                out[dst] = out[src]
        out = out[:len(rows)]
    if len(paths) >= 100 or bad:
        _say(f"{root}: decoded {len(paths)} images in {seconds:.1f}s ({len(paths) / seconds:.0f} images/s, "
             f"{pool.workers} worker(s))" + (f"; skipped {len(bad)} bad file(s)" if bad else ""))
    return out, [paths[i] for i in sorted(bad)], note
