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
from pathlib import Path

import torch

from ..config import Config
from ..data.corpus import part_holdout, sources_of
from ..data.holdout import load_holdout
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


def check_no_leak(cfg: Config, record: dict | None) -> None:
    """Refuse a new run whose holdout (`record`, what its holdout.json will hold; None: no holdout) the init run
    may have pretrained on. Each source's held-out indices are read as eval reads them (`part_holdout`,
    `load_holdout`); a source whose size changed since the init run is refused by `load_holdout` itself."""
    if record is None:
        return
    init_paths = RunPaths(Path(cfg.init))
    init_sources = sources_of(_saved_config(cfg.init).data)
    for part in record.get("parts") or [dict(data=sources_of(record["data"])[0], n=record["n"])]:
        src, n = part["data"], part["n"]
        mine = (part_holdout(record, src, n, same_source) if "parts" in record
                else torch.tensor(record["indices"], dtype=torch.long))
        if not len(mine) or not any(same_source(src, s) for s in init_sources):
            continue  # nothing of src held out here (read whole), or the init run never read it
        theirs = load_holdout(init_paths, n, src, same_source)  # None: it kept no holdout, so it read src whole
        if theirs is None or not torch.equal(theirs.sort().values, mine.sort().values):
            why = ("pretrained on all of it" if theirs is None or not len(theirs)
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
