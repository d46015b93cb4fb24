"""Benchmark: DINO's multi-crop views beside SimCLR's two views, and the DINO step they feed. Prints one JSON object.

For each image shape and a batch of random uint8 images, the median of `--repeats` timings (after one warm-up) of

* ``multicrop``: DINO's ``make_batch`` (2 global crops + N local crops, one batched pass per size);
* ``two_views``: SimCLR's ``make_batch`` at the same size (the two-view recipe most methods use);
* ``dino_step``: DINO's forward and backward on those crops (student on every crop, teacher on the globals);

in wall-clock seconds and this process's CPU seconds (``*_cpu_s``). Timing is only meaningful on a quiet machine.

    python benchmarks/multicrop.py                              # CPU, one thread, 1x28x28 and 3x32x32
    python benchmarks/multicrop.py --device cuda --backbone resnet18 --batch 256
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from selfsup import Config
from selfsup.config import resolve
from selfsup.data import image_spec
from selfsup.device import pick_device
from selfsup.rundir import build_method


def timed(fn, repeats: int, device: torch.device) -> tuple[float, float]:
    """(median wall s, median CPU s) of `repeats` calls after one warm-up."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    sync()
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        sync()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="1x28x28,3x32x32", help="image shapes CxHxW, comma-separated")
    p.add_argument("--batch", type=int, default=128, help="images per batch")
    p.add_argument("--local-crops", type=int, default=8, help="DINO's local crops per image")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats (median reported)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--backbone", default=None, help="backbone (default: the hardware's)")
    p.add_argument("--threads", type=int, default=1, help="torch threads on the CPU")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    device = pick_device(a.device)
    out = dict(device=str(device), batch=a.batch, local_crops=a.local_crops, threads=a.threads, shapes={})
    for shape in a.shapes.split(","):
        c, h, w = (int(v) for v in shape.split("x"))
        spec = image_spec((c, h, w), [0.5] * c, [0.25] * c)
        x = torch.randint(0, 256, (a.batch, c, h, w), dtype=torch.uint8, device=device)
        g = torch.Generator(device=device).manual_seed(0)
        methods = {}
        for name, args in (("dino", {"local_crops": a.local_crops}), ("simclr", {})):
            cfg = resolve(Config(method=name, backbone=a.backbone, method_args=args), device.type)
            methods[name] = build_method(cfg, spec).to(device)
        dino, simclr = methods["dino"], methods["simclr"]
        with torch.no_grad():
            batch = dino.make_batch(x, g)

        def step():
            loss, _ = dino(batch)
            loss.backward()

        row = {}
        for key, fn in (("multicrop", lambda: dino.make_batch(x, g)), ("two_views", lambda: simclr.make_batch(x, g)),
                        ("dino_step", step)):
            with torch.no_grad() if key != "dino_step" else torch.enable_grad():
                row[f"{key}_s"], row[f"{key}_cpu_s"] = timed(fn, a.repeats, device)
        row["local_size"] = list(batch["local"].shape[2:]) if "local" in batch else None
        out["shapes"][shape] = {k: round(v, 5) if isinstance(v, float) else v for k, v in row.items()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
