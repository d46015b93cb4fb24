"""One training loop for every method: device, precision, compile, schedule, checkpoints, resume, logging."""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..config import Config, warmup_steps
from ..data import Dataset, spec_of
from ..data.stream import EpochOrder
from ..device import autocast, pick_device, use_bf16
from ..distributed import mean_over_processes, rank, session, world_size
from ..errors import SelfSupError
from ..data.splits import stratified_holdout
from ..rundir import RunPaths, build_method, checkpoint_spec
from .parallel import check_identical, check_world, open_run_all, rank_seed, shard, sync_buffers, wrap
from .init import init_weights, load_backbone
from .setup import OpenRun, say_recipe
from .checkpoint import CheckpointWriter, unwrapped
from .feed import open_feed
from .logging import append_jsonl, plot_curves, truncate_epochs
from .monitor import CollapseMonitor, KNNMonitor, collapse_warning
from .optim import build_optimizer, lr_at

CHECK_EVERY = 25  # steps between finiteness checks (each one is a device sync)
PLOT_EVERY_S = 30.0  # redraw the PNG curves at most this often, and after the last epoch (a redraw takes ~0.4 s)


class TrainingDiverged(SelfSupError):
    """The loss became NaN or infinite."""


def _seed(seed: int, epoch: int, stream: int) -> int:
    """A distinct, reproducible seed per (run seed, epoch, random stream): resume needs no RNG state."""
    return (seed * 1_000_003 + epoch * 7919 + stream * 104_729) % (2**63 - 1)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _channels_last(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """4-D float tensors (image batches) in channels_last, the faster conv layout on GPU and CPU; others as they are."""
    return {k: v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 and v.is_floating_point() else v
            for k, v in batch.items()}


def pretrain(cfg: Config, *, resume: bool = False, train: Dataset | None = None,
             monitor: tuple[Dataset, Dataset] | None = None, progress: bool | None = None,
             on_epoch_end: Callable[[int], None] | None = None) -> Path:
    """Pretrain cfg.method on cfg.data and return the run directory.

    With resume=True the run continues from RUN_DIR/checkpoints/last.pt on its saved schedule (cfg.epochs, if
    set, must be the run's own: a schedule spans the whole run). The run ends after exactly cfg.steps optimizer
    steps once resolved, inside its last epoch when the steps end there.
    `train` and `monitor` (bank, queries) may be given directly instead of loaded from cfg.data.
    Under torchrun every process calls this; cfg.batch_size is the global batch (see train/parallel.py).
    """
    with session(pick_device(cfg.device)) as device:
        run = open_run_all(cfg, resume, device, train)
        try:
            return _train(run, device, monitor, progress, on_epoch_end)
        finally:
            run.lock.release()


def _train(run: OpenRun, device: torch.device, monitor: tuple[Dataset, Dataset] | None, progress: bool | None,
           on_epoch_end: Callable[[int], None] | None) -> Path:
    cfg, paths, train, ckpt = run.cfg, run.paths, run.train, run.ckpt
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    bs = check_world(cfg, len(train))  # this process's part of each global batch
    lead, world = rank() == 0, world_size()  # rank 0 alone logs, plots, monitors and saves
    mine = shard(len(train), _seed(cfg.seed, 0, 2))  # None on one process: all the data
    spec = spec_of(train) if ckpt is None else checkpoint_spec(ckpt)
    if spec.kind != train.kind or tuple(train.x.shape[1:]) != spec.shape:
        raise SelfSupError(f"data {train.kind} {tuple(train.x.shape[1:])} differs from the run's {spec.describe()}")

    init = None
    if ckpt is None and cfg.init:  # --init: the backbone starts as another run's encoder (train/init.py)
        spec, init = init_weights(cfg, spec)
    # channels_last pays on GPU and on CPU alike (measured 1.2-1.5x on the CPU's small CNN); 4-D weights only.
    method = build_method(cfg, spec)
    if init is not None:
        load_backbone(method, cfg, init)
    method = method.to(device).to(memory_format=torch.channels_last)
    model = wrap(method, cfg, device)  # DistributedDataParallel on several processes, else the method itself
    defaults = type(method).optimizers.get(cfg.optimizer)  # a method's paper may set AdamW's betas (MAE)
    optimizer = build_optimizer(cfg.optimizer, method, cfg.lr, cfg.weight_decay,
                                betas=defaults.betas if defaults else None)
    start_epoch, step = 0, 0
    if ckpt is not None:
        method.load_state_dict(unwrapped(ckpt["model"]))
        optimizer.load_state_dict(ckpt["optimizer"])
        start_epoch, step = int(ckpt["epoch"]), int(ckpt["step"])
        if lead:
            truncate_epochs(paths.metrics, start_epoch)  # records of epochs after the checkpoint are redone
            done = ": finished, nothing to train" if start_epoch >= cfg.epochs else ""
            _say(f"resuming {paths.root} at epoch {start_epoch}/{cfg.epochs} (step {step}/{cfg.steps}){done}")
    forward = torch.compile(model) if cfg.compile else model
    amp = use_bf16(cfg.precision, device)

    # The whole split (this process's shard) on the device, a batch an index into it; or, when it is over the
    # memory budget, streamed a window at a time (data/stream.py). The loop sees batches either way.
    source, feed_note = open_feed(cfg, train, device, mine, ckpt.get("feed") if ckpt else None)
    steps_per_epoch = source.samples // bs
    knn = None
    if lead and cfg.knn_every > 0 and (monitor is not None or train.labels is not None):
        knn = KNNMonitor(*(monitor or _default_monitor(cfg, train, device, capped=source.kind == "streamed")),
                         device=device)
    collapse = CollapseMonitor(train, cfg.seed, device) if lead else None  # every epoch: one forward of 512
    if ckpt is None and lead:
        monitor_note = (f"every {cfg.knn_every} epoch(s), k={knn.k}, bank {len(knn.bank)}, {len(knn.queries)} "
                        f"queries, all from the pretraining data" if knn else "off")
        say_recipe(run, spec.describe(), steps_per_epoch, method.describe(), monitor_note, feed_note)

    if ckpt is None and lead and method.view_recipe is not None:
        from ..views.preview import save_preview

        save_preview(train.read(torch.arange(min(8, len(train)))), method.view_recipe, paths.plots / "views.png",
                     mean=spec.mean, std=spec.std, generator=torch.Generator().manual_seed(cfg.seed))

    def snapshot(epoch: int, step: int) -> dict:
        return dict(model=method.state_dict(), optimizer=optimizer.state_dict(), epoch=epoch, step=step,
                    config=cfg.to_dict(), spec=spec.to_dict(), data_name=train.name, world_size=world,
                    feed=source.record())

    total_steps = min(cfg.steps, cfg.epochs * steps_per_epoch)  # exactly the budget: the last epoch may be partial
    warmup = warmup_steps(cfg, steps_per_epoch)
    show = lead and (sys.stderr.isatty() if progress is None else progress)
    last_good = start_epoch
    writer = CheckpointWriter()
    last_plot = -math.inf
    try:
        for epoch in range(start_epoch, cfg.epochs):
            method.train()
            t0 = time.perf_counter()
            order = EpochOrder(blocks=_seed(cfg.seed, epoch, 3), samples=rank_seed(_seed(cfg.seed, epoch, 0)))
            gen = torch.Generator(device=device).manual_seed(rank_seed(_seed(cfg.seed, epoch, 1)))
            loss_sum = torch.zeros((), device=device)
            log_sums: dict[str, torch.Tensor] = {}  # the method's logs, summed on the device (no sync per step)
            steps_now = min(steps_per_epoch, total_steps - step)  # fewer in a partial last epoch
            bar = tqdm(total=steps_now, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not show, leave=False,
                       file=sys.stderr, dynamic_ncols=True)
            for i, x in enumerate(source.batches(order, steps_now, bs)):
                lr = lr_at(step, total_steps, warmup, cfg.lr)
                for g in optimizer.param_groups:
                    g["lr"] = lr
                with torch.no_grad():
                    batch = _channels_last(method.make_batch(x, gen))  # views, labels, masks: made on the device
                with autocast(device, amp):
                    loss, logs = forward(batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if method.grad_clip is not None:  # the method's (MLM: BERT's 1.0), on DDP's all-reduced gradients
                    torch.nn.utils.clip_grad_norm_(method.parameters(), method.grad_clip)
                method.before_optimizer_step(step, steps_per_epoch)  # DINO: its last layer frozen in epoch 1
                optimizer.step()
                method.on_step_end(step, total_steps)  # EMA teachers move after the optimizer step
                loss_sum += loss.detach().float()
                for k, v in logs.items():
                    log_sums[k] = log_sums.get(k, 0.0) + v.detach().float()
                step += 1
                if (i + 1) % CHECK_EVERY == 0 or i + 1 == steps_now:
                    # NaN/inf stick in the sum, so checking it is enough; every process sees the same mean
                    mean_loss = mean_over_processes(loss_sum).item() / (i + 1)
                    if not math.isfinite(mean_loss):
                        _diverged(paths, epoch, step, last_good, mean_loss)
                    bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.3g}")
                bar.update(1)
            bar.close()
            seconds = time.perf_counter() - t0
            loss = mean_over_processes(loss_sum).item() / steps_now
            record = dict(event="epoch", epoch=epoch + 1, step=step, loss=loss, lr=lr, seconds=round(seconds, 3),
                          images_per_s=round(steps_now * bs * world / seconds, 1), data=source.kind)
            if steps_now < steps_per_epoch:
                record["epoch_steps"] = steps_now  # the partial last epoch of a step budget
            if log_sums:
                record["logs"] = {k: float(mean_over_processes(v)) / steps_now for k, v in log_sums.items()}
            if method.counted_log in record.get("logs", {}):  # e.g. MLM's real tokens a second, every process's
                record[f"{method.counted_log}_per_s"] = round(record["logs"][method.counted_log] * steps_now * world
                                                              / seconds, 1)
            if world > 1:  # every process holds rank 0's weights, or the run stops here
                sync_buffers(method)
                record.update(processes=world, weights_sha256=check_identical(method))
            if not lead:
                if on_epoch_end is not None:
                    on_epoch_end(epoch + 1)
                continue
            if knn is not None and ((epoch + 1) % cfg.knn_every == 0 or epoch + 1 == cfg.epochs):
                record.update(knn=knn(method.encoder()), knn_k=knn.k, knn_bank=len(knn.bank),
                              knn_queries=len(knn.queries))
            record["collapse"] = collapse(method.encoder())
            if warning := collapse_warning(record["collapse"]):
                _say(f"epoch {epoch + 1}: {warning}")
            # Written on a background thread while the next epoch trains; the copy to the CPU happens here.
            periodic = cfg.save_every and (epoch + 1) % cfg.save_every == 0
            writer.save(snapshot(epoch + 1, step), paths.last,
                        *([paths.checkpoints / f"epoch_{epoch + 1:04d}.pt"] if periodic else []))
            last_good = epoch + 1
            record["wall_s"] = round(time.perf_counter() - t0, 3)
            append_jsonl(paths.metrics, record)
            if time.perf_counter() - last_plot >= PLOT_EVERY_S or epoch + 1 == cfg.epochs:
                plot_curves(paths.metrics, paths.plots)
                last_plot = time.perf_counter()
            counted = method.counted_log  # shown as a rate (tokens/s), not its per-step count
            extra = "".join(f"  {k} {v:.3g}" for k, v in record.get("logs", {}).items() if k != counted)
            knn_txt = f"  kNN {100 * record['knn']:.1f}%" if "knn" in record else ""
            rate = f", {record[f'{counted}_per_s']:.0f} {counted}/s" if f"{counted}_per_s" in record else ""
            _say(f"epoch {epoch + 1}/{cfg.epochs}  loss {record['loss']:.4f}{extra}{knn_txt}  {seconds:.1f}s "
                 f"({record['images_per_s']:.0f} samples/s{rate})")
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1)
        if ckpt is None and cfg.epochs == 0 and lead:  # --epochs 0 saves the untrained model (a baseline)
            writer.save(snapshot(0, 0), paths.last)
    finally:
        writer.wait()  # the last checkpoint is on disk before we return or raise
    return paths.root


