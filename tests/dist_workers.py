"""Workers for tests/test_distributed.py, and the test cases they share with it.

`spawn(case, out)` forks 2 processes from the test process (forked, they import nothing again: on a loaded
2-core machine each fresh interpreter costs seconds) that join a gloo process group through a file store in
`out` (no network port to collide) and run one case:
  losses     one step, then a second, of SimCLR and MoCo on this rank's slice of fixed global batches,
             DDP-wrapped exactly as the training loop wraps them; MoCo's key BatchNorm groups at a batch of 256;
             colorization's class-rebalancing counts over two batches; writes out/rank{r}.pt
  interrupt  the pretraining of `pipeline_config`, stopped after epoch 1 on every rank, then resumed to the end
The same global batches and models are rebuilt in the test process, on one process, for the comparison.
"""
from __future__ import annotations

import importlib
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from selfsup import Config
from selfsup.data import image_spec, load_data
from selfsup.methods.autoencoder import Autoencoder
from selfsup.methods.colorization import Colorization
from selfsup.methods.moco import MoCo
from selfsup.methods.simclr import SimCLR

B = 32  # the global batch; 16 per process on 2 (MoCo's key BatchNorm: 1 sub-batch of 16 each, 2 on one process)
SPEC = image_spec((1, 8, 8), [0.5], [0.25])


def build(name: str) -> torch.nn.Module:
    """The same freshly initialised method on every process and in the test."""
    torch.manual_seed(0)
    if name == "simclr":
        return SimCLR(SPEC, SimCLR.Hparams(proj_hidden=32, proj_dim=8), "small_cnn")
    if name == "autoencoder":
        return Autoencoder(SPEC, Autoencoder.Hparams(), "mlp")
    return MoCo(SPEC, MoCo.Hparams(proj_hidden=32, proj_dim=8, queue_size=96, momentum=0.9), "small_cnn")


def global_batches(name: str, steps: int = 2) -> list[dict[str, torch.Tensor]]:
    """Fixed global batches of B view pairs (and MoCo's key shuffle over the global batch), one per step."""
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(steps):
        if name == "autoencoder":
            out.append({"x": torch.rand(B, 1, 8, 8, generator=g)})
            continue
        v1, v2 = torch.randn(B, 1, 8, 8, generator=g), torch.randn(B, 1, 8, 8, generator=g)
        batch = {"v1": v1, "v2": v2}
        if name == "moco":
            batch["key_perm"] = torch.randperm(B, generator=g)
        out.append(batch)
    return out


def local(batch: dict, r: int, w: int) -> dict:
    """Process r's rows of a global batch (the key shuffle stays global)."""
    b = B // w
    return {k: (v if k == "key_perm" else v[r * b:(r + 1) * b].clone()) for k, v in batch.items()}


def run_steps(model: torch.nn.Module, method: torch.nn.Module, batches: list[dict], r: int, w: int) -> dict:
    """SGD steps; per step the state before it, the (global mean) loss, every trainable parameter's gradient and
    MoCo's queue after it; plus what the key encoder's first layer saw."""
    from selfsup.distributed import mean_over_processes
    from selfsup.train.parallel import sync_buffers

    seen = []
    if isinstance(method, MoCo):
        method.key_encoder.net.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.5)
    record = dict(loss=[], grads=[], queue=[], queue_ptr=[], before=[])
    for batch in batches:
        record["before"].append({k: v.clone() for k, v in method.state_dict().items()})
        loss, _ = model(local(batch, r, w))
        opt.zero_grad()
        loss.backward()
        record["loss"].append(mean_over_processes(loss.detach()))
        record["grads"].append({n: p.grad.clone() for n, p in method.named_parameters() if p.requires_grad})
        opt.step()
        method.on_step_end(len(record["loss"]) - 1, 10)
        if isinstance(method, MoCo):
            record["queue"].append(method.queue.clone())
            record["queue_ptr"].append(int(method.queue_ptr))
    record["key_inputs"] = seen
    sync_buffers(method)  # as the loop does each epoch: per-process BatchNorm statistics (MoCo's keys) from rank 0
    record["state"] = {k: v.clone() for k, v in method.state_dict().items()}
    return record


KEY_B = 256  # MoCo's key BatchNorm groups: a global batch where the old per-process split count gave other groups


def key_group_case() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """MoCo with the default key_bn_group (64) and a global batch of KEY_B constant images, image i all i: the
    first layer's input names the samples that share BatchNorm statistics. Returns (method, images, key perm)."""
    torch.manual_seed(0)
    method = MoCo(SPEC, MoCo.Hparams(proj_hidden=32, proj_dim=8, queue_size=96), "small_cnn")
    v = torch.arange(KEY_B, dtype=torch.float32).view(-1, 1, 1, 1).expand(KEY_B, 1, 8, 8).contiguous()
    return method, v, torch.randperm(KEY_B, generator=torch.Generator().manual_seed(3))


def key_groups(method: torch.nn.Module, v: torch.Tensor, perm: torch.Tensor) -> tuple[list, torch.Tensor]:
    """(the sample ids of each key BatchNorm group, in order; the keys) of `method.keys` on this process's v."""
    seen = []
    first = method.key_encoder.net[0].features[0][0]
    hook = first.register_forward_hook(lambda mod, inp, out: seen.append(sorted(inp[0][:, 0, 0, 0].int().tolist())))
    keys = method.keys(v, perm)
    hook.remove()
    return seen, keys


