"""A per-user cache of decoded image folders, so the second run on a folder starts at once.

An entry is keyed by a hash of the folder's real path, every image's relative path, size in bytes and
modification time (ns), and the decoding options: any added, removed, rewritten or touched file, or another
option, is a different key, so a stale entry is never read (it is only left to age; delete the folder to
reclaim it). Entries: KEY.npy (the uint8 N x C x H x W tensor) and KEY.json (labels, classes, skipped files).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile

import numpy as np
import torch

FORMAT = 1  # bump when decoding changes what the same options produce


def cache_dir() -> str:
    """$SELFSUP_CACHE_DIR, else $XDG_CACHE_HOME/selfsup/folders (default ~/.cache/selfsup/folders)."""
    if os.environ.get("SELFSUP_CACHE_DIR"):
        return os.environ["SELFSUP_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "selfsup", "folders")


def folder_key(root: str, paths: list[str], options: dict) -> str:
    """Hex key of the file list (relative paths, sizes, mtimes) and the decoding options."""
    h = hashlib.sha256(json.dumps([FORMAT, os.path.realpath(root), options], sort_keys=True).encode())
    for p in paths:
        st = os.stat(p)
        h.update(f"\0{os.path.relpath(p, root)}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()[:32]


def load(key: str) -> tuple[torch.Tensor, dict] | None:
    """The cached tensor and its metadata, or None when there is no (complete, readable) entry."""
    base = os.path.join(cache_dir(), key)
    try:
        with open(base + ".json") as f:
            meta = json.load(f)
        x = np.load(base + ".npy")
    except (OSError, ValueError):
        return None
    return torch.from_numpy(x), meta


def save(key: str, x: torch.Tensor, meta: dict) -> str | None:
    """Write an entry atomically (temporary files, then rename); returns its path, None if the cache is not
    writable (a cache is an optimisation: failing to write one is not an error)."""
    directory = cache_dir()
    base = os.path.join(directory, key)
    try:
        os.makedirs(directory, exist_ok=True)
        for suffix, write in ((".npy", lambda f: np.save(f, x.numpy())),
                              (".json", lambda f: f.write(json.dumps(meta).encode()))):
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
            with os.fdopen(fd, "wb") as f:
                write(f)
            os.replace(tmp, base + suffix)  # .json last: an entry without it is never read
    except OSError:
        return None
    return base
