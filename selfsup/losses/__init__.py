"""Losses as pure functions of tensors: testable against their formulas without a model."""
from .diagnostics import embedding_std, top1
from .info_nce import info_nce, info_nce_logits
from .nt_xent import nt_xent, nt_xent_logits
from .reconstruction import reconstruction_mse

__all__ = ["embedding_std", "info_nce", "info_nce_logits", "nt_xent", "nt_xent_logits", "reconstruction_mse",
           "top1"]
