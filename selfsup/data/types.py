"""The in-memory dataset every source decodes to, and the spec of it that models and evaluation read."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from .mapped import file_range, read_rows, release

KINDS = ("image", "tokens")


@dataclass
class Dataset:
    """Decoded samples of one split, held as one tensor (not a torch.utils.data.Dataset: an epoch is a randperm).

    kind "image": x is uint8 (N, C, H, W). kind "tokens": x is int64 (N, L) token ids, right-padded with
    `pad_id`, ids below `vocab_size`. kind "text": raw documents in `texts`, x an empty (N, 0) until a run's
    tokenizer makes it "tokens" (which keep `texts`: the raw strings evaluation's TF-IDF baseline reads).
    Labels (N,), paths and class names are optional; `skipped` lists the files a folder source left out as
    unreadable (--skip-bad).

    `rows`, when set, is a lazy subset (`subset(index, lazy=True)`, e.g. pretraining without its holdout): the
    samples are x[rows] (sorted for fast reads), labels and paths already follow them, and x is left as it lies
    (a memory-mapped array is never read whole). Read the samples with `read`, never `x` directly.
    """

    x: torch.Tensor
    labels: torch.Tensor | None = None
    paths: list[str] | None = None
    classes: list[str] | None = None
    name: str = ""
    kind: str = "image"
    vocab_size: int | None = None  # tokens only
    pad_id: int = 0  # tokens only
    texts: list[str] | None = None  # text and tokens from text: one raw document per sample
    continuation_ids: tuple[int, ...] = ()  # tokens from text: the ids that continue a word (WordPiece's ##...)
    skipped: list[str] | None = None
    rows: torch.Tensor | None = None

    def __len__(self) -> int:
        """Number of samples."""
        return int(self.x.shape[0] if self.rows is None else len(self.rows))

    @property
    def mapped(self) -> bool:
        """Whether x lies in a memory-mapped file (a .npy, the folder cache): read on demand, never whole."""
        return file_range(self.x) is not None

    def read(self, index: torch.Tensor | None = None) -> torch.Tensor:
        """The samples at `index` (all when None) as a tensor in ordinary memory; a mapped x is read in chunks
        and its pages released (mapped.read_rows)."""
        rows = self.rows if index is None or self.rows is None else self.rows[torch.as_tensor(index, dtype=torch.long)]
        if rows is None and index is not None:
            rows = torch.as_tensor(index, dtype=torch.long)
        return read_rows(self.x, rows)

    @property
    def num_classes(self) -> int:
        """Number of classes: from the class names if known, else from the labels (0 if unlabeled)."""
        if self.classes:
            return len(self.classes)
        if self.labels is None or self.labels.numel() == 0:
            return 0
        return int(self.labels.max().item()) + 1

    def to(self, device: torch.device | str) -> "Dataset":
        """Return a copy with the samples and labels on `device`."""
        labels = None if self.labels is None else self.labels.to(device)
        x = self.x if self.rows is None else self.read()
        return dataclasses.replace(self, x=x.to(device), labels=labels, rows=None)

    def subset(self, index: torch.Tensor, lazy: bool = False) -> "Dataset":
        """Return the rows selected by `index` (integer indices or a boolean mask); with lazy=True keep x as it
        lies and record the selection in `rows` (nothing is read: for memory-mapped data larger than memory)."""
        index = torch.as_tensor(index)
        if index.dtype == torch.bool:
            index = index.nonzero().flatten()
        index = index.to(device="cpu" if lazy or self.rows is not None else self.x.device, dtype=torch.long)
        labels = None if self.labels is None else self.labels[index.to(self.labels.device)]
        paths = None if self.paths is None else [self.paths[i] for i in index.tolist()]
        texts = None if self.texts is None else [self.texts[i] for i in index.tolist()]
        if lazy:
            rows = index if self.rows is None else self.rows[index]
            return dataclasses.replace(self, labels=labels, paths=paths, texts=texts, rows=rows)
        x = self.x[index].contiguous() if self.rows is None and not self.mapped else self.read(index)
        return dataclasses.replace(self, x=x, labels=labels, paths=paths, texts=texts, rows=None)

    @property
    def raw(self):
        """What a no-learning baseline reads: the pixels of images, the raw documents of tokenized text (or None)."""
        return self.texts if self.kind != "image" else (self.x if self.rows is None else self.read())


@dataclass(frozen=True)
class DataSpec:
    """What a model, its view recipes and evaluation need to know about the data; saved in every checkpoint.

    image: shape (C, H, W) and the training split's per-channel mean and std in [0, 1] units (for normalising).
    tokens: shape (L,), the vocabulary size, the padding id, and the ids that continue a word (WordPiece's
    "##" pieces, for whole-word masking; empty for runs saved before it existed: every token is then a word).
    """

    kind: str
    shape: tuple[int, ...]
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    vocab_size: int = 0
    pad_id: int = 0
    continuation_ids: tuple[int, ...] = ()

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown data kind {self.kind!r}; expected one of {KINDS}")
        object.__setattr__(self, "shape", tuple(int(v) for v in self.shape))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        object.__setattr__(self, "continuation_ids", tuple(int(v) for v in self.continuation_ids))

    def with_channels(self, channels: int, mean=None, std=None) -> "DataSpec":
        """The same images with another channel count (e.g. the 1-channel L input of colorization)."""
        return dataclasses.replace(self, shape=(channels, *self.shape[1:]), mean=tuple(mean or self.mean[:channels]),
                                   std=tuple(std or self.std[:channels]))

    def to_dict(self) -> dict:
        """Plain types only (checkpoints load with weights_only=True)."""
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "DataSpec":
        return cls(**d)

    def describe(self) -> str:
        """A short human description: "images 1x28x28" or "tokens L=128, vocab 8000"."""
        if self.kind == "image":
            return "images " + "x".join(map(str, self.shape))
        return f"tokens L={self.shape[0]}, vocab {self.vocab_size}"


def image_spec(shape, mean=(), std=()) -> DataSpec:
    """A DataSpec for images of shape (C, H, W)."""
    return DataSpec("image", tuple(shape), tuple(mean), tuple(std))


def spec_of(data: Dataset) -> DataSpec:
    """The spec of a training split: image statistics are computed from these samples only."""
    if data.kind == "image":
        if data.x.dim() != 4 or data.x.dtype != torch.uint8:
            raise ValueError(f"image data must be uint8 (N, C, H, W), got {data.x.dtype} {tuple(data.x.shape)}")
        if "_spec" in data.__dict__:  # a mapped file's statistics: one pass over it per Dataset, not one per call
            return data.__dict__["_spec"]
        mean, std = dataset_stats(data.x, rows=data.rows)
        spec = image_spec(data.x.shape[1:], mean, std)
        if data.mapped:
            data.__dict__["_spec"] = spec
        return spec
    if data.kind == "text":
        raise ValueError("text must be tokenized (selfsup.data.tokenize) before it has a spec")
    if data.x.dim() != 2 or data.x.dtype != torch.long or not data.vocab_size:
        raise ValueError("token data must be int64 (N, L) with a vocab_size")
    return DataSpec("tokens", tuple(data.x.shape[1:]), vocab_size=int(data.vocab_size), pad_id=int(data.pad_id),
                    continuation_ids=data.continuation_ids)


@torch.no_grad()
def dataset_stats(images: torch.Tensor, chunk: int | None = None, rows: torch.Tensor | None = None
                  ) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) std of a uint8 (N,C,H,W) tensor (of images[rows] when rows is given),
    in [0,1] units.

    Computed in chunks (of `chunk` samples; by default 4 MiB of them) with exact integer sums for uint8 (float64
    for float input in [0,1]); a memory-mapped tensor's pages are released after each chunk, so a pass over it
    costs a few chunks of memory, not the file.
    The std is floored at 1e-3 so a constant channel cannot divide by zero.
    """
    if images.dim() != 4:
        raise ValueError(f"expected (N, C, H, W) images, got shape {tuple(images.shape)}")
    c = images.shape[1]
    is_int = not torch.is_floating_point(images)
    acc = torch.int64 if is_int else torch.float64
    s = torch.zeros(c, dtype=acc, device=images.device)
    s2 = torch.zeros(c, dtype=acc, device=images.device)
    chunk = chunk or max(1, (4 << 20) // max(1, math.prod(images.shape[1:]) * images.element_size()))
    span = file_range(images)
    count = images.shape[0] if rows is None else len(rows)
    for i in range(0, count, chunk):
        part = images[i:i + chunk] if rows is None else images[rows[i:i + chunk]]
        x = part.to(torch.int32 if is_int else torch.float64)
        s += x.sum(dim=(0, 2, 3), dtype=acc)
        s2 += (x * x).sum(dim=(0, 2, 3), dtype=acc)
        if span is not None:
            lo, hi = (i, min(count, i + chunk)) if rows is None else (int(rows[i:i + chunk].min()),
                                                                     int(rows[i:i + chunk].max()) + 1)
            release(images, span, lo, hi)
    n = count * images.shape[2] * images.shape[3]
    unit = 255.0 if is_int else 1.0
    mean = s.cpu().double() / (n * unit)
    var = s2.cpu().double() / (n * unit * unit) - mean.pow(2)
    std = var.clamp(min=0.0).sqrt()
    return [float(v) for v in mean], [max(float(v), 1e-3) for v in std]
