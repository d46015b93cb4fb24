"""Benchmark: the default recipe on small real data sets, against tuned raw-pixel baselines. Prints one JSON object.

Each data set goes through exactly what a user would run, `selfsup pretrain --data SRC` then `selfsup eval RUN`,
with every default: the recipe fitted to the hardware and the data size, the holdout set aside before
pretraining where the source has no test split, kNN k and logistic-regression L2 tuned on validation for
every row. Data sets (all offline): class-balanced subsets of the Fashion-MNIST training split written as
MNIST-format folders whose test split is Fashion-MNIST's own 10,000 test images (pretraining takes the whole
subset; a 20% holdout would test on 400 images, too few to tell 2 points apart), scikit-learn's digits (its
own split), and
with --clipart a real folder of colour PNGs: Debian's openclipart-png (`apt-get install openclipart-png`),
the categories (not special/unsorted) with at least --clipart-per-class images, that many drawn per category (seeded), linked into
OUT/clipart-data/CATEGORY/ and decoded by the folder source at 32 px on a white background.

    python benchmarks/small_data.py --out runs/small            # about 15 minutes on 2 CPU cores
    python benchmarks/small_data.py --sizes 2000 --out runs/s   # one subset only
    python benchmarks/small_data.py --methods simclr,vicreg,byol --clipart --out runs/small   # several methods
    python benchmarks/small_data.py --validation --sizes 2000 --no-digits --out runs/smallval  # choose a recipe

--validation draws the Fashion-MNIST subsets, and their 10,000 test images, from the training images that none of
the benchmark's own subsets (2,000 and 5,000, seed 0) holds, so a recipe chosen on them has seen neither a
benchmark image nor Fashion-MNIST's test split.

Running again with the same --out reuses finished runs and their evaluations.
"""
from __future__ import annotations

import argparse
import json
import struct
import sys
import time
from pathlib import Path

import numpy as np
import torch

from selfsup import Config, evaluate, pretrain
from selfsup.data import load_data
from selfsup.data.splits import class_balanced_subset
from selfsup.rundir import RunPaths
from selfsup.train.logging import read_jsonl


BENCH_SIZES = (2000, 5000)  # the subsets of the README's table, drawn with seed 0
VAL_TEST = 10000  # --validation: training images outside every subset that test the validation runs


