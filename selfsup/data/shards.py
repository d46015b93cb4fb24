"""WebDataset-format tar shards as a source: `--data 'shards/train-{000000..000099}.tar'`.

The pattern's brace ranges ({000..099}, zero-padded to the first bound's width) and lists ({a,b}) are expanded
here; the shards are read with Python's `tarfile` (the webdataset package is not needed) and must be plain
(uncompressed) tar, as WebDataset writes them. A sample is the members that share a key: the member's path up
to the first dot of its file name (`x/0001.jpg` and `x/0001.cls` are sample `x/0001`). Its image is the .jpg,
.jpeg or .png member; its label the .cls member (an integer) or else the .txt member (a class name: the sorted
names give the class numbers). Samples without an image are ignored; labels must be on all samples or none.

Decoding, and why this design: one pass on a pool of workers, one shard a task, reads every sample's image
header (not its pixels) and label, which fixes the output shape (the folder rule: own size when all share one of
at most 64 px, else 64, or --image-size); a second pass decodes each shard's images at the target size and its
worker writes them straight into the rows of the cache's .npy (the folder decoder's cache.Builder), so nothing
grows with the data set. Under torchrun every process asks for the same cache entry and the first one to take
its lock decodes all the shards on all the cores while the others wait, then all of them map the one file: no
process decodes a shard twice and any shard count works with any process count (there is nothing to divide;
the training loop splits the samples). Where processes do not share SELFSUP_CACHE_DIR (separate machines), each
machine decodes once for its processes.
"""
from __future__ import annotations

import io
import os
import re
import tarfile
import time

import numpy as np
import torch

from selfsup.data import cache
from selfsup.data.cache import write_rows
from selfsup.data.decode import BadImage, decode, header, parse_background
from selfsup.data.folder import FolderOptions, _plan, _say, bad_file_error, skipped_note
from selfsup.data import parallel
from selfsup.data.parallel import Pool, bar, default_workers
from selfsup.data.types import Dataset
from selfsup.errors import SelfSupError

IMAGE_EXTS = ("jpg", "jpeg", "png")
_BRACE = re.compile(r"\{([^{}]*)\}")
_ROWS = 256  # rows a worker decodes before writing them


def is_shard_pattern(src: str) -> bool:
    """Whether --data names tar shards: a .tar path, or a pattern of them ({a..b} and {x,y} expanded)."""
    return src.strip().lower().endswith(".tar")


def expand_braces(pattern: str) -> list[str]:
    """'a-{00..02}.tar' -> ['a-00.tar', 'a-01.tar', 'a-02.tar']; '{x,y}' lists; several braces multiply."""
    m = _BRACE.search(pattern)
    if m is None:
        return [pattern]
    body = m.group(1)
    span = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if span:
        lo, hi = span.groups()
        if int(hi) < int(lo):
            raise SelfSupError(f"brace range {{{body}}} in {pattern} counts down: write {{{hi}..{lo}}}")
        items = [str(i).zfill(len(lo)) for i in range(int(lo), int(hi) + 1)]
    elif "," in body:
        items = body.split(",")
    else:
        raise SelfSupError(f"cannot expand {{{body}}} in {pattern}: use {{000..099}} or {{a,b}}")
    return [p for item in items for p in expand_braces(pattern[:m.start()] + item + pattern[m.end():])]


def _index_shard(shards: list[str], start: int) -> list[tuple]:
    """Per sample of the one shard (number `start`): (name, data offset, size, label text or None,
    (W, H, mode) or the reason it is bad, start); or [the reason the shard cannot be read]."""
    (shard,) = shards
    samples: dict[str, dict[str, tarfile.TarInfo]] = {}
    try:
        with tarfile.open(shard, "r:") as tar:
            for m in tar:
                if m.isfile():
                    head, name = os.path.split(m.name)
                    key, _, ext = name.partition(".")
                    samples.setdefault(os.path.join(head, key), {})[ext.lower()] = m
            out = []
            for key, members in samples.items():
                img = next((members[e] for e in IMAGE_EXTS if e in members), None)
                if img is None:
                    continue
                lab = members.get("cls") or members.get("txt")
                label = None if lab is None else tar.extractfile(lab).read().decode("utf-8", "replace").strip()
                try:
                    info = header(tar.extractfile(img))
                except BadImage as e:
                    info = str(e)
                out.append((f"{shard}/{img.name}", img.offset_data, img.size, label, info, start))
    except (OSError, tarfile.TarError) as e:
        return [str(e).splitlines()[0] if str(e) else type(e).__name__]
    return out


def _decode_shard(jobs: list[tuple], start: int, target: tuple[str, int], size: int | None, gray: bool,
                  background: tuple[int, int, int], shape: tuple[int, int, int]) -> list[tuple[int, str]]:
    """Decode one shard's samples [(row, offset, size)] (rows consecutive) into the output; [(row, reason)]."""
    ((shard, samples),) = jobs
    bad = []
    with open(shard, "rb") as f:
        for s in range(0, len(samples), _ROWS):
            part = samples[s:s + _ROWS]
            arr = np.zeros((len(part), *shape), dtype=np.uint8)
            for i, (row, offset, nbytes) in enumerate(part):
                f.seek(offset)
                try:
                    a = decode(io.BytesIO(f.read(nbytes)), size, gray, background, parallel._HUGE_LOCK)
                    if a.shape != shape:
                        raise BadImage(f"decoded to {a.shape[2]}x{a.shape[1]}, not the {shape[2]}x{shape[1]} "
                                       "of the others")
                    arr[i] = a
                except BadImage as e:
                    bad.append((row, str(e)))
            write_rows(target, part[0][0], arr)
    return bad


