"""The method registry: `@register` on a class makes it a `--method`; nothing else needs editing.

Methods are found in three places: every module of this package (imported on first use), the
`selfsup.methods` entry-point group of installed packages, and modules named with `--plugin` (or imported by
the caller before using the Python API).
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import importlib.util
import pkgutil
import sys
from pathlib import Path

from ..errors import SelfSupError
from ..train.optim import OPTIMIZERS
from .base import Method
from .hparams import nearest

_METHODS: dict[str, type[Method]] = {}
_ALIASES: dict[str, str] = {}
_discovered = False

# Flags of `selfsup pretrain` that are not Config fields; with the Config's fields, names no setting may take.
CLI_ONLY_FLAGS = {"resume", "no_progress", "plugin", "set"}


def reserved_names() -> set[str]:
    """Names a method setting may not take: they are run-level flags of `selfsup pretrain` already."""
    from ..config import Config  # the config module imports this package: look it up when a method registers

    return {f.name for f in dataclasses.fields(Config)} | CLI_ONLY_FLAGS


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: check the method's declarations and add it to the registry under `cls.name`."""
    where = f"{cls.__module__}.{cls.__qualname__}"
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(f"{where}: a method must subclass selfsup.methods.Method")
    if not cls.name or cls.name != cls.name.lower():
        raise TypeError(f"{where}: set a lower-case `name`")
    if cls.modality not in ("image", "tokens"):
        raise TypeError(f"{where}: modality must be 'image' or 'tokens', not {cls.modality!r}")
    if not cls.optimizers or any(o not in OPTIMIZERS for o in cls.optimizers):
        raise TypeError(f"{where}: `optimizers` must map some of {', '.join(OPTIMIZERS)} to OptimDefaults")
    if not dataclasses.is_dataclass(cls.Hparams):
        raise TypeError(f"{where}: Hparams must be a dataclass")
    reserved = reserved_names()
    for f in dataclasses.fields(cls.Hparams):
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise TypeError(f"{where}: setting {f.name!r} has no default")
        if f.name in reserved:
            raise TypeError(f"{where}: setting {f.name!r} clashes with the run-level flag of that name")
    taken = _METHODS.get(cls.name)
    if taken is not None and f"{taken.__module__}.{taken.__qualname__}" != where:
        raise TypeError(f"{where}: method name {cls.name!r} is taken by {taken.__module__}.{taken.__qualname__}")
    _METHODS[cls.name] = cls
    for alias in cls.aliases:
        _ALIASES[alias.lower()] = cls.name
    return cls


def _discover() -> None:
    """Import the built-in method modules and the installed entry points, once."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    package = sys.modules[__package__]
    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{__package__}.{info.name}")
    for ep in importlib.metadata.entry_points(group="selfsup.methods"):
        try:
            ep.load()
        except Exception as e:  # a broken third-party plugin must not hide the built-in methods
            print(f"selfsup: warning: cannot load method plugin {ep.name} ({ep.value}): {e}", file=sys.stderr)


def load_plugin(spec: str) -> None:
    """Import a module that registers methods (or sources, backbones): a dotted module name or a .py file."""
    path = Path(spec)
    try:
        if spec.endswith(".py"):
            if not path.is_file():
                raise SelfSupError(f"no such plugin file: {path}")
            mod_spec = importlib.util.spec_from_file_location(f"selfsup_plugin_{path.stem}", path)
            module = importlib.util.module_from_spec(mod_spec)
            sys.modules[mod_spec.name] = module
            mod_spec.loader.exec_module(module)
        else:
            importlib.import_module(spec)
    except SelfSupError:
        raise
    except Exception as e:
        raise SelfSupError(f"cannot load plugin {spec}: {type(e).__name__}: {e}") from None


def methods() -> dict[str, type[Method]]:
    """Every registered method by name, built-ins first."""
    _discover()
    return dict(_METHODS)


def canonical_name(name: str) -> str:
    """The registry key for a method name or alias; a one-line error naming the nearest method otherwise."""
    _discover()
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in _METHODS:
        hint = nearest(key, [*_METHODS, *_ALIASES])
        raise SelfSupError(f"unknown method {name!r}{hint}; choose from {', '.join(_METHODS)} (a method of your own "
                           "must be imported first: --plugin MODULE)")
    return key


def get_method(name: str) -> type[Method]:
    """The class of a method by name or alias."""
    return _METHODS[canonical_name(name)]
