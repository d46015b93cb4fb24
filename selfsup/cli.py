"""Command line: thin wrappers over selfsup.api. Errors about the user's input print one line and exit 2.

Method choices, method flags (`--temperature ...`, generated from the chosen method's Hparams), optimizer and
backbone choices all come from the registries, so adding a method edits nothing here.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from .cli_flags import HP_PREFIX, _add_common, _add_eval_args, _add_folder_args, _add_pretrain_args
from .config import RESUME_FREE, Config, resume_conflicts
from .distributed import launched_rank
from .errors import SelfSupError
from .methods import canonical_name, get_method, load_plugin, methods
from .methods.hparams import describe_fields, field_sources

MAIN_JOB = """With no command, selfsup runs the main job: pretrain the default method (SimCLR) on Fashion-MNIST
with a recipe fitted to the hardware (a small CNN for ~10 minutes on a CPU, ResNet-18 on a GPU), evaluate it
next to the baselines and print the table. `selfsup methods` lists every method with its paper and defaults."""
# Flags of `pretrain` that map one-to-one onto Config fields (None when not given: the Config decides).
CONFIG_FLAGS = tuple(f.name for f in dataclasses.fields(Config) if f.name != "method_args")


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
                                    "random-init encoder of the same architecture. Prints Markdown; writes "
                                    "eval.json/eval.md and plots/ (the test embeddings in 2-D, nearest neighbours).")
    ev.add_argument("run_dir", help="a run directory made by 'selfsup pretrain'")
    ev.add_argument("--data", help="labelled data to evaluate on (default: the run's data)")
    ev.add_argument("--labels", help="label file for .npy/IDX data")
    ev.add_argument("--device", default="auto", help="cpu, cuda ... (default: cuda if present)")
    ev.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_folder_args(ev)
    _add_eval_args(ev)
    em = sub.add_parser("embed", help="write a run's features for a data source to .npy/.npz/.parquet",
                        description="Features in input order: .npy (features only), .npz (features, labels, paths) "
                                    "or .parquet (one row a sample: path, label, embedding as a list of floats).")
    em.add_argument("run_dir", help="a run directory made by 'selfsup pretrain'")
    em.add_argument("--data", required=True, help="data to embed: a built-in name or a path")
    em.add_argument("--out", required=True, help="output file: .npy (features), .npz (features, labels, paths) or "
                                                 ".parquet (columns path, label, embedding; needs pyarrow)")
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
    if len(given.get("data", ())) == 1:  # --data is repeatable; one source stays a string in config.yaml
        given["data"] = given["data"][0]
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
                seed=a.eval_seed, layer=a.layer, layer_by=a.layer_by, plots=not a.no_plots)


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