def _diverged(paths: RunPaths, epoch: int, step: int, last_good: int, value: float) -> None:
    if rank() == 0:
        append_jsonl(paths.metrics, dict(event="diverged", epoch=epoch + 1, step=step, loss=value))
    where = f"{paths.last} (epoch {last_good})" if last_good > 0 else "none (no epoch had finished)"
    raise TrainingDiverged(f"loss became {value} in epoch {epoch + 1} (step {step}); training stopped. "
                           f"Last good checkpoint: {where}. Try a lower --lr.")


def _default_monitor(cfg: Config, train: Dataset, device: torch.device, capped: bool = False
                     ) -> tuple[Dataset, Dataset]:
    """kNN monitor data, both parts from the pretraining data (never the test split): queries are a seeded,
    class-balanced 10% of it, the bank the rest. On a CPU (or `capped`: streamed data, larger than memory) a
    10,000-sample bank and 2,000 queries at most keep the monitor to seconds; the final `selfsup eval` uses
    everything."""
    bank_idx, query_idx = stratified_holdout(train.labels, 0.1, cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    if device.type != "cuda" or capped:
        bank_idx = bank_idx[torch.randperm(len(bank_idx), generator=g)[:10000]]
        query_idx = query_idx[torch.randperm(len(query_idx), generator=g)[:2000]]
    return train.subset(bank_idx), train.subset(query_idx)
