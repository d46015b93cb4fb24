"""selfsup: self-supervised representation learning with honest evaluation."""
import sys as _sys

try:
    from .api import Config, embed, evaluate, pretrain
    from .bench import bench
    from .errors import SelfSupError
    from .load import load
except KeyboardInterrupt:  # Ctrl-C while torch is still importing
    # The command line (`selfsup ...`, `python -m selfsup ...`) promises one line and exit 130 for Ctrl-C, also
    # before main() runs; `import selfsup` in a program or a REPL keeps Python's KeyboardInterrupt.
    if _sys.argv and (_sys.argv[0] == "-m" or _sys.argv[0].rsplit("/", 1)[-1] == "selfsup"):
        print("selfsup: interrupted while starting (nothing was written)", file=_sys.stderr)
        raise SystemExit(130) from None
    raise

__version__ = "0.1.0"
__all__ = ["Config", "SelfSupError", "bench", "embed", "evaluate", "load", "pretrain", "__version__"]
