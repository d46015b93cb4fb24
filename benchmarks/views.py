"""Benchmark: the cost of SimCLR's two views beside the training step they feed. Prints one JSON object.

For each image shape (default 1x28x28, 3x32x32, 3x64x64) and a batch of random uint8 images, times

* ``views``: SimCLR's ``make_batch`` (its recipe for that image size, twice: two views of every image), made
  under ``torch.no_grad`` as the training loop makes them;
* ``step``: forward and backward of SimCLR (backbone + projector + NT-Xent) on those 2B views, in channels_last
  like the loop (no optimizer step);

and reports the median of `--repeats` timings of each (after one warm-up) and their ratio ``views / step``,
in wall-clock seconds and in this process's CPU seconds (``*_cpu_s``, ``ratio_cpu``). Both are measured in the
same process, one after the other, so the ratios hold up better than either time on a loaded machine, and the
CPU-time ratio best (with one thread, other processes' turns on the cores are not counted). The backbone is
the hardware default (small_cnn on CPU, resnet18 on CUDA) unless given.

    python benchmarks/views.py                    # CPU, one thread
    python benchmarks/views.py --threads 2 --device cuda --backbone resnet18
    python benchmarks/views.py --profile          # also the seconds of each op of the recipe (one view)
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
from selfsup.views import ops


def _timer(device: torch.device):
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def timed(fn, repeats: int) -> tuple[float, float]:
        """Median wall-clock and median process CPU seconds of fn (the CPU time is what a loaded machine
        distorts least: other processes' turns are not counted; on CUDA it is the host's share only)."""
        fn()  # warm-up
        wall, cpu = [], []
        for _ in range(repeats):
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            sync()
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        return statistics.median(wall), statistics.median(cpu)

    return timed


def profile_recipe(recipe, x: torch.Tensor, g: torch.Generator, timed, repeats: int) -> dict[str, float]:
    """Median seconds of each op of a SimCLRViews recipe on one view of x, in the recipe's order."""
    v0 = ops.to_float(x)
    crop = ops.random_resized_crop(v0, recipe.size, scale=recipe.crop_scale, generator=g)
    steps = {
        "to_float": lambda: ops.to_float(x),
        "crop": lambda: ops.random_resized_crop(v0, recipe.size, scale=recipe.crop_scale, generator=g),
        "flip": lambda: ops.random_hflip(crop, recipe.flip_p, generator=g),
        "jitter": lambda: ops.random_color_jitter(crop, *recipe.jitter, p=recipe.jitter_p, generator=g),
        "gray": lambda: ops.random_grayscale(crop, recipe.gray_p, generator=g),
        "normalize": lambda: ops.normalize(crop, recipe.mean, recipe.std),
    }
    if recipe.blur_p > 0:
        from selfsup.views.recipes import default_blur_kernel

        k = recipe.blur_kernel or default_blur_kernel(recipe.size)
        steps["blur"] = lambda: ops.random_gaussian_blur(crop, recipe.blur_p, sigma=recipe.blur_sigma,
                                                         kernel_size=k, generator=g)
    with torch.no_grad():
        return {k: round(timed(fn, repeats)[0], 5) for k, fn in steps.items()}


def measure(shape: tuple[int, int, int], batch: int, device: torch.device, backbone: str | None, repeats: int,
            profile: bool) -> dict:
    cfg = resolve(Config(method="simclr", backbone=backbone, batch_size=batch), device.type)
    c = shape[0]
    spec = image_spec(shape, [0.5] * c, [0.25] * c)
    method = build_method(cfg, spec).to(device).to(memory_format=torch.channels_last)
    method.train()
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randint(0, 256, (batch, *shape), generator=torch.Generator().manual_seed(0),
                      dtype=torch.uint8).to(device)
    timed = _timer(device)

    def views():
        with torch.no_grad():
            return method.make_batch(x, g)

    made = {k: v.contiguous(memory_format=torch.channels_last) for k, v in views().items()}

    def step():
        loss, _ = method(made)
        method.zero_grad(set_to_none=True)
        loss.backward()

    (t_views, c_views), (t_step, c_step) = timed(views, repeats), timed(step, repeats)
    row = dict(shape="x".join(map(str, shape)), batch=batch, backbone=cfg.backbone, views_s=round(t_views, 4),
               step_s=round(t_step, 4), ratio=round(t_views / t_step, 3), views_cpu_s=round(c_views, 4),
               step_cpu_s=round(c_step, 4), ratio_cpu=round(c_views / c_step, 3))
    if profile:
        row["one_view_ops_s"] = profile_recipe(method.view_recipe, x, g, timed, repeats)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="1x28x28,3x32x32,3x64x64", help="comma-separated CxHxW")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    ap.add_argument("--backbone", default=None, help="default: the hardware default for the device")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--profile", action="store_true", help="also time each op of the recipe on one view")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    device = pick_device(a.device) if a.device == "auto" else torch.device(a.device)
    shapes = [tuple(int(v) for v in s.split("x")) for s in a.shapes.split(",")]
    rows = [measure(s, a.batch, device, a.backbone, a.repeats, a.profile) for s in shapes]
    print(json.dumps({"device": str(device), "threads": a.threads, "torch": torch.__version__,
                      "results": rows}, indent=1))


if __name__ == "__main__":
    main()
