"""The Python API: everything the CLI does is one call here."""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .config import MAX_BATCH, MAX_IMAGE_SIZE, MAX_STEPS, Config
from .data import DataSpec
from .data.prepare import embed_data, eval_data
from .device import pick_device
from .embed_out import check_out_format, write_features
from .errors import SelfSupError
from .evaluate import evaluate_encoder, extract_features
from .evaluate.markdown import markdown_report
from .evaluate.report import PROTOCOLS, RANDOM_ROW, finetune_starts
from .evaluate.tuning import KNN_KS, L2_GRID
from .rundir import RunPaths, load_run
from .train.loop import pretrain
from .views.recipes import finetune_views

__all__ = ["Config", "pretrain", "evaluate", "embed", "eval_defaults"]


def eval_defaults(device: torch.device) -> dict:
    """Fine-tuning budgets fitted to the hardware, in epochs; small label subsets get a floor of steps."""
    if device.type == "cuda":
        return dict(finetune_epochs=30, finetune_min_steps=500)
    # CPU: 3 epochs (702 steps of 256 on all of Fashion-MNIST), at least 150 steps on small subsets.
    return dict(finetune_epochs=3, finetune_min_steps=150)


def _check_image_size(image_size: int | None) -> None:
    if image_size is not None and not 1 <= image_size <= MAX_IMAGE_SIZE:
        raise SelfSupError(f"--image-size must be an integer in [1, {MAX_IMAGE_SIZE}], got {image_size}")


def _check_eval_args(fractions, protocols, k: int, temperature: float, finetune_epochs, finetune_max_steps,
                     seed: int = 0, image_size: int | None = None) -> None:
    """A one-line error for the first evaluation setting out of range, before any data is read."""
    bad = [p for p in protocols if p not in PROTOCOLS]
    problems = [(not protocols, f"--protocols names no protocol; choose from {', '.join(PROTOCOLS)}"),
                (bad, f"unknown protocol(s) {', '.join(bad)}; choose from {', '.join(PROTOCOLS)}"),
                (not fractions or any(not 0 < f <= 1 for f in fractions), "--fractions must be in (0, 1]"),
                (not 1 <= k <= MAX_STEPS, f"--k must be an integer >= 1 and <= {MAX_STEPS:,}, got {k}"),
                (not 0 < temperature < math.inf, f"--temperature-knn must be > 0 and finite, got {temperature}"),
                (finetune_epochs is not None and not 1 <= finetune_epochs <= MAX_STEPS,
                 f"--finetune-epochs must be >= 1 and <= {MAX_STEPS:,}"),
                (finetune_max_steps is not None and not 1 <= finetune_max_steps <= MAX_STEPS,
                 f"--finetune-max-steps must be >= 1 and <= {MAX_STEPS:,}"),
                (not 0 <= seed < 2 ** 63, f"--eval-seed must be an integer in [0, 2**63), got {seed}")]
    for failed, message in problems:
        if failed:
            raise SelfSupError(message)
    _check_image_size(image_size)


def augment_for(spec: DataSpec):
    """Fine-tuning augmentation by data kind: light crops and flips for images, none for tokens."""
    return finetune_views(spec.shape[1:]) if spec.kind == "image" else None


def _at_layers(run, layer: str, by: str, seed: int) -> tuple:
    """(encoder, random-init factory, layer_by) for `layer`: a named layer for both; "best": the encoders as
    they are, with evaluate_encoder choosing each one's layer per label fraction by `by` on that fraction's
    own validation split (evaluate/layers.py), the random-init baseline its own, as carefully tuned."""
    if layer != "best":
        encoder = run.encoder.at_layer(layer)  # a one-line error for a layer the backbone lacks
        return encoder, lambda: run.random_encoder(seed + 1).at_layer(layer), None
    return run.encoder, lambda: run.random_encoder(seed + 1), by


