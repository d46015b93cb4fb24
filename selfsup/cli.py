"""Command line: thin wrappers over selfsup.api. Errors about the user's input print one line and exit 2.

Method choices, method flags (`--temperature ...`, generated from the chosen method's Hparams), optimizer and
backbone choices all come from the registries, so adding a method edits nothing here.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from .config import RESUME_FREE, Config, resume_conflicts
from .distributed import launched_rank
from .errors import SelfSupError
from .methods import canonical_name, get_method, load_plugin, methods
from .methods.hparams import describe_fields, field_sources, field_types
from .models import BACKBONES
from .train.optim import OPTIMIZERS

MAIN_JOB = """With no command, selfsup runs the main job: pretrain the default method (SimCLR) on Fashion-MNIST
with a recipe fitted to the hardware (a small CNN for ~10 minutes on a CPU, ResNet-18 on a GPU), evaluate it
next to the baselines and print the table. `selfsup methods` lists every method with its paper and defaults."""
# Flags of `pretrain` that map one-to-one onto Config fields (None when not given: the Config decides).
CONFIG_FLAGS = tuple(f.name for f in dataclasses.fields(Config) if f.name != "method_args")
HP_PREFIX = "hp__"


def _fraction_list(text: str) -> tuple[float, ...]:
    vals = []
    for part in text.split(","):
        part = part.strip()
        try:
            v = float(part[:-1]) / 100 if part.endswith("%") else float(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"label fraction {part!r} is not a number like 0.1 or 10%") from None
        if not 0 < v <= 1:
            raise argparse.ArgumentTypeError(f"label fraction {part} is not in (0, 1] (or (0%, 100%])")
        vals.append(v)
    return tuple(vals)


def _optimizer_help() -> str:
    return "; ".join(f"{name} {'/'.join(cls.optimizers)}" for name, cls in methods().items())


def _add_method_flags(p: argparse.ArgumentParser, method: str) -> None:
    """One flag per setting of `method`'s Hparams (not given: the method's default)."""
    try:
        cls = get_method(method)
    except SelfSupError:  # reported with its nearest match when the config is resolved
        return
    g = p.add_argument_group(f"{cls.name} settings (for another method's: --method NAME --help)")
    types_ = field_types(cls.Hparams)
    for name, tname, default, text in describe_fields(cls.Hparams):
        flag = "--" + name.replace("_", "-")
        if types_[name] is bool:
            g.add_argument(flag, dest=HP_PREFIX + name, action=argparse.BooleanOptionalAction,
                           default=argparse.SUPPRESS, help=f"{text} (default {default})")
        else:
            plain = tname.isalpha()  # float, int, str: the metavar says it; else the help gives the type
            g.add_argument(flag, dest=HP_PREFIX + name, metavar=tname.upper() if plain else "VALUE",
                           default=argparse.SUPPRESS, help=f"{text}{'' if plain else ': ' + tname} (default {default})")


def _add_pretrain_args(p: argparse.ArgumentParser, method: str) -> None:
    g = p.add_argument_group("what to train")
    g.add_argument("--method", help=f"pretext task: {', '.join(methods())} (default simclr; details: selfsup methods)")
    g.add_argument("--data", help="'fashion-mnist' (default), 'digits', 'fortunes' (text), a folder of PNG/JPEG, a "
                                  ".npy/.npz array, an IDX file, a .txt/.tsv file or a folder of text files")
    g.add_argument("--labels", help="label file (.npy or IDX) for .npy/IDX images; used only by the kNN monitor")
    g.add_argument("--holdout", type=float, help="for a source without a test split: the fraction set aside, before "
                                                 "pretraining, to test on (default 0.2; 0: pretrain on everything)")
    g.add_argument("--vocab-size", type=int, help="text: WordPiece vocabulary size, trained on the pretraining "
                                                  "split only (default 4096)")
    g.add_argument("--seq-len", type=int, help="text: token ids per document, truncated and padded (default 64)")
    g.add_argument("--out", help="run directory (default runs/<method>-<data>-<time>)")
    g.add_argument("--backbone", choices=list(BACKBONES),
                   help="default: the method's, else resnet18 on GPU and small_cnn on CPU")
    g = p.add_argument_group("schedule (defaults come from the method and the hardware)")
    g.add_argument("--steps", type=int, help="training budget in optimizer steps, exactly (the last epoch may be "
                                             "partial; default 1400 on CPU, 23400 on GPU)")
    g.add_argument("--epochs", type=int, help="total epochs instead of a step budget (with --resume: only the run's "
                                              "own, its schedule is kept; 0 saves the untrained model)")
    g.add_argument("--batch-size", type=int, help="samples per step (default 256 CPU / 512 GPU, halved on small data "
                                                  "until an epoch has at least 8 steps)")
    g.add_argument("--optimizer", choices=list(OPTIMIZERS),
                   help=f"default: the method's first; each method's, default first: {_optimizer_help()}")
    g.add_argument("--lr", type=float, help="peak learning rate (default: the method's for the chosen optimizer, "
                                            "scaled by batch/256 for sgd/lars)")
    g.add_argument("--weight-decay", type=float, help="weight decay (never on biases and norm weights)")
    g.add_argument("--warmup", type=float, help="linear warm-up before the cosine decay, as a share of the steps "
                                               "(default 0.05, at most 10 epochs)")
    g.add_argument("--warmup-epochs", type=float,
                   help="warm up for exactly this many epochs (instead of a share of the steps)")
    g.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                   help="a method setting, e.g. --set temperature=0.1 (repeatable; see selfsup methods NAME)")
    _add_method_flags(p, method)
    g = p.add_argument_group("running")
    g.add_argument("--seed", type=int, help="seed for init, epoch order and views (default 0)")
    g.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if present)")
    g.add_argument("--precision", choices=("auto", "bf16", "fp32"),
                   help="training precision: auto (default) = bf16 autocast on GPU, fp32 on CPU; bf16 = autocast "
                        "everywhere (slower on a CPU)")
    g.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the model (GPU; slower start, faster steps)")
    g.add_argument("--knn-every", type=int,
                   help="online kNN monitor every N epochs when labels exist (0: off; default: about 40 times a run)")
    g.add_argument("--save-every", type=int, help="also keep checkpoints/epoch_N.pt every N epochs (default 0: only last)")
    g.add_argument("--threads", type=int, help="CPU threads for torch")
    g.add_argument("--sync-bn", action=argparse.BooleanOptionalAction, default=None,
                   help="under torchrun: BatchNorm statistics over the global batch of every process (default: the "
                        "method's; on for SimCLR)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    _add_folder_args(p, pretrain=True)
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_folder_args(p: argparse.ArgumentParser, pretrain: bool = False) -> None:
    run = "" if pretrain else "; default: the run's"
    g = p.add_argument_group("image folders")
    g.add_argument("--image-size", type=int, help="shorter side resized to N (antialiased), then the centre NxN "
                                                  "(default: the images' own size if they share one of at most "
                                                  f"64 px, else 64{run})")
    if pretrain:
        g.add_argument("--background", help="colour under transparent pixels: a name, #rrggbb or R,G,B "
                                             "(default white)")
    g.add_argument("--skip-bad", action="store_true", default=None,
                   help=f"go on without unreadable images; they are listed in RUN_DIR/skipped.txt{run}")
    g.add_argument("--no-cache", dest="cache", action="store_false", default=None,
                   help="decode the folder again instead of reading (and writing) the decoded-image cache")


def _add_eval_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("evaluation")
    g.add_argument("--fractions", type=_fraction_list, default=(0.01, 0.1, 1.0),
                   help="label fractions, comma-separated, e.g. 1%%,10%%,100%% (default)")
    g.add_argument("--protocols", default="knn,linear,finetune", help="any of knn,linear,finetune (default all)")
    g.add_argument("--no-baselines", action="store_true", help="skip the raw-input and random-init rows")
    g.add_argument("--k", type=int, default=200, help="kNN neighbours of the fixed-protocol column (default 200, "
                                                      "capped at the smallest class)")
    g.add_argument("--temperature-knn", dest="knn_t", type=float, default=0.1, help="kNN vote temperature (default 0.1)")
    g.add_argument("--finetune-epochs", type=int, help="fine-tuning epochs (default 30 GPU / 3 CPU; small label "
                                                       "subsets get at least 500 GPU / 150 CPU steps)")
    g.add_argument("--finetune-max-steps", type=int, help="cap on fine-tuning steps per job (default: none)")
    g.add_argument("--eval-seed", type=int, default=0, help="seed of the label subsets and probes (default 0)")
    g.add_argument("--layer", default="pooled", help="backbone layer to probe: pooled (default, the backbone's "
                   "output), a named one (small_cnn block1-4, resnet layer1-4, mlp hidden1-2), or best: the one "
                   "whose probe validates best, per label fraction, on a split of that fraction's labels (never the "
                   "test split)")
    g.add_argument("--layer-by", choices=("linear", "knn"), default="linear",
                   help="probe that chooses --layer best (default linear)")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="import a module or .py file that registers methods, sources or backbones (repeatable)")


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is the same one-line error (exit 2) as any other bad input."""

    def error(self, message: str):
        raise SelfSupError(message)


