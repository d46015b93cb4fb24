"""Streamed data against in-memory data: throughput and peak memory of `selfsup pretrain`. Prints one JSON object.

    python benchmarks/stream.py --memory-budget 256MiB [--steps 300] [--threads 1] [--root .data/stream_bench]
    python benchmarks/stream.py --memory-budget 4MiB --steps 12 --sets generated   # a quick correctness run

Two data sets, each written once as a .npy (memory-mapped by selfsup, so the streamed run reads it from the file):
* fashion-mnist: the 60,000 training images (47 MB); streamed with a budget of a quarter of them (or the given
  budget if smaller), so that the data is 4x the budget here too;
* generated: random 3x64x64 uint8 images, --factor (default 4) times the --memory-budget in bytes.
For each set three `selfsup pretrain` runs of the default small CNN SimCLR (--steps steps, --holdout 0, no kNN
monitor, one process), each under `/usr/bin/time -v` for its peak RSS ("Maximum resident set size"):
* in_memory: --memory-budget 1TiB (the whole set loaded into memory, as before streaming existed);
* streamed: --memory-budget BUDGET (the run's recipe line and metrics.jsonl say "streamed");
* baseline: the in-memory run on the first 2,048 images of the set: the process, torch, the model, the optimizer
  and the views, with no data to speak of. The target for the streamed run's peak RSS is budget + baseline
  + 256 MiB (the issue's "budget + model + 256 MiB", the model measured with everything a process needs).
images/s: the samples trained over the seconds of the epochs (metrics.jsonl; kNN, checkpoints and start-up not
counted). Target: streamed >= 0.9 x in-memory. Time it on a quiet machine: other processes distort both.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

import numpy as np
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from selfsup.data.budget import parse_size  # noqa: E402
from selfsup.train.checkpoint import load_checkpoint  # noqa: E402

MiB = 1 << 20
BASELINE_ROWS = 2048


def write_fashion_mnist(root: str) -> str:
    path = os.path.join(root, "fashion-mnist.npy")
    if not os.path.isfile(path):
        from selfsup.data import load_data

        np.save(path + ".tmp.npy", load_data("fashion-mnist", "train").x[:, 0].numpy())
        os.replace(path + ".tmp.npy", path)
    return path


def write_generated(root: str, nbytes: int, size: int) -> str:
    """Random (N, size, size, 3) uint8 images, N the fewest holding nbytes; written in 64 MiB chunks."""
    row = size * size * 3
    n = max(BASELINE_ROWS, -(-nbytes // row))
    path = os.path.join(root, f"generated-{n}x3x{size}x{size}.npy")
    if not os.path.isfile(path):
        out = np.lib.format.open_memmap(path + ".tmp.npy", mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
        rng = np.random.default_rng(0)
        step = max(1, 64 * MiB // row)
        for i in range(0, n, step):
            out[i:i + step] = rng.integers(0, 256, (min(step, n - i), size, size, 3), dtype=np.uint8)
        out.flush()
        del out
        os.replace(path + ".tmp.npy", path)
    return path


def head(path: str, rows: int) -> str:
    """The first `rows` images of a .npy, as their own file (the baseline run's data)."""
    out = path[:-4] + f"-head{rows}.npy"
    if not os.path.isfile(out):
        np.save(out, np.load(path, mmap_mode="r")[:rows])
    return out


def pretrain(data: str, budget: str, args, out: str) -> dict:
    """One `selfsup pretrain` under /usr/bin/time -v: its images/s, peak RSS and the data path it took."""
    timed = ["/usr/bin/time", "-v"] if os.path.isfile("/usr/bin/time") else []
    cmd = [*timed, sys.executable, "-m", "selfsup", "pretrain", "--data", data, "--holdout", "0", "--steps",
           str(args.steps), "--knn-every", "0", "--threads", str(args.threads), "--memory-budget", budget, "--out",
           out, "--no-progress", "--device", args.device, *args.pretrain_args.split()]
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS=str(args.threads))
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stderr[-3000:]}")
    found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
    rss = int(found.group(1)) * 1024 if found else None
    records = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl")) if line.strip()]
    epochs = [r for r in records if r["event"] == "epoch"]
    feed = load_checkpoint(os.path.join(out, "checkpoints", "last.pt"))["feed"]  # the path and its geometry
    with open(os.path.join(out, "config.yaml")) as f:
        batch = yaml.safe_load(f)["batch_size"]
    seconds = sum(r["seconds"] for r in epochs)
    note = next((ln.strip()[6:] for ln in p.stderr.splitlines() if ln.strip().startswith("data: ")), "")
    return dict(feed, images_per_s=round(epochs[-1]["step"] * batch / seconds, 1), epoch_seconds=round(seconds, 2),
                wall_s=round(wall, 1), peak_rss_bytes=rss, note=note)


