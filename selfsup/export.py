"""`selfsup export`: a run's encoder alone, as files other code can load without selfsup's pickles.

The folder holds `model.safetensors` (the backbone's tensors, heads and optimizer dropped, tied tensors once),
`config.json` (timm's layout: architecture, num_features, pretrained_cfg with input size, mean and std; selfsup's
own keys under "selfsup" rebuild the encoder exactly), `README.md` (a model card), `tokenizer.json` for text,
and with the onnx format `model.onnx` (eval mode, dynamic batch axis, checked against PyTorch with onnxruntime).
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch

from .data.tokenize import FILENAME as TOKENIZER_FILE
from .errors import SelfSupError
from .models.backbones import ResNet
from .models.encoder import Encoder
from .rundir import TrainedRun, load_run

FORMATS = ("safetensors", "onnx")
EXPORT_VERSION = 1
ONNX_OPSET = 17
ONNX_ATOL = 1e-4  # max |onnxruntime - PyTorch| accepted on float32 features


def param_prefix(backbone: torch.nn.Module) -> str:
    """What to strip from the backbone's parameter names so they are the reference library's own.

    ResNet wraps torchvision's model as `.net`: without "net." the names are torchvision's, so
    `torchvision.models.resnet18()` (with the stem config.json names and fc = Identity) loads them strictly.
    A backbone may declare its own `export_prefix` (timm:NAME: "net.", leaving timm's names).
    Names are mapped as whole prefixes (str.removeprefix), never character sets (lstrip).
    """
    return "net." if isinstance(backbone, ResNet) else getattr(backbone, "export_prefix", "")


def backbone_tensors(backbone: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """({name: tensor} with each storage once, {tied name: the name it shares with}); names without the prefix."""
    prefix = param_prefix(backbone)
    tensors, tied, seen = {}, {}, {}
    for name, t in backbone.state_dict(keep_vars=False).items():
        name = name.removeprefix(prefix)
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))
        if t.numel() and key in seen:
            tied[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = t.detach().cpu().contiguous().clone()
    return tensors, tied


def is_export(folder: Path) -> bool:
    """Whether `folder` holds a selfsup export (its config.json says so)."""
    cfg = folder / "config.json"
    try:
        return cfg.is_file() and "selfsup" in json.loads(cfg.read_text())
    except (OSError, ValueError):
        return False


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not is_export(out))):
        raise SelfSupError(f"--out {out} exists and is not an empty folder or an earlier export; choose another")


def parse_formats(formats) -> tuple[str, ...]:
    """("safetensors", ...) from "safetensors,onnx" or a sequence; safetensors always (config.json needs it)."""
    if isinstance(formats, str):
        formats = [f.strip() for f in formats.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise SelfSupError(f"unknown export format {bad[0]!r}; choose from {', '.join(FORMATS)}")
    if "onnx" in formats:
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError:
            raise SelfSupError("--format onnx needs the onnx and onnxruntime packages: "
                               "pip install 'selfsup[onnx]'") from None
    return tuple(f for f in FORMATS if f == "safetensors" or f in formats)


def export_config(run: TrainedRun, encoder: Encoder, tied: dict[str, str], has_teacher: bool) -> dict:
    """config.json: timm's keys for the architecture and preprocessing, selfsup's under "selfsup"."""
    spec, cfg = run.spec, run.config
    bb = encoder.backbone
    stem = None
    if isinstance(bb, ResNet):
        stem = "small: conv1 3x3 stride 1, no maxpool" if isinstance(bb.net.maxpool, torch.nn.Identity) \
            else "imagenet: conv1 7x7 stride 2, maxpool 3x3 stride 2"
    d = {"architecture": getattr(bb, "architecture", cfg.backbone),  # timm:NAME: timm's own NAME
         "num_classes": 0, "num_features": encoder.feature_dim,
         "global_pool": "avg" if encoder.layer == "pooled" else None, "feature_layer": encoder.layer}
    if spec.kind == "image":
        d["pretrained_cfg"] = {"input_size": list(spec.shape), "mean": list(encoder.spec.mean),
                               "std": list(encoder.spec.std), "interpolation": "bilinear", "crop_pct": 1.0,
                               "crop_mode": "center", "in_chans": spec.shape[0]}
        if stem:
            d["stem"] = stem
        if hasattr(bb, "model_args"):  # timm: create_model(architecture, pretrained=False, num_classes=0, **model_args)
            d["model_args"] = dict(bb.model_args)
    else:
        d["pretrained_cfg"] = {"seq_len": spec.shape[0], "vocab_size": spec.vocab_size, "pad_id": spec.pad_id,
                               "tokenizer_file": TOKENIZER_FILE}
    d["selfsup"] = {
        "export_version": EXPORT_VERSION, "method": cfg.method, "data": run.data_name, "epoch": run.epoch,
        "layer": encoder.layer, "param_prefix": param_prefix(bb), "tied": tied,
        "weights": ("the online (query/student) backbone that evaluation and embed use; the EMA teacher is not "
                    "exported" if has_teacher else "the backbone that evaluation and embed use"),
        "input": ("uint8 images (B, C, H, W), or float in [0, 1]; selfsup and model.onnx normalise with mean/std "
                  "inside, torchvision loading does not" if spec.kind == "image" else
                  "int64 token ids (B, seq_len) from tokenizer.json"),
        "spec": spec.to_dict(), "config": cfg.to_dict()}
    return d


def write_card(path: Path, run_dir: Path, run: TrainedRun, conf: dict) -> None:
    """README.md: what the encoder is, how it was trained, and the run's eval table when there is one."""
    from .methods import get_method
    cfg, cls = run.config, get_method(run.config.method)
    lines = [f"# {cfg.method} encoder ({cfg.backbone}) from selfsup", "",
             f"- Method: {cfg.method} ({cls.paper or 'no paper'})", f"- Data: {run.data_name} ({run.spec.describe()})",
             f"- Budget: {run.epoch} epochs of {cfg.epochs} planned, batch size {cfg.batch_size}, seed {cfg.seed}",
             f"- Features: {conf['num_features']} from layer `{conf['feature_layer']}`",
             f"- Weights: {conf['selfsup']['weights']}", f"- Input: {conf['selfsup']['input']}", "",
             "Load it: `import selfsup; enc = selfsup.load(\"THIS_FOLDER\"); feats = enc.encode(images)`.", ""]
    table = run_dir / "eval.md"
    lines += ["## Evaluation (from the run's eval.md)", "", table.read_text().strip(), ""] if table.is_file() \
        else ["No evaluation was run before export (`selfsup eval RUN_DIR`).", ""]
    path.write_text("\n".join(lines))


def export(run_dir: str | Path, out: str | Path, formats="safetensors", layer: str = "pooled") -> Path:
    """Write the run's encoder to the folder `out` (see the module docstring); returns `out`.

    Everything is written to a temporary folder first and moved into place at the end: a failure writes nothing.
    """
    from safetensors.torch import save_file

    from .methods.ema import EMATeacher

    run_dir, out = Path(run_dir), Path(out)
    formats = parse_formats(formats)
    _check_out(out)
    run = load_run(run_dir)
    encoder = run.encoder.at_layer(layer).eval()
    has_teacher = any(isinstance(m, EMATeacher) for m in run.method.modules())
    tensors, tied = backbone_tensors(encoder.backbone)
    conf = export_config(run, encoder, tied, has_teacher)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=out.parent))
    try:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if (run_dir / TOKENIZER_FILE).is_file():
            shutil.copyfile(run_dir / TOKENIZER_FILE, tmp / TOKENIZER_FILE)
        if "onnx" in formats:
            from .export_onnx import export_onnx
            conf["selfsup"]["onnx"] = export_onnx(encoder, run, run_dir, tmp / "model.onnx", ONNX_OPSET, ONNX_ATOL)
        (tmp / "config.json").write_text(json.dumps(conf, indent=2))
        write_card(tmp / "README.md", run_dir, run, conf)
        tmp.chmod(0o755)
        for f in tmp.iterdir():
            f.chmod(0o644)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
