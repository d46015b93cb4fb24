"""How the fine-tuning defaults were chosen, without the test split. Prints one JSON object.

A validation split (seeded, stratified 20%) is carved from the training split of a run's own data. For the
run's encoder and the random-init baseline, fine-tuning starts either from a linear probe (LP-FT) or from a
fresh head, at each learning rate, on 10% and 100% of the remaining labels, with the default CPU budget (3
epochs, at least 150 steps), and is scored on the validation split only.

    python benchmarks/finetune_lr.py RUN_DIR --lrs 0.03,0.05     # about 9 minutes on 2 CPU cores
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from selfsup.api import augment_for
from selfsup.data import load_data
from selfsup.evaluate import extract_features, finetune
from selfsup.evaluate.linear import fit_linear
from selfsup.data.splits import class_balanced_subset, stratified_holdout
from selfsup.evaluate.tuning import DEFAULT_L2
from selfsup.rundir import load_run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", help="a pretrained run (its own data's training split is used)")
    ap.add_argument("--lrs", default="0.03,0.05", help="learning rates to compare")
    ap.add_argument("--fractions", default="0.1,1.0", help="label fractions of the remaining training labels")
    a = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    run = load_run(a.run_dir)
    train = load_data(run.config.data, "train")
    fit_idx, val_idx = stratified_holdout(train.labels, 0.2, seed=123)
    feats = extract_features(run.encoder.to(device), train.x, device)
    out = {"run_dir": a.run_dir, "validation": len(val_idx), "results": []}
    for frac in map(float, a.fractions.split(",")):
        sub = fit_idx[class_balanced_subset(train.labels[fit_idx], frac, 0)]
        probe = fit_linear(feats[sub], train.labels[sub], train.num_classes, DEFAULT_L2)
        row = {"fraction": frac, "labels": len(sub), "linear_val": probe.accuracy(feats[val_idx], train.labels[val_idx])}
        for name, encoder in (("ours", run.encoder), ("random", run.random_encoder(1))):
            for start, l2 in (("lpft", DEFAULT_L2), ("fresh", None)):
                for lr in map(float, a.lrs.split(",")):
                    key = f"{name}_{start}_lr{lr:g}_val"
                    row[key] = finetune(encoder, train.x[sub], train.labels[sub], train.x[val_idx],
                                        train.labels[val_idx], train.num_classes, device,
                                        augment=augment_for(run.spec), epochs=3, min_steps=150, probe_l2=l2, lr=lr)
                    print(frac, key, round(row[key], 4), file=sys.stderr, flush=True)
        out["results"].append(row)
    json.dump(out, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
