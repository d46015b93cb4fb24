"""Workers for tests/test_distributed_joint.py: BYOL, SimSiam, Barlow Twins, VICReg and SimCSE on 2 gloo processes.

`spawn(out)` forks 2 processes (forked, they import nothing again) that join a gloo group through a file store in
`out` and, on this rank's slice of fixed global batches:
  - take two SGD steps of each method, DDP-wrapped with global BatchNorm exactly as the training loop wraps it,
    recording the (global mean) loss, every trainable gradient and the state before each step;
  - run the Barlow Twins, VICReg and SimCSE losses alone on leaf embeddings, recording their gradients, once through
    the real gather and once through gathers broken the two ways peers shipped (a backward that returns only the
    local slice, solo-learn #232 / lightly #1531; a plain all_gather autograd cannot see, lightly #1977), so the
    test can show that its comparison catches both.
  - take two SGD steps of DINO on multi-crop batches (2 global crops, 3 local crops of another size), once as it
    is and once with its centre averaged over this process's rows only (no all-reduce), so the test can show
    that the comparison catches a centre that is not the global batch's.
  - take one step of MoCo v3 twice more, broken each time: keys left per process (not gathered: every query
    meets only its own process's keys), and BatchNorm statistics summed by a plain all_reduce whose backward skips
    the other processes (what a gather or all_reduce autograd cannot see gives, lightly #1977). MoCo v3's keys take
    no gradient, so its loss needs no gather with a backward; its global BatchNorm does.
Each rank writes out/rank{r}.pt; the test rebuilds the same models and batches in one process to compare.
"""
from __future__ import annotations

import importlib
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

from selfsup.data import image_spec
from selfsup.methods.barlow_twins import BarlowTwins
from selfsup.data import DataSpec
from selfsup.methods.byol import BYOL
from selfsup.methods.dino import DINO
from selfsup.methods.simcse import SimCSE
from selfsup.methods.mocov3 import MoCoV3
from selfsup.methods.simsiam import SimSiam
from selfsup.methods.vicreg import VICReg

B = 32  # the global batch: 16 rows per process on 2
SPEC = image_spec((1, 8, 8), [0.5], [0.25])
METHODS = {
    "byol": lambda: BYOL(SPEC, BYOL.Hparams(proj_hidden=32, proj_dim=8, pred_hidden=32, momentum=0.9), "small_cnn"),
    "simsiam": lambda: SimSiam(SPEC, SimSiam.Hparams(proj_hidden=32, proj_dim=16, pred_hidden=8), "small_cnn"),
    "barlow_twins": lambda: BarlowTwins(SPEC, BarlowTwins.Hparams(proj_hidden=32, proj_dim=16), "small_cnn"),
    "vicreg": lambda: VICReg(SPEC, VICReg.Hparams(proj_hidden=32, proj_dim=16), "small_cnn"),
    "mocov3": lambda: MoCoV3(SPEC, MoCoV3.Hparams(proj_hidden=32, proj_dim=16, momentum=0.9), "small_cnn"),
}
# Text methods (no BatchNorm: their reduction over the batch is the loss's gathered keys alone).
TEXT_SPEC = DataSpec("tokens", (10,), vocab_size=40, pad_id=0)
TEXT_METHODS = {"simcse": lambda: SimCSE(TEXT_SPEC, SimCSE.Hparams(), "transformer_tiny")}


DINO_HP = DINO.Hparams(prototypes=24, hidden=32, bottleneck=8, momentum=0.9, local_crops=3, local_size=4)
N_LOCAL = 3


def build_dino() -> DINO:
    """The same freshly initialised DINO on every process and in the test."""
    torch.manual_seed(0)
    return DINO(SPEC, DINO_HP, "small_cnn")


def dino_batches(steps: int = 2) -> list[dict[str, torch.Tensor]]:
    """Fixed global multi-crop batches, crop-major: 2 global crops (2B x 1 x 8 x 8), 3 local (3B x 1 x 4 x 4)."""
    g = torch.Generator().manual_seed(3)
    return [{"global": torch.randn(2 * B, 1, 8, 8, generator=g), "local": torch.randn(N_LOCAL * B, 1, 4, 4, generator=g)}
            for _ in range(steps)]


