"""One call that evaluates an encoder under kNN / linear / fine-tune protocols next to honest baselines."""
from __future__ import annotations

import time
from typing import Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..data.splits import class_balanced_subset
from ..errors import SelfSupError
from .features import extract_features, reestimate_batchnorm
from .finetune import finetune
from .layers import choose_layer
from .tfidf import TFIDF_ROW, tfidf_features
from .tuning import DEFAULT_L2, L2_GRID, knn_both, linear_tuned

PROTOCOLS = ("knn", "linear", "finetune")
RANDOM_ROW = "random init"
PIXELS_ROW = "raw pixels"
# How each encoder's fine-tuning starts, each the choice that validated better for it on a split carved from
# Fashion-MNIST's training data (benchmarks/finetune_lr.py): a pretrained encoder from its linear probe (LP-FT)
# at lr 0.03; the random-init baseline, which is supervised training from scratch, from a fresh head at lr 0.05.
FINETUNE_START = {"pretrained": dict(probe=True, lr=0.03), "random init": dict(probe=False, lr=0.05)}
# Transformers (the text encoder and the ViT) fine-tune with AdamW, as BERT and MAE (He et al. 2021, appendix A.2)
# do: the pretrained encoder from its linear probe (LP-FT) at lr 3e-4, the random-init baseline (supervised
# training from scratch) from a fresh head at 1e-3, a rate a from-scratch Transformer of this size needs. Common
# settings for small Transformers, not validated here as the CNN rates were (SGD from a probe sent MAE's small
# ViT to 25% on 40 Fashion-MNIST labels where its probe reached 51%).
TRANSFORMER_FINETUNE_START = {
    "pretrained": dict(probe=True, lr=3e-4, optimizer="adamw", weight_decay=0.01, validated=False),
    "random init": dict(probe=False, lr=1e-3, optimizer="adamw", weight_decay=0.01, validated=False)}
# A backbone's `finetune_family` (default "cnn") -> its starts.
FINETUNE_STARTS = {"cnn": FINETUNE_START, "transformer": TRANSFORMER_FINETUNE_START}


def finetune_starts(backbone: nn.Module) -> dict:
    """How fine-tuning starts for an encoder with this backbone, by the family the backbone declares."""
    return FINETUNE_STARTS[getattr(backbone, "finetune_family", "cnn")]