def _layer_summary(result: dict, name: str, layer: str, layer_by: str | None) -> dict:
    """The run-level layer keys: with `layer_by`, the choice at the largest label fraction evaluated (what
    `embed --layer best` uses), each row holding its own; else the named layer for both encoders."""
    if layer_by is None:
        return dict(layer=layer)
    top = max(r["fraction"] for r in result["results"])
    pick = {r["features"]: dict(r["layer_choice"], fraction=top) for r in result["results"]
            if r["fraction"] == top and "layer_choice" in r}
    ours, rand = pick[name], pick.get(RANDOM_ROW, dict(layer="pooled"))
    return dict(layer=ours["layer"], layer_choice=ours, random_layer=rand["layer"], random_layer_choice=rand,
                layer_per_fraction=True)


def evaluate(run_dir: str | Path, data: str | None = None, *, labels: str | None = None,
             fractions=(0.01, 0.1, 1.0), protocols=PROTOCOLS, baselines: bool = True, k: int = 200,
             temperature: float = 0.1, finetune_epochs: int | None = None, finetune_max_steps: int | None = None,
             device: str = "auto", seed: int = 0, progress: bool | None = None, layer: str = "pooled",
             layer_by: str = "linear", finetune_fractions=None, image_size: int | None = None,
             skip_bad: bool | None = None, cache: bool | None = None, plots: bool = True) -> dict:
    """Evaluate a run's encoder next to the baselines; writes eval.json and eval.md (and with `plots` the
    pictures of evaluate/plots.py under plots/) into the run dir.

    kNN is reported at the fixed protocol (k=200 capped at the smallest class, T=0.1) and with k tuned; the
    linear probe's L2 penalty is tuned; both on a validation split carved from each labelled subset (the same
    rule for every row). Fine-tuning trains for `finetune_epochs` (hardware default), at least the hardware's
    floor of steps on small subsets, at most `finetune_max_steps` if given, at `finetune_fractions` (default:
    every fraction). `layer`: the backbone layer probed ("pooled", the default, is its output; "best": chosen
    for each label fraction and encoder by the `layer_by` probe on that fraction's own validation split, the
    one k and L2 are tuned on, so a 1% row's layer is chosen with 1% of the labels; each row records its
    layer, and the run-level "layer" / "layer_choice" are the largest fraction's). The linear probe's refit
    warm-starts from the validated solution and records whether it converged. The random-init encoder's
    BatchNorm statistics are re-estimated on training images before its frozen evaluation.
    """
    _check_eval_args(fractions, protocols, k, temperature, finetune_epochs, finetune_max_steps, seed, image_size)
    run = load_run(run_dir)
    if layer != "best":
        run.encoder.at_layer(layer)  # an unknown layer is refused before any data is read
    dev = pick_device(device)
    # the run's own data is tested on its holdout; text: the run's tokenizer, fitted to its pretraining split
    src, train, test, split_note = eval_data(run, RunPaths(Path(run_dir)), data, labels, seed, progress,
                                             image_size=image_size, skip_bad=skip_bad, cache=cache)
    budget = eval_defaults(dev)
    finetune_epochs = finetune_epochs or budget["finetune_epochs"]
    num_classes = int(max(train.labels.max(), test.labels.max())) + 1
    encoder, make_random, by = _at_layers(run, layer, layer_by, seed)
    name = f"{run.config.method} (ours)"
    result = evaluate_encoder(
        encoder, make_random, train.x, train.labels, test.x, test.labels, num_classes,
        dev, kind=run.spec.kind, name=name, fractions=fractions, protocols=protocols,
        baselines=baselines, k=k, temperature=temperature, finetune_epochs=finetune_epochs,
        finetune_max_steps=finetune_max_steps, finetune_min_steps=budget["finetune_min_steps"],
        augment=augment_for(run.spec), seed=seed, progress=progress is not False, raw=(train.raw, test.raw),
        finetune_fractions=finetune_fractions, layer_by=by)
    result.update(**_layer_summary(result, name, layer, by))
    result.update(run_dir=str(run_dir), method=run.config.method, backbone=run.config.backbone,
                  pretrain_epochs=run.epoch, data=src, test_split=split_note, device=str(dev),
                  finetune_epochs=finetune_epochs, finetune_min_steps=budget["finetune_min_steps"],
                  finetune_max_steps=finetune_max_steps, knn_ks=list(KNN_KS), l2_grid=list(L2_GRID),
                  validation="a seeded, class-balanced 20% of each labelled subset",
                  finetune_start=finetune_starts(run.encoder.backbone))
    if plots:  # the test embeddings' 2-D map and nearest-neighbour grid, at the layer reported
        from .evaluate.plots import write_plots
        result["plots"] = write_plots(run_dir, run.encoder.at_layer(result["layer"]), train, test, dev, name,
                                      result["layer"], seed)["files"]
    md = markdown_report(result)
    run_path = Path(run_dir)
    (run_path / "eval.json").write_text(json.dumps(result, indent=2))
    (run_path / "eval.md").write_text(md + "\n")
    result["markdown"] = md
    return result


