"""CIFAR-10 from its binary version (cifar-10-binary.tar.gz; never the pickled one): locate, download, verify,
decode.

The binary format (https://www.cs.toronto.edu/~kriz/cifar.html): each of data_batch_1..5.bin (train) and
test_batch.bin (test) is a run of 3,073-byte records, one label byte (0-9) then 3,072 pixel bytes: the red,
green and blue 32x32 planes, each row-major. Reading it is a reshape, and no pickle ever runs.
"""
from __future__ import annotations

import os
import tarfile

import numpy as np
import torch

from selfsup.data.fashion_mnist import _download_one
from selfsup.data.types import Dataset
from selfsup.errors import SelfSupError

DEFAULT_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
ARCHIVE = "cifar-10-binary.tar.gz"
MD5 = "c32a1d4ab5d03f1284b67883e8d87530"  # of ARCHIVE, as published on the dataset's page
FOLDER = "cifar-10-batches-bin"  # what the archive holds
FILES = {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}
EXPECTED_COUNTS = {"train": 50000, "test": 10000}
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
SHAPE = (3, 32, 32)
RECORD = 1 + 3 * 32 * 32


def parse_batch(data: bytes, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 3, 32, 32) uint8, labels (N,) int64) from the bytes of one binary batch file."""
    if len(data) == 0 or len(data) % RECORD:
        raise SelfSupError(f"not a CIFAR-10 binary batch: {where} holds {len(data)} bytes, not a multiple of "
                           f"{RECORD} (1 label byte + 3072 pixel bytes per image)")
    rec = np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD)  # rec: N x 3073
    if int(rec[:, 0].max()) >= len(CLASSES):
        raise SelfSupError(f"not a CIFAR-10 binary batch: {where} has label {int(rec[:, 0].max())} (expected 0-9)")
    images = torch.from_numpy(rec[:, 1:].reshape(-1, *SHAPE).copy())  # planes R, G, B, each 32 rows of 32
    return images, torch.from_numpy(rec[:, 0].astype(np.int64))


def cache_dir() -> str:
    """Per-user download cache: $XDG_CACHE_HOME/selfsup/cifar10 (default ~/.cache/selfsup/cifar10)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "selfsup", "cifar10")


def search_dirs() -> list[str]:
    """Directories searched, in order, for the archive or its extracted folder."""
    env = os.environ.get("SELFSUP_DATA")
    dirs = [os.path.expanduser(env), os.path.join(os.path.expanduser(env), "cifar10")] if env else []
    return dirs + [cache_dir()]


def _local(directory: str) -> str | None:
    """The extracted folder (or a folder holding the .bin files) or the archive in `directory`, if any."""
    names = FILES["train"] + FILES["test"]
    for folder in (os.path.join(directory, FOLDER), directory):
        if all(os.path.isfile(os.path.join(folder, n)) for n in names):
            return folder
    archive = os.path.join(directory, ARCHIVE)
    return archive if os.path.isfile(archive) else None


def locate() -> str:
    """A local copy (folder or archive), else the archive downloaded into the cache and MD5-verified."""
    dirs = search_dirs()
    for directory in dirs:
        found = _local(directory)
        if found is not None:
            return found
    url = os.environ.get("SELFSUP_CIFAR10_URL") or DEFAULT_URL
    dest = os.path.join(cache_dir(), ARCHIVE)
    try:
        os.makedirs(cache_dir(), exist_ok=True)
        _download_one(url, dest, MD5)
    except OSError as e:
        raise SelfSupError(f"cannot create cache directory {cache_dir()} ({e.strerror or e})") from None
    except SelfSupError as e:
        raise SelfSupError(f"cifar10 is not in {', '.join(dirs)} and {e}; put {ARCHIVE} (or its {FOLDER}/ "
                           f"folder) in {cache_dir()} or $SELFSUP_DATA") from None
    return dest


def _read(where: str, names: list[str]) -> dict[str, bytes]:
    """The bytes of each batch file named, from a folder or from the archive (read in place, never extracted)."""
    if os.path.isdir(where):
        out = {}
        for n in names:
            with open(os.path.join(where, n), "rb") as f:
                out[n] = f.read()
        return out
    wanted = {f"{FOLDER}/{n}": n for n in names}
    out = {}
    try:
        with tarfile.open(where, "r:gz") as tar:
            for member in tar:
                if member.name in wanted and member.isfile():
                    out[wanted[member.name]] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise SelfSupError(f"cannot read {where} as {ARCHIVE} ({e})") from None
    missing = [n for n in names if n not in out]
    if missing:
        raise SelfSupError(f"{where} lacks {', '.join(f'{FOLDER}/{n}' for n in missing)}: not the CIFAR-10 binary "
                           "version")
    return out


def load_cifar10(split: str = "train") -> Dataset:
    """The "train" (50,000) or "test" (10,000) split as (N, 3, 32, 32) uint8 with labels 0-9."""
    where = locate()
    parts = [parse_batch(data, f"{where}:{name}") for name, data in _read(where, FILES[split]).items()]
    images = torch.cat([p[0] for p in parts])
    labels = torch.cat([p[1] for p in parts])
    if len(images) != EXPECTED_COUNTS[split]:
        raise SelfSupError(f"{where}: the {split} split holds {len(images)} images, not "
                           f"{EXPECTED_COUNTS[split]}: not the CIFAR-10 binary version")
    return Dataset(images.contiguous(), labels, classes=list(CLASSES), name=f"cifar10:{split}")
