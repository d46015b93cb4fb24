"""The holdout a run sets aside before pretraining, so that `selfsup eval` never tests on what it trained on.

The rule that keeps evaluation honest lives here: a source without its own test split is split once, seeded
(and stratified where labels exist), before pretraining. The holdout's indices go to RUN_DIR/holdout.json;
pretraining, its normalisation statistics and the kNN monitor see only the rest; `selfsup eval` tests on
exactly that holdout.
`cfg` is a run's Config and `paths` its RunPaths, read but not imported (see prepare.py).
"""
from __future__ import annotations

import json

import torch

from selfsup.data.sources import load_data
from selfsup.data.splits import complement, holdout_indices
from selfsup.data.types import Dataset
from selfsup.errors import SelfSupError



def new_holdout(cfg, full: Dataset) -> torch.Tensor | None:
    """Indices to set aside before pretraining: none when the source has its own test split or --holdout is 0."""
    if cfg.holdout == 0 or load_data(cfg.data, "test", labels=cfg.labels) is not None:
        return None
    return holdout_indices(full.labels, len(full), cfg.holdout, cfg.seed)


def without_holdout(cfg, full: Dataset, index: torch.Tensor | None, own_test: bool) -> tuple[Dataset, str]:
    """The samples pretraining may see, and a note saying where the evaluation's test data comes from."""
    if index is not None:
        kind = "stratified" if full.labels is not None else "random"
        note = f"{len(index)} samples ({len(index) / len(full):.0%}, seeded, {kind}) held out before pretraining"
        return full.subset(complement(len(full), index), lazy=full.mapped), note  # a mapped file stays unread
    if own_test:
        return full, "the source's own test split (never seen in pretraining)"
    return full, "none: pretrained on every sample (--holdout 0)"


def load_holdout(paths, n: int, part: str | None = None, same=None) -> torch.Tensor | None:
    """The run's holdout indices into its source of n samples (None when it has none); checks the source size.
    `part`: one source of a run pretrained on several (indices into that source; `same` compares names)."""
    if not paths.holdout.is_file():
        return None
    saved = json.loads(paths.holdout.read_text())
    if part is not None and "parts" in saved:
        from selfsup.data.corpus import part_holdout

        return part_holdout(saved, part, n, same)
    if saved["n"] != n:
        raise SelfSupError(f"{saved['data']} now holds {n} samples, {saved['n']} when {paths.root} was pretrained: "
                           "its holdout no longer applies")
    return torch.tensor(saved["indices"], dtype=torch.long)
