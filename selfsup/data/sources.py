"""`load_data`: resolve a SRC string (a registered name, a folder or a file) to a decoded Dataset."""
from __future__ import annotations

import os
import re
from typing import Callable

from selfsup.data.arrays import load_idx_image_file, load_label_file, load_npy, load_npz
from selfsup.data.cifar10 import load_cifar10
from selfsup.data.digits import load_digits
from selfsup.data.fashion_mnist import find_mnist_files, load_fashion_mnist, load_mnist_dir
from selfsup.data.folder import EXTENSIONS, FolderOptions, load_folder
from selfsup.data.idx import looks_like_idx_images
from selfsup.data.index import has_images
from selfsup.data.shards import is_shard_pattern, load_shards
from selfsup.data.text import (COMPRESSED, TEXT_EXTENSIONS, load_fortunes, load_text_file, load_text_folder,
                               looks_like_text_folder)
from selfsup.data.types import Dataset
from selfsup.errors import SelfSupError

SPLITS = ("train", "test")
# Named sources: name -> loader(split) returning a Dataset, or None when the source has no such split.
SOURCES: dict[str, Callable[[str], Dataset | None]] = {}


def register_source(*names: str):
    """Decorator: make `loader(split)` available as `--data NAME` (built-ins below; plugins add their own)."""
    def deco(loader):
        for name in names:
            SOURCES[name.lower()] = loader
        return loader
    return deco


register_source("fashion-mnist", "fmnist")(load_fashion_mnist)
register_source("digits")(load_digits)
register_source("fortunes")(load_fortunes)
register_source("cifar10", "cifar-10")(load_cifar10)

FILES = ("a folder of .png/.jpg/.jpeg images, WebDataset .tar shards ('train-{000000..000099}.tar'), "
         "a directory of MNIST-format IDX files, a .npy or .npz array, "
         "an IDX image file (*-idx3-ubyte[.gz]), a .txt/.tsv text file or a folder of text files")
_IDX_NAME = re.compile(r"idx3-ubyte(\.gz)?$", re.IGNORECASE)
# train-images-idx3-ubyte -> train-labels-idx1-ubyte (also the images.idx3 spelling some mirrors use)
_SIBLING = re.compile(r"images([-.])idx3")


def _no_labels_arg(labels: str | None, src: str) -> None:
    """Refuse a label file for sources that carry their own labels (or none), rather than ignore it."""
    if labels:
        raise SelfSupError(f"a labels file can only be given with a .npy, .npz or IDX image source, not {src}")


def _idx_sibling(path: str) -> str | None:
    """The label file paired with an IDX image file by name, if it exists."""
    head, name = os.path.split(path)
    if not _SIBLING.search(name):
        return None
    candidate = os.path.join(head, _SIBLING.sub(r"labels\1idx1", name, count=1))
    return candidate if os.path.isfile(candidate) else None


def load_idx_images(path: str, labels: str | None = None) -> Dataset:
    """Load a single IDX image file, with labels from `labels` or an auto-paired sibling file."""
    images = load_idx_image_file(path)
    label_path = labels or _idx_sibling(path)
    y = load_label_file(label_path, len(images)) if label_path else None
    return Dataset(images, y, name=path)


def load_data(src: str | list[str], split: str = "train", labels: str | None = None,
              folder: FolderOptions | None = None) -> Dataset | None:
    """Decode SRC's `split` to CPU tensors; None for "test" when the source has no separate test split.

    `folder`: how an image folder is decoded (size, background, bad files, cache); other sources ignore it.
    A list of several text sources is their union (selfsup.data.corpus); a list of one is that source.
    """
    if not isinstance(src, (str, os.PathLike)):
        if len(src) != 1:
            from selfsup.data.corpus import load_union

            return load_union(list(src), split, labels)[0]
        src = src[0]
    if split not in SPLITS:
        raise SelfSupError(f"unknown split {split!r}: expected 'train' or 'test'")
    src = os.fspath(src)
    key = src.strip().lower()
    if key in SOURCES:
        _no_labels_arg(labels, src)
        return SOURCES[key](split)

    if is_shard_pattern(src) and not os.path.isdir(src):  # WebDataset tar shards: one split, as a folder is
        _no_labels_arg(labels, src)
        return load_shards(src, folder) if split == "train" else None

    path = os.path.abspath(os.path.expanduser(src))
    if not os.path.exists(path):
        raise SelfSupError(f"no such file or directory: {path}")
    if os.path.isdir(path):
        _no_labels_arg(labels, path)
        if find_mnist_files(path) is not None:
            return load_mnist_dir(path, split)
        if looks_like_text_folder(path):
            return load_text_folder(path) if split == "train" else None
        if not has_images(path):
            raise SelfSupError(f"no images ({'/'.join(EXTENSIONS)}) or text files ({'/'.join(TEXT_EXTENSIONS)} or "
                               f"no extension) found in folder {path}")
        return load_folder(path, folder) if split == "train" else None  # a folder is one split: nothing to decode for "test"

    if not os.path.isfile(path):  # /dev/zero, a FIFO, a socket: never ending or blocking reads
        raise SelfSupError(f"{path} is not a regular file (a FIFO, device or socket); --data takes a regular "
                           "file, a folder or a built-in name")
    loader = _file_loader(path)
    # single files hold one split: the caller makes its own holdout
    return loader(path, labels) if split == "train" else None


def _file_loader(path: str):
    """Pick the loader for a single file by extension, then by IDX magic bytes."""
    lower = path.lower()
    if lower.endswith(".npy"):
        return load_npy
    if lower.endswith(".npz"):
        return load_npz
    if _IDX_NAME.search(lower) or looks_like_idx_images(path):
        return load_idx_images
    # fortune files have no extension; .gz/.dz: gzip-compressed text (IDX files were recognised above)
    if lower.endswith(TEXT_EXTENSIONS + COMPRESSED) or not os.path.splitext(lower)[1]:
        return load_text_file
    names = ", ".join(repr(n) for n in SOURCES)
    raise SelfSupError(f"unsupported data source: {path} (supported: {names}, {FILES})")
