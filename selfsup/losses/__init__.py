"""Losses as pure functions of tensors: testable against their formulas without a model."""
from .info_nce import info_nce
from .nt_xent import nt_xent
from .reconstruction import reconstruction_mse

__all__ = ["info_nce", "nt_xent", "reconstruction_mse"]