def measure(name: str, path: str, budget: int, args, work: str) -> dict:
    streamed = pretrain(path, f"{budget}B", args, os.path.join(work, f"{name}-streamed"))
    in_memory = pretrain(path, "1TiB", args, os.path.join(work, f"{name}-in-memory"))
    baseline = pretrain(head(path, BASELINE_ROWS), "1TiB", args, os.path.join(work, f"{name}-baseline"))
    assert streamed["path"] == "streamed" and in_memory["path"] == "in memory", (streamed, in_memory)
    ratio = streamed["images_per_s"] / in_memory["images_per_s"]
    data_bytes = np.load(path, mmap_mode="r").nbytes
    out = dict(name=name, file=path, data_bytes=data_bytes, budget_bytes=budget,
               data_over_budget=round(data_bytes / budget, 2), streamed=streamed, in_memory=in_memory,
               baseline=baseline, throughput_ratio=round(ratio, 3), throughput_target_met=ratio >= 0.9)
    if args.compute_steps:
        shape = tuple(np.load(path, mmap_mode="r").shape[1:])
        compute = compute_only_images_per_s((shape[-1], *shape[:-1]) if len(shape) == 3 else (1, *shape), args)
        out.update(compute_only_images_per_s=compute,
                   streamed_over_compute=round(streamed["images_per_s"] / compute, 3))
    if streamed["peak_rss_bytes"] and baseline["peak_rss_bytes"]:
        target = budget + baseline["peak_rss_bytes"] + 256 * MiB
        out.update(rss_target_bytes=target, rss_within_target=streamed["peak_rss_bytes"] <= target,
                   rss_over_baseline_mib=round((streamed["peak_rss_bytes"] - baseline["peak_rss_bytes"]) / MiB, 1))
    return out


def compute_only_images_per_s(shape: tuple[int, ...], args) -> float:
    """Images/s of the run's step (forward, backward, optimizer) on random view pairs already on the device, no
    data path and no views: the ceiling a data path can reach (as benchmarks/simclr_fmnist.py measures it)."""
    import torch

    from selfsup import Config
    from selfsup.config import resolve
    from selfsup.data import image_spec
    from selfsup.device import autocast, pick_device, use_bf16
    from selfsup.rundir import build_method
    from selfsup.train.optim import build_optimizer

    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    flags = dict(zip(args.pretrain_args.split()[0::2], args.pretrain_args.split()[1::2]))
    cfg = resolve(Config(method="simclr", backbone=flags.get("--backbone"), batch_size=int(flags["--batch-size"])
                         if "--batch-size" in flags else None), device.type, 10**6)
    method = build_method(cfg, image_spec(shape, [0.5] * shape[0], [0.25] * shape[0]))
    method = method.to(device).to(memory_format=torch.channels_last)
    opt = build_optimizer(cfg.optimizer, method, cfg.lr, cfg.weight_decay)
    batch = {k: torch.randn(cfg.batch_size, *shape, device=device).contiguous(memory_format=torch.channels_last)
             for k in ("v1", "v2")}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for i in range(args.compute_steps + 3):  # 3 warm-up steps
        if i == 3:
            sync()
            t0 = time.perf_counter()
        with autocast(device, use_bf16(cfg.precision, device)):
            loss, _ = method(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync()
    return round(args.compute_steps * cfg.batch_size / (time.perf_counter() - t0), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--memory-budget", default="256MiB", help="the streamed runs' budget (default 256MiB)")
    ap.add_argument("--factor", type=float, default=4.0, help="the generated set's size over the budget (default 4)")
    ap.add_argument("--steps", type=int, default=300, help="optimizer steps of each run (default 300)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each run (default 1)")
    ap.add_argument("--sets", default="fashion-mnist,generated", help="which sets (default both)")
    ap.add_argument("--image-size", type=int, default=64, help="the generated images' side (default 64)")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--pretrain-args", default="", help="more `selfsup pretrain` flags, e.g. '--backbone resnet18 "
                    "--batch-size 256' (--backbone and --batch-size also set the compute-only step)")
    ap.add_argument("--compute-steps", type=int, default=10,
                    help="steps of the compute-only measurement (default 10; 0: skip it)")
    ap.add_argument("--root", default=os.path.join(REPO, ".data", "stream_bench"),
                    help="where the .npy files are written once and reused (default .data/stream_bench)")
    args = ap.parse_args()
    budget = parse_size(args.memory_budget)
    os.makedirs(args.root, exist_ok=True)
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    results = []
    with tempfile.TemporaryDirectory(prefix="stream_bench") as work:
        if "fashion-mnist" in sets:
            path = write_fashion_mnist(args.root)
            results.append(measure("fashion-mnist", path, min(budget, os.path.getsize(path) // 4), args, work))
        if "generated" in sets:
            path = write_generated(args.root, int(args.factor * budget), args.image_size)
            results.append(measure(f"generated-3x{args.image_size}x{args.image_size}", path, budget, args, work))
    print(json.dumps(dict(benchmark="stream", command=" ".join(sys.argv), machine=platform.processor() or
                          platform.machine(), cpus=os.cpu_count(), device=args.device, steps=args.steps,
                          threads=args.threads, sets=results), indent=1))


if __name__ == "__main__":
    main()
