"""Reading IDX files (the MNIST binary format), gzipped or raw."""
from __future__ import annotations

import gzip
import os
import zlib

import numpy as np

from selfsup.errors import SelfSupError

# IDX type byte -> big-endian numpy dtype
_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
GZIP_MAGIC = b"\x1f\x8b"


def _is_gzip(path: str) -> bool:
    """True when the file starts with the gzip magic bytes (whatever its name)."""
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


def _read_bytes(path: str, limit: int | None = None) -> bytes:
    """Read (the first `limit` bytes of) a file, decompressing gzip transparently."""
    try:
        if _is_gzip(path):
            with gzip.open(path, "rb") as f:
                return f.read() if limit is None else f.read(limit)
        with open(path, "rb") as f:
            return f.read() if limit is None else f.read(limit)
    except FileNotFoundError:
        raise SelfSupError(f"no such file or directory: {path}") from None
    except IsADirectoryError:
        raise SelfSupError(f"expected an IDX file, got a directory: {path}") from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise SelfSupError(f"truncated or corrupt gzip file: {path} ({e})") from None
    except OSError as e:
        raise SelfSupError(f"cannot read {path} ({e.strerror or e})") from None


def _parse_header(head: bytes, path: str) -> tuple[int, tuple[int, ...]]:
    """Return (type byte, dims) from the start of an IDX file."""
    if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _DTYPES or head[3] == 0:
        raise SelfSupError(f"not an IDX file (bad magic number): {path}")
    ndim = head[3]
    if len(head) < 4 + 4 * ndim:
        raise SelfSupError(f"truncated IDX file: {path} (header cut short)")
    dims = tuple(int(d) for d in np.frombuffer(head, dtype=">u4", count=ndim, offset=4))
    return head[2], dims


def read_idx_header(path: str) -> tuple[int, tuple[int, ...]]:
    """Return (type byte, dims) of an IDX file without reading its data; 0x08 means ubyte."""
    # 4 magic bytes + up to 255 dims of 4 bytes each
    return _parse_header(_read_bytes(path, limit=4 + 4 * 255), path)


def looks_like_idx_images(path: str) -> bool:
    """True when the file starts with an IDX magic for a 3-D ubyte array."""
    try:
        head = _read_bytes(path, limit=4)
    except SelfSupError:
        return False
    return len(head) == 4 and head[:3] == b"\x00\x00\x08" and head[3] == 3


def read_idx(path: str) -> np.ndarray:
    """Read a whole IDX file (raw or gzipped, detected by magic bytes) into a native-endian array."""
    path = os.fspath(path)
    data = _read_bytes(path)
    type_byte, dims = _parse_header(data, path)
    dtype = np.dtype(_DTYPES[type_byte])
    offset = 4 + 4 * len(dims)
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    got = len(data) - offset
    if got < expected:
        raise SelfSupError(f"truncated IDX file: {path} (expected {expected} bytes of data for shape {dims}, got {got})")
    if got > expected:
        raise SelfSupError(f"corrupt IDX file: {path} ({got - expected} unexpected bytes after the data for shape {dims})")
    arr = np.frombuffer(data, dtype=dtype, count=int(np.prod(dims, dtype=np.int64)), offset=offset).reshape(dims)
    # astype copies, so the result is writable and native-endian (torch.from_numpy needs both)
    return arr.astype(dtype.newbyteorder("="))
