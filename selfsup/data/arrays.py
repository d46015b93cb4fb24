"""Turning numpy arrays (.npy/.npz files, IDX contents) into image and label tensors."""
from __future__ import annotations

import os
import zipfile

import numpy as np
import torch

from selfsup.data.idx import read_idx
from selfsup.data.mapped import tensor_of
from selfsup.data.types import Dataset
from selfsup.errors import SelfSupError

_IMAGE_KEYS = ("images", "x", "X")
_LABEL_KEYS = ("labels", "y", "Y")
# Labels are class indices: evaluation sizes its heads by the largest, so 10**12 would be 10**12 classes.
# 100,000 is well above ImageNet-21k's 21,841 classes.
MAX_CLASSES = 100_000


def images_from_array(arr: np.ndarray, path: str) -> torch.Tensor:
    """Validate an (N,H,W) or (N,H,W,C) uint8 array and return it as a contiguous (N,C,H,W) tensor; a C-ordered
    memory-mapped array stays where it lies: (N,C,H,W) is then a view of it (strided for (N,H,W,C))."""
    ok = (
        isinstance(arr, np.ndarray)
        and arr.dtype == np.uint8
        and (arr.ndim == 3 or (arr.ndim == 4 and arr.shape[3] in (1, 3)))
        and arr.shape[0] > 0
        and all(s > 0 for s in arr.shape[1:3])
    )
    if not ok:
        shape = getattr(arr, "shape", None)
        dtype = getattr(arr, "dtype", type(arr).__name__)
        raise SelfSupError(
            f"expected an array of shape (N,H,W) or (N,H,W,C) with C in {{1,3}} and dtype uint8 in {path}, "
            f"got shape {shape} dtype {dtype}"
        )
    if isinstance(arr, np.memmap) and arr.flags.c_contiguous:
        t = tensor_of(arr)
        return t.unsqueeze(1) if arr.ndim == 3 else t.permute(0, 3, 1, 2)
    t = torch.from_numpy(np.ascontiguousarray(arr))
    t = t.unsqueeze(1) if arr.ndim == 3 else t.permute(0, 3, 1, 2)
    return t.contiguous()


def load_idx_image_file(path: str) -> torch.Tensor:
    """The (N,1,H,W) uint8 images of a 3-D IDX image file (raw or gzipped)."""
    arr = read_idx(path)
    if arr.ndim != 3:
        raise SelfSupError(f"expected a 3-D IDX image file (N,H,W) in {path}, got shape {arr.shape}")
    return images_from_array(arr, path)


def labels_from_array(arr: np.ndarray, n: int, path: str) -> torch.Tensor:
    """Validate a 1-D non-negative integer label array of length `n` and return it as int64."""
    if not isinstance(arr, np.ndarray) or arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        shape = getattr(arr, "shape", None)
        dtype = getattr(arr, "dtype", type(arr).__name__)
        raise SelfSupError(f"expected 1-D integer labels in {path}, got shape {shape} dtype {dtype}")
    if len(arr) != n:
        raise SelfSupError(f"{len(arr)} labels for {n} images in {path}")
    if n and arr.min() < 0:
        raise SelfSupError(f"negative label {int(arr.min())} in {path}")
    if n and arr.max() >= MAX_CLASSES:
        raise SelfSupError(f"label {int(arr.max())} in {path} is not a class index: labels must be in "
                           f"[0, {MAX_CLASSES:,}) (a class per label value up to the largest)")
    return torch.from_numpy(arr.astype(np.int64))


def _np_load(path: str, mmap_mode: str | None = None):
    """np.load without ever unpickling, with every failure turned into a SelfSupError."""
    try:
        if mmap_mode and _truncated(path):
            raise SelfSupError(_truncated(path))
        return np.load(path, allow_pickle=False, mmap_mode=mmap_mode)
    except FileNotFoundError:
        raise SelfSupError(f"no such file or directory: {path}") from None
    except ValueError as e:
        # numpy raises ValueError both for pickled data and for object arrays
        msg = str(e).splitlines()[0] if str(e) else "invalid file"
        raise SelfSupError(f"cannot load {path} ({msg})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise SelfSupError(f"cannot read {path} ({e})") from None


def _truncated(path: str) -> str:
    """A one-line reason when a .npy file holds fewer bytes than its header promises ("" when it does not)."""
    with open(path, "rb") as f:
        try:
            fmt = np.lib.format
            read = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(fmt.read_magic(f))
            if read is None:
                return ""
            shape, _, dtype = read(f)
        except (ValueError, OSError, EOFError):
            return ""  # not a .npy header: np.load says what it is
        want = f.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    have = os.path.getsize(path)
    return f"{path} is truncated: {have:,} bytes, its header says {want:,} ({shape} {dtype})" if have < want else ""


def load_label_file(path: str, n: int) -> torch.Tensor:
    """Load labels for `n` images from a .npy file of ints or an IDX idx1 file."""
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.exists(path):
        raise SelfSupError(f"no such file or directory: {path}")
    if not os.path.isfile(path):
        raise SelfSupError(f"label file {path} is not a regular file")
    if path.lower().endswith(".npy"):
        arr = _np_load(path)
        if not isinstance(arr, np.ndarray):
            raise SelfSupError(f"expected a single array in label file {path}, got an archive")
    else:
        arr = read_idx(path)
    return labels_from_array(arr, n, path)


def load_npy(path: str, labels: str | None = None) -> Dataset:
    """Images from a .npy array, memory-mapped where it lies (copy-on-write: never read whole, never written
    back), with optional labels from a separate file."""
    arr = _np_load(path, mmap_mode="c")
    if not isinstance(arr, np.ndarray):
        raise SelfSupError(f"expected a single array in {path}, got an .npz archive (rename it to .npz)")
    images = images_from_array(arr, path)
    y = load_label_file(labels, len(images)) if labels else None
    return Dataset(images, y, name=path)


def _pick(npz, keys: tuple[str, ...]) -> str | None:
    """The first of `keys` present in the archive."""
    return next((k for k in keys if k in npz.files), None)


def load_npz(path: str, labels: str | None = None) -> Dataset:
    """Load images (and labels, if stored) from an .npz archive; an explicit label file wins."""
    npz = _np_load(path)
    if isinstance(npz, np.ndarray):
        # np.load sniffs content, so a .npz-named plain array still loads
        return Dataset(images_from_array(npz, path), load_label_file(labels, len(npz)) if labels else None, name=path)
    with npz:
        key = _pick(npz, _IMAGE_KEYS) or (npz.files[0] if len(npz.files) == 1 else None)
        if key is None:
            raise SelfSupError(f"no image array in {path}: expected key 'images' (or 'x'/'X'), found {npz.files}")
        try:
            images = images_from_array(npz[key], f"{path}[{key}]")
            lkey = _pick(npz, _LABEL_KEYS)
            y_arr = npz[lkey] if lkey and not labels else None
        except ValueError as e:
            raise SelfSupError(f"cannot load {path} ({str(e).splitlines()[0]})") from None
        except (OSError, EOFError, zipfile.BadZipFile) as e:
            raise SelfSupError(f"cannot read {path} ({e})") from None
    if labels:
        y = load_label_file(labels, len(images))
    elif y_arr is not None:
        y = labels_from_array(y_arr, len(images), path)
    else:
        y = None
    return Dataset(images, y, name=path)
