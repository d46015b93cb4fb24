"""The files `selfsup embed` writes, chosen by the output name: .npy (features only), .npz (features, labels,
paths) or .parquet (columns path, label, embedding: one list<float> per row; rows in input order)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import SelfSupError

SUFFIXES = (".npy", ".npz", ".parquet")


def check_out_format(out: Path) -> None:
    """A one-line error for a suffix embed cannot write, or .parquet without pyarrow, before any work."""
    if out.suffix not in SUFFIXES:
        raise SelfSupError(f"--out must end in .npy (features only), .npz (features, labels, paths) or .parquet "
                           f"(path, label, embedding columns), got {out}")
    if out.suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise SelfSupError("--out *.parquet needs the pyarrow package: pip install 'selfsup[parquet]'") from None


def write_parquet(out: Path, feats: np.ndarray, labels: np.ndarray | None, paths: list[str] | None) -> None:
    """One row a sample, in input order: path (string, null for sources without files), label (int64, null
    without labels), embedding (list<float>, the float32 features)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n, d = feats.shape
    offsets = pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32))
    table = pa.table({
        "path": pa.array(list(paths) if paths is not None else [None] * n, type=pa.string()),
        "label": pa.array(labels.astype(np.int64) if labels is not None else [None] * n, type=pa.int64()),
        "embedding": pa.ListArray.from_arrays(offsets, pa.array(np.ascontiguousarray(feats).reshape(-1))),
    })
    pq.write_table(table, out)


def write_features(out: Path, feats: np.ndarray, labels: np.ndarray | None, paths: list[str] | None) -> None:
    """Write (N, D) float32 features (and labels, paths where the format holds them) to `out` by its suffix."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npy":
        np.save(out, feats)
    elif out.suffix == ".parquet":
        write_parquet(out, feats, labels, paths)
    else:
        arrays = {"features": feats}
        if labels is not None:
            arrays["labels"] = labels
        if paths is not None:
            arrays["paths"] = np.array(paths, dtype=np.str_)
        np.savez(out, **arrays)
