"""Opening a run: the run directory and its lock, the resolved recipe, and its data from data/prepare.py (the
holdout, removed before pretraining, and the tokenizer are made and saved there).
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch

from ..config import WARMUP_MAX_EPOCHS, Config, resolve, validate, warmup_steps
from ..data import Dataset, spec_of
from ..data.corpus import sources_of
from ..data.prepare import pretraining_data, resumed_data
from ..distributed import world_size
from ..errors import SelfSupError
from ..methods import get_method, parse_hparams
from ..rundir import RunLock, RunPaths, build_method
from .checkpoint import load_run_checkpoint
from .init import adopt, check_no_leak


# Run directories this process opened, newest last: an interrupted command says whether one can be resumed.
OPENED: list[Path] = []


@dataclass
class OpenRun:
    """A run ready to train: resolved config, its files (locked), pretraining data, checkpoint when resuming."""

    cfg: Config
    paths: RunPaths
    lock: RunLock
    train: Dataset
    split_note: str
    ckpt: dict | None


def default_run_dir(cfg: Config) -> Path:
    """runs/<method>-<data>-<timestamp> (several sources: the first's name and +N)."""
    first, *more = sources_of(cfg.data)
    data = (Path(first).name or first) + (f"+{len(more)}" if more else "")
    return Path("runs") / f"{cfg.method}-{data}-{datetime.now():%Y%m%d-%H%M%S}"


def open_run(cfg: Config, resume: bool, device: torch.device, train: Dataset | None = None) -> OpenRun:
    """Check everything, then create (or reopen) and lock the run directory; write config.yaml (and holdout.json).

    A new run writes nothing until its settings, data and recipe have passed every check.
    """
    if resume:
        if cfg.out is None:
            raise SelfSupError("--resume needs the run directory (--out RUN_DIR)")
        paths = RunPaths(Path(cfg.out))
        saved = Config.load(paths.config)
        lock = RunLock(paths.root).acquire()
        OPENED.append(paths.root)
        try:
            ckpt = load_run_checkpoint(paths.last)
            check_resume_world(ckpt)
            check_resume_epochs(saved, cfg.epochs, paths.root)
            cfg = dataclasses.replace(saved, out=str(paths.root))
            data, note = resumed_data(cfg, paths, train)  # its saved holdout removed, its own tokenizer
            cfg = resolve(cfg, device.type, len(data))
            cfg.save(paths.config)
        except BaseException:
            lock.release()
            raise
        return OpenRun(cfg, paths, lock, data, note, ckpt)

    validate(cfg)
    if cfg.init:
        cfg = adopt(cfg)  # the init run's backbone (text: its tokenizer's sizes), or a one-line error
    resolve(cfg, device.type)  # settings, method and optimizer checked before the data is even read
    paths = RunPaths(Path(cfg.out) if cfg.out else default_run_dir(cfg))
    check_new_run_dir(paths)
    prepared = pretraining_data(cfg, train)  # the holdout set aside; text: a tokenizer fitted to the rest
    data = prepared.train
    method = get_method(cfg.method)  # e.g. colorization refuses grayscale images, before anything is written
    if data.kind != method.modality:
        raise SelfSupError(f"method {method.name} learns from {method.modality} data, but {cfg.data} holds "
                           f"{data.kind} data")
    method.check_data(data, parse_hparams(method.name, method.Hparams, cfg.method_args))
    if cfg.init:
        check_no_leak(cfg, prepared.record(cfg))  # its test samples never pretrained on by the init run
    cfg = dataclasses.replace(resolve(cfg, device.type, len(data)), out=str(paths.root))
    check_buildable(cfg, data)
    try:
        paths.root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SelfSupError(f"cannot create run directory {paths.root}: {e.strerror}") from None
    lock = RunLock(paths.root).acquire()
    OPENED.append(paths.root)
    prepared.save(paths, cfg)  # holdout.json, tokenizer.json, skipped.txt
    cfg.save(paths.config)
    return OpenRun(cfg, paths, lock, data, prepared.note, None)


def check_new_run_dir(paths: RunPaths) -> None:
    """A new run goes into a new or empty folder, or one holding a run with no checkpoint yet (one interrupted
    before its first epoch ended); never into a folder of other files, and its name must be one the OS takes."""
    try:
        if paths.last.exists():
            raise SelfSupError(f"{paths.root} already holds a run; pass --resume to continue it or choose another "
                               "--out")
        if paths.root.exists() and not paths.root.is_dir():
            raise SelfSupError(f"--out {paths.root} is a file, not a folder")
        if paths.root.is_dir() and any(paths.root.iterdir()) and not paths.config.is_file():
            raise SelfSupError(f"--out {paths.root} is a folder of other files, not a run directory; choose a new "
                               "or empty folder")
    except OSError as e:  # e.g. a name over 255 bytes
        raise SelfSupError(f"--out {paths.root}: {e.strerror}") from None


def check_buildable(cfg: Config, data: Dataset) -> None:
    """Build the method once, before anything is written: a backbone that cannot take this data, or settings
    too large to allocate, are a one-line error here rather than a traceback after the run directory exists."""
    try:
        build_method(cfg, spec_of(data))
    except (MemoryError, OverflowError, RuntimeError) as e:
        raise SelfSupError(f"cannot build {cfg.method} with backbone {cfg.backbone} and settings "
                           f"{cfg.method_args}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    except (ValueError, TypeError) as e:
        raise SelfSupError(f"backbone {cfg.backbone} cannot take {cfg.data} ({spec_of(data).describe()}): "
                           f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def check_resume_world(ckpt: dict) -> None:
    """A one-line error, before anything is written, when a run resumes on another number of processes."""
    was, now = int(ckpt.get("world_size", 1)), world_size()
    if was != now:
        how = "one process (no torchrun)" if was == 1 else f"torchrun with {was} processes in all"
        raise SelfSupError(f"this run was trained on {was} process(es), not {now}: its data shards and random streams "
                           f"depend on that number, so resume it with {how} (its checkpoint loads anywhere for eval "
                           f"and embed)")


def check_resume_epochs(saved: Config, epochs: int | None, root: Path) -> None:
    """A one-line error, before anything is written, when --resume is given another --epochs than the run's.

    The run's total steps define its learning-rate (and EMA momentum) schedules; rebuilding them over a new
    total would make the learning rate jump at the resumed step, so a run is only ever continued as configured.
    """
    if epochs is None or epochs == saved.epochs:
        return
    raise SelfSupError(f"--resume continues {root} on its own schedule ({saved.steps} steps = {saved.epochs} epochs, "
                       f"its learning rate decaying to the end of them); --epochs {epochs} would rebuild that "
                       f"schedule mid-run. Drop --epochs to finish the run, or train longer deliberately as a new "
                       f"run: --out NEW_DIR --epochs {epochs}")


def _budget(c: Config, per_epoch: int) -> str:
    """"1404 steps = 6 epochs x 234", or with a partial last epoch "1400 steps = 5 epochs x 234 + 230"."""
    whole, rest = divmod(c.steps, per_epoch) if per_epoch else (c.epochs, 0)
    return f"{c.steps} steps = {whole} epochs x {per_epoch}" + (f" + {rest}" if rest else "")


def _warmup(c: Config, per_epoch: int) -> str:
    """The warm-up in steps, and the rule that gave it."""
    n = warmup_steps(c, per_epoch)
    if c.warmup_epochs is not None:
        rule = f"{c.warmup_epochs:g} epochs"
    else:
        rule = f"{c.warmup:.0%} of the steps" + (f", capped at {WARMUP_MAX_EPOCHS} epochs"
                                                  if n < round(c.warmup * c.steps) else "")
    return f"warmup {n} step{'' if n == 1 else 's'} ({rule})"


def say_recipe(run: OpenRun, spec_text: str, steps_per_epoch: int, method_note: str, monitor_note: str,
               data_note: str = "") -> None:
    """Print the resolved recipe once, at the start, so what runs is never a guess."""
    c = run.cfg
    settings = ", ".join(f"{k}={v}" for k, v in c.method_args.items()) or "none"
    lines = [f"recipe: {c.method} on {c.data}: {len(run.train)} samples ({spec_text}); test data: {run.split_note}",
             f"  {c.backbone}, batch {c.batch_size}, {_budget(c, steps_per_epoch)}, "
             f"{c.optimizer} lr {c.lr:.4g} wd {c.weight_decay:g}, {_warmup(c, steps_per_epoch)}, seed {c.seed}",
             f"  {c.method} settings: {settings}{'; ' + method_note if method_note else ''}",
             f"  kNN monitor: {monitor_note}; run directory {run.paths.root}"] + [f"  data: {data_note}"][:bool(data_note)]
    print("\n".join(lines), file=sys.stderr, flush=True)


def interrupted_note() -> str:
    """For Ctrl-C: where the run this process opened can continue from, if it got as far as a checkpoint."""
    if not OPENED:
        return ""
    paths = RunPaths(OPENED[-1])
    if paths.last.is_file():
        return f"; the last finished epoch is in {paths.last} (continue with --resume --out {paths.root})"
    return f" before the first epoch ended: {paths.root} holds no checkpoint to resume (run the command again)"
