"""Fashion-MNIST (and any directory of MNIST-format IDX files): locate, download, verify, decode."""
from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request

import torch
from tqdm import tqdm

from selfsup.data.arrays import labels_from_array, load_idx_image_file
from selfsup.data.idx import read_idx, read_idx_header
from selfsup.data.types import Dataset
from selfsup.errors import SelfSupError

DEFAULT_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
TIMEOUT_S = 60
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
# split -> (images file, labels file), names without .gz
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# MD5 of the canonical .gz downloads
MD5 = {
    "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
}
EXPECTED_COUNTS = {"train": 60000, "test": 10000}
IMAGE_SIZE = (28, 28)


def _all_names() -> list[str]:
    """The four base file names."""
    return [name for pair in FILES.values() for name in pair]


def _find(directory: str, name: str) -> str | None:
    """Path of `name` or `name.gz` inside `directory`, if either exists."""
    for candidate in (name, name + ".gz"):
        path = os.path.join(directory, candidate)
        if os.path.isfile(path):
            return path
    return None


def find_mnist_files(directory: str) -> dict[str, str] | None:
    """Map each of the four MNIST-format file names to its path in `directory`, or None if any is missing."""
    found = {name: _find(directory, name) for name in _all_names()}
    if any(p is None for p in found.values()):
        return None
    return found  # type: ignore[return-value]


def cache_dir() -> str:
    """Per-user download cache: $XDG_CACHE_HOME/selfsup/fashion-mnist (default ~/.cache/...)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "selfsup", "fashion-mnist")


def search_dirs() -> list[str]:
    """Directories searched, in order, for local Fashion-MNIST files."""
    dirs: list[str] = []
    env = os.environ.get("SELFSUP_DATA")
    if env:
        env = os.path.expanduser(env)
        dirs += [env, os.path.join(env, "fashion-mnist")]
    return dirs + [cache_dir(), DEBIAN_DIR]


def _check_headers(files: dict[str, str]) -> None:
    """Check that local files are Fashion-MNIST-shaped (their .gz may be re-packed, so no MD5 check)."""
    for split, (img_name, lbl_name) in FILES.items():
        n = EXPECTED_COUNTS[split]
        for name, want in ((img_name, (n, *IMAGE_SIZE)), (lbl_name, (n,))):
            type_byte, dims = read_idx_header(files[name])
            if type_byte != 0x08 or dims != want:
                raise SelfSupError(
                    f"not a Fashion-MNIST file: {files[name]} (expected ubyte IDX of shape {want}, "
                    f"got type 0x{type_byte:02x} shape {dims})"
                )


def _download_one(url: str, dest: str, md5: str) -> None:
    """Download `url` to `dest` via a temp file that is renamed only once its MD5 matches."""
    directory = os.path.dirname(dest)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(dest) + ".", suffix=".part", dir=directory)
    try:
        digest = hashlib.md5()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=os.path.basename(dest)) as bar:
                while chunk := resp.read(1 << 16):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        if digest.hexdigest() != md5:
            raise SelfSupError(f"checksum mismatch for {url}: expected MD5 {md5}, got {digest.hexdigest()}")
        os.replace(tmp, dest)
    except SelfSupError:
        _remove(tmp)
        raise
    except (urllib.error.URLError, OSError, ValueError) as e:
        _remove(tmp)
        reason = getattr(e, "reason", None) or e
        raise SelfSupError(f"cannot download {url} ({reason})") from None
    except BaseException:
        _remove(tmp)  # e.g. Ctrl-C: never leave a half-written file behind
        raise


def _remove(path: str) -> None:
    """Delete a file if it exists."""
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def download(directory: str | None = None) -> dict[str, str]:
    """Fetch whichever of the four .gz files are missing from `directory` (default: the cache) and verify them."""
    directory = directory or cache_dir()
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise SelfSupError(f"cannot create cache directory {directory} ({e.strerror or e})") from None
    base = os.environ.get("SELFSUP_FASHION_MNIST_URL") or DEFAULT_URL
    base = base if base.endswith("/") else base + "/"
    for name in _all_names():
        if _find(directory, name) is None:
            _download_one(base + name + ".gz", os.path.join(directory, name + ".gz"), MD5[name])
    files = find_mnist_files(directory)
    assert files is not None  # every missing file was just downloaded
    return files


def locate() -> dict[str, str]:
    """Find local Fashion-MNIST files (checking their headers), downloading them into the cache if none exist."""
    for directory in search_dirs():
        files = find_mnist_files(directory)
        if files is not None:
            _check_headers(files)
            return files
    # downloaded files are MD5-verified, so their headers need no extra check
    return download()


def load_split(files: dict[str, str], split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode one split's images (N,1,H,W) and labels from the four located files."""
    img_name, lbl_name = FILES[split]
    images = load_idx_image_file(files[img_name])
    labels = labels_from_array(read_idx(files[lbl_name]), len(images), files[lbl_name])
    return images, labels


def load_fashion_mnist(split: str = "train") -> Dataset:
    """Return the Fashion-MNIST "train" (60000) or "test" (10000) split as (N,1,28,28) uint8."""
    images, labels = load_split(locate(), split)
    return Dataset(images, labels, classes=list(CLASSES), name=f"fashion-mnist:{split}")


def load_mnist_dir(directory: str, split: str = "train") -> Dataset:
    """Load a split from a user directory holding the four MNIST-format files (class names unknown)."""
    files = find_mnist_files(directory)
    if files is None:
        raise SelfSupError(f"missing MNIST-format files in {directory}: need {', '.join(_all_names())} (.gz or not)")
    images, labels = load_split(files, split)
    return Dataset(images, labels, name=f"{os.path.abspath(directory)}:{split}")
