"""What the training loop does differently on several processes (torchrun): open the run on rank 0 and share
it, shard the data, seed each process's random streams, wrap the method in DistributedDataParallel, keep
every process's weights identical. On one process every function here leaves the loop as it was.
"""
from __future__ import annotations

import inspect
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..config import Config
from ..data import Dataset
from ..data.prepare import replica_data, shared_parts
from ..distributed import all_digests, broadcast_, broadcast_object, rank, world_size
from ..errors import SelfSupError
from ..methods import EMATeacher, Method
from ..models.global_bn import convert_batchnorm
from ..rundir import RunLock, RunPaths
from .setup import OpenRun, open_run


def open_run_all(cfg: Config, resume: bool, device: torch.device, train: Dataset | None) -> OpenRun:
    """`open_run` on rank 0 only (it alone writes and locks the run directory); the other processes get its
    resolved config, holdout and checkpoint by broadcast, so nodes need not share a filesystem, and load the
    data themselves. An error on rank 0 is raised, with the same one line, on every process."""
    if world_size() == 1:
        return open_run(cfg, resume, device, train)
    if cfg.batch_size is not None and cfg.batch_size % world_size():  # checked again once resolved
        raise SelfSupError(f"--batch-size {cfg.batch_size} is the global batch: it must be a multiple of the "
                           f"{world_size()} processes")
    shared, run = None, None
    if rank() == 0:
        try:
            run = open_run(cfg, resume, device, train)
            shared = dict(cfg=run.cfg.to_dict(), root=str(run.paths.root), note=run.split_note, ckpt=run.ckpt,
                          **shared_parts(run.paths, given=train is not None))  # holdout indices, tokenizer text
        except SelfSupError as e:
            shared = dict(error=str(e))
        except BaseException as e:
            broadcast_object(dict(error=f"rank 0 failed to open the run: {type(e).__name__}: {e}"))
            raise
    shared = broadcast_object(shared)
    if "error" in shared:
        raise SelfSupError(shared["error"])
    if run is not None:
        return run
    paths, run_cfg = RunPaths(Path(shared["root"])), Config.from_dict(shared["cfg"])
    if train is None:  # the same samples rank 0 pretrains on: its holdout removed, its tokenizer applied
        train = replica_data(run_cfg, shared["index"], shared["tokenizer"])
    return OpenRun(run_cfg, paths, RunLock(paths.root), train, shared["note"], shared["ckpt"])


def check_world(cfg: Config, n: int) -> int:
    """This process's batch: the global cfg.batch_size over the processes (a one-line error if it does not divide
    or exceeds the n training samples)."""
    w = world_size()
    if w == 1:
        return min(cfg.batch_size, n)
    if cfg.batch_size % w or cfg.batch_size > n:
        raise SelfSupError(f"--batch-size {cfg.batch_size} is the global batch: it must be a multiple of the {w} "
                           f"processes and at most the {n} training samples")
    return cfg.batch_size // w


def shard(n: int, seed: int) -> torch.Tensor | None:
    """This process's disjoint share of the n training samples (None: all of them, on one process).

    A seeded permutation dealt out in turn, n // W samples each (the rest unused), so every process has the same
    number of steps per epoch and a shard drawn from the whole data, whatever order it is stored in."""
    w = world_size()
    if w == 1:
        return None
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[rank()::w][:n // w]


def rank_seed(seed: int) -> int:
    """A per-process variant of a stream's seed (rank 0 keeps it as is): each process draws its own epoch
    order and views from its own generator, reproducibly, so resuming with the same processes is exact."""
    return (seed + rank() * 998_244_353) % (2**63 - 1)


def wrap(method: Method, cfg: Config, device: torch.device) -> nn.Module:
    """The module the loop calls: `method` itself on one process; on several, with BatchNorm over the global
    batch where the method (or --sync-bn) asks for it, wrapped in DistributedDataParallel.

    The whole Method is wrapped and its forward called, so every submodule's gradients are all-reduced
    (averaged) by DDP; EMA teachers are inside but take no gradient, so DDP leaves them out, and each process
    moves its own copy after the (identical) optimizer step. Buffers are not broadcast every step (a MoCo queue
    is already the same everywhere; see sync_buffers)."""
    if world_size() == 1:
        return method
    if cfg.sync_bn if cfg.sync_bn is not None else method.sync_bn:
        convert_batchnorm(method, device, skip=(EMATeacher,))
    # torch 2.14 renamed broadcast_buffers (a FutureWarning); both sync buffers once, at construction.
    no_sync = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
               else "broadcast_buffers")
    return DistributedDataParallel(method, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=method.find_unused_parameters, **{no_sync: False})


@torch.no_grad()
def sync_buffers(method: nn.Module) -> None:
    """Rank 0's buffers on every process (BatchNorm running statistics that are per-process, e.g. MoCo's key
    encoder): once an epoch, before the checkpoint, so every process holds the weights rank 0 saves."""
    if world_size() > 1:
        for b in method.buffers():
            broadcast_(b)


def check_identical(method: nn.Module) -> list[str]:
    """Every process's weight digest; a one-line error if any process's weights differ from rank 0's."""
    digests = all_digests(method)
    if len(set(digests)) > 1:
        raise SelfSupError(f"processes hold different weights ({', '.join(d[:8] for d in digests)}): a collective "
                           f"was skipped or non-deterministic; training stopped")
    return digests
