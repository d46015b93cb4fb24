"""selfsup: self-supervised representation learning with honest evaluation."""
from .api import Config, embed, evaluate, pretrain
from .bench import bench
from .errors import SelfSupError
from .load import load

__version__ = "0.1.0"
__all__ = ["Config", "SelfSupError", "bench", "embed", "evaluate", "load", "pretrain", "__version__"]
