"""Pretraining on several text sources at once (`--data A --data B ...`): their union, in the order given.

The rule that keeps evaluation honest, for each part: a labelled source (fortunes, a TSV, a labelled folder) is
split as if it were pretrained on alone, its seeded stratified holdout set aside before pretraining, so
`selfsup eval RUN --data fortunes` tests on the same documents a fortunes-only run with that seed would, and
neither pretraining nor the tokenizer (fitted on the pretraining split) ever sees them. Unlabelled parts (a
dictionary, a book) have nothing to evaluate on and are pretrained on whole. RUN_DIR/holdout.json then holds
indices into the union and each part's place in it (`parts`), from which `part_holdout` gives one source's.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from selfsup.data.types import Dataset
from selfsup.errors import SelfSupError


@dataclass
class Part:
    """One source of a union: its name as given, where its documents start in the union, how many, its labels,
    and whether it has a test split of its own (then evaluation tests on that, and nothing is held out)."""

    data: str
    start: int
    n: int
    labels: torch.Tensor | None
    own_test: bool = False

    def to_dict(self) -> dict:
        return dict(data=self.data, start=self.start, n=self.n, labelled=self.labels is not None)


def sources_of(data: str | list[str] | tuple[str, ...]) -> list[str]:
    """The sources named by a config's `data`: one string, or a list of several."""
    return [data] if isinstance(data, str) else list(data)


def load_union(srcs: list[str], split: str = "train", labels: str | None = None) -> tuple[Dataset | None, list[Part]]:
    """The documents of every text source in `srcs`, concatenated in order (labels dropped: the union is for
    pretraining), and each source's Part; (None, []) for the "test" split: evaluation tests on one source."""
    from selfsup.data.sources import load_data

    if labels:
        raise SelfSupError("--labels cannot be given with several --data sources (text carries its own labels)")
    if split != "train":
        return None, []
    if len(set(srcs)) != len(srcs):
        raise SelfSupError(f"--data names a source twice ({', '.join(srcs)}); give each once")
    texts, paths, parts = [], [], []
    for src in srcs:
        d = load_data(src, "train")
        if d.kind != "text":
            raise SelfSupError(f"several --data sources are joined for text pretraining only; {src} holds "
                               f"{d.kind} data")
        parts.append(Part(src, len(texts), len(d), d.labels, own_test=load_data(src, "test") is not None))
        texts += d.texts
        paths += d.paths or [f"{src}#{i}" for i in range(len(d))]
    union = Dataset(torch.zeros(len(texts), 0, dtype=torch.long), None, paths=paths, name="+".join(srcs),
                    kind="text", texts=texts)
    return union, parts


def union_holdout(parts: list[Part], fraction: float, seed: int) -> torch.Tensor | None:
    """Union indices set aside before pretraining: each labelled part's holdout (as if it were alone), offset."""
    from selfsup.data.splits import holdout_indices

    if fraction == 0:
        return None
    held = [holdout_indices(p.labels, p.n, fraction, seed) + p.start for p in parts
            if p.labels is not None and not p.own_test]
    return torch.cat(held).sort().values if held else None


def union_note(parts: list[Part], index: torch.Tensor | None) -> str:
    """Where evaluation's test data comes from, for the recipe printed at the start."""
    labelled = [p.data for p in parts if p.labels is not None and not p.own_test]
    if index is None:
        return "none: pretrained on every document (--holdout 0 or no labelled source)"
    return (f"{len(index)} documents of {', '.join(labelled)} (seeded, stratified) held out before pretraining; "
            f"the other sources pretrained on whole")


def holdout_record(parts: list[Part]) -> dict:
    """What holdout.json adds for a union: each part's place, so one source's holdout can be read back."""
    return dict(parts=[p.to_dict() for p in parts])


def part_holdout(saved: dict, src: str, n: int, same) -> torch.Tensor | None:
    """The holdout of source `src` (n documents now) within a union's saved holdout.json, as indices into `src`;
    None when `src` is not one of its parts. `same(a, b)`: whether two source names are the same source."""
    for part in saved.get("parts", []):
        if same(src, part["data"]):
            if part["n"] != n:
                raise SelfSupError(f"{src} now holds {n} documents, {part['n']} when the run was pretrained: its "
                                   "holdout no longer applies")
            index = torch.tensor(saved["indices"], dtype=torch.long)
            inside = (index >= part["start"]) & (index < part["start"] + n)
            return index[inside] - part["start"]
    return None
