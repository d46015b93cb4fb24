"""Benchmark: SimCLR (or --methods) + ResNet-18 on Fashion-MNIST at batch 512 (meant for a GPU). Prints one JSON
object.

Reports seconds per epoch of the real pipeline (uint8 data on the device, batched views, training step)
beside the compute-only time (the same model stepping on a random batch already on the device), and kNN /
linear accuracy on the Fashion-MNIST test split after a short and a longer run, plus a 1%-label linear probe.
With several methods, each gets the same runs and "table" is one markdown table of them all.

    python benchmarks/simclr_fmnist.py --short 30 --long 200 --compile --out runs/bench
    python benchmarks/simclr_fmnist.py --methods byol,mocov3 --short 0 --long 200 --compile --out runs/bench
    python benchmarks/simclr_fmnist.py --smoke --out runs/smoke   # a tiny CPU run that checks the script works

The same --out folder resumes: unfinished runs continue from their last checkpoint and finished runs are
reused, so the benchmark can be spread over several calls of a machine with a per-command time limit.
Results go to stdout and to OUT/benchmark.json (rewritten after every run). Runs live in OUT/e{epochs} for
SimCLR (as before) and OUT/{method}-e{epochs} for the others; a method this checkout does not have is listed
under "skipped", not an error.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from selfsup import Config, evaluate, pretrain
from selfsup import SelfSupError
from selfsup.data import image_spec, load_data
from selfsup.device import autocast, pick_device, use_bf16
from selfsup.config import resolve
from selfsup.methods import canonical_name
from selfsup.rundir import RunPaths, build_method
from selfsup.train.checkpoint import load_checkpoint
from selfsup.train.logging import read_jsonl
from selfsup.train.optim import build_optimizer


def compute_only_seconds(cfg: Config, n_images: int, device: torch.device, steps: int | None = None) -> float:
    """Seconds per epoch of forward+backward+step (and the EMA teachers' update) on one batch of the method's
    views (two views, or DINO's crops) made once from random images, already on the device."""
    # Exactly as the training loop sets things up: channels_last everywhere, bf16 autocast where it trains in bf16.
    spec = image_spec((1, 28, 28), [0.286], [0.353])
    method = build_method(cfg, spec).to(device).to(memory_format=torch.channels_last)
    opt = build_optimizer(cfg.optimizer, method, cfg.lr, cfg.weight_decay)
    fwd = torch.compile(method) if cfg.compile else method
    bs = cfg.batch_size
    steps_per_epoch = n_images // bs
    steps = steps or steps_per_epoch
    with torch.no_grad():
        images = torch.randint(0, 256, (bs, 1, 28, 28), dtype=torch.uint8, device=device)
        batch = method.make_batch(images, torch.Generator(device=device).manual_seed(0))
    batch = {k: v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 and v.is_floating_point() else v
             for k, v in batch.items()}

    def step():
        with autocast(device, use_bf16(cfg.precision, device)):
            loss, _ = fwd(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        method.on_step_end(0, steps)

    for _ in range(min(10, steps)):
        step()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return (time.perf_counter() - t0) / steps * steps_per_epoch


def _saved_eval(root: Path, epochs: int, ours: str) -> dict | None:
    """The run's eval.json when it is of the finished run and holds the rows this benchmark reports."""
    try:
        res = json.loads((root / "eval.json").read_text())
        rows = {(r["features"], r["fraction"]): r for r in res["results"]}
        ok = res["pretrain_epochs"] == epochs and all(rows[(ours, f)].get("linear") is not None for f in (0.01, 1.0))
        res["markdown"] = (root / "eval.md").read_text().strip()
    except (OSError, KeyError, ValueError):
        return None
    return res if ok else None


def run(cfg: Config, train, label: str) -> dict:
    """Pretrain (resuming an unfinished run in the same folder), then kNN and linear probes at 100% and 1% labels."""
    paths = RunPaths(Path(cfg.out))
    done = paths.last.exists() and load_checkpoint(paths.last)["epoch"] >= cfg.epochs
    t0 = time.perf_counter()
    if not done:
        pretrain(cfg, train=train, resume=paths.last.exists(), progress=False)
    wall = time.perf_counter() - t0
    epochs = [r for r in read_jsonl(paths.metrics) if r.get("event") == "epoch"]
    secs = [r["seconds"] for r in epochs]
    walls = [r.get("wall_s", r["seconds"]) for r in epochs]
    ours = f"{cfg.method} (ours)"
    res = _saved_eval(paths.root, cfg.epochs, ours)
    if res is None:
        res = evaluate(paths.root, protocols=("knn", "linear"), fractions=(0.01, 1.0), progress=False)
    table = {(r["features"], r["fraction"]): r for r in res["results"]}
    return {
        "run": label, "run_dir": str(paths.root), "epochs": cfg.epochs,
        "pretrain_wall_s": round(wall, 1) if not done else None,
        # Median over epochs after the first (which includes compilation and warm-up).
        "epoch_s_median": round(statistics.median(secs[1:] or secs), 3),
        "epoch_wall_s_median": round(statistics.median(walls[1:] or walls), 3),
        "epoch_s_first": secs[0],
        "knn": table[(ours, 1.0)]["knn"], "knn_tuned": table[(ours, 1.0)].get("knn_tuned"),
        "linear": table[(ours, 1.0)]["linear"], "linear_1pct": table[(ours, 0.01)]["linear"],
        "baselines": {f"{k[0]}@{k[1]:g}": {"knn": v["knn"], "knn_tuned": v.get("knn_tuned"), "linear": v["linear"]}
                      for k, v in table.items() if k[0] != ours},
        "eval_markdown": res["markdown"],
    }


def table(methods: dict) -> str:
    """One markdown row per method and run: test-split kNN (k=200 and tuned), linear at 100% and 1% labels."""
    pct = lambda v: "—" if v is None else f"{100 * v:.1f}"  # noqa: E731
    rows = ["| method | epochs | kNN | kNN tuned | linear | linear 1% | s/epoch | compute-only s/epoch |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, m in methods.items():
        for r in m["runs"]:
            rows.append(f"| {name} | {r['epochs']} | {pct(r['knn'])} | {pct(r['knn_tuned'])} | {pct(r['linear'])} | "
                        f"{pct(r['linear_1pct'])} | {r['epoch_s_median']:.2f} | {m['compute_only_epoch_s']:.2f} |")
    return "\n".join(rows)


def run_dir(out_dir: Path, method: str, epochs: int) -> Path:
    """OUT/e{epochs} for SimCLR (the folders of the SimCLR-only benchmark, reused), OUT/{method}-e{epochs} else."""
    return out_dir / (f"e{epochs}" if method == "simclr" else f"{method}-e{epochs}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="simclr",
                    help="comma-separated methods, each run the same way, in this order (default simclr)")
    ap.add_argument("--short", type=int, default=30, help="epochs of the short run (default 30; 0 skips it)")
    ap.add_argument("--long", type=int, default=200, help="epochs of the longer run (default 200; 0 skips it)")
    ap.add_argument("--batch-size", type=int, default=512, help="batch size (default 512)")
    ap.add_argument("--backbone", default="resnet18", help="backbone (default resnet18)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (both timings and runs)")
    ap.add_argument("--device", default="auto", help="device (default cuda if present)")
    ap.add_argument("--out", default="runs/bench",
                    help="folder for the runs and benchmark.json; running again with the same folder resumes "
                         "unfinished runs and reuses finished ones (default runs/bench)")
    ap.add_argument("--smoke", action="store_true", help="tiny CPU run: 2048 images, 1 epoch, small CNN")
    a = ap.parse_args()
    device = pick_device(a.device)
    train = load_data("fashion-mnist", "train")
    if a.smoke:
        train = train.subset(torch.arange(2048))
        a.short, a.long, a.backbone, a.batch_size = 1, 0, "small_cnn", 256
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "batch_size": a.batch_size, "backbone": a.backbone, "compile": a.compile,
        "methods": {}, "skipped": {},
    }
    plan = [(label, e) for label, e in (("short", a.short), ("long", a.long)) if e > 0]
    for name in [n.strip() for n in a.methods.split(",") if n.strip()]:
        try:
            name = canonical_name(name)
        except SelfSupError as e:  # e.g. a method of another branch, not merged here yet
            out["skipped"][name] = str(e)
            continue
        base = dict(method=name, data="fashion-mnist", backbone=a.backbone, batch_size=a.batch_size,
                    device=str(device), compile=a.compile, knn_every=0)
        probe_cfg = resolve(Config(**base, epochs=1), device.type)
        m = out["methods"][name] = {
            "lr": probe_cfg.lr, "optimizer": probe_cfg.optimizer,
            "compute_only_epoch_s": round(compute_only_seconds(probe_cfg, len(train), device,
                                                               steps=4 if a.smoke else None), 3),
            "runs": [],
        }
        for label, epochs in plan:
            m["runs"].append(run(Config(**base, epochs=epochs, out=str(run_dir(out_dir, name, epochs))), train, label))
            first = m["runs"][0]
            m["pipeline_over_compute"] = round(first["epoch_s_median"] / m["compute_only_epoch_s"], 3)
            m["wall_over_compute"] = round(first["epoch_wall_s_median"] / m["compute_only_epoch_s"], 3)
            out["table"] = table(out["methods"])
            # Written after every run, so a benchmark cut off by a time limit keeps what it measured.
            (out_dir / "benchmark.json").write_text(json.dumps(out, indent=2) + "\n")
    json.dump(out, sys.stdout, indent=2)
    print()
    if "table" in out:
        print(out["table"])


if __name__ == "__main__":
    main()
