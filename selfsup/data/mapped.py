"""Tensors that lie in a memory-mapped file (a `.npy` opened with mmap_mode, the folder cache): find out whether a
tensor is one, read rows of it, and hand the pages read back to the OS.

Pages of a file mapping that a process has touched count in its resident memory (RSS) until the kernel reclaims
them, so a pass over a mapped array larger than the memory budget would look, and under pressure act, like
loading it whole. After copying rows out, `release` tells the kernel (madvise MADV_DONTNEED) that this process
no longer needs those pages: they leave its RSS and stay in the page cache, and a later read faults them back in
from there. That is safe only for pages of a file (never for anonymous memory, where it would zero them), so
`file_range` accepts a tensor only when /proc/self/maps shows its bytes inside a mapping of a regular file.
"""
from __future__ import annotations

import ctypes
import mmap
import os
import warnings

import numpy as np
import torch

_PAGE = mmap.PAGESIZE
_DONTNEED = getattr(mmap, "MADV_DONTNEED", 4)
_WILLNEED = getattr(mmap, "MADV_WILLNEED", 3)
CHUNK_BYTES = 64 << 20  # rows read (and released) at a time by read_rows
# A page fault maps the pages around it too (Linux's fault_around_bytes, 64 KiB by default): released ranges are
# widened by this much, so that pages of neighbouring rows mapped by a read do not stay behind.
FAULT_AROUND = 64 << 10


def tensor_of(arr: np.ndarray) -> torch.Tensor:
    """torch.from_numpy of a memory-mapped array, without the warning torch gives for a read-only one."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(arr)


def file_range(x: torch.Tensor) -> tuple[int, int] | None:
    """(start, end) addresses of the file mapping that holds x's bytes, or None when x is not in one (a tensor in
    ordinary memory, on a GPU, or on a system without /proc/self/maps)."""
    if x.device.type != "cpu" or x.numel() == 0:
        return None
    lo_x = x.data_ptr()
    hi_x = lo_x + (x.shape[0] - 1) * x.stride(0) * x.element_size() + 1
    try:
        with open("/proc/self/maps") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    spans = []
    for line in lines:
        parts = line.split(maxsplit=5)
        lo, hi = (int(v, 16) for v in parts[0].split("-"))
        path = parts[5] if len(parts) == 6 else ""
        spans.append((lo, hi, path))
    start = next((s for s in spans if s[0] <= lo_x < s[1]), None)
    if start is None or not _regular_file(start[2]):
        return None
    # A large mapping may be listed as several adjacent lines of the same file; all of x must lie in them.
    end = start[1]
    for lo, hi, path in sorted(spans):
        if lo == end and path == start[2]:
            end = hi
    return (start[0], end) if hi_x <= end else None


def _regular_file(path: str) -> bool:
    return path.startswith("/") and not path.endswith("(deleted)") and not path.startswith(("/memfd:", "/dev/")) \
        and os.path.isfile(path)


def is_mapped(x: torch.Tensor) -> bool:
    """Whether x lies in a memory-mapped regular file (read on demand, never loaded whole)."""
    return file_range(x) is not None


def _advise(x: torch.Tensor, span: tuple[int, int] | None, lo: int, hi: int, advice: int, margin: int = 0) -> None:
    """madvise the pages of rows [lo, hi) of x, and `margin` bytes either side (inside the file mapping `span`)."""
    if span is None or hi <= lo:
        return
    row = x.stride(0) * x.element_size()
    start = max(span[0], (x.data_ptr() + lo * row - margin) // _PAGE * _PAGE)
    end = min(span[1], -(-(x.data_ptr() + hi * row + margin) // _PAGE) * _PAGE)
    if end > start:
        _libc().madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), ctypes.c_int(advice))


def release(x: torch.Tensor, span: tuple[int, int] | None, lo: int, hi: int) -> None:
    """Drop rows [lo, hi) of a mapped x (and FAULT_AROUND either side) from this process's resident memory; the
    pages stay in the page cache, and a later read maps them again."""
    _advise(x, span, lo, hi, _DONTNEED, FAULT_AROUND)


def prefetch(x: torch.Tensor, span: tuple[int, int] | None, lo: int, hi: int) -> None:
    """Ask the kernel to start reading rows [lo, hi) of a mapped x into the page cache (asynchronously)."""
    _advise(x, span, lo, hi, _WILLNEED)


_LIBC = None


def _libc():
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
        _LIBC.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    return _LIBC


def copy_rows(out: torch.Tensor, x: torch.Tensor, rows: torch.Tensor | None, lo: int, hi: int,
              span: tuple[int, int] | None) -> None:
    """out <- the samples lo..hi-1 of x (rows[lo:hi] of x when a row index is given), then release their pages."""
    if rows is None:
        out.copy_(x[lo:hi])
        release(x, span, lo, hi)
        return
    index = rows[lo:hi]
    torch.index_select(x, 0, index, out=out)
    if span is not None and len(index):
        release(x, span, int(index.min()), int(index.max()) + 1)


def read_rows(x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """x[rows] (all of x when rows is None) as a contiguous tensor in ordinary memory: x itself when it already is
    one; read from a memory-mapped x in chunks whose pages are released after each, so the read costs the
    result's memory and no more."""
    span = file_range(x)
    if span is None:
        return x.contiguous() if rows is None else x[rows].contiguous()
    n = x.shape[0] if rows is None else len(rows)
    out = torch.empty((n, *x.shape[1:]), dtype=x.dtype)
    step = max(1, CHUNK_BYTES // max(1, x[0].numel() * x.element_size()))
    for i in range(0, n, step):
        copy_rows(out[i:i + step], x, rows, i, min(n, i + step), span)
    return out
