"""Reading many image files on all cores: headers first, then pixels, each chunk written by its worker into the output.

Each worker decodes a chunk of files to small arrays (already at the target size) and writes them itself at
their rows of the .npy being built (cache.write_rows): no pixels travel back, and no process maps the output,
so the parent's memory does not grow with the set. Peak memory is, per worker, the one file it is decoding and
a chunk of small arrays, plus (across all workers, one at a time) a single image above PIL's bomb limit; an
image above the decode budget goes to libvips (pyvips), which streams it in bounded memory.
"""
from __future__ import annotations

import multiprocessing
import os
import sys
from concurrent.futures import Executor, ProcessPoolExecutor
from typing import Callable, Iterator

import numpy as np
from tqdm import tqdm

from selfsup.data.cache import write_rows
from selfsup.data import decode as decode_module
from selfsup.data.decode import BadImage, decode, header

PROGRESS_MIN = 500  # progress="auto" shows a bar from this many files on
_HUGE_LOCK = None  # set in each worker: held while an image above PIL's bomb limit is in memory


def default_workers() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _init_worker(lock) -> None:
    # workers use PIL and numpy only, never torch: a forked child must not touch the parent's OpenMP pool
    global _HUGE_LOCK
    _HUGE_LOCK = lock
    decode_module.IN_WORKER = True  # libvips may run here (see decode.IN_WORKER)


def _header_chunk(paths: list[str], start: int) -> list[tuple[int, int, str] | str]:
    """(W, H, mode) per file, or the one-line reason it cannot be read."""
    out: list[tuple[int, int, str] | str] = []
    for p in paths:
        try:
            out.append(header(p))
        except BadImage as e:
            out.append(str(e))
    return out


def _decode_chunk(paths: list[str], start: int, target: tuple[str, int], shape: tuple[int, int, int],
                  size: int | None, gray: bool, background: tuple[int, int, int]) -> list[tuple[int, str]]:
    """Decode a chunk's images into rows start.. of the output at `target` (zeros where bad); [(index, reason)]."""
    arr = np.zeros((len(paths), *shape), dtype=np.uint8)
    bad = []
    for i, p in enumerate(paths):
        try:
            a = decode(p, size, gray, background, _HUGE_LOCK)
            if a.shape != shape:  # only at the images' own size: the header said one size, the pixels another
                raise BadImage(f"decoded to {a.shape[2]}x{a.shape[1]}, not the {shape[2]}x{shape[1]} of the others")
            arr[i] = a
        except BadImage as e:
            bad.append((i, str(e)))
    write_rows(target, start, arr)
    return bad


def _start_method() -> str | None:
    """fork where the OS has it (no re-import), except once libvips is loaded here (selfsup never loads it in this
    process, but a caller may have): a child forked from a process whose libvips has run hangs at its first
    call, so the workers then come from a fresh fork server."""
    methods = multiprocessing.get_all_start_methods()
    if sys.modules.get("pyvips") is not None and "forkserver" in methods:
        return "forkserver"
    return "fork" if "fork" in methods else None


class Pool:
    """Processes for `workers` > 1 and enough files (fork where the OS has it: no re-import), else in-process."""

    def __init__(self, workers: int, n: int, chunk: int | None = None):
        self.workers = max(1, min(workers, n))
        self.chunk = chunk or max(1, min(32, n // (self.workers * 4) or 1))
        self.executor: Executor | None = None
        if self.workers > 1:
            method = _start_method()
            ctx = multiprocessing.get_context(method)
            if method == "forkserver":
                ctx.set_forkserver_preload([__name__])  # imported once by the server, not by every worker
            self.executor = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_worker,
                                                initargs=(ctx.Lock(),))

    def map(self, fn: Callable, items: list, *args) -> Iterator[tuple[int, object]]:
        """(start index, fn(items[start:start+chunk], start, *args)) in order; each result is let go once yielded."""
        starts = range(0, len(items), self.chunk)
        if self.executor is None:
            for s in starts:
                yield s, fn(items[s:s + self.chunk], s, *args)
            return
        futures = [self.executor.submit(fn, items[s:s + self.chunk], s, *args) for s in starts]
        for k, s in enumerate(starts):
            result = futures[k].result()
            futures[k] = None  # the future would otherwise keep the chunk's arrays alive until the end
            yield s, result

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)


def bar(n: int, desc: str, progress: bool | None) -> tqdm:
    show = n >= PROGRESS_MIN if progress is None else progress
    return tqdm(total=n, desc=desc, unit="img", disable=not show, file=sys.stderr, leave=False)


def read_headers(pool: Pool, paths: list[str], on_bad: Callable[[int, str], None],
                 progress: bool | None) -> list[tuple[int, int, str] | None]:
    """Every file's (W, H, mode); None (after calling on_bad(index, reason)) where the header is unreadable."""
    out: list[tuple[int, int, str] | None] = []
    with bar(len(paths), "reading headers", progress) as b:
        for start, rows in pool.map(_header_chunk, paths):
            for i, r in enumerate(rows):
                if isinstance(r, str):
                    on_bad(start + i, r)
                    r = None
                out.append(r)
            b.update(len(rows))
    return out


def decode_into(target: tuple[str, int], shape: tuple[int, int, int], pool: Pool, paths: list[str],
                size: int | None, gray: bool, background: tuple[int, int, int],
                on_bad: Callable[[int, str], None], progress: bool | None) -> None:
    """Decode paths[i] into row i (C x H x W = `shape`) of the .npy being built at `target` (cache.Builder),
    on the pool, calling on_bad(i, reason) for bad files."""
    with bar(len(paths), "decoding images", progress) as b:
        for start, bad in pool.map(_decode_chunk, paths, target, shape, size, gray, background):
            for i, reason in bad:
                on_bad(start + i, reason)
            b.update(min(pool.chunk, len(paths) - start))
