"""End-to-end fine-tuning of a copy of an encoder plus a linear head (LP-FT: the head starts as a linear probe)."""
from __future__ import annotations

import copy
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..device import autocast
from ..train.optim import build_optimizer, lr_at
from .features import extract_features
from .linear import fit_linear

PROBE_SAMPLES = 10_000


def finetune(encoder: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
             test_y: torch.Tensor, num_classes: int, device,
             augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
             epochs: int = 10, batch_size: int = 256, lr: float = 0.03, weight_decay: float = 5e-4,
             max_steps: int | None = None, min_steps: int = 0, seed: int = 0, probe_l2: float | None = 1e-3,
             optimizer: str = "sgd") -> float:
    """Fine-tune ``copy.deepcopy(encoder)`` + an ``nn.Linear(feature_dim, num_classes)`` head; return test accuracy.

    The encoder takes raw batches (it prepares them itself, see ``Encoder``). SGD (momentum 0.9, Nesterov;
    or ``optimizer="adamw"``, which Transformers fine-tune with),
    linear warmup (5% of steps) then cosine decay, cross-entropy, bf16 autocast on CUDA.
    ``augment(raw_batch_on_device, generator)`` returns what the encoder takes (for images, floats in [0, 1]);
    without it the raw batch goes in as is. ``min_steps`` raises the step count for small label subsets (a 1%
    subset is a few steps an epoch) and ``max_steps`` caps it (CPU budget). Weight decay skips biases and
    norm parameters. The caller's encoder is never modified. From an untrained encoder this is supervised
    training from scratch.

    LP-FT (Kumar et al. 2022): with ``probe_l2`` the head starts as a logistic regression with that penalty,
    fitted on the copy's frozen features of the training batch, so fine-tuning starts where the linear probe
    ends; a random head's large early gradients would distort the pretrained features first. Before that the
    copy's BatchNorm statistics are re-estimated on the training images: an untrained network still holds the
    initial (0, 1), and its eval-mode features would be a hundred times smaller than what training mode gives,
    so a probe fitted on them would not fit the network it starts. ``probe_l2=None``: a fresh random head, the
    better start for an untrained network (see ``report.FINETUNE_START``, chosen on validation data).
    """
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    fork_devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []

    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(seed)  # head init, dropout, ... reproducible without touching the caller's RNG
        model = copy.deepcopy(encoder).to(device)
        for p in model.parameters():
            p.requires_grad_(True)
        head = nn.Linear(int(model.feature_dim), num_classes).to(device)
        if probe_l2 is not None:  # on at most 10,000 samples: statistics and a starting point, not the result
            some = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(seed))[:PROBE_SAMPLES]
            x_some = train_x[some.to(train_x.device)].to(device)
            torch.optim.swa_utils.update_bn((x_some[i:i + 1024] for i in range(0, len(x_some), 1024)), model)
            probe = fit_linear(extract_features(model, x_some, device), train_y[some.to(train_y.device)],
                               num_classes, probe_l2)
            with torch.no_grad():  # the probe's standardisation folded into the layer
                w = probe.weight / probe.std
                head.weight.copy_(w)
                head.bias.copy_(probe.bias - (w * probe.mean).sum(1))
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        opt = build_optimizer(optimizer, nn.ModuleList([model, head]), lr, weight_decay, nesterov=True)

        x_all = train_x.to(device)
        y_all = train_y.to(device).long()
        n = x_all.shape[0]
        bs = min(batch_size, n)
        steps_per_epoch = max(1, n // bs)  # drop the ragged last batch (BatchNorm and tiny batches)
        total = max(epochs * steps_per_epoch, int(min_steps))
        if max_steps is not None:
            total = min(total, int(max_steps))
        total = max(1, total)
        warmup = max(1, round(0.05 * total))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_at(step, total, warmup, 1.0))

        model.train()
        head.train()
        step = 0
        while step < total:
            perm = torch.randperm(n, generator=gen, device=device)
            for b in range(steps_per_epoch):
                if step >= total:
                    break
                idx = perm[b * bs:(b + 1) * bs]
                xb = x_all[idx]
                x = augment(xb, gen) if augment is not None else xb
                with autocast(device):
                    logits = head(model(x))
                loss = F.cross_entropy(logits.float(), y_all[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1

        feats = extract_features(model, test_x, device)
        with torch.no_grad():
            pred = head.eval()(feats).argmax(1)
        return (pred == test_y.to(device)).float().mean().item()
