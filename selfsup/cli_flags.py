"""The flags of `selfsup pretrain`, `eval` and `embed`, in groups; a method's own flags come from its Hparams
(generated, so adding a method edits nothing here). cli.py builds the parser from these groups."""
from __future__ import annotations

import argparse

from .errors import SelfSupError
from .methods import get_method, methods
from .methods.hparams import describe_fields, field_types
from .models.backbones import backbone_help
from .train.optim import OPTIMIZERS

HP_PREFIX = "hp__"  # dest prefix of a method's own flags: cli.py gathers them into Config.method_args


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
    g.add_argument("--data", action="append",
                   help="'fashion-mnist' (default), 'digits', 'fortunes' (text), a folder of PNG/JPEG, a .npy/.npz "
                        "array, an IDX file, a .txt/.tsv file (or .gz/.dz) or a folder of text files. Text: repeat "
                        "to pretrain on the union of several sources (each labelled one's holdout kept out)")
    g.add_argument("--labels", help="label file (.npy or IDX) for .npy/IDX images; used only by the kNN monitor")
    g.add_argument("--holdout", type=float, help="for a source without a test split: the fraction set aside, before "
                                                 "pretraining, to test on (default 0.2; 0: pretrain on everything)")
    g.add_argument("--vocab-size", type=int, help="text: WordPiece vocabulary size, trained on the pretraining "
                                                  "split only (default 4096)")
    g.add_argument("--seq-len", type=int, help="text: token ids per document, truncated and padded (default 64)")
    g.add_argument("--out", help="run directory (default runs/<method>-<data>-<time>)")
    g.add_argument("--backbone", metavar="NAME",
                   help=f"one of {backbone_help()} (timm:NAME: any timm model, e.g. timm:resnet18, built with "
                        "num_classes=0 and the data's channels; pip install 'selfsup[timm]'); default: the "
                        "method's, else resnet18 on GPU and small_cnn on CPU")
    g.add_argument("--init", metavar="RUN_DIR",
                   help="start the encoder from another run's (continued pretraining, e.g. SimCSE on an MLM run); "
                        "its backbone and, for text, its tokenizer are taken, the heads start fresh")
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
    g.add_argument("--memory-budget", metavar="SIZE",
                   help="memory the training data may take on the device, e.g. 2GiB or 500MB (default: half the "
                        "free memory of the GPU, or of the host shared by its processes); larger data is streamed "
                        "from disk, a memory-mapped .npy or the folder cache, a window at a time")
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
                   "output), a named one (small_cnn block1-4, resnet layer1-4, mlp hidden1-2, timm:NAME the "
                   "modules of its feature_info, e.g. layer1-4), or best: the one "
                   "whose probe validates best, per label fraction, on a split of that fraction's labels (never the "
                   "test split)")
    g.add_argument("--layer-by", choices=("linear", "knn"), default="linear",
                   help="probe that chooses --layer best (default linear)")
    g.add_argument("--no-plots", action="store_true",
                   help="skip RUN_DIR/plots/embedding_map.png (UMAP if umap-learn is installed, else t-SNE, of up to "
                        "2,000 test embeddings) and the nearest-neighbour grid (neighbours.png, or .md for text)")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="import a module or .py file that registers methods, sources or backbones (repeatable)")
