"""How the fine-tuning defaults were chosen, without the test split. Prints one JSON object.

A validation split (seeded, stratified 20%) is carved from the training split of a run's own data. For the
run's encoder and the random-init baseline, fine-tuning starts either from a linear probe (LP-FT) or from a
fresh head, at each learning rate, on 10% and 100% of the remaining labels, with the default CPU budget (3
epochs, at least 150 steps), and is scored on the validation split only.

    python benchmarks/finetune_lr.py RUN_DIR --lrs 0.03,0.05     # about 9 minutes on 2 CPU cores
    python benchmarks/finetune_lr.py TEXT_RUN --lrs 1e-4,3e-4,1e-3 --fractions 0.1   # a text run (AdamW)

The training split is the one the run pretrained on (its holdout, or the source's test split, is never used),
as the run's tokenizer encodes it for text; each encoder fine-tunes with the optimizer and weight decay of its
backbone's family (evaluate/report.py FINETUNE_STARTS: SGD for CNNs, AdamW for Transformers).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from selfsup.api import augment_for
from selfsup.data.prepare import load_eval_splits
from selfsup.data.tokenize import as_tokens, run_tokenizer
from selfsup.evaluate import extract_features, finetune
from selfsup.evaluate.linear import fit_linear
from selfsup.evaluate.report import finetune_starts
from selfsup.data.splits import class_balanced_subset, stratified_holdout
from selfsup.evaluate.tuning import DEFAULT_L2
from selfsup.rundir import RunPaths, load_run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", help="a pretrained run (its own data's training split is used)")
    ap.add_argument("--lrs", default="0.03,0.05", help="learning rates to compare")
    ap.add_argument("--fractions", default="0.1,1.0", help="label fractions of the remaining training labels")
    a = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    run = load_run(a.run_dir)
    train, _, _ = load_eval_splits(run.config.data, run.config.labels, 0, RunPaths(Path(a.run_dir)))
    train = as_tokens(train, run_tokenizer(a.run_dir))  # text: the run's tokenizer; images pass unchanged
    start = finetune_starts(run.encoder.backbone)["pretrained"]
    opt = dict(optimizer=start.get("optimizer", "sgd"), weight_decay=start.get("weight_decay", 5e-4))
    num_classes = int(train.labels.max()) + 1
    fit_idx, val_idx = stratified_holdout(train.labels, 0.2, seed=123)
    feats = extract_features(run.encoder.to(device), train.x, device)
    out = {"run_dir": a.run_dir, "validation": len(val_idx), "results": [], **opt}
    for frac in map(float, a.fractions.split(",")):
        sub = fit_idx[class_balanced_subset(train.labels[fit_idx], frac, 0)]
        probe = fit_linear(feats[sub], train.labels[sub], num_classes, DEFAULT_L2)
        row = {"fraction": frac, "labels": len(sub), "linear_val": probe.accuracy(feats[val_idx], train.labels[val_idx])}
        for name, encoder in (("ours", run.encoder), ("random", run.random_encoder(1))):
            for start, l2 in (("lpft", DEFAULT_L2), ("fresh", None)):
                for lr in map(float, a.lrs.split(",")):
                    key = f"{name}_{start}_lr{lr:g}_val"
                    row[key] = finetune(encoder, train.x[sub], train.labels[sub], train.x[val_idx],
                                        train.labels[val_idx], num_classes, device,
                                        augment=augment_for(run.spec), epochs=3, min_steps=150, probe_l2=l2, lr=lr,
                                        **opt)
                    print(frac, key, round(row[key], 4), file=sys.stderr, flush=True)
        out["results"].append(row)
    json.dump(out, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
