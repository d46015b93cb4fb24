"""The data a run needs, prepared in one place for `pretrain`, `eval` and `embed`: the source decoded (an image
folder as the run's settings say), the holdout split, the tokenizer (fitted to the pretraining split only, or
the run's own), and the checks that the data suits the run.

`pretrain` (train/setup.py) calls `pretraining_data` for a new run and `resumed_data` to continue one; under
torchrun rank 0 broadcasts `shared_parts` and every other process rebuilds the same samples with
`replica_data` (train/parallel.py). `eval` and `embed` (api.py) call `eval_data` and `embed_data`, which read
data as the run read its own and turn text into ids with the run's tokenizer.

`cfg` is a run's Config (config.py), `paths` its RunPaths and `run` a TrainedRun (rundir.py): their fields are
read here, their modules never imported, so that data/ stays below the run's configuration and directory.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass

import torch

from selfsup.data.corpus import holdout_record, load_union, sources_of, union_holdout, union_note
from selfsup.data.folder import FolderOptions
from selfsup.data.holdout import load_holdout, new_holdout, without_holdout
from selfsup.data.sources import load_data
from selfsup.data.splits import complement, eval_splits
from selfsup.data.tokenize import FILENAME as TOKENIZER_FILE
from selfsup.data.tokenize import as_tokens, fit_for, run_tokenizer, save_tokenizer, tokenizer_from_json
from selfsup.data.types import DataSpec, Dataset
from selfsup.errors import SelfSupError



def folder_options(cfg, progress: bool | None = None) -> FolderOptions:
    """How cfg.data is decoded when it is an image folder."""
    return FolderOptions(image_size=cfg.image_size, background=cfg.background, skip_bad=cfg.skip_bad,
                         cache=cfg.cache, progress=progress)


# ------------------------------------------------------------------------------------------------- pretrain
@dataclass
class PretrainData:
    """A new run's data: what pretraining sees, and what the run directory keeps of how it was made."""

    full: Dataset  # the source's training split, holdout included (or the caller's data)
    train: Dataset  # what pretraining sees: the holdout removed, text as token ids
    note: str  # where the evaluation's test data comes from
    index: torch.Tensor | None  # the holdout's indices into `full` (None: no holdout)
    tokenizer: object | None  # text: the tokenizer fitted to the pretraining split
    extra: dict = dataclasses.field(default_factory=dict)  # several sources: each one's place (holdout.json)

    def save(self, paths, cfg) -> None:
        """RUN_DIR/holdout.json, tokenizer.json and skipped.txt, as far as the run has them."""
        if (record := self.record(cfg)) is not None:
            paths.holdout.write_text(json.dumps(record))
        if self.tokenizer is not None:
            save_tokenizer(self.tokenizer, paths.root / TOKENIZER_FILE)
        if self.full.skipped:
            paths.skipped.write_text("".join(p + "\n" for p in self.full.skipped))

    def record(self, cfg) -> dict | None:
        """What holdout.json will hold (None: no holdout)."""
        if self.index is None:
            return None
        return dict(data=cfg.data, n=len(self.full), fraction=cfg.holdout, seed=cfg.seed,
                    indices=self.index.tolist(), **self.extra)