COLOR_SPEC = image_spec((3, 8, 8), [0.5] * 3, [0.25] * 3)


def build_colorization() -> torch.nn.Module:
    torch.manual_seed(0)
    return Colorization(COLOR_SPEC, Colorization.Hparams(width=8), "small_cnn")


def colour_batches(steps: int = 2) -> list[torch.Tensor]:
    """Global batches of B random RGB images (uint8)."""
    g = torch.Generator().manual_seed(4)
    return [torch.randint(0, 256, (B, 3, 8, 8), dtype=torch.uint8, generator=g) for _ in range(steps)]


def colour_counts(method: torch.nn.Module, r: int, w: int) -> dict:
    """make_batch on this process's rows of each global batch: the bin counts after each, and the last weights."""
    b, record = B // w, dict(counts=[], weight=None, bin=None)
    g = torch.Generator().manual_seed(10 + r)  # each process draws its own flips, as under the loop's rank_seed
    for x in colour_batches():
        batch = method.make_batch(x[r * b:(r + 1) * b], g)
        record["counts"].append(method.bin_counts.clone())
    record["weight"], record["bin"] = batch["weight"], batch["bin"]
    return record


def losses(out: Path) -> None:
    from selfsup.distributed import rank, world_size
    from selfsup.losses import nt_xent
    from selfsup.train.parallel import wrap

    r, w = rank(), world_size()
    result = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name in ("simclr", "moco", "autoencoder"):
            method = build(name)
            model = wrap(method, Config(sync_bn=True), torch.device("cpu"))
            result[name] = run_steps(model, method, global_batches(name), r, w)
            if name == "moco":
                result["moco_modules"] = [type(m).__name__ for m in method.modules() if "Norm" in type(m).__name__]
        # the loss function alone: NT-Xent on leaf embeddings, this rank's rows of a fixed global batch
        z = torch.randn(2, B, 8, generator=torch.Generator().manual_seed(2))
        b = B // w
        z1 = z[0, r * b:(r + 1) * b].clone().requires_grad_(True)
        z2 = z[1, r * b:(r + 1) * b].clone().requires_grad_(True)
        nt_xent(z1, z2, 0.3).backward()
        result["nt_xent_grads"] = (z1.grad, z2.grad)
        method, v, perm = key_group_case()
        kb = KEY_B // w
        result["key_groups"] = key_groups(method, v[r * kb:(r + 1) * kb], perm)
        result["colour"] = colour_counts(build_colorization(), r, w)
    result["warnings"] = [f"{c.category.__name__}: {c.message}" for c in caught]
    torch.save(result, out / f"rank{r}.pt")


def small_digits(folder: Path) -> tuple[Path, Path]:
    """The first 256 training digits as images.npy (N x 8 x 8 uint8) and labels.npy: short epochs."""
    folder.mkdir(parents=True, exist_ok=True)
    train = load_data("digits", "train")
    np.save(folder / "images.npy", train.x[:256, 0].numpy())
    np.save(folder / "labels.npy", train.labels[:256].numpy())
    return folder / "images.npy", folder / "labels.npy"


# The short MoCo pretraining of the pipeline tests: 204 samples (20% held out), 6 steps of 32 an epoch.
PIPELINE = dict(method="moco", epochs=2, batch_size=32, knn_every=1, method_args=dict(proj_hidden=64, proj_dim=16))


def pipeline_config(out: Path, data: Path, labels: Path, **kw) -> Config:
    return Config(**{**PIPELINE, **kw}, data=str(data), labels=str(labels), out=str(out), device="cpu")


def interrupt(out: Path, data: Path, labels: Path) -> None:
    from selfsup import pretrain

    class Stop(Exception):
        pass

    def stop(epoch: int) -> None:
        if epoch == 1:
            raise Stop

    try:
        pretrain(pipeline_config(out, data, labels), progress=False, on_epoch_end=stop)
        raise SystemExit("the run did not stop after epoch 1")
    except Stop:
        pass
    pretrain(Config(out=str(out)), resume=True, progress=False)


def _case(case: str):
    """A case by name: one of this module's, or "module.function" from another workers module."""
    if "." in case:
        module, name = case.rsplit(".", 1)
        return getattr(importlib.import_module(module), name)
    return {"losses": losses, "interrupt": interrupt}[case]


def _entry(r: int, w: int, case: str, store: str, args: tuple) -> None:
    torch.set_num_threads(1)
    os.environ.update(RANK=str(r), WORLD_SIZE=str(w), LOCAL_RANK=str(r))
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=r, world_size=w)
    try:
        _case(case)(*args)
    finally:
        dist.destroy_process_group()


def spawn(case: str, store: Path, *args, procs: int = 2, timeout: float = 240) -> None:
    """Run `case(*args)` on `procs` forked processes in one gloo group; raise if any fails or time runs out."""
    ctx = mp.start_processes(_entry, args=(procs, case, str(store), args), nprocs=procs, join=False,
                             start_method="fork")
    import time

    deadline = time.monotonic() + timeout
    try:
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{case} on {procs} processes did not finish in {timeout:.0f} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