def _check_out_file(out: Path) -> None:
    """embed's --out: a name the OS takes, in a folder that is one (or can be made), not itself a folder."""
    try:
        if out.is_dir():
            raise SelfSupError(f"--out {out} is a folder; give a file name ending in .npy, .npz or .parquet")
        parent = next((p for p in out.parents if p.exists()), None)
        if parent is not None and not parent.is_dir():
            raise SelfSupError(f"--out {out}: {parent} is a file, not a folder")
        if len(os.fsencode(out.name)) > 255:
            raise SelfSupError(f"--out {out}: the file name is over 255 bytes")
    except OSError as e:
        raise SelfSupError(f"--out {out}: {e.strerror}") from None


def _embed_layer(run_dir: Path, layer: str) -> str:
    """`layer`, or for "best" the layer `selfsup eval --layer best` chose for this run at the largest label
    fraction it evaluated (100% by default; read from eval.json)."""
    if layer != "best":
        return layer
    saved = run_dir / "eval.json"
    chosen = json.loads(saved.read_text()).get("layer_choice") if saved.is_file() else None
    if not chosen:
        raise SelfSupError(f"--layer best needs the layer chosen by 'selfsup eval {run_dir} --layer best' "
                           "(no such choice in its eval.json); run that first or name a layer")
    return chosen["layer"]


def embed(run_dir: str | Path, data: str, out: str | Path, *, split: str = "train", labels: str | None = None,
          device: str = "auto", batch_size: int = 1024, layer: str = "pooled", image_size: int | None = None,
          skip_bad: bool | None = None, cache: bool | None = None) -> Path:
    """Write the encoder's features of every sample of `data`, in input order, to .npy, .npz or .parquet
    (by the name of `out`; see embed_out.py).

    `layer`: the backbone layer ("pooled" by default; "best": the one `evaluate(..., layer="best")` chose)."""
    out = Path(out)
    if not 1 <= batch_size <= MAX_BATCH:
        raise SelfSupError(f"--batch-size must be an integer in [1, {MAX_BATCH:,}], got {batch_size}")
    check_out_format(out)
    _check_image_size(image_size)
    _check_out_file(out)
    from .export import is_export
    from .load import export_as_run

    run = export_as_run(run_dir) if is_export(Path(run_dir)) else load_run(run_dir)  # an export folder, or a run
    encoder = run.encoder.at_layer(_embed_layer(Path(run_dir), layer))
    dev = pick_device(device)
    samples = embed_data(run, run_dir, data, split, labels, image_size=image_size, skip_bad=skip_bad, cache=cache)
    t0 = time.perf_counter()
    feats = extract_features(encoder.to(dev), samples.x, dev, batch_size=batch_size)
    feats = feats.cpu().numpy().astype(np.float32)
    write_features(out, feats, None if samples.labels is None else samples.labels.numpy(), samples.paths)
    print(f"wrote {feats.shape[0]} x {feats.shape[1]} features to {out} in {time.perf_counter() - t0:.1f}s",
          file=sys.stderr)
    return out
