"""A per-user cache of decoded image sets, written in parallel and read memory-mapped, so data of any size fits.

An entry is keyed by a hash of the source's real path, every file's relative path, size in bytes and
modification time (ns), and the decoding options: any added, removed, rewritten or touched file, or another
option, is a different key, so a stale entry is never read (it is only left to age; delete the folder to
reclaim it). Entries: KEY.npy (the uint8 N x C x H x W array) and KEY.json (skipped files, notes, and the
record of the .npy that proves it whole: byte size, shape, mtime_ns and a CRC-32 of sampled blocks).

Writing (`Builder`): a temporary .npy of the full size is created in the cache folder (sparse: no bytes written
yet), every decoding worker writes its rows straight into it at their offsets (plain file writes, so no process
maps it and no process's memory grows with the set), then it is renamed to KEY.npy and KEY.json is written last:
an entry without its .json is never read. `lock(key)` makes processes that want the same entry (torchrun's
ranks) wait for the one building it, then read what it wrote.

Reading (`load`): the record is checked against the file before it is mapped; a truncated, rewritten or touched
.npy is reported in one stderr line and built again. The checksum covers the whole file up to
SAMPLE_BLOCKS MiB and SAMPLE_BLOCKS evenly spaced 1 MiB blocks (header included) beyond: a same-size change
that keeps the mtime and falls between the blocks of a bigger file is the one change it cannot see.
The array is mapped copy-on-write (mmap_mode="c"): reads share the page cache, nothing is read until used, and
a write to the tensor changes this process's copy, never the file (so the tensor is writable: no warning).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import socket
import struct
import sys
import tempfile
import zlib

import numpy as np
import torch

from selfsup.errors import SelfSupError

FORMAT = 2  # bump when decoding changes what the same options produce (2: memory-mapped entries with a record)
HEADER = 128  # bytes of the .npy header written here (numpy's 64-byte alignment; room for any 4-d shape)
BLOCK = 1 << 20
SAMPLE_BLOCKS = 32
_TMP = ".tmp-"


def cache_dir() -> str:
    """$SELFSUP_CACHE_DIR, else $XDG_CACHE_HOME/selfsup/folders (default ~/.cache/selfsup/folders)."""
    if os.environ.get("SELFSUP_CACHE_DIR"):
        return os.environ["SELFSUP_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "selfsup", "folders")


def folder_key(root: str, entries, options: dict) -> str:
    """Hex key of the files [(relative path, size, mtime_ns)] under `root` and the decoding options."""
    h = hashlib.sha256(json.dumps([FORMAT, os.path.realpath(root), options], sort_keys=True).encode())
    batch: list[str] = []
    for rel, size, mtime in entries:  # hashed in batches: no per-file update call, no list of a million strings
        batch.append(f"\0{rel}\0{size}\0{mtime}")
        if len(batch) == 8192:
            h.update("".join(batch).encode("utf-8", "surrogateescape"))
            batch.clear()
    h.update("".join(batch).encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:32]


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def npy_header(shape: tuple[int, ...]) -> bytes:
    """A .npy (version 1.0) header of exactly HEADER bytes for a C-ordered uint8 array of `shape`."""
    text = "{'descr': '|u1', 'fortran_order': False, 'shape': %r, }" % (tuple(int(s) for s in shape),)
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", HEADER - 10) + text.ljust(HEADER - 11).encode("latin1") + b"\n"


def checksum(path: str, size: int) -> int:
    """CRC-32 of the file's blocks: all of them up to SAMPLE_BLOCKS, else SAMPLE_BLOCKS evenly spaced ones."""
    blocks = math.ceil(size / BLOCK)
    if blocks <= SAMPLE_BLOCKS:
        starts = [i * BLOCK for i in range(blocks)]
    else:  # the first block holds the header, the last the end of the data
        starts = [round(i * (size - BLOCK) / (SAMPLE_BLOCKS - 1)) for i in range(SAMPLE_BLOCKS)]
    crc = 0
    with open(path, "rb") as f:
        for s in starts:
            f.seek(s)
            crc = zlib.crc32(f.read(BLOCK), crc)
    return crc


def _record(path: str, shape: tuple[int, ...]) -> dict:
    st = os.stat(path)
    return dict(bytes=st.st_size, shape=list(shape), mtime_ns=st.st_mtime_ns, crc32=checksum(path, st.st_size))


def _mismatch(path: str, rec: dict) -> str | None:
    """Why the .npy at `path` is not the one its record describes (None when it is)."""
    try:
        st = os.stat(path)
    except OSError:
        return "is missing"
    if st.st_size != rec["bytes"]:
        return f"is {st.st_size:,} bytes, its record says {rec['bytes']:,} (truncated or rewritten)"
    if st.st_mtime_ns != rec["mtime_ns"]:
        return "was modified after it was written"
    with open(path, "rb") as f:
        if f.read(HEADER) != npy_header(tuple(rec["shape"])):
            return f"has another header than its record's shape {tuple(rec['shape'])}"
    if checksum(path, st.st_size) != rec["crc32"]:
        return "does not match its checksum (changed bytes)"
    return None


def mapped(path: str) -> torch.Tensor:
    """The uint8 array in the .npy at `path` as a tensor backed by a copy-on-write memory map."""
    return torch.from_numpy(np.load(path, mmap_mode="c"))


