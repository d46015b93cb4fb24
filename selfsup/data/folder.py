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
from selfsup.data.index import EXTENSIONS, scan
from selfsup.data.parallel import Pool, decode_into, default_workers, read_headers
from selfsup.data.types import Dataset
from selfsup.errors import SelfSupError

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
    """Sorted absolute paths of all .png/.jpg/.jpeg regular files under `root`, skipping hidden entries."""
    return scan(root).paths


def class_names(rel: list[str], root: str) -> list[str | None]:
    """Each relative path's top-level folder (None for files directly in `root`); refuses a mix of both."""
    owners = [r.split(os.sep, 1)[0] if os.sep in r else None for r in rel]
    loose = [r for r, o in zip(rel, owners) if o is None]
    if loose and len(loose) < len(rel):
        classes = sorted({o for o in owners if o is not None})
        shown = ", ".join(classes[:3]) + (", ..." if len(classes) > 3 else "")
        raise SelfSupError(f"{root} holds {len(loose)} image(s) directly in it (e.g. {loose[0]}) "
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
    """Decode every image under `root` to uint8 (N, C, H, W), memory-mapped from the cache; labels from class
    folders (see the module doc)."""
    opts = options or FolderOptions()
    try:
        background = parse_background(opts.background)
    except ValueError:
        raise SelfSupError(f"--background must be a colour name, #rrggbb or R,G,B, got {opts.background!r}") from None
    root = os.path.abspath(root)
    listing = scan(root)
    special = [os.path.join(root, r) for r in listing.special]  # a FIFO named x.png would block the reader forever
    if special and not opts.skip_bad:
        raise SelfSupError(f"{special[0]} is not a regular file (a FIFO, device or socket), so not an image; "
                           "--skip-bad to go on without such files")
    if not listing.rel:
        raise SelfSupError(f"no image files in folder {root}, only {len(special)} FIFO(s), device(s) or socket(s)"
                           if special else f"no images ({'/'.join(EXTENSIONS)}) found in folder {root}")
    owners = class_names(listing.rel, root)
    paths = listing.paths

    key = cache.folder_key(root, listing.entries(), opts.key()) if opts.cache else None
    with cache.lock(key):
        hit = cache.load(key) if key else None
        if hit is not None:
            x, meta = hit
            _say(f"{root}: {len(x)} images from the cache ({cache.cache_dir()})"
                 + (f"; {len(meta['skipped'])} bad file(s) skipped" if meta["skipped"] else ""))
            skipped = [os.path.join(root, p) for p in meta["skipped"]]
            if meta.get("note"):
                _say(f"{root}: {meta['note']}")
        else:
            x, skipped = _decode_folder(root, paths, opts, background, key)
    keep = set(skipped)
    kept = [(p, o) for p, o in zip(paths, owners) if p not in keep]
    paths = [p for p, _ in kept]
    skipped = sorted(skipped + special)
    classes = labels = None
    if kept[0][1] is not None:
        classes = sorted({o for _, o in kept})
        index = {c: i for i, c in enumerate(classes)}
        labels = torch.tensor([index[o] for _, o in kept], dtype=torch.int64)
    return Dataset(x, labels, paths=paths, classes=classes, name=root, skipped=skipped)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def bad_file_error(path: str, reason: str) -> SelfSupError:
    """The one line for a file that cannot be decoded: too large (never called corrupt) or corrupt."""
    what = "image too large" if reason.startswith(TOO_LARGE) else "corrupt image"
    return SelfSupError(f"{what}: {path} ({reason.removeprefix(TOO_LARGE)}); --skip-bad to go on without such files")


def skipped_note(reasons) -> str:
    """'; skipped N bad file(s)', saying how many of them were refused for their size only."""
    reasons = list(reasons)
    large = sum(r.startswith(TOO_LARGE) for r in reasons)
    if not reasons:
        return ""
    return f"; skipped {len(reasons)} bad file(s)" + (f" ({large} too large to decode without pyvips)" if large else "")


def _decode_folder(root: str, paths: list[str], opts: FolderOptions, background,
                   key: str | None) -> tuple[torch.Tensor, list[str]]:
    """Headers, then pixels, on a pool, written into a cache.Builder: the mapped tensor (bad files' rows
    removed) and the bad files."""
    bad: dict[int, str] = {}

    def on_bad(i: int, reason: str) -> None:
        if not opts.skip_bad:
            raise bad_file_error(paths[i], reason)
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
        with cache.Builder(key, (len(good), channels, *hw)) as out:  # removed again on any error
            decode_into(out.target, (channels, *hw), pool, [paths[i] for i in good], size, channels == 1,
                        background, lambda j, reason: on_bad(good[j], reason), opts.progress)
            rows = [j for j, i in enumerate(good) if i not in bad]
            if not rows:
                raise SelfSupError(f"every image in {root} is unreadable ({len(bad)} skipped)")
            skipped = [paths[i] for i in sorted(bad)]
            x = out.finish(rows, dict(skipped=[os.path.relpath(p, root) for p in skipped], note=note))
    finally:
        pool.close()
    seconds = time.perf_counter() - t0
    if len(paths) >= 100 or bad:
        _say(f"{root}: decoded {len(paths)} images in {seconds:.1f}s ({len(paths) / seconds:.0f} images/s, "
             f"{pool.workers} worker(s))" + skipped_note(bad[i] for i in sorted(bad)))
    return x, skipped