def build_parser(method: str = "simclr") -> argparse.ArgumentParser:
    """The parser; `pretrain` carries the flags of `method`'s settings."""
    p = Parser(prog="selfsup", description="Self-supervised pretraining and honest evaluation.", epilog=MAIN_JOB)
    _add_common(p)
    sub = p.add_subparsers(dest="command", metavar="{pretrain,eval,embed,export,bench,methods}")
    pt = sub.add_parser("pretrain", help="pretrain an encoder with a pretext task",
                        description="Pretrain an encoder; writes RUN_DIR/config.yaml, metrics.jsonl, checkpoints/, plots/.")
    _add_pretrain_args(pt, method)
    ev = sub.add_parser("eval", help="evaluate a run's frozen features next to baselines",
                        description="kNN, linear probe and fine-tuning at label fractions, beside the raw input and a "
                                    "random-init encoder of the same architecture. Prints Markdown; writes eval.json/eval.md.")
    ev.add_argument("run_dir", help="a run directory made by 'selfsup pretrain'")
    ev.add_argument("--data", help="labelled data to evaluate on (default: the run's data)")
    ev.add_argument("--labels", help="label file for .npy/IDX data")
    ev.add_argument("--device", default="auto", help="cpu, cuda ... (default: cuda if present)")
    ev.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_folder_args(ev)
    _add_eval_args(ev)
    em = sub.add_parser("embed", help="write a run's features for a data source to .npy/.npz",
                        description="Features in input order: .npy (features only) or .npz (features, labels, paths).")
    em.add_argument("run_dir", help="a run directory made by 'selfsup pretrain'")
    em.add_argument("--data", required=True, help="data to embed: a built-in name or a path")
    em.add_argument("--out", required=True, help="output file, .npy or .npz")
    em.add_argument("--split", default="train", choices=("train", "test"), help="split of a built-in source (default train)")
    em.add_argument("--labels", help="label file for .npy/IDX data")
    em.add_argument("--device", default="auto", help="cpu, cuda ... (default: cuda if present)")
    em.add_argument("--batch-size", type=int, default=1024, help="samples per forward pass (default 1024)")
    em.add_argument("--layer", default="pooled", help="backbone layer: pooled (default), a named one, or best: the "
                                                      "one 'selfsup eval --layer best' chose for this run at "
                                                      "its largest label fraction (100%% by default)")
    _add_folder_args(em)
    ex = sub.add_parser("export", help="write a run's encoder alone (safetensors, config.json, model card[, ONNX])",
                        description="The encoder without heads or optimizer, loadable by selfsup.load, torchvision "
                                    "(ResNets) and onnxruntime; nothing is written on error.")
    ex.add_argument("run_dir", help="a run directory made by 'selfsup pretrain'")
    ex.add_argument("--out", required=True, help="output folder: new, empty, or an earlier export (replaced)")
    ex.add_argument("--format", default="safetensors", help="comma-separated: safetensors (always written), onnx "
                                                            "(needs pip install 'selfsup[onnx]')")
    ex.add_argument("--layer", default="pooled", help="the layer whose features the export gives (default pooled)")
    from .bench.cli import add_bench_parser

    bn = add_bench_parser(sub)
    me = sub.add_parser("methods", help="list the methods with their papers, data, settings and defaults",
                        description="Every registered method; with NAME, each of its settings explained.")
    me.add_argument("name", nargs="?", help="one method to explain in full")
    for s in (pt, ev, em, ex, bn, me):
        _add_common(s)
    return p


