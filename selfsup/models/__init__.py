"""Backbones (batch -> feature vector) and heads (projectors, predictors, decoders)."""
from .backbones import BACKBONES, build_backbone
from .heads import mlp_head

__all__ = ["BACKBONES", "build_backbone", "mlp_head"]