def _pixels(train_x: torch.Tensor, test_x: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
    return tuple(x.to(device).reshape(x.shape[0], -1).float().div_(255.0) for x in (train_x, test_x))


# data kind -> (row name, (raw train, raw test, device) -> (train features, test features)): the no-learning
# baseline beside every number. Its inputs are Dataset.raw: the pixels of images, the documents of text
# (None for token data without them: no row then).
RAW_BASELINES = {"image": (PIXELS_ROW, _pixels), "tokens": (TFIDF_ROW, tfidf_features)}


class _RowFeatures:
    """Frozen features of one encoder row at the layers asked for, extracted when first needed.

    Test features once per layer; training features of the whole split once per layer when a fraction needs
    all of it, else only the fraction's subset (a 1% row whose layer no other fraction uses costs 1% of a pass).
    """

    def __init__(self, model: nn.Module, train_x: torch.Tensor, test_x: torch.Tensor, device):
        self.model, self.train_x, self.test_x, self.device = model, train_x, test_x, device
        self.test: dict = {}
        self.train: dict = {}  # layer -> the whole training split's features
        self.subset: dict = {}  # (layer, fraction) -> a subset's features, where the whole split was not needed

    def clear(self) -> None:
        self.test, self.train, self.subset = {}, {}, {}

    def at(self, layer: str | None) -> nn.Module:
        return self.model if layer is None else self.model.at_layer(layer)

    def get(self, layer: str | None, fraction: float, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(training features of the subset idx of `fraction`, test features) at `layer` (None: as given)."""
        model = self.at(layer)
        if layer not in self.test:
            self.test[layer] = extract_features(model, self.test_x, self.device)
        if layer not in self.train and idx.numel() == self.train_x.shape[0]:
            self.train[layer] = extract_features(model, self.train_x, self.device)
        if layer in self.train:
            return self.train[layer][idx], self.test[layer]
        if (layer, fraction) not in self.subset:
            self.subset[(layer, fraction)] = extract_features(model, self.train_x[idx.to(self.train_x.device)],
                                                              self.device)
        return self.subset[(layer, fraction)], self.test[layer]


def evaluate_encoder(encoder: nn.Module, make_random_encoder: Callable[[], nn.Module],
                     train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                     num_classes: int, device, *, kind: str = "image", name: str = "selfsup",
                     fractions: Sequence[float] = (0.01, 0.1, 1.0), protocols: Sequence[str] = PROTOCOLS,
                     baselines: bool = True, k: int = 200, temperature: float = 0.1, finetune_epochs: int = 10, finetune_max_steps: int | None = None, finetune_min_steps: int = 0,
                     augment=None, seed: int = 0, progress: bool = True, raw: tuple | None = None,
                     finetune_fractions: Sequence[float] | None = None, layer_by: str | None = None) -> dict:
    """Evaluate ``encoder`` (and, with ``baselines``, a random-init copy of its architecture and the raw input).

    The encoders take raw samples (``Encoder``). For every label fraction f the training subset is
    ``class_balanced_subset(train_y, f, seed)``; the test split is only ever used for the final accuracy.
    Frozen features are extracted (eval mode) once per encoder and layer, and indexed by each subset.
    The random-init encoder's BatchNorm statistics are first re-estimated on training images
    (:func:`reestimate_batchnorm`), so its frozen features are not those of identity normalisations.
    The encoder is moved to ``device``. ``raw`` = (train, test) inputs of the raw-input baseline: by default
    the images themselves; for text the documents (``Dataset.raw``), without which there is no such row.
    ``finetune_fractions`` (default: all) limits fine-tuning, the costly
    protocol, to those of the fractions. ``layer_by`` ("linear" or "knn"; default None: the encoders as
    given): each encoder row is probed, per fraction, at the layer that ``layer_by`` validates best on that
    fraction's own labelled subset (:func:`layers.choose_layer`: its seeded 20% validation split, the one
    k and L2 are tuned on), recorded in the row as ``layer`` and ``layer_choice``.
    """
    t0 = time.perf_counter()
    device = torch.device(device)
    bad = [p for p in protocols if p not in PROTOCOLS]
    if bad:
        raise SelfSupError(f"unknown protocol(s) {bad}; choose from {list(PROTOCOLS)}")
    protocols = tuple(p for p in PROTOCOLS if p in protocols)  # linear before fine-tune: LP-FT reuses its L2
    train_y = train_y.to(device).long()
    test_y = test_y.to(device).long()
    frozen = "knn" in protocols or "linear" in protocols

    # row name -> _RowFeatures of an encoder, or None with the raw input's (train, test) features
    starts = finetune_starts(getattr(encoder, "backbone", encoder))  # SGD for CNNs, AdamW for Transformers
    rows: dict[str, _RowFeatures | None] = {name: _RowFeatures(encoder.to(device), train_x, test_x, device)}
    raw_feats = {}
    bn_samples = None
    if baselines:
        rand = make_random_encoder().to(device)
        bn_samples = reestimate_batchnorm(rand, train_x, device, seed=seed)  # training images only
        rows[RANDOM_ROW] = _RowFeatures(rand, train_x, test_x, device)
        raw_train, raw_test = raw if raw is not None else (train_x, test_x) if kind == "image" else (None, None)
        if kind in RAW_BASELINES and raw_train is not None and raw_test is not None:
            raw_name, raw_features = RAW_BASELINES[kind]
            rows[raw_name] = None
            raw_feats[raw_name] = raw_features(raw_train, raw_test, device) if frozen else None

    subsets = {f: class_balanced_subset(train_y, f, seed) for f in fractions}
    jobs = [(row, f, p) for row in rows for f in fractions for p in protocols
            if not (p == "finetune" and (rows[row] is None  # raw input: nothing to fine-tune
                                         or (finetune_fractions is not None and f not in finetune_fractions)))]
    results = {(row, f): {"features": row, "fraction": f, "labels": int(subsets[f].numel()), "knn": None,
                          "knn_tuned": None, "linear": None, "finetune": None}
               for f in fractions for row in rows}

    bar = tqdm(jobs, disable=not progress, desc="evaluate", leave=False)
    for i, (row, f, p) in enumerate(bar):
        bar.set_postfix_str(f"{row} | {f:g} | {p}")
        idx, r = subsets[f], results[(row, f)]
        enc = rows[row]
        if i > 0 and jobs[i - 1][0] != row and rows[jobs[i - 1][0]] is not None:
            rows[jobs[i - 1][0]].clear()  # jobs go row by row: the previous row's features are done with
        layer = None
        if enc is not None and layer_by is not None:
            if "layer" not in r:  # chosen on this fraction's labelled subset alone, before any probe runs
                idx_cpu = idx.to(train_x.device)
                r["layer_choice"] = choose_layer(enc.model, train_x[idx_cpu], train_y[idx], num_classes, device,
                                                 by=layer_by, seed=seed)
                r["layer"] = r["layer_choice"]["layer"]
            layer = r["layer"]
        if p in ("knn", "linear"):
            train_f, test_f = enc.get(layer, f, idx) if enc is not None else (raw_feats[row][0][idx], raw_feats[row][1])
            out = knn_both(train_f, train_y[idx], test_f, test_y, num_classes, k, temperature, seed) if p == "knn" \
                else linear_tuned(train_f, train_y[idx], test_f, test_y, num_classes, seed)
        else:
            idx_cpu = idx.to(train_x.device)
            start = starts[RANDOM_ROW if row == RANDOM_ROW else "pretrained"]
            # LP-FT's head starts as the row's tuned probe, its penalty kept within the base grid the LP-FT rates
            # were validated with (benchmarks/finetune_lr.py): the grid's extension serves the probe's own score,
            # and a probe of L2 1e-8 has weights large enough to derail the first SGD steps.
            l2 = min(max(r.get("linear_l2") or DEFAULT_L2, min(L2_GRID)), max(L2_GRID))
            out = dict(finetune=finetune(enc.at(layer), train_x[idx_cpu], train_y[idx], test_x, test_y, num_classes,
                                         device, augment=augment, epochs=finetune_epochs, max_steps=finetune_max_steps,
                                         min_steps=finetune_min_steps, seed=seed, lr=start["lr"],
                                         probe_l2=l2 if start["probe"] else None,
                                         optimizer=start.get("optimizer", "sgd"),
                                         weight_decay=start.get("weight_decay", 5e-4)))
        r.update(out)
    bar.close()

    return {"splits": {"train": int(train_x.shape[0]), "test": int(test_x.shape[0])},
            "num_classes": int(num_classes), "k": int(k), "temperature": float(temperature),
            "results": list(results.values()), "random_bn_samples": bn_samples,
            "seconds": time.perf_counter() - t0}


def _fraction_label(f: float, n: int) -> str:
    return f"{f * 100:g}% ({n})"


# column header -> (result key, the chosen hyperparameter's key and how to show it)
COLUMNS = {"kNN k=200": ("knn", "knn_k_fixed", "k={}"), "kNN tuned": ("knn_tuned", "knn_k", "k={}"),
           "linear": ("linear", "linear_l2", "L2 {:g}"), "fine-tune": ("finetune", None, None)}


def _cell(r: dict, key: str, hp_key: str | None, hp_fmt: str | None, best: float | None, show_hp: bool) -> str:
    if r.get(key) is None:
        return "—"
    v = round(100 * r[key], 1)
    text = f"**{v:.1f}**" if v == best else f"{v:.1f}"
    return f"{text} ({hp_fmt.format(r[hp_key])})" if show_hp and hp_key and r.get(hp_key) is not None else text


def format_markdown(result: dict) -> str:
    """Markdown table: kNN at the fixed protocol (k=200, capped at the smallest class, T=0.1, as in the
    literature), kNN with k tuned on validation, the tuned linear probe, fine-tuning; the chosen k and L2 beside
    each number, the layer chosen for the row (if any) beside its name, and the best value per fraction and
    column in bold."""
    rows = result["results"]
    lines = ["| features | labels | " + " | ".join(COLUMNS) + " |", "|---|---|" + "---:|" * len(COLUMNS)]
    for f in sorted({r["fraction"] for r in rows}):
        group = [r for r in rows if r["fraction"] == f]
        cells = {}
        for name, (key, hp_key, fmt) in COLUMNS.items():
            vals = [round(100 * r[key], 1) for r in group if r.get(key) is not None]
            best = max(vals) if vals else None
            show_hp = name != "kNN k=200" or any(r.get(hp_key) not in (None, 200) for r in group)
            cells[name] = [_cell(r, key, hp_key, fmt, best, show_hp) for r in group]
        for i, r in enumerate(group):
            row_cells = " | ".join(cells[name][i] for name in COLUMNS)
            at = f" @ {r['layer']}" if r.get("layer") else ""  # the layer chosen for this row (--layer best)
            lines.append(f"| {r['features']}{at} | {_fraction_label(f, r['labels'])} | {row_cells} |")
    return "\n".join(lines) + "\n"
