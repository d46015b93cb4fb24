"""Methods: one file each; a method is backbone + heads + loss + view recipe."""
from __future__ import annotations

from torch import nn

from .autoencoder import Autoencoder
from .moco import MoCo
from .simclr import SimCLR

METHODS = {"simclr": SimCLR, "moco": MoCo, "autoencoder": Autoencoder}
ALIASES = {"mocov2": "moco", "moco_v2": "moco", "moco-v2": "moco", "ae": "autoencoder"}


def canonical_name(name: str) -> str:
    """The registry key for a method name or alias."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in METHODS:
        from ..errors import SelfSupError

        raise SelfSupError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return key


def method_class(name: str) -> type[nn.Module]:
    """The class of a method by name (aliases accepted)."""
    return METHODS[canonical_name(name)]