def load_shards(pattern: str, options: FolderOptions | None = None) -> Dataset:
    """Decode the samples of the shards `pattern` names (see the module doc) to a memory-mapped uint8 tensor."""
    opts = options or FolderOptions()
    try:
        background = parse_background(opts.background)
    except ValueError:
        raise SelfSupError(f"--background must be a colour name, #rrggbb or R,G,B, got {opts.background!r}") from None
    shards = [os.path.abspath(os.path.expanduser(p)) for p in expand_braces(pattern)]
    missing = [p for p in shards if not os.path.isfile(p)]
    if missing:
        raise SelfSupError(f"{len(missing)} of the {len(shards)} shards of {pattern} are missing, e.g. {missing[0]}")
    stats = [os.stat(p) for p in shards]
    root = os.path.commonpath([os.path.dirname(p) for p in shards])
    entries = [(os.path.relpath(p, root), st.st_size, st.st_mtime_ns) for p, st in zip(shards, stats)]
    key = cache.folder_key(root, entries, dict(opts.key(), source="shards")) if opts.cache else None
    with cache.lock(key):
        hit = cache.load(key) if key else None
        if hit is not None:
            x, meta = hit
            _say(f"{pattern}: {len(x)} samples from the cache ({cache.cache_dir()})")
        else:
            x, meta = _decode_shards(pattern, shards, opts, background, key)
    labels = None if meta["labels"] is None else torch.tensor(meta["labels"], dtype=torch.int64)
    return Dataset(x, labels, paths=meta["names"], classes=meta["classes"], name=pattern, skipped=meta["skipped"])


def _labels(texts: list[str | None], names: list[str]) -> tuple[list[int] | None, list[str] | None]:
    """Integer labels from .cls texts, or class numbers of .txt names; None when no sample has one."""
    if all(t is None for t in texts):
        return None, None
    if any(t is None for t in texts):
        i = texts.index(None)
        raise SelfSupError(f"{names[i]} has no .cls or .txt label while other samples have one: label all or none")
    try:
        return [int(t) for t in texts], None
    except ValueError:
        classes = sorted(set(texts))
        index = {c: i for i, c in enumerate(classes)}
        return [index[t] for t in texts], classes


def _decode_shards(pattern: str, shards: list[str], opts: FolderOptions, background, key: str | None) -> tuple:
    t0 = time.perf_counter()
    pool = Pool(opts.workers or default_workers(), len(shards), chunk=1)
    bad: dict[int, str] = {}
    try:
        samples = []  # (name, offset, size, label text, header, shard number)
        with bar(len(shards), "reading shards", opts.progress) as b:
            for i, rows in pool.map(_index_shard, shards):
                if rows and isinstance(rows[0], str):
                    raise SelfSupError(f"cannot read shard {shards[i]} as a tar file ({rows[0]})")
                samples += rows
                b.update(1)
        if not samples:
            raise SelfSupError(f"no samples with a .jpg, .jpeg or .png image in the {len(shards)} shard(s) of "
                               f"{pattern}")
        for i, s in enumerate(samples):
            if isinstance(s[4], str):
                if not opts.skip_bad:
                    raise bad_file_error(s[0], s[4])
                bad[i] = s[4]
        good = [i for i in range(len(samples)) if i not in bad]
        if not good:
            raise SelfSupError(f"every image in {pattern} is unreadable ({len(bad)} skipped)")
        size, channels, hw, note = _plan([samples[i][4] for i in good], opts.image_size)
        if note:
            _say(f"{pattern}: {note}")
        with cache.Builder(key, (len(good), channels, *hw)) as out:  # removed again on any error
            jobs: dict[str, list] = {}  # shard -> its samples' (row, offset, size); rows run on from shard to shard
            for row, i in enumerate(good):
                jobs.setdefault(shards[samples[i][5]], []).append((row, samples[i][1], samples[i][2]))
            jobs = list(jobs.items())
            with bar(len(good), "decoding images", opts.progress) as b:
                for j, failed in pool.map(_decode_shard, jobs, out.target, size, channels == 1, background,
                                          (channels, *hw)):
                    for row, reason in failed:
                        if not opts.skip_bad:
                            raise bad_file_error(samples[good[row]][0], reason)
                        bad[good[row]] = reason
                    b.update(len(jobs[j][1]))
            keep = [row for row, i in enumerate(good) if i not in bad]
            if not keep:
                raise SelfSupError(f"every image in {pattern} is unreadable ({len(bad)} skipped)")
            kept = [samples[good[row]] for row in keep]
            labels, classes = _labels([s[3] for s in kept], [s[0] for s in kept])
            meta = dict(names=[s[0] for s in kept], labels=labels, classes=classes, note=note,
                        skipped=[samples[i][0] for i in sorted(bad)])
            x = out.finish(keep, meta)
    finally:
        pool.close()
    seconds = time.perf_counter() - t0
    _say(f"{pattern}: decoded {len(samples)} samples from {len(shards)} shard(s) in {seconds:.1f}s "
         f"({pool.workers} worker(s))" + skipped_note(bad[i] for i in sorted(bad)))
    return x, meta