def write_idx(path: Path, arr: np.ndarray) -> None:
    """A uint8 array as an IDX file (the MNIST format: zero, type 0x08, ndim, big-endian sizes, bytes)."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    path.write_bytes(struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes())


def fmnist_subset(n: int, out: Path, seed: int = 0, validation: bool = False) -> Path:
    """A folder of the four MNIST-format files: n class-balanced Fashion-MNIST training images as its training
    split, and a test split of 10,000 images that pretraining never sees.

    Benchmark (validation False): the subset is drawn with `seed`, the test split is Fashion-MNIST's own (a
    holdout of 20% of n would be 400 images, a standard error of 2 points). validation: the subset (seed 123)
    and its 10,000 test images both come from training images outside every benchmark subset, so a recipe
    chosen on them never saw a benchmark image, nor the test split."""
    folder = out / "data" / f"fashion-mnist-{'val-' if validation else ''}{n}"
    if (folder / "t10k-labels-idx1-ubyte").exists():
        return folder
    train = load_data("fashion-mnist", "train")
    classes = int(train.labels.max()) + 1
    if validation:
        used = np.concatenate([class_balanced_subset(train.labels, m / len(train), seed) for m in BENCH_SIZES])
        rest = np.setdiff1d(np.arange(len(train)), used)
        y = train.labels.numpy()[rest]
        rng = np.random.default_rng(123)
        draws = [rng.permutation(rest[y == c]) for c in range(classes)]
        idx = np.sort(np.concatenate([d[:n // classes] for d in draws]))
        test_idx = np.sort(np.concatenate([d[n // classes:n // classes + VAL_TEST // classes] for d in draws]))
        test_x, test_y = train.x[test_idx, 0].numpy(), train.labels[test_idx].numpy()
    else:
        idx = class_balanced_subset(train.labels, n / len(train), seed)
        test = load_data("fashion-mnist", "test")
        test_x, test_y = test.x[:, 0].numpy(), test.labels.numpy()
    folder.mkdir(parents=True, exist_ok=True)
    write_idx(folder / "train-images-idx3-ubyte", train.x[idx, 0].numpy())
    write_idx(folder / "train-labels-idx1-ubyte", train.labels[idx].numpy())
    write_idx(folder / "t10k-images-idx3-ubyte", test_x)
    write_idx(folder / "t10k-labels-idx1-ubyte", test_y)  # written last: its presence means the folder is whole
    return folder


CLIPART = "/usr/share/openclipart/png"
NOT_CLASSES = ("special", "unsorted")  # catch-all folders, not categories a label could name


def clipart_folder(out: Path, per_class: int, seed: int = 0) -> Path:
    """OUT/clipart-data/CATEGORY/*.png: `per_class` seeded draws from each openclipart-png category that has that many."""
    root = out / "clipart-data"
    if root.is_dir():
        return root
    if not Path(CLIPART).is_dir():
        raise SystemExit(f"{CLIPART} not found: apt-get install openclipart-png")
    rng = np.random.default_rng(seed)
    for cat in sorted(p for p in Path(CLIPART).iterdir() if p.is_dir()):
        files = sorted(cat.rglob("*.png"))
        if len(files) < per_class or cat.name in NOT_CLASSES:
            continue
        (root / cat.name).mkdir(parents=True)
        for i in rng.choice(len(files), per_class, replace=False):
            (root / cat.name / f"{int(i):05d}-{files[i].name}").symlink_to(files[i])
    return root


def run_one(name: str, src: str, out: Path, progress: bool, method: str = "simclr",
            image_size: int | None = None) -> dict:
    run = out / (name if method == "simclr" else f"{name}-{method}")
    t0 = time.perf_counter()
    if not RunPaths(run).last.exists():
        pretrain(Config(data=src, out=str(run), method=method, image_size=image_size, skip_bad=True),
                 progress=progress)
    pretrain_s = time.perf_counter() - t0
    eval_file = run / "eval.json"
    t0 = time.perf_counter()
    result = (json.loads(eval_file.read_text()) if eval_file.exists()
              else evaluate(run, progress=progress, protocols=("knn", "linear")))
    eval_s = time.perf_counter() - t0
    cfg = Config.load(RunPaths(run).config)
    rows = {(r["features"], r["fraction"]): r for r in result["results"]}
    full = {name.split(" ")[0]: rows[(name, 1.0)] for name in (f"{method} (ours)", "raw pixels", "random init")}
    full["ours"] = full.pop(method)
    keep = ("knn", "knn_tuned", "knn_k", "linear", "linear_l2", "finetune")
    return {
        "data": name, "method": method, "pretrain_samples": result["splits"]["train"],
        "test_samples": result["splits"]["test"],
        "test_split": result["test_split"], "batch_size": cfg.batch_size, "epochs": cfg.epochs, "steps": cfg.steps,
        "pretrain_s": round(pretrain_s, 1), "eval_s": round(eval_s, 1),
        "train_s": round(sum(r.get("seconds", 0) for r in read_jsonl(RunPaths(run).metrics)
                             if r.get("event") == "epoch"), 1),  # the epochs' own seconds, also for a reused run
        "at_100pct": {row: {k: r.get(k) for k in keep} for row, r in full.items()},
        "knn_margin": round(100 * (full["ours"]["knn_tuned"] - full["raw"]["knn_tuned"]), 1),
        "linear_margin": round(100 * (full["ours"]["linear"] - full["raw"]["linear"]), 1),
    }


def markdown(report: dict) -> str:
    """One table: per data set a row per method, then raw pixels and the random-init encoder (at 100% labels)."""
    pct = lambda v: "—" if v is None else f"{100 * v:.1f}"  # noqa: E731
    lines = ["| data (pretrain / test) | features | kNN k=200 | kNN tuned (k) | linear | kNN tuned − raw | "
             "train s |", "|---|---|---:|---:|---:|---:|---:|"]
    by_data: dict[str, list[dict]] = {}
    for r in report["runs"]:
        by_data.setdefault(r["data"], []).append(r)
    for name, runs in by_data.items():
        head = f"{name} ({runs[0]['pretrain_samples']:,} / {runs[0]['test_samples']:,})"
        for i, r in enumerate(runs):
            o = r["at_100pct"]["ours"]
            lines.append(f"| {head if i == 0 else ''} | {r['method']} | {pct(o['knn'])} | {pct(o['knn_tuned'])} "
                         f"({o['knn_k']}) | {pct(o['linear'])} | {r['knn_margin']:+.1f} | {r['train_s']:.0f} |")
        for row, label in (("raw", "raw pixels"), ("random", "random init")):
            b = runs[0]["at_100pct"][row]
            lines.append(f"| | {label} | {pct(b['knn'])} | {pct(b['knn_tuned'])} ({b['knn_k']}) | {pct(b['linear'])} "
                         "| | |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="2000,5000", help="Fashion-MNIST subset sizes, comma-separated")
    ap.add_argument("--validation", action="store_true",
                    help="Fashion-MNIST subsets disjoint from the benchmark's, for choosing a recipe")
    ap.add_argument("--no-digits", action="store_true", help="skip scikit-learn's digits")
    ap.add_argument("--methods", default="simclr", help="methods to pretrain on each set, comma-separated")
    ap.add_argument("--clipart", action="store_true", help="add the openclipart-png folder (colour, 32 px)")
    ap.add_argument("--clipart-per-class", type=int, default=140, help="images drawn per clip-art category")
    ap.add_argument("--out", default="runs/small", help="folder for the data files, runs, small_data.json and "
                    "small_data.md (the table)")
    ap.add_argument("--progress", action="store_true", help="show progress bars")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "fashion-mnist-val" if a.validation else "fashion-mnist"
    plan = [(f"{tag}-{n}", str(fmnist_subset(int(n), out, validation=a.validation)), None)
            for n in a.sizes.split(",") if n]
    if not a.no_digits:
        plan.append(("digits", "digits", None))
    if a.clipart:
        plan.append(("clipart", str(clipart_folder(out, a.clipart_per_class)), 32))
    report = {"device": "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)",
              "torch": torch.__version__, "runs": []}
    for name, src, size in plan:
        for method in a.methods.split(","):
            report["runs"].append(run_one(name, src, out, a.progress, method.strip(), size))
            (out / "small_data.json").write_text(json.dumps(report, indent=2) + "\n")
            (out / "small_data.md").write_text(markdown(report))
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
