"""`selfsup.load(PATH)`: a trained encoder from a run directory or an export folder, taking what a user has.

Loading never unpickles: an export is read with safetensors and JSON, a run's checkpoint with
torch.load(weights_only=True). `.encode(x)` applies the saved preprocessing (the folder source's resize rule,
channels, normalisation, tokenizer) and returns float32 NumPy features, batched, on a chosen device.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import Config
from .data.types import DataSpec
from .errors import SelfSupError
from .models.encoder import Encoder


def _one_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def read_export(folder: Path) -> tuple[Encoder, dict]:
    """The encoder of an export folder, its tensors loaded strictly; one-line errors for a tampered folder."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .rundir import build_method

    try:
        conf = json.loads((folder / "config.json").read_text())
        meta = conf["selfsup"]
        cfg, spec = Config.from_dict(meta["config"]), DataSpec.from_dict(meta["spec"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SelfSupError(f"{folder}/config.json is not a selfsup export's: {_one_line(e)}") from None
    weights = folder / "model.safetensors"
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise SelfSupError(f"cannot read {weights} as safetensors (never unpickled): {_one_line(e)}") from None
    encoder = build_method(cfg, spec).encoder().at_layer(meta["layer"])
    prefix = meta.get("param_prefix", "")
    state = {prefix + k: v for k, v in tensors.items()}
    state.update({prefix + k: tensors[v] for k, v in meta.get("tied", {}).items() if v in tensors})
    own = encoder.backbone.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or extra or wrong:
        what = (f"missing {missing[0].removeprefix(prefix)}" if missing else f"unexpected {extra[0]}" if extra else
                f"{wrong[0].removeprefix(prefix)} has shape {tuple(state[wrong[0]].shape)}, "
                f"expected {tuple(own[wrong[0]].shape)}")
        raise SelfSupError(f"{weights} does not match its config.json: {what}")
    encoder.backbone.load_state_dict(state, strict=True)
    return encoder.eval(), conf


@dataclass
class PretrainedEncoder:
    """A trained encoder and the preprocessing it was trained with. `module` is the torch Encoder."""

    module: Encoder
    spec: DataSpec
    config: Config
    tokenizer: object | None = None
    background: str = "white"

    @property
    def feature_dim(self) -> int:
        return self.module.feature_dim

    def _images(self, x) -> torch.Tensor:
        """A uint8 (or [0, 1] float) batch (N, C, H, W) from paths, PIL images, arrays or tensors."""
        from .data.decode import BadImage, decode, parse_background, resize_crop, standard_mode
        c, h, w = self.spec.shape
        size = h if h == w else None
        bg = parse_background(self.background)
        items = x if isinstance(x, (list, tuple)) else [x]
        if items and all(isinstance(i, (str, Path)) for i in items):
            try:
                return torch.from_numpy(np.stack([decode(str(p), size, c == 1, bg) for p in items]))
            except BadImage as e:
                raise SelfSupError(f"cannot decode an image: {e}") from None
        if items and all(hasattr(i, "convert") and hasattr(i, "size") for i in items):  # PIL images
            from PIL import ImageOps
            arrs = []
            for img in items:
                img = standard_mode(ImageOps.exif_transpose(img), c == 1, bg)
                a = np.asarray(resize_crop(img, size) if size else img, dtype=np.uint8)
                arrs.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
            return torch.from_numpy(np.stack(arrs))
        t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
        if t.dim() == 2 and c == 1:
            t = t[None, None]
        elif t.dim() == 3:
            t = t[None]
        if t.dim() == 4 and t.shape[1] != c and t.shape[-1] == c:
            t = t.permute(0, 3, 1, 2)  # (N, H, W, C) as PIL and NumPy hold images
        if tuple(t.shape[1:]) != self.spec.shape:
            raise SelfSupError(f"images of shape {tuple(t.shape)}; this encoder takes (N, {c}, {h}, {w}) uint8 "
                               "(or image paths / PIL images, resized for it)")
        if t.dtype != torch.uint8 and not t.is_floating_point():
            raise SelfSupError(f"images of dtype {t.dtype}; pass uint8 in [0, 255] or float in [0, 1]")
        return t.contiguous()

    def _tokens(self, x) -> torch.Tensor:
        from .data.tokenize import encode
        if isinstance(x, str):
            x = [x]
        if isinstance(x, (list, tuple)) and all(isinstance(s, str) for s in x):
            return encode(self.tokenizer, list(x))
        t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
        if t.dim() != 2 or t.shape[1] != self.spec.shape[0] or t.is_floating_point():
            raise SelfSupError(f"this text encoder takes a list of strings or int token ids (N, {self.spec.shape[0]})")
        return t.long()

    @torch.no_grad()
    def encode(self, x, batch_size: int = 256, device: str | torch.device | None = "cpu") -> np.ndarray:
        """float32 (N, feature_dim) features of x: images (paths, PIL images, uint8 arrays/tensors (N, C, H, W)
        or (N, H, W, C)) or, for a text encoder, a list of strings."""
        from .device import pick_device
        batch = self._images(x) if self.spec.kind == "image" else self._tokens(x)
        dev = pick_device(None if device is None else str(device))
        module = self.module.to(dev).eval()
        outs = [module(batch[i:i + batch_size].to(dev)).float().cpu() for i in range(0, len(batch), batch_size)]
        return torch.cat(outs).numpy() if outs else np.zeros((0, self.feature_dim), np.float32)


def load(path: str | Path, layer: str | None = None) -> PretrainedEncoder:
    """The encoder of a run directory (RUN_DIR/checkpoints/last.pt) or an export folder (config.json +
    model.safetensors), at its exported layer (or `layer`)."""
    from .data.tokenize import FILENAME, load_tokenizer
    from .export import is_export
    from .rundir import RunPaths, load_run

    path = Path(path)
    if is_export(path):
        encoder, conf = read_export(path)
        cfg, spec = Config.from_dict(conf["selfsup"]["config"]), DataSpec.from_dict(conf["selfsup"]["spec"])
    elif RunPaths(path).last.is_file():
        run = load_run(path)
        encoder, cfg, spec = run.encoder, run.config, run.spec
    else:
        raise SelfSupError(f"{path} is neither a run directory (no checkpoints/last.pt) nor an export folder "
                           "(no selfsup config.json)")
    if layer is not None:
        encoder = encoder.at_layer(layer)
    tok = load_tokenizer(path / FILENAME) if (path / FILENAME).is_file() else None
    if spec.kind == "tokens" and tok is None:
        raise SelfSupError(f"{path} holds a text encoder but no {FILENAME}")
    return PretrainedEncoder(encoder.eval(), spec, cfg, tok, cfg.background)


def export_as_run(folder: str | Path):
    """An export folder as the TrainedRun `embed` reads (no method: the heads were not exported)."""
    from .rundir import TrainedRun

    encoder, conf = read_export(Path(folder))
    meta = conf["selfsup"]
    return TrainedRun(Config.from_dict(meta["config"]), None, encoder, DataSpec.from_dict(meta["spec"]),
                      int(meta["epoch"]), str(meta["data"]))
