"""Process-group helpers. Every loss takes the global batch through `gather`, a no-op on one process.

Under `torchrun` each process holds one shard of the data and a slice of every global batch; the helpers here
are the only places where processes talk to each other outside DistributedDataParallel's gradient all-reduce.
Each is the identity on one process, so the single-process path runs exactly the same operations as before.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
from typing import Iterator

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True inside an initialised torch.distributed process group."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def launched_world_size() -> int:
    """The number of processes torchrun started (its WORLD_SIZE variable; 1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched_rank() -> int:
    """This process's rank as torchrun set it (RANK; 0 without torchrun): valid before and after the group."""
    return int(os.environ.get("RANK", "0"))


@contextlib.contextmanager
def session(device: torch.device) -> Iterator[torch.device]:
    """Join the process group torchrun describes (env:// rendezvous) for the duration of the block.

    Yields the device this process trains on: its own GPU (LOCAL_RANK) with NCCL, or the CPU with gloo.
    Without torchrun (WORLD_SIZE unset or 1), or inside a group someone else initialised, nothing changes.
    """
    if launched_world_size() == 1 or is_distributed():
        if is_distributed() and device.type == "cuda":
            device = torch.device("cuda", torch.cuda.current_device())
        yield device
        return
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            **({"device_id": device} if device.type == "cuda" else {}))
    try:
        yield device
    finally:
        dist.destroy_process_group()


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums the gradient over every process and returns this process's slice.

    Process r's slice reaches every process's loss, so its gradient is the sum of all of theirs: the backward
    all-reduces (sums) the incoming gradient. Returning only the local gradient slice (without the sum) is the
    bug several SSL libraries shipped (lightly #1528); DDP then averages the parameter gradients, so the
    result is the gradient of the global-batch mean loss. Written here because
    torch.distributed.nn.functional.all_gather warns (FutureWarning) on torch 2.14.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rows = x.shape[0]
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return torch.cat(out, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = dist.get_rank() * ctx.rows
        return grad[start:start + ctx.rows]


def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` (same shape on every process) along dim 0 in rank order, gradients flowing back to each
    process's own slice summed over all processes. The identity on one process."""
    if world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


class _AllReduceWithGrad(torch.autograd.Function):
    """Sum over processes whose backward is the same sum: every process's output depends on every input."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous().clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def all_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of `x` over every process, autograd-aware (a plain dist.all_reduce in a loss is not: lightly #1977).
    The identity on one process."""
    if world_size() == 1:
        return x
    return _AllReduceWithGrad.apply(x)


@torch.no_grad()
def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` from every process along dim 0, without autograd (e.g. MoCo keys for the queue)."""
    if world_size() == 1:
        return x
    out = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, dim=0)


@torch.no_grad()
def mean_over_processes(x: torch.Tensor) -> torch.Tensor:
    """The mean of `x` over every process (logged losses and diagnostics); `x` itself on one process."""
    if world_size() == 1:
        return x
    x = x.detach().clone()
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x / world_size()


@torch.no_grad()
def broadcast_(x: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite `x` in place with process `src`'s copy (a no-op on one process)."""
    if world_size() > 1:
        dist.broadcast(x, src)
    return x


def broadcast_object(obj, src: int = 0):
    """Process `src`'s picklable object, on every process."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src)
    return box[0]


@torch.no_grad()
def shuffled_apply(fn, x: torch.Tensor, perm: torch.Tensor, splits: int) -> torch.Tensor:
    """fn over a batch shuffled across processes, returned in this process's own order (MoCo's shuffle BN).

    x: b x ... (this process's part of the global batch of B = W*b); perm: a permutation of B, the same on every
    process (process 0's copy is broadcast). The global batch is gathered and permuted; process r runs `fn` on
    rows r*b..(r+1)*b of it, in `splits` sub-batches; the outputs are gathered, unshuffled and r's slice
    returned. On one process this is `fn` over x[perm] in `splits` sub-batches, unshuffled; on W processes with
    `splits` each it equals one process over the global batch with W*splits sub-batches (He et al. 2020, sec.
    3.3; the reference's batch_shuffle_ddp / batch_unshuffle_ddp).
    """
    b, r = x.shape[0], rank()
    perm = broadcast_(perm.clone())
    mine = gather_no_grad(x)[perm[r * b:(r + 1) * b]]  # mine: b x ..., a random part of the global batch
    shuffled = gather_no_grad(torch.cat([fn(chunk) for chunk in mine.chunk(splits)]))  # shuffled: B x d
    out = torch.empty_like(shuffled)
    out[perm] = shuffled  # unshuffle: row i is global sample i again
    return out[r * b:(r + 1) * b]


def state_digest(state: torch.nn.Module | dict) -> str:
    """SHA-256 of a module's (or state dict's) parameters and buffers: names, dtypes, shapes and bytes, in a
    fixed layout, so equal digests mean bit-identical weights."""
    state = state.state_dict() if isinstance(state, torch.nn.Module) else state
    h = hashlib.sha256()
    for name, t in state.items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def all_digests(module: torch.nn.Module) -> list[str]:
    """Every process's `state_digest`, in rank order."""
    digest = state_digest(module)
    if world_size() == 1:
        return [digest]
    out = [None] * world_size()
    dist.all_gather_object(out, digest)
    return out
