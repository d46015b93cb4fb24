"""What `selfsup eval`'s pictures cost: the 2-D projection (t-SNE, or UMAP when installed) of n random
feature vectors, and write_plots end to end on a run directory. Prints JSON.

    python benchmarks/eval_plots.py [--run RUN_DIR] [--n 540 2000] [--dim 256]
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--run", help="also time write_plots on this run's data (a built-in source with a test split)")
    p.add_argument("--n", type=int, nargs="+", default=[540, 2000])
    p.add_argument("--dim", type=int, default=256)
    a = p.parse_args()
    from selfsup.evaluate.plots import project_2d
    out = {"projection_s": {}}
    for n in a.n:
        x = np.random.default_rng(0).normal(size=(n, a.dim)).astype(np.float32)
        t = time.perf_counter()
        _, name = project_2d(x, 0)
        out["projection_s"][n] = round(time.perf_counter() - t, 2)
        out["projection"] = name
    if a.run:  # a run on a built-in source with a test split (digits, fashion-mnist)
        from selfsup.data import load_data
        from selfsup.evaluate.plots import write_plots
        from selfsup.rundir import load_run
        run = load_run(a.run)
        train, test = load_data(run.config.data, "train"), load_data(run.config.data, "test")
        t = time.perf_counter()
        write_plots(a.run, run.encoder, train, test, "cpu", f"{run.config.method} (ours)", "pooled")
        out["write_plots_s"] = round(time.perf_counter() - t, 2)
        out["train"], out["test"] = len(train), len(test)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
