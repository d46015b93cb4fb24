"""Backbones (batch -> feature vector, and feature maps / tokens where they have them), heads, the Encoder."""
from .backbones import BACKBONES, build_backbone, register_backbone
from . import vit  # noqa: F401  (registers --backbone vit)
from .encoder import Encoder
from .heads import mlp_head
from . import transformer  # noqa: F401  (registers the token backbones)
from . import timm_backbone  # noqa: F401  (registers --backbone timm:NAME; imports timm only when used)

__all__ = ["BACKBONES", "Encoder", "build_backbone", "mlp_head", "register_backbone"]
