"""Command line: thin wrappers over selfsup.api. Errors about the user's input print one line and exit 2."""
from __future__ import annotations

import argparse
import sys

from .config import Config
from .errors import SelfSupError
from .methods import METHODS
from .models import BACKBONES

MAIN_JOB = """With no command, selfsup runs the main job: pretrain the default method (SimCLR) on Fashion-MNIST
with a recipe fitted to the hardware (a small CNN for ~10 minutes on a CPU, ResNet-18 on a GPU), evaluate it
next to the baselines and print the table."""


def _fraction_list(text: str) -> tuple[float, ...]:
    vals = []
    for part in text.split(","):
        part = part.strip()
        v = float(part[:-1]) / 100 if part.endswith("%") else float(part)
        if not 0 < v <= 1:
            raise argparse.ArgumentTypeError(f"label fraction {part} is not in (0, 1] (or (0%, 100%])")
        vals.append(v)
    return tuple(vals)


def _add_pretrain_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("what to train")
    g.add_argument("--method", default="simclr", help=f"pretext task: {', '.join(METHODS)} (default simclr)")
    g.add_argument("--data", default="fashion-mnist",
                   help="images: 'fashion-mnist', 'digits', a folder of PNG/JPEG, a .npy/.npz array or an IDX file")
    g.add_argument("--labels", help="label file (.npy or IDX) for .npy/IDX images; used only by the kNN monitor")
    g.add_argument("--out", help="run directory (default runs/<method>-<data>-<time>)")
    g.add_argument("--backbone", choices=BACKBONES, help="default: resnet18 on GPU, small_cnn on CPU (mlp for autoencoder)")
    g = p.add_argument_group("schedule (defaults come from the method and the hardware)")
    g.add_argument("--epochs", type=int, help="total epochs (with --resume: the new total); default 200 GPU / 6 CPU")
    g.add_argument("--batch-size", type=int, help="images per step (default 512 GPU / 256 CPU)")
    g.add_argument("--optimizer", choices=("sgd", "lars", "adamw"), help="default per method: lars SimCLR, sgd MoCo, adamw AE")
    g.add_argument("--lr", type=float, help="peak learning rate (default: the method's, scaled by batch/256 for sgd/lars)")
    g.add_argument("--weight-decay", type=float, help="weight decay (never on biases and norm weights)")
    g.add_argument("--warmup-epochs", type=float, default=2.0, help="linear warmup before the cosine decay (default 2)")
    g = p.add_argument_group("method settings")
    g.add_argument("--temperature", type=float, help="softmax temperature of the contrastive loss")
    g.add_argument("--proj-hidden", type=int, help="projector hidden width (default 2048)")
    g.add_argument("--proj-dim", type=int, help="projector output width (default 128)")
    g.add_argument("--queue-size", type=int, help="MoCo: number of queued negative keys (default 4096)")
    g.add_argument("--momentum", type=float, help="MoCo: key-encoder EMA momentum (default 0.99)")
    g = p.add_argument_group("running")
    g.add_argument("--seed", type=int, default=0, help="seed for init, epoch order and views (default 0)")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda if present)")
    g.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="training precision: auto = bf16 autocast on GPU, fp32 on CPU; bf16 = autocast everywhere "
                        "(slower on a CPU)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model (GPU; slower start, faster steps)")
    g.add_argument("--knn-every", type=int, default=None,
                   help="online kNN monitor every N epochs when labels exist (0: off; default 1 on CPU, 5 on GPU)")
    g.add_argument("--save-every", type=int, default=0, help="also keep checkpoints/epoch_N.pt every N epochs (0: only last)")
    g.add_argument("--threads", type=int, help="CPU threads for torch")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_eval_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("evaluation")
    g.add_argument("--fractions", type=_fraction_list, default=(0.01, 0.1, 1.0),
                   help="label fractions, comma-separated, e.g. 1%%,10%%,100%% (default)")
    g.add_argument("--protocols", default="knn,linear,finetune", help="any of knn,linear,finetune (default all)")
    g.add_argument("--no-baselines", action="store_true", help="skip the raw-pixel and random-init rows")
    g.add_argument("--k", type=int, default=200, help="kNN neighbours (default 200)")
    g.add_argument("--temperature-knn", dest="knn_t", type=float, default=0.1, help="kNN vote temperature (default 0.1)")
    g.add_argument("--linear-epochs", type=int, help="linear-probe epochs (default 100 GPU / 30 CPU)")
    g.add_argument("--finetune-epochs", type=int, help="fine-tuning epochs (default 30 GPU / 3 CPU; small label subsets get at least 500 GPU / 150 CPU steps)")
    g.add_argument("--finetune-max-steps", type=int, default=-1,
                   help="cap on fine-tuning steps per job (default none on GPU, 150 on CPU; 0 = no cap)")
    g.add_argument("--eval-seed", type=int, default=0, help="seed of the label subsets and probes (default 0)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="selfsup", description="Self-supervised pretraining and honest evaluation.",
                                epilog=MAIN_JOB)
    sub = p.add_subparsers(dest="command", metavar="{pretrain,eval,embed}")
    pt = sub.add_parser("pretrain", help="pretrain an encoder with a pretext task",
                        description="Pretrain an encoder; writes RUN_DIR/config.yaml, metrics.jsonl, checkpoints/, plots/.")
    _add_pretrain_args(pt)
    ev = sub.add_parser("eval", help="evaluate a run's frozen features next to baselines",
                        description="kNN, linear probe and fine-tuning at label fractions, beside raw pixels and a "
                                    "random-init encoder of the same architecture. Prints Markdown; writes eval.json/eval.md.")
    ev.add_argument("run_dir", help="a run directory made by 'selfsup pretrain'")
    ev.add_argument("--data", help="labelled data to evaluate on (default: the run's data)")
    ev.add_argument("--labels", help="label file for .npy/IDX data")
    ev.add_argument("--device", default="auto", help="cpu, cuda ... (default: cuda if present)")
    ev.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_eval_args(ev)
    em = sub.add_parser("embed", help="write a run's features for a data source to .npy/.npz",
                        description="Features in input order: .npy (features only) or .npz (features, labels, paths).")
    em.add_argument("run_dir", help="a run directory made by 'selfsup pretrain'")
    em.add_argument("--data", required=True, help="images to embed: a built-in name or a path")
    em.add_argument("--out", required=True, help="output file, .npy or .npz")
    em.add_argument("--split", default="train", choices=("train", "test"), help="split of a built-in source (default train)")
    em.add_argument("--labels", help="label file for .npy/IDX data")
    em.add_argument("--device", default="auto", help="cpu, cuda ... (default: cuda if present)")
    em.add_argument("--batch-size", type=int, default=1024, help="images per forward pass (default 1024)")
    return p