def pretraining_data(cfg, train: Dataset | None = None) -> PretrainData:
    """A new run's data: the source's training split less a seeded holdout (or `train`, given by the caller and
    used whole), at least 2 samples, its text turned into ids by a tokenizer fitted to that split alone."""
    extra = {}
    if train is not None:
        full, index, data, note = train, None, train, "given by the caller, used whole"
    elif len(sources_of(cfg.data)) > 1:  # several text sources: each labelled one's holdout set aside (corpus.py)
        full, parts = load_union(sources_of(cfg.data), labels=cfg.labels)
        index, extra = union_holdout(parts, cfg.holdout, cfg.seed), holdout_record(parts)
        data, note = without_holdout(cfg, full, index, own_test=False)[0], union_note(parts, index)
    else:
        full = load_data(cfg.data, "train", labels=cfg.labels, folder=folder_options(cfg))
        if cfg.image_size is not None and full.paths is None:
            raise SelfSupError(f"--image-size applies to image folders; {cfg.data} is not one")
        index = new_holdout(cfg, full)
        data, note = without_holdout(cfg, full, index, own_test=cfg.holdout > 0)
    if len(data) < 2:
        raise SelfSupError(too_few_message(cfg, full, data))
    # text: fitted to the pretraining split only; with --init, the init run's (its ids are the encoder's)
    tokenizer = (run_tokenizer(cfg.init) if cfg.init and data.kind == "text"
                 else fit_for(data, cfg.vocab_size, cfg.seq_len))
    return PretrainData(full, as_tokens(data, tokenizer), note, index, tokenizer, extra)


def resumed_data(cfg, paths, train: Dataset | None = None) -> tuple[Dataset, str]:
    """A resumed run's pretraining data (its saved holdout removed, its own tokenizer applied, never refitted)
    and the note on its test data; `train`, given by the caller, is used whole."""
    full = train if train is not None else load_data(cfg.data, "train", labels=cfg.labels,
                                                     folder=folder_options(cfg))
    index = None if train is not None else load_holdout(paths, len(full))
    data, note = without_holdout(cfg, full, index, own_test=index is None and cfg.holdout > 0)
    return as_tokens(data, run_tokenizer(paths.root)), note  # text: the run's own tokenizer, never refitted


def shared_parts(paths, given: bool) -> dict:
    """What the other processes need to rebuild rank 0's pretraining data, as plain values to broadcast: the
    holdout's indices (None when the caller gave the data) and the text of the run's tokenizer (None: none)."""
    index = json.loads(paths.holdout.read_text())["indices"] if paths.holdout.is_file() and not given else None
    tok = paths.root / TOKENIZER_FILE  # text: every process encodes with rank 0's tokenizer
    return dict(index=index, tokenizer=tok.read_text() if tok.is_file() else None)


def replica_data(cfg, index: list[int] | None, tokenizer: str | None) -> Dataset:
    """On a process other than rank 0: the samples rank 0 pretrains on, from `shared_parts` (its holdout
    removed, its tokenizer applied)."""
    full = load_data(cfg.data, "train", labels=cfg.labels, folder=folder_options(cfg))
    index = None if index is None else torch.tensor(index, dtype=torch.long)
    return as_tokens(without_holdout(cfg, full, index, own_test=False)[0], tokenizer_from_json(tokenizer))


def too_few_message(cfg, full: Dataset, data: Dataset) -> str:
    """Why fewer than 2 samples are left for pretraining: how many the source holds, what the holdout took, and
    (all labels distinct) a hint that a TSV's columns may be swapped."""
    unit = "document" if full.kind == "text" else "sample"
    msg = f"{cfg.data} holds {len(full)} {unit}(s)"
    if len(data) < len(full):
        msg += f", {len(data)} left for pretraining after the --holdout {cfg.holdout:g}"
    if full.kind == "text" and len(full) < 2:
        msg += " (documents are lines, or paragraphs between blank lines, or entries between lines of %)"
    if full.labels is not None and len(full) > 2 and len(full.labels.unique()) == len(full):
        msg += f"; each has its own label ({len(full)} classes: in a TSV, is each row label<TAB>text?)"
    return msg + "; pretraining needs at least 2"


# ------------------------------------------------------------------------------------------- eval and embed
def same_source(a: str, b: str | list[str]) -> bool:
    """Whether source `a` is `b`, or one of the sources `b` lists (a run pretrained on several)."""
    if not isinstance(b, str):
        return any(same_source(a, one) for one in b)
    return a == b or (os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b))


