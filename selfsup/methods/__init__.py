"""Methods: one file each, registered by name. See base.py for the contract and registry.py for discovery."""
from .base import Method, NoHparams, OptimDefaults
from .ema import EMATeacher, cosine_momentum, ema_update, momentum_copy
from .hparams import parse_hparams, setting
from .registry import canonical_name, get_method, load_plugin, methods, register

__all__ = ["EMATeacher", "Method", "NoHparams", "OptimDefaults", "canonical_name", "cosine_momentum", "ema_update",
           "get_method", "load_plugin", "methods", "momentum_copy", "parse_hparams", "register", "setting"]
