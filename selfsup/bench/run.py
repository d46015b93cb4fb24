"""`selfsup bench`: pretrain and evaluate every method under one protocol and one budget, in one table.

Each method gets the same budget (optimizer steps, epochs, or minutes of training), the same data, seed and
evaluation: kNN and the linear probe with all labels, the linear probe with 1% of them, fine-tuning at one
label fraction, each at the layer chosen on a validation split of the training labels (never the test split),
beside the raw-pixel and random-init rows. Methods come from the registry, so a new one needs no edit here.

Resumable: OUT/bench.json records the protocol and, per method, what is done. A rerun with the same OUT reuses
finished pretraining and evaluations, resumes an unfinished run from its last checkpoint, and refuses a
different protocol (one table, one protocol).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

from .. import api
from ..config import Config, resolve
from ..data import load_data, spec_of
from ..device import pick_device
from ..errors import SelfSupError
from ..methods import canonical_name, get_method
from ..methods import methods as registered_methods
from ..models.backbones import build_backbone, check_backbone
from ..models.layers import POOLED, check_layer
from ..rundir import RunPaths
from ..train.checkpoint import load_checkpoint
from ..train.logging import read_jsonl
from .report import write_report

FRACTIONS = (0.01, 1.0)  # the table's 1%-label and all-label columns
TIMING_STEPS = 20  # a --minutes budget times this many steps of a scratch run, then trains the steps that fit


@dataclasses.dataclass(frozen=True)
class Budget:
    """One budget for every method: optimizer steps, epochs, or minutes of training (None: the recipe's steps)."""

    steps: int | None = None
    epochs: int | None = None
    minutes: float | None = None

    def check(self) -> "Budget":
        given = [k for k, v in dataclasses.asdict(self).items() if v is not None]
        if len(given) > 1:
            raise SelfSupError(f"give one budget, not {' and '.join('--' + k for k in given)}")
        for key, v in dataclasses.asdict(self).items():
            if v is not None and not (v > 0 and math.isfinite(v)):
                raise SelfSupError(f"--{key} must be > 0, got {v}")
        return self

    def describe(self) -> str:
        if self.minutes is not None:
            return (f"{self.minutes:g} minutes of training per method: {TIMING_STEPS} steps of a scratch run are "
                    f"timed, then a method trains floor({self.minutes * 60:g} s / seconds per step) steps (at "
                    "least 1), its learning-rate schedule spanning exactly those steps")
        if self.epochs is not None:
            return f"{self.epochs} epochs per method"
        steps = f"{self.steps}" if self.steps is not None else "the hardware recipe's"
        return f"{steps} optimizer steps per method (exactly: the last epoch may be partial)"


class PeakMemory:
    """Peak memory of what runs inside the block, in MiB: on CUDA the allocator's peak; on a CPU the process's
    peak resident set (Linux VmHWM, reset at entry through /proc/self/clear_refs; it includes the decoded data
    set and the Python process itself)."""

    def __init__(self, device: torch.device):
        self.device, self.mib, self.what = device, None, ""

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                pass
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.mib, self.what = torch.cuda.max_memory_allocated(self.device) / 2**20, "CUDA allocator peak"
            return
        try:
            status = Path("/proc/self/status").read_text()
            kb = int(next(ln for ln in status.splitlines() if ln.startswith("VmHWM")).split()[1])
            self.mib, self.what = kb / 1024, "peak resident memory of the process"
        except (OSError, StopIteration, ValueError):
            self.mib = None


def _choose_methods(names, data: str) -> list[str]:
    """The methods asked for (canonical names), or every registered method that learns from the data's kind."""
    if names is not None:
        names = [names] if isinstance(names, str) else list(names)
        chosen = [canonical_name(n.strip()) for part in names for n in part.split(",") if n.strip()]
        if not chosen:
            raise SelfSupError("--methods names no method")
        return list(dict.fromkeys(chosen))
    kind = load_data(data, "train").kind
    return [name for name, cls in registered_methods().items() if cls.modality == kind]


def _check_inputs(names: list[str], data: str, backbone: str | None, threads: int | None, seed: int,
                  device: torch.device) -> None:
    """Every input error is a one-line error here, before anything runs or is written (a method that fails
    during its run for a reason of its own is still reported as skipped): the data exists and has labels, each
    method learns from its kind, and each method's recipe resolves (backbone, threads, seed in range)."""
    if backbone is not None:
        check_backbone(backbone)
    full = load_data(data, "train")
    if full.labels is None:
        raise SelfSupError(f"{data} has no labels; the bench evaluates every method with labels (class "
                           "subfolders, an npz 'labels' array, or label<TAB>text rows)")
    kind = "tokens" if full.kind == "text" else full.kind  # text reaches a method as token ids
    for name in names:
        cls = get_method(name)
        if cls.modality != kind:
            raise SelfSupError(f"method {cls.name} learns from {cls.modality} data, but {data} holds {full.kind} "
                               "data")
        resolve(Config(method=name, data=data, backbone=backbone, threads=threads, seed=seed), device.type)


def _check_layer(names: list[str], data: str, backbone: str | None, layer: str, device: torch.device) -> None:
    """A named layer must exist in every method's backbone: refused before any training, not after."""
    if layer in ("best", POOLED):
        return
    spec = spec_of(load_data(data, "train"))
    for name in names:
        cfg = resolve(Config(method=name, data=data, backbone=backbone), device.type)
        check_layer(build_backbone(cfg.backbone, get_method(name).encoder_spec(spec)), layer)


def _save(path: Path, state: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, path)


def _open_state(out: Path, protocol: dict) -> dict:
    path = out / "bench.json"
    if not path.is_file():
        return dict(protocol=protocol, methods={}, wall_s=0.0)
    state = json.loads(path.read_text())
    diff = sorted(k for k in set(protocol) | set(state["protocol"]) if protocol.get(k) != state["protocol"].get(k))
    if diff:
        raise SelfSupError(f"{out} holds a bench run under another protocol (it differs in {', '.join(diff)}); "
                           "rerun with the same settings to resume it, or choose another --out")
    return state


def _time_steps(base: Config, scratch: Path, progress) -> dict:
    """Seconds per training step of `base`, from TIMING_STEPS steps of a scratch run (removed afterwards): the
    real run is then opened with the steps that fit, so its schedule spans its whole budget from the start."""
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        api.pretrain(dataclasses.replace(base, out=str(scratch), steps=TIMING_STEPS), progress=progress)
        records = [r for r in read_jsonl(RunPaths(scratch).metrics) if r.get("event") == "epoch"]
        return dict(timed_steps=records[-1]["step"], step_s=sum(r["seconds"] for r in records) / records[-1]["step"])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _pretrain(name: str, run_dir: Path, protocol: dict, budget: Budget, entry: dict, progress) -> None:
    """Pretrain (or resume, or reuse) one method's run to the budget; record timing and memory in `entry`."""
    paths = RunPaths(run_dir)
    if entry.get("pretrained") and paths.last.is_file():
        return
    base = Config(method=name, data=protocol["data"], out=str(run_dir), backbone=protocol["backbone"],
                  seed=protocol["seed"], device=protocol["device"], knn_every=0, threads=protocol["threads"])
    device = pick_device(protocol["device"])
    t0 = time.perf_counter()
    with PeakMemory(device) as mem:
        if not paths.last.is_file():
            steps = budget.steps
            if budget.minutes is not None:
                if "steps" not in entry:
                    timed = _time_steps(base, run_dir.with_name(f".{run_dir.name}-timing"), progress)
                    entry.update(timed, steps=max(1, math.floor(budget.minutes * 60 / timed["step_s"])))
                steps = entry["steps"]
            api.pretrain(dataclasses.replace(base, steps=steps, epochs=budget.epochs), progress=progress)
        elif load_checkpoint(paths.last)["step"] < Config.load(paths.config).steps:  # interrupted: finish it
            api.pretrain(Config(out=str(run_dir)), resume=True, progress=progress)
    records = [r for r in read_jsonl(paths.metrics) if r.get("event") == "epoch"]
    seconds = [r["seconds"] for r in records]
    whole = [r["seconds"] for r in records if "epoch_steps" not in r] or seconds  # a partial last epoch is shorter
    entry.update(pretrained=True, epochs_done=len(seconds), steps_done=records[-1]["step"] if records else 0,
                 epoch_s=statistics.median(whole) if whole else None,
                 train_s=sum(seconds), pretrain_wall_s=entry.get("pretrain_wall_s", 0.0) + time.perf_counter() - t0,
                 peak_mib=max(filter(None, (entry.get("peak_mib"), mem.mib)), default=None), peak_what=mem.what)


def _evaluate(run_dir: Path, protocol: dict, entry: dict, progress) -> None:
    """Evaluate one method's run under the bench protocol (reused when already done for these weights)."""
    key = dict(epoch=int(load_checkpoint(RunPaths(run_dir).last)["epoch"]), **protocol)
    if entry.get("eval_key") == key and "eval" in entry:
        return
    ff = protocol["finetune_fraction"]
    t0 = time.perf_counter()
    protocols = ("knn", "linear") + (() if protocol.get("no_finetune") else ("finetune",))
    result = api.evaluate(run_dir, fractions=tuple(sorted({*FRACTIONS, ff})), layer=protocol["layer"],
                          protocols=protocols, finetune_fractions=(ff,), finetune_epochs=protocol["finetune_epochs"],
                          finetune_max_steps=protocol["finetune_max_steps"], device=protocol["device"],
                          seed=protocol["seed"], progress=progress)
    keep = ("results", "layer", "layer_choice", "random_layer", "random_layer_choice", "backbone", "splits",
            "test_split", "device", "pretrain_epochs", "finetune_epochs", "finetune_min_steps")
    entry.update(eval={k: result[k] for k in keep if k in result}, eval_key=key, eval_s=time.perf_counter() - t0)


def bench(methods: str | list[str] | None = None, data: str = "fashion-mnist", out: str | Path = "runs/bench", *,
          steps: int | None = None, epochs: int | None = None, minutes: float | None = None,
          backbone: str | None = None, layer: str = "best", finetune_fraction: float = 0.01,
          finetune_epochs: int | None = None, finetune_max_steps: int | None = None, finetune: bool = True,
          device: str = "auto", seed: int = 0, threads: int | None = None, progress: bool | None = None) -> dict:
    """Pretrain and evaluate each method (comma-separated names, a list, or None: every method for the data's
    kind) under one budget; write OUT/bench.md (the table), OUT/bench.png (bars) and OUT/bench.json.

    Fine-tuning follows `selfsup eval`'s budget (the hardware's epochs, at least its floor of steps) unless
    `finetune_epochs` or `finetune_max_steps` change it, which the table's header and the chart then say;
    `finetune=False` leaves the fine-tune column out. Returns the state (protocol, per-method results) with
    "markdown" added. Runs live in OUT/<method>.
    """
    budget = Budget(steps, epochs, minutes).check()
    if not 0 < finetune_fraction <= 1:
        raise SelfSupError(f"--finetune-fraction must be in (0, 1], got {finetune_fraction}")
    dev = pick_device(device)
    names = _choose_methods(methods, data)
    _check_inputs(names, data, backbone, threads, seed, dev)
    if threads:  # for the evaluations too, also when every pretraining is reused
        torch.set_num_threads(threads)
    _check_layer(names, data, backbone, layer, dev)
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SelfSupError(f"cannot create bench directory {out}: {e.strerror}") from None
    protocol = dict(data=data, budget=budget.describe(), backbone=backbone, layer=layer, seed=seed,
                    finetune_fraction=finetune_fraction, finetune_epochs=finetune_epochs,
                    finetune_max_steps=finetune_max_steps, device=str(dev), threads=threads,
                    no_finetune=None if finetune else True)  # None: bench.json of earlier versions still matches
    state = _open_state(out, protocol)
    state["order"] = names
    t0 = time.perf_counter()
    for name in names:
        entry = state["methods"].setdefault(name, {})
        entry.pop("skipped", None)
        print(f"bench: {name} ({budget.describe()})", file=sys.stderr, flush=True)
        _save(out / "bench.json", state)
        try:
            _pretrain(name, out / name, protocol, budget, entry, progress)
            _save(out / "bench.json", state)
            _evaluate(out / name, protocol, entry, progress)
        except SelfSupError as e:  # e.g. colorization on grayscale data: the table says why it is missing
            entry["skipped"] = str(e)
            print(f"bench: {name} skipped: {e}", file=sys.stderr, flush=True)
        _save(out / "bench.json", state)
    state["wall_s"] = state.get("wall_s", 0.0) + time.perf_counter() - t0
    state["markdown"] = write_report(state, out)
    _save(out / "bench.json", {k: v for k, v in state.items() if k != "markdown"})
    return state