def dino_local(batch: dict, r: int, w: int) -> dict:
    """Process r's samples of a crop-major batch: its rows of every crop, still crop-major."""
    b = B // w
    return {k: v.view(-1, B, *v.shape[1:])[:, r * b:(r + 1) * b].reshape(-1, *v.shape[1:]).clone()
            for k, v in batch.items()}


def build(name: str) -> torch.nn.Module:
    """The same freshly initialised method on every process and in the test."""
    torch.manual_seed(0)
    return {**METHODS, **TEXT_METHODS}[name]()


def global_batches(steps: int = 2, name: str = "byol") -> list[dict[str, torch.Tensor]]:
    """Fixed global batches, one per step: B view pairs, or for a text method its make_batch of B sentences
    (ids and the per-sentence dropout masks), drawn once on the global batch."""
    g = torch.Generator().manual_seed(1)
    if name in TEXT_METHODS:
        method = build(name)
        out = []
        for _ in range(steps):
            ids = torch.randint(5, 40, (B, 10), generator=g)
            ids[:, 0] = 1  # [CLS]
            ids[B // 2:, 6:] = 0  # padding in half the rows
            out.append(method.make_batch(ids, g))
        return out
    return [{"v1": torch.randn(B, 1, 8, 8, generator=g), "v2": torch.randn(B, 1, 8, 8, generator=g)}
            for _ in range(steps)]


def embeddings() -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed global embeddings of two views, B x 8, for the losses alone."""
    z = torch.randn(2, B, 8, generator=torch.Generator().manual_seed(2))
    return z[0] + 0.5 * z[1], z[1]  # correlated views, so the cross-correlation is not near 0


def local(batch: dict, r: int, w: int) -> dict:
    """Process r's rows of a global batch."""
    b = B // w
    return {k: v[r * b:(r + 1) * b].clone() for k, v in batch.items()}


def run_steps(model: torch.nn.Module, method: torch.nn.Module, batches: list[dict], r: int, w: int,
              slicer=local) -> dict:
    """SGD steps; per step the state before it, the global mean loss and every trainable parameter's gradient.
    The loop's hook runs before each optimizer step with one step per epoch (DINO: its last layer frozen at step
    0 only)."""
    from selfsup.distributed import mean_over_processes

    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.5)
    record = dict(loss=[], grads=[], before=[])
    for step, batch in enumerate(batches):
        record["before"].append({k: v.clone() for k, v in method.state_dict().items()})
        loss, _ = model(slicer(batch, r, w))
        opt.zero_grad()
        loss.backward()
        record["loss"].append(mean_over_processes(loss.detach()))
        record["grads"].append({n: p.grad.clone() for n, p in method.named_parameters() if p.requires_grad})
        method.before_optimizer_step(step, 1)
        opt.step()
        method.on_step_end(step, 10)
    record["norms"] = sorted({type(m).__name__ for m in method.modules() if "Norm" in type(m).__name__})
    if isinstance(method, BYOL):
        record["target_norms"] = sorted({type(m).__name__ for m in method.target.modules()
                                         if "Norm" in type(m).__name__})
    record["state"] = {k: v.clone() for k, v in method.state_dict().items()}
    return record


class LocalSliceBackward(torch.autograd.Function):
    """A broken gather: all_gather forward, but the backward returns only this process's slice of the gradient,
    without summing over processes (solo-learn #232, lightly #1531)."""

    @staticmethod
    def forward(ctx, x):
        ctx.rows = x.shape[0]
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return torch.cat(out)

    @staticmethod
    def backward(ctx, grad):
        start = dist.get_rank() * ctx.rows
        return grad[start:start + ctx.rows]


def plain_gather(x: torch.Tensor) -> torch.Tensor:
    """A broken gather: other processes' rows as constants (a plain collective autograd cannot see, lightly #1977)."""
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.detach().contiguous())
    out[dist.get_rank()] = x
    return torch.cat(out)


