"""The `selfsup bench` subcommand: its flags and the call into selfsup.bench."""
from __future__ import annotations

import argparse


def _fraction(text: str) -> float:
    text = text.strip()
    return float(text[:-1]) / 100 if text.endswith("%") else float(text)


def add_bench_parser(sub) -> argparse.ArgumentParser:
    """Add `bench` to the subcommands `sub`; returns its parser."""
    bn = sub.add_parser("bench", help="pretrain and evaluate several methods under one budget, in one table",
                        description="Pretrain each method with the same budget and evaluate it with the same "
                                    "protocol (kNN, linear, 1%-label linear, fine-tuning; each at its best layer "
                                    "chosen on validation data) beside raw pixels and random init. Writes "
                                    "OUT/bench.md, OUT/bench.png, OUT/bench.json; rerun with the same --out to "
                                    "resume (finished runs and evaluations are reused).")
    bn.add_argument("--methods", help="comma-separated methods (default: every registered method for the data's "
                                      "kind; see selfsup methods)")
    bn.add_argument("--data", default="fashion-mnist", help="labelled data source (default fashion-mnist)")
    bn.add_argument("--out", default="runs/bench", help="bench directory; runs go to OUT/<method> (default runs/bench)")
    g = bn.add_argument_group("budget (one of them; default: the hardware recipe's steps)")
    g.add_argument("--steps", type=int, help="optimizer steps per method (exactly; the last epoch may be partial)")
    g.add_argument("--epochs", type=int, help="epochs per method")
    g.add_argument("--minutes", type=float, help="minutes of training per method: 20 steps of a scratch run are "
                                                 "timed and the method trains the steps that fit the budget")
    g = bn.add_argument_group("protocol")
    g.add_argument("--backbone", help="one backbone for every method (default: each method's own default)")
    g.add_argument("--layer", default="best", help="best (default: chosen on validation), pooled, or a named layer")
    g.add_argument("--finetune-fraction", type=_fraction, default=0.01,
                   help="label fraction the fine-tuning column uses (default 1%%)")
    g.add_argument("--finetune-epochs", type=int, help="fine-tuning epochs (default: the hardware's, as eval: 3 "
                                                       "CPU / 30 GPU, at least 150 CPU / 500 GPU steps)")
    g.add_argument("--finetune-max-steps", type=int, help="cap on fine-tuning steps (default: none; a cap shows in "
                                                          "the column's header)")
    g.add_argument("--no-finetune", dest="finetune", action="store_false",
                   help="no fine-tune column (the frozen-feature protocols only)")
    g.add_argument("--seed", type=int, default=0, help="seed of every run and evaluation (default 0)")
    g.add_argument("--device", default="auto", help="cpu, cuda ... (default: cuda if present)")
    g.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    return bn


def run_bench(a: argparse.Namespace, progress) -> dict:
    from .run import bench

    return bench(a.methods, a.data, a.out, steps=a.steps, epochs=a.epochs, minutes=a.minutes, backbone=a.backbone,
                 layer=a.layer, finetune_fraction=a.finetune_fraction, finetune_epochs=a.finetune_epochs,
                 finetune_max_steps=a.finetune_max_steps, finetune=a.finetune, device=a.device, seed=a.seed,
                 threads=a.threads, progress=progress)
