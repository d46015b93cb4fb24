"""Reading many image files on all cores: headers first, then pixels, written chunk by chunk into one tensor.

Each worker decodes a chunk of files to small arrays (already at the target size) and returns them; the parent
copies each chunk into the preallocated uint8 output and drops it. Peak memory is therefore the output tensor,
plus per worker the one file it is decoding and a chunk of small arrays, plus (across all workers, one at a time)
a single image above PIL's bomb limit.
"""
from __future__ import annotations

import multiprocessing
import os
import sys
from concurrent.futures import Executor, ProcessPoolExecutor
from typing import Callable, Iterator

import numpy as np
import torch
from tqdm import tqdm

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


def _header_chunk(paths: list[str]) -> list[tuple[int, int, str] | str]:
    """(W, H, mode) per file, or the one-line reason it cannot be read."""
    out: list[tuple[int, int, str] | str] = []
    for p in paths:
        try:
            out.append(header(p))
        except BadImage as e:
            out.append(str(e))
    return out


def _decode_chunk(paths: list[str], shape: tuple[int, int, int], size: int | None, gray: bool,
                  background: tuple[int, int, int]) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """A chunk's images as one uint8 (k, C, H, W) array (zeros where bad), and [(index in chunk, reason)]."""
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
    return arr, bad


class Pool:
    """Processes for `workers` > 1 and enough files (fork where the OS has it: no re-import), else in-process."""

    def __init__(self, workers: int, n: int):
        self.workers = max(1, min(workers, n))
        self.chunk = max(1, min(32, n // (self.workers * 4) or 1))
        self.executor: Executor | None = None
        if self.workers > 1:
            methods = multiprocessing.get_all_start_methods()
            ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
            self.executor = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_worker,
                                                initargs=(ctx.Lock(),))

    def map(self, fn: Callable, items: list, *args) -> Iterator[tuple[int, object]]:
        """(start index, fn(items[start:start+chunk], *args)) in order; each result is let go once yielded."""
        starts = range(0, len(items), self.chunk)
        if self.executor is None:
            for s in starts:
                yield s, fn(items[s:s + self.chunk], *args)
            return
        futures = [self.executor.submit(fn, items[s:s + self.chunk], *args) for s in starts]
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


def decode_into(out: torch.Tensor, pool: Pool, paths: list[str], size: int | None, gray: bool,
                background: tuple[int, int, int], on_bad: Callable[[int, str], None],
                progress: bool | None) -> None:
    """Decode paths[i] into out[i] (uint8 N x C x H x W) on the pool, calling on_bad(i, reason) for bad files."""
    shape = tuple(out.shape[1:])
    with bar(len(paths), "decoding images", progress) as b:
        for start, (arr, bad) in pool.map(_decode_chunk, paths, shape, size, gray, background):
            out[start:start + len(arr)] = torch.from_numpy(arr)
            for i, reason in bad:
                on_bad(start + i, reason)
            b.update(len(arr))