def loss_grads(r: int, w: int) -> dict:
    """Gradients of each loss on this rank's leaf embeddings: with the real gather and the two broken ones."""
    from selfsup.distributed import gather

    # the modules (selfsup.losses exports functions of the same names)
    barlow, vicreg, simcse = (importlib.import_module(f"selfsup.losses.{m}") for m in ("barlow", "vicreg", "simcse"))

    z1, z2 = embeddings()
    b = B // w
    out = {}
    for kind, fn in (("real", gather), ("local_slice", LocalSliceBackward.apply), ("plain", plain_gather)):
        for name, module, loss_fn in (("barlow_twins", barlow, barlow.barlow_twins),
                                      ("vicreg", vicreg, lambda a, c: vicreg.vicreg(a, c)[0]),
                                      ("simcse", simcse, simcse.simcse_loss)):
            real, module.gather = module.gather, fn
            try:
                a = z1[r * b:(r + 1) * b].clone().requires_grad_(True)
                c = z2[r * b:(r + 1) * b].clone().requires_grad_(True)
                loss = loss_fn(a, c)
                loss.backward()
            finally:
                module.gather = real
            out[(name, kind)] = (loss.detach(), a.grad, c.grad)
    return out


def plain_all_sum(x: torch.Tensor) -> torch.Tensor:
    """A broken all_sum: the sum over processes in the forward, but a backward to this process's own term only."""
    total = x.detach().clone()
    dist.all_reduce(total)
    return x + (total - x.detach())


def mocov3_broken(r: int, w: int) -> dict:
    """One DDP step of MoCo v3 (global BatchNorm) under each break, recorded as run_steps records it."""
    from selfsup import Config
    from selfsup.losses import moco_v3
    from selfsup.models import global_bn
    from selfsup.train.parallel import wrap

    breaks = {"local_keys": [(moco_v3, "gather_no_grad", lambda x: x), (moco_v3, "rank", lambda: 0)],
              "plain_all_reduce": [(global_bn, "all_sum", plain_all_sum)]}
    out = {}
    for kind, patches in breaks.items():
        saved = [(module, attr, getattr(module, attr)) for module, attr, _ in patches]
        for module, attr, fn in patches:
            setattr(module, attr, fn)
        try:
            method = build("mocov3")
            model = wrap(method, Config(sync_bn=True), torch.device("cpu"))
            out[kind] = run_steps(model, method, global_batches(1), r, w)
        finally:
            for module, attr, fn in saved:
                setattr(module, attr, fn)
    return out


def joint(out: Path) -> None:
    from selfsup import Config
    from selfsup.distributed import rank, world_size
    from selfsup.train.parallel import wrap

    r, w = rank(), world_size()
    result = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name in METHODS:
            method = build(name)
            model = wrap(method, Config(sync_bn=True), torch.device("cpu"))
            result[name] = run_steps(model, method, global_batches(name=name), r, w)
        for name in TEXT_METHODS:
            method = build(name)
            model = wrap(method, Config(), torch.device("cpu"))
            result[name] = run_steps(model, method, global_batches(name=name), r, w)
        result["loss_grads"] = loss_grads(r, w)
        dino_loss_module = importlib.import_module("selfsup.losses.dino")
        for key, centre_mean in (("dino", dino_loss_module.mean_over_processes), ("dino_local_centre", lambda x: x)):
            real, dino_loss_module.mean_over_processes = dino_loss_module.mean_over_processes, centre_mean
            try:
                method = build_dino()
                model = wrap(method, Config(sync_bn=True), torch.device("cpu"))
                result[key] = run_steps(model, method, dino_batches(), r, w, slicer=dino_local)
            finally:
                dino_loss_module.mean_over_processes = real
        result["mocov3_broken"] = mocov3_broken(r, w)
    result["warnings"] = [f"{c.category.__name__}: {c.message}" for c in caught]
    torch.save(result, out / f"rank{r}.pt")


def spawn(store: Path, out: Path, procs: int = 2, timeout: float = 240) -> None:
    """Run `joint(out)` on `procs` forked processes in one gloo group (dist_workers.spawn's process handling)."""
    import dist_workers

    dist_workers.spawn("dist_joint_workers.joint", store, out, procs=procs, timeout=timeout)