def run_folder_options(run, own: bool, progress: bool | None = None, **given) -> FolderOptions:
    """How eval/embed decode an image folder: as the run did for its own data; for other data, at the size the
    encoder was trained on (square runs; else the images' own size), keeping unreadable files an error.
    `given`: image_size, skip_bad, cache passed by the caller, which win."""
    opts = folder_options(run.config, progress)
    if not own:
        h, w = run.spec.shape[1:] if run.spec.kind == "image" else (0, 1)
        opts = dataclasses.replace(opts, image_size=h if h == w else None, skip_bad=False)
    return dataclasses.replace(opts, **{k: v for k, v in given.items() if v is not None})


def load_eval_splits(src: str, labels: str | None = None, seed: int = 0, run=None,
                     folder: FolderOptions | None = None) -> tuple[Dataset, Dataset, str]:
    """Labelled (train, test) splits of a source, and a note on where the test split came from.

    With `run` (the source is the one the run pretrained on): the source's own test split, else exactly the
    holdout set aside before pretraining; never images the encoder was pretrained on. Otherwise: the source's
    own test split, else a seeded stratified 80/20 holdout.
    """
    train = load_data(src, "train", labels=labels, folder=folder)
    if train.labels is None:
        raise SelfSupError(f"{src} has no labels; evaluation needs labelled data (class subfolders, "
                           "an npz 'labels' array, or --labels FILE)")
    test = load_data(src, "test", labels=labels)
    if run is None or (test is not None and test.labels is not None):
        return eval_splits(train, test, seed)
    index = load_holdout(run, len(train), src, same_source)  # a union's part: that source's own holdout
    if index is None:
        raise SelfSupError(f"{run.root} was pretrained on every sample of {src} (no holdout), so none of them can "
                           "test it: evaluate on other labelled data (--data), or pretrain with --holdout 0.2")
    note = f"the run's holdout: {len(index)} samples set aside before pretraining"
    return train.subset(complement(len(train), index)), train.subset(index), note


def check_compatible(data: Dataset, spec: DataSpec, what: str) -> None:
    """The run's encoder takes data of its own kind and (for images) shape."""
    if data.kind != spec.kind or (spec.kind == "image" and tuple(data.x.shape[1:]) != spec.shape):
        shape = "x".join(map(str, data.x.shape[1:]))
        raise SelfSupError(f"{what} holds {data.kind} {shape}; the run was trained on {spec.describe()}")


def eval_data(run, paths, data: str | None, labels: str | None, seed: int, progress: bool | None = None,
              **given) -> tuple[str, Dataset, Dataset, str]:
    """`selfsup eval`'s data: (source, train, test, note on the test split) of `data` (default: the run's own,
    tested on its holdout), decoded as `run_folder_options` says and tokenized with the run's tokenizer.
    `given`: the folder options passed by the caller (image_size, skip_bad, cache; None: the run's)."""
    src = data or sources_of(run.config.data)[0]  # several sources: the first, unless --data names another
    own = same_source(src, run.config.data)
    folder = run_folder_options(run, own, progress, **given)
    train, test, note = load_eval_splits(src, labels or (run.config.labels if own else None), seed,
                                         paths if own else None, folder)
    tokenizer = run_tokenizer(paths.root)  # text: the run's tokenizer, fitted to its pretraining split
    train, test = as_tokens(train, tokenizer), as_tokens(test, tokenizer)
    check_compatible(train, run.spec, src)
    return src, train, test, note


def embed_data(run, run_dir, data: str, split: str, labels: str | None, **given) -> Dataset:
    """`selfsup embed`'s samples: `split` of `data`, decoded as `run_folder_options` says, tokenized with the
    tokenizer saved in `run_dir` (a run or an export), checked against the encoder's input."""
    folder = run_folder_options(run, same_source(data, run.config.data), **given)
    samples = as_tokens(load_data(data, split, labels=labels, folder=folder), run_tokenizer(run_dir))
    if samples is None:
        raise SelfSupError(f"{data} has no {split!r} split")
    check_compatible(samples, run.spec, data)
    return samples