def _prescan(argv: list[str]) -> argparse.Namespace:
    """--plugin and --method, read before the real parser is built (the parser depends on both)."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--plugin", action="append", default=[])
    pre.add_argument("--method", default="simclr")
    return pre.parse_known_args(argv)[0]


def _method_args(a: argparse.Namespace) -> dict:
    out = {}
    for item in a.settings:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SelfSupError(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip()] = value
    out.update({k[len(HP_PREFIX):]: v for k, v in vars(a).items() if k.startswith(HP_PREFIX)})
    return out


def _config_from_args(a: argparse.Namespace) -> Config:
    given = {k: getattr(a, k) for k in CONFIG_FLAGS if getattr(a, k) is not None}
    method_args = _method_args(a)
    if a.resume:  # flags that differ from the saved run (all given ones when there is none to compare with)
        saved = Path(a.out or ".") / "config.yaml"
        changed = resume_conflicts(Config.load(saved), given, method_args) if a.out and saved.is_file() else \
            ["--" + k.replace("_", "-") for k in sorted(set(given) - set(RESUME_FREE)) + sorted(method_args)]
        if changed:
            raise SelfSupError(f"--resume continues a run with its saved settings; drop {', '.join(changed)} "
                               "(or give the saved value)")
    return Config(**given, method_args=method_args)


def _folder_kwargs(a: argparse.Namespace) -> dict:
    """eval/embed: the folder flags given (the rest come from the run)."""
    return {k: getattr(a, k) for k in ("image_size", "skip_bad", "cache") if getattr(a, k) is not None}


def _eval_kwargs(a: argparse.Namespace) -> dict:
    protocols = tuple(p.strip() for p in a.protocols.split(",") if p.strip())
    return dict(fractions=a.fractions, protocols=protocols, baselines=not a.no_baselines, k=a.k,
                temperature=a.knn_t, finetune_epochs=a.finetune_epochs, finetune_max_steps=a.finetune_max_steps,
                seed=a.eval_seed, layer=a.layer, layer_by=a.layer_by)


def describe_methods(name: str | None = None) -> str:
    """`selfsup methods [NAME]`: each method's paper, data kind, default backbone, optimizers and settings; with
    NAME, also where each default comes from (the paper and section, reference code, or "ours")."""
    chosen = methods() if name is None else {canonical_name(name): get_method(name)}
    blocks = []
    for key, cls in chosen.items():
        aliases = f" (also {', '.join(cls.aliases)})" if cls.aliases else ""
        opts = {o: f"{o} lr {d.lr:g}{' per 256 samples' if d.per_256 else ''} wd {d.weight_decay:g}"
                   f"{f' betas {d.betas}' if d.betas else ''}" for o, d in cls.optimizers.items()}
        lines = [f"{key}{aliases}: {cls.paper}",
                 f"  data: {cls.modality}   backbone: {cls.backbone_default or 'small_cnn on CPU, resnet18 on GPU'}"]
        fields = describe_fields(cls.Hparams)
        if name is None:
            lines.append(f"  optimizers (first is the default; sgd/lars lr per 256 samples): "
                         f"{', '.join(opts.values())}")
            lines.append("  settings: " + (", ".join(f"{n}={d!r}" for n, _, d, _ in fields) or "none"))
        else:
            lines.append("  optimizers (first is the default; sgd/lars lr per 256 samples):")
            for o, d in cls.optimizers.items():
                lines += [f"    {opts[o]}", f"        from: {d.source or _UNSAID}"]
            sources = field_sources(cls.Hparams)
            for n, t, d, h in fields:
                lines += [f"  --{n.replace('_', '-')} / --set {n}=...  {t}, default {d!r}: {h}",
                          f"        from: {sources[n] or _UNSAID}"]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


_UNSAID = "(the method does not say)"


def _run(argv: list[str] | None) -> int:
    from . import api

    argv = sys.argv[1:] if argv is None else list(argv)
    pre = _prescan(argv)
    for plugin in pre.plugin:
        load_plugin(plugin)
    args = build_parser(pre.method).parse_args(argv)
    if args.command is None:
        run_dir = api.pretrain(Config())
        result = api.evaluate(run_dir)
        print(result["markdown"])
        print(f"\nrun directory: {run_dir}", file=sys.stderr)
        return 0
    progress = False if getattr(args, "no_progress", False) else None
    if args.command == "pretrain":
        run_dir = api.pretrain(_config_from_args(args), resume=args.resume, progress=progress)
        if launched_rank() == 0:  # under torchrun, one line from rank 0
            print(run_dir)
    elif args.command == "eval":
        result = api.evaluate(args.run_dir, args.data, labels=args.labels, device=args.device, progress=progress,
                              **_eval_kwargs(args), **_folder_kwargs(args))
        print(result["markdown"])
    elif args.command == "embed":
        api.embed(args.run_dir, args.data, args.out, split=args.split, labels=args.labels, device=args.device,
                  batch_size=args.batch_size, layer=args.layer, **_folder_kwargs(args))
    elif args.command == "export":
        from .export import export

        print(export(args.run_dir, args.out, args.format, args.layer))
    elif args.command == "bench":
        from .bench.cli import run_bench

        print(run_bench(args, progress)["markdown"])
    elif args.command == "methods":
        print(describe_methods(args.name))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: user-input errors become one line on stderr and exit status 2."""
    try:
        return _run(argv)
    except SelfSupError as e:
        print(f"selfsup: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        from .train.setup import interrupted_note

        print(f"selfsup: interrupted{interrupted_note()}", file=sys.stderr)
        return 130

