"""`--init RUN_DIR`: a new run whose encoder starts from another run's, not from random weights.

Continued pretraining: SimCSE on top of an MLM run, as the SimCSE paper starts from a pretrained BERT (Gao et
al. 2021, sec. 3), or a second method after a first on the same images. Only the backbone is taken; the new
method's heads start fresh, and its optimizer and schedule start from zero.

What has to hold for the result to mean anything, checked before anything is written:
- the same architecture: the backbone (taken from the init run when --backbone is not given) and, for text,
  the init run's tokenizer, vocabulary and sequence length (the ids must mean the same tokens);
- no test document leaks in through the init run: every source this run holds out for testing, the init run
  must have held out identically (same documents), or not read at all. A source the init run pretrained on
  whole, or held out differently (another --seed or --holdout), is refused.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from ..config import Config
from ..data.corpus import sources_of
from ..data.prepare import same_source
from ..errors import SelfSupError
from ..rundir import RunPaths, load_run

TEXT_SIZES = ("vocab_size", "seq_len")


def adopt(cfg: Config) -> Config:
    """cfg with the init run's backbone (and, for text, its vocabulary and sequence length) where cfg leaves them
    at their defaults; a one-line error where cfg sets another value."""
    init = _saved_config(cfg.init)
    changes = {}
    if cfg.backbone is None:
        changes["backbone"] = init.backbone
    elif cfg.backbone != init.backbone:
        raise SelfSupError(f"--init {cfg.init}: its encoder is a {init.backbone}, not the --backbone {cfg.backbone} "
                           "given; leave --backbone out to take the init run's")
    defaults = Config()
    for key in TEXT_SIZES:
        mine, theirs = getattr(cfg, key), getattr(init, key)
        if mine == getattr(defaults, key):
            changes[key] = theirs
        elif mine != theirs:
            raise SelfSupError(f"--init {cfg.init}: its tokenizer has --{key.replace('_', '-')} {theirs}, not {mine}")
    return dataclasses.replace(cfg, **changes)


def _saved_config(run_dir: str) -> Config:
    paths = RunPaths(Path(run_dir))
    if not paths.last.is_file():
        raise SelfSupError(f"--init {run_dir}: no finished epoch there (no checkpoints/last.pt); give a run "
                           "directory made by 'selfsup pretrain'")
    return Config.load(paths.config)


def _held_out(saved: dict | None, src: str) -> tuple[int, list[int]] | None:
    """(source size, held-out indices) a run's holdout record (holdout.json) sets aside of source `src`: (n, [])
    when the run read `src` whole, None when the record does not name `src` (or there is none)."""
    if saved is None:
        return None
    for part in saved.get("parts", []):  # several sources: indices into the union, each part at its offset
        if same_source(src, part["data"]):
            lo, hi = part["start"], part["start"] + part["n"]
            return part["n"], [i - lo for i in saved["indices"] if lo <= i < hi]
    if "parts" not in saved and same_source(src, saved["data"]):
        return saved["n"], list(saved["indices"])
    return None


def check_no_leak(cfg: Config, record: dict | None) -> None:
    """Refuse a new run whose holdout (`record`, what its holdout.json will hold; None: no holdout) the init run
    may have pretrained on."""
    init_paths = RunPaths(Path(cfg.init))
    init_sources = sources_of(_saved_config(cfg.init).data)
    theirs_saved = json.loads(init_paths.holdout.read_text()) if init_paths.holdout.is_file() else None
    for src in sources_of(cfg.data):
        mine = _held_out(record, src)
        if mine is None or not mine[1] or not any(same_source(src, s) for s in init_sources):
            continue  # nothing of src held out here (its own test split, or read whole), or the init never read it
        theirs = _held_out(theirs_saved, src)
        if theirs != mine:
            why = ("pretrained on all of it" if theirs is None or not theirs[1]
                   else "held out other documents of it (another --seed or --holdout)")
            raise SelfSupError(f"--init {cfg.init}: that run {why}, so it has seen samples of {src} this run "
                               "tests on; use an init run with the same --seed and --holdout, or evaluate on "
                               "other data")


def init_weights(cfg: Config, spec) -> tuple:
    """(spec, backbone state dict) of the init run's encoder for a run on data of `spec`: the same kind and shape
    (text: the same vocabulary) or a one-line error. Images keep the init run's normalisation (mean, std), the
    one its weights were trained with."""
    init = load_run(cfg.init)
    if init.spec.kind != spec.kind or tuple(init.spec.shape) != tuple(spec.shape) or \
            init.spec.vocab_size != spec.vocab_size:
        raise SelfSupError(f"--init {cfg.init}: its encoder takes {init.spec.describe()}; this run's data is "
                           f"{spec.describe()}")
    if spec.kind == "image":
        spec = dataclasses.replace(spec, mean=init.spec.mean, std=init.spec.std)
    return spec, init.encoder.backbone.state_dict()


def load_backbone(method, cfg: Config, state: dict) -> None:
    """Copy the init run's encoder weights into `method.backbone`."""
    try:
        method.backbone.load_state_dict(state)
    except RuntimeError as e:
        raise SelfSupError(f"--init {cfg.init}: its weights do not fit this run's {cfg.backbone} "
                           f"({str(e).splitlines()[0]})") from None