def _config_from_args(a: argparse.Namespace) -> Config:
    return Config(method=a.method, data=a.data, labels=a.labels, out=a.out, epochs=a.epochs, backbone=a.backbone,
                  batch_size=a.batch_size, optimizer=a.optimizer, lr=a.lr, weight_decay=a.weight_decay,
                  warmup_epochs=a.warmup_epochs, temperature=a.temperature, proj_hidden=a.proj_hidden,
                  proj_dim=a.proj_dim, queue_size=a.queue_size, momentum=a.momentum, seed=a.seed, device=a.device,
                  precision=a.precision, compile=a.compile, knn_every=a.knn_every, save_every=a.save_every,
                  threads=a.threads)


def _eval_kwargs(a: argparse.Namespace) -> dict:
    protocols = tuple(p.strip() for p in a.protocols.split(",") if p.strip())
    return dict(fractions=a.fractions, protocols=protocols, baselines=not a.no_baselines, k=a.k,
                temperature=a.knn_t, linear_epochs=a.linear_epochs, finetune_epochs=a.finetune_epochs,
                finetune_max_steps=None if a.finetune_max_steps == 0 else a.finetune_max_steps, seed=a.eval_seed)


def _run(argv: list[str] | None) -> int:
    from . import api

    args = build_parser().parse_args(argv)
    if args.command is None:
        run_dir = api.pretrain(Config())
        result = api.evaluate(run_dir)
        print(result["markdown"])
        print(f"\nrun directory: {run_dir}", file=sys.stderr)
        return 0
    progress = False if getattr(args, "no_progress", False) else None
    if args.command == "pretrain":
        run_dir = api.pretrain(_config_from_args(args), resume=args.resume, progress=progress)
        print(run_dir)
    elif args.command == "eval":
        result = api.evaluate(args.run_dir, args.data, labels=args.labels, device=args.device, progress=progress,
                              **_eval_kwargs(args))
        print(result["markdown"])
    elif args.command == "embed":
        api.embed(args.run_dir, args.data, args.out, split=args.split, labels=args.labels, device=args.device,
                  batch_size=args.batch_size)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: user-input errors become one line on stderr and exit status 2."""
    try:
        return _run(argv)
    except SelfSupError as e:
        print(f"selfsup: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("selfsup: interrupted; the last finished epoch is in checkpoints/last.pt (continue with --resume)",
              file=sys.stderr)
        return 130
