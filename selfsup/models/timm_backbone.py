"""`--backbone timm:NAME`: any model `timm.create_model(NAME, num_classes=0, in_chans=C)` builds, as a backbone.

timm is an optional extra (`pip install 'selfsup[timm]'`). The model is built without pretrained weights and
without its classifier; `forward` is timm's own pooled output (B, num_features). Its parameters live under
"net.", so an export (which strips that prefix) holds timm's own names and `timm.create_model(NAME,
pretrained=False, num_classes=0, **model_args)` loads it with strict=True. Layers for `--layer` are the modules
timm lists in `feature_info` (e.g. act1, layer1..layer4 for a ResNet; blocks.0..blocks.N for a ViT), read with
forward hooks. Models with a fixed input size (a patch embedding: ViT, DeiT, Swin...) are built for the data's
size (`img_size`, recorded in model_args) and fine-tune as Transformers (AdamW); every other model as a CNN.
"""
from __future__ import annotations

import difflib

import torch
from torch import nn

from ..data.types import DataSpec
from ..errors import SelfSupError
from .backbones import register_backbone_family

PREFIX = "timm"


def _timm():
    try:
        import timm
    except ImportError:
        raise SelfSupError("--backbone timm:NAME needs the timm package: pip install 'selfsup[timm]' "
                           "(or pip install timm)") from None
    return timm


def check_name(name: str) -> str:
    """`name` if timm knows it (a pretrained tag such as resnet18.a1_in1k is allowed), else a one-line error
    naming the closest models."""
    timm = _timm()
    if not name or not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join('timm:' + c for c in close)}?" if close else \
            " (timm.list_models() lists them)"
        raise SelfSupError(f"timm has no model {name!r}{hint}")
    return name


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


class TimmBackbone(nn.Module):
    """A timm model without its classifier; the selfsup backbone contract (see models/backbones.py)."""

    export_prefix = "net."  # stripped on export: the names are then timm's own

    def __init__(self, name: str, spec: DataSpec):
        super().__init__()
        timm = _timm()
        c, h, w = spec.shape
        self.architecture = check_name(name)
        self.model_args = {"in_chans": c}
        try:
            net = timm.create_model(name, pretrained=False, num_classes=0, in_chans=c)
            size = getattr(getattr(net, "patch_embed", None), "img_size", None)
            if size is not None and tuple(size) != (h, w):  # a fixed-size patch embedding: build it for the data
                self.model_args["img_size"] = [h, w]
                net = timm.create_model(name, pretrained=False, num_classes=0, **self.model_args)
        except (TypeError, ValueError, RuntimeError, AssertionError) as e:
            raise SelfSupError(f"timm cannot build {name} for {c}x{h}x{w} images: {_line(e)}") from None
        self.net = net
        self.feature_dim = int(net.num_features)
        self.finetune_family = "transformer" if hasattr(net, "patch_embed") else "cnn"
        self.nhwc = getattr(net, "output_fmt", "NCHW") == "NHWC"
        info = getattr(net, "feature_info", None) or []
        info = info if isinstance(info, list) else []
        self._channels = {d["module"]: int(d["num_chs"]) for d in info if "module" in d and "num_chs" in d}
        self.layer_names = tuple(n for n in self._channels if n != "pooled")
        self._check_size(spec)

    @torch.no_grad()
    def _check_size(self, spec: DataSpec) -> None:
        """One eval-mode forward pass of a blank image: a model that cannot take this size fails here, in one line."""
        was = self.training
        self.eval()
        try:
            out = self(torch.zeros((1, *spec.shape)))
        except (RuntimeError, ValueError, AssertionError, IndexError) as e:
            raise SelfSupError(f"timm model {self.architecture} cannot take {'x'.join(map(str, spec.shape))} "
                               f"images: {_line(e)} (choose another model, or resize with --image-size)") from None
        finally:
            self.train(was)
        if out.dim() != 2 or out.shape[1] != self.feature_dim:
            raise SelfSupError(f"timm model {self.architecture} gives features of shape {tuple(out.shape)}, not "
                               f"(B, {self.feature_dim}) with num_classes=0")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # B x num_features

    def _as_nchw(self, t: torch.Tensor, channels: int | None = None) -> torch.Tensor:
        nhwc = self.nhwc if channels is None else (t.shape[-1] == channels and t.shape[1] != channels)
        return t.permute(0, 3, 1, 2) if t.dim() == 4 and nhwc else t

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"map": (B, C, h, w)} for conv nets or {"tokens": (B, L, D)} for Transformers, and "pooled"."""
        feats = self.net.forward_features(x)
        pooled = self.net.forward_head(feats)  # B x num_features
        if feats.dim() == 4:
            return {"map": self._as_nchw(feats), "pooled": pooled}
        return {"tokens": feats, "pooled": pooled}

    def forward_layers(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each feature_info module's output (maps as (B, C, h, w), tokens as they are) and "pooled"."""
        out: dict[str, torch.Tensor] = {}
        modules = dict(self.net.named_modules())
        hooks = [modules[n].register_forward_hook(
            lambda m, i, o, n=n: out.__setitem__(n, self._as_nchw(_first(o), self._channels[n])))
            for n in self.layer_names]
        try:
            out["pooled"] = self.net(x)
        finally:
            for h in hooks:
                h.remove()
        return out


def _line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


register_backbone_family(PREFIX, TimmBackbone, check_name)