def load(key: str) -> tuple[torch.Tensor, dict] | None:
    """The cached tensor (memory-mapped) and its metadata, or None when there is no complete, intact entry."""
    base = os.path.join(cache_dir(), key)
    try:
        with open(base + ".json") as f:
            meta = json.load(f)
        rec = meta["npy"]
        problem = _mismatch(base + ".npy", rec)
    except FileNotFoundError:
        return None  # no entry, or one whose writing never finished
    except (OSError, ValueError, KeyError, TypeError) as e:
        problem = f"has an unreadable record ({type(e).__name__})"
    if problem is None:
        try:
            return mapped(base + ".npy"), meta
        except (OSError, ValueError) as e:
            problem = f"cannot be read ({e})"
    _say(f"selfsup: cache entry {base}.npy {problem}; decoding again")
    return None


@contextlib.contextmanager
def lock(key: str | None):
    """Held while an entry is looked up and built: a second process asking for the same key waits for it."""
    try:
        import fcntl
        os.makedirs(cache_dir(), exist_ok=True)
        fd = os.open(os.path.join(cache_dir(), f".lock-{key}"), os.O_CREAT | os.O_RDWR) if key else None
    except (ImportError, OSError):  # no flock (Windows), or a cache folder we cannot write: no lock, no harm
        fd = None
    try:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock


def write_rows(target: tuple[str, int], start: int, rows: np.ndarray) -> None:
    """Write uint8 rows[0..k) as rows start..start+k of the .npy being built at target = (path, row bytes).

    Called in the decoding workers: a plain positioned write, so no process maps (or holds) the output."""
    path, row = target
    with open(path, "r+b") as f:
        f.seek(HEADER + start * row)
        f.write(memoryview(np.ascontiguousarray(rows, dtype=np.uint8)).cast("B"))


def _sweep(directory: str) -> None:
    """Remove temporary files left in `directory` by processes of this host that died while writing them."""
    prefix = f"{_TMP}{socket.gethostname()}-"
    for name in os.listdir(directory):
        if name.startswith(prefix):
            try:
                os.kill(int(name[len(prefix):].split("-")[0]), 0)
            except ProcessLookupError:
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(directory, name))
            except (ValueError, PermissionError):
                pass


class Builder:
    """A uint8 (N, *row_shape) .npy being written by workers, then made a cache entry (key) or a temporary map."""

    def __init__(self, key: str | None, shape: tuple[int, ...]):
        self.key, self.shape = key, tuple(int(s) for s in shape)
        self.row = math.prod(self.shape[1:])
        need = HEADER + self.shape[0] * self.row
        for directory in (cache_dir(), tempfile.gettempdir()):  # without a writable cache: unlinked temp file
            try:
                os.makedirs(directory, exist_ok=True)
                _sweep(directory)
                if shutil.disk_usage(directory).free < need:
                    raise SelfSupError(f"decoding needs {need / 1e9:.2f} GB in {directory}, which has "
                                       f"{shutil.disk_usage(directory).free / 1e9:.2f} GB free: free some space, "
                                       "or set SELFSUP_CACHE_DIR to a folder on a bigger disk")
                fd, self.path = tempfile.mkstemp(dir=directory, suffix=".npy",
                                                 prefix=f"{_TMP}{socket.gethostname()}-{os.getpid()}-")
                break
            except OSError as e:
                error = e
        else:
            raise SelfSupError(f"cannot write decoded images to {cache_dir()} or {tempfile.gettempdir()} "
                               f"({error.strerror or error}); set SELFSUP_CACHE_DIR to a writable folder")
        if directory != cache_dir():
            self.key = None  # an entry is published only in the cache folder
        with os.fdopen(fd, "wb") as f:
            f.write(npy_header(self.shape))
            f.truncate(need)  # sparse until the workers write their rows

    @property
    def target(self) -> tuple[str, int]:
        """What a worker needs to write rows (see write_rows)."""
        return self.path, self.row

    def finish(self, keep: list[int], meta: dict) -> torch.Tensor:
        """Keep rows `keep` (ascending; the others were bad), publish the entry, return the mapped tensor."""
        if len(keep) < self.shape[0]:
            self._compact(keep)
        x = mapped(self.path)  # mapped before the rename: this process reads what it wrote, whatever follows
        if self.key is None:
            with contextlib.suppress(OSError):
                os.remove(self.path)  # the map keeps the data until the tensor is freed
            return x
        base = os.path.join(os.path.dirname(self.path), self.key)
        meta = dict(meta, npy=_record(self.path, self.shape))
        os.replace(self.path, base + ".npy")
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(base), prefix=self.path.rsplit("/", 1)[-1][:-4] + "-")
        with os.fdopen(fd, "w") as f:
            json.dump(meta, f)
        os.replace(tmp, base + ".json")  # last: an entry without it is never read
        return x

    def _compact(self, keep: list[int]) -> None:
        """Move the kept rows up in place (a row at a time), then shorten the header's shape and the file."""
        with open(self.path, "r+b") as f:
            for dst, src in enumerate(keep):
                if dst != src:
                    f.seek(HEADER + src * self.row)
                    data = f.read(self.row)
                    f.seek(HEADER + dst * self.row)
                    f.write(data)
            self.shape = (len(keep), *self.shape[1:])
            f.seek(0)
            f.write(npy_header(self.shape))
            f.truncate(HEADER + len(keep) * self.row)

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            os.remove(self.path)

    def __enter__(self) -> "Builder":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """An error or Ctrl-C before `finish` published the entry: the half-written file is removed."""
        if exc_type is not None:
            self.abort()
