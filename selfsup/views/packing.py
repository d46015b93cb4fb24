"""Packing: the documents of a batch laid end to end in rows of the run's sequence length, so an MLM step
computes on real tokens instead of padding.

Each document keeps its own "[CLS] text [SEP]" (its [SEP] separates it from the next, as RoBERTa's extra
separator between documents, Liu et al. 2019, sec. 4.2). Whole documents are placed in rows by first-fit
decreasing, so only the tail of a row is padding and no document is cut. Two layouts:

- "documents": attention stays within each document and positions restart at 0 in each one: exactly the
  computation of the unpacked batch, without the padding (tests/test_mlm_packing.py checks the loss is equal).
- "full_sentences": RoBERTa's FULL-SENTENCES input (Liu et al. 2019, sec. 4.2, table 2): a row is one sequence,
  attention crosses document boundaries and positions run on through the row.
"""
from __future__ import annotations

import torch

LAYOUTS = ("documents", "full_sentences")


def first_fit_decreasing(lengths: list[int], capacity: int) -> tuple[list[int], list[int]]:
    """(row, offset) of each document: longest first, each into the first row it fits (bin packing's FFD)."""
    rows, offsets, room = [0] * len(lengths), [0] * len(lengths), []
    for i in sorted(range(len(lengths)), key=lambda j: -lengths[j]):
        n = lengths[i]
        r = next((r for r, free in enumerate(room) if free >= n), len(room))
        if r == len(room):
            room.append(capacity)
        rows[i], offsets[i] = r, capacity - room[r]
        room[r] -= n
    return rows, offsets


def pack(tensors: dict[str, torch.Tensor], keep: torch.Tensor, layout: str = "documents",
         fill: dict[str, int] | None = None) -> dict[str, torch.Tensor]:
    """Pack right-padded B x L tensors (same layout, `keep` B x L True on each document's real tokens, a prefix
    of its row) into R x L rows, R <= B; adds "positions" (R x L int64, for the position embedding) and
    "segments" (R x L int64: the document each token belongs to, 1-based; 0 on padding).

    `fill`: the value each tensor takes on padding (default 0). With layout "full_sentences" the segments are
    1 on every real token (one sequence a row) and the positions run 0..L-1.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    fill = fill or {}
    b, n = keep.shape
    lengths = keep.sum(1)
    row, offset = first_fit_decreasing(lengths.tolist(), n)  # the one sync: a short Python loop over B lengths
    row = torch.tensor(row, device=keep.device)
    offset = torch.tensor(offset, device=keep.device)
    doc, col = keep.nonzero(as_tuple=True)  # doc, col: T real tokens
    dest_row, dest_col = row[doc], offset[doc] + col
    rows = int(row.max()) + 1 if b else 0
    out = {}
    for name, t in tensors.items():
        packed = torch.full((rows, n), fill.get(name, 0), dtype=t.dtype, device=t.device)  # packed: R x L
        packed[dest_row, dest_col] = t[doc, col]
        out[name] = packed
    segments = torch.zeros(rows, n, dtype=torch.long, device=keep.device)
    positions = torch.arange(n, device=keep.device).expand(rows, n).clone()
    if layout == "documents":
        segments[dest_row, dest_col] = doc + 1
        positions[dest_row, dest_col] = col
    else:
        segments[dest_row, dest_col] = 1
    return {**out, "positions": positions, "segments": segments}
