"""A method's settings: one dataclass per method, the only place its defaults live.

Values arrive from config.yaml, `--set key=value`, generated flags (`--temperature 0.1`) or the Python API;
all go through `parse_hparams`, which refuses unknown keys (naming the nearest valid one) and wrong types.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import field
from typing import Any, Literal, Union

import yaml

from ..errors import SelfSupError


def setting(default: Any, help: str, source: str = "") -> Any:
    """A field of a method's Hparams: its default, the help text that `--help` and `selfsup methods` show, and
    where the default comes from (`source`: paper + section/table, reference code, or "ours: ..." with what it
    rests on), shown by `selfsup methods NAME`. A default of None may stand for a value filled in by the
    Hparams' __post_init__ (MoCo's preset); `describe_fields` shows the filled-in value."""
    return field(default=default, metadata={"help": help, "source": source})


def nearest(word: str, choices) -> str:
    """' (did you mean 'x'?)' for the closest of `choices`, or ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def field_types(hparams_cls: type) -> dict[str, Any]:
    """Field name -> resolved type annotation."""
    return typing.get_type_hints(hparams_cls)


def type_name(tp: Any) -> str:
    """A short readable name of a type annotation: float, int, bool, 'constant'|'cosine', float|None, ..."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "|".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return "|".join("None" if a is type(None) else type_name(a) for a in args)
    if origin is tuple:
        return "(" + ", ".join(type_name(a) for a in args) + ")"
    return getattr(tp, "__name__", str(tp))


# An integer setting above this is a typo, not a setting: a layer that wide, or a queue that long, cannot be
# allocated (2**20 = 1,048,576, 16 times MoCo's 65,536-key queue).
MAX_INT = 2 ** 20


def _number(text: str) -> float | None:
    """A number written any way Python reads one (1e-1, 1e12, .5), or None. YAML 1.1 alone needs a dot in
    exponent notation (1.0e-1), so `1e-1` would otherwise stay a string."""
    try:
        return float(text)
    except ValueError:
        return None


def coerce(value: Any, tp: Any) -> Any:
    """`value` converted to type `tp`, or ValueError. Strings (from the command line) are read as YAML first;
    a float setting also takes exponent notation (1e-1) and must be finite (nan and inf are refused)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        if value in args:
            return value
        raise ValueError
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is not type(None):
                try:
                    return coerce(value, a)
                except ValueError:
                    pass
        if isinstance(value, str) and value.strip().lower() in ("none", "null") and type(None) in args:
            return None
        raise ValueError
    if isinstance(value, str) and tp is not str:
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ValueError from None
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, str) and _number(value) is not None:
            value = _number(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif origin is tuple and isinstance(value, (list, tuple)):
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0]) for v in value)
        if len(args) == len(value):
            return tuple(coerce(v, a) for v, a in zip(value, args))
    raise ValueError


def parse_hparams(method: str, hparams_cls: type, values: dict | None) -> Any:
    """An instance of the method's Hparams from `values` (unknown keys and wrong types are one-line errors)."""
    values = dict(values or {})
    types_ = field_types(hparams_cls)
    for key in values:
        if key not in types_:
            valid = ", ".join(types_) or "none"
            raise SelfSupError(f"{method} has no setting {key!r}{nearest(key, types_)}; its settings: {valid}")
    out = {}
    for key, value in values.items():
        try:
            out[key] = coerce(value, types_[key])
        except ValueError:
            finite = " (a finite number)" if "float" in type_name(types_[key]) else ""
            raise SelfSupError(f"{method} setting {key} expects {type_name(types_[key])}{finite}, "
                               f"got {value!r}") from None
        if isinstance(out[key], int) and not isinstance(out[key], bool) and abs(out[key]) > MAX_INT:
            raise SelfSupError(f"{method} setting {key} must be at most {MAX_INT:,} in size, got {out[key]}")
    try:
        return hparams_cls(**out)  # an Hparams may check its values in __post_init__ (raising ValueError)
    except ValueError as e:
        raise SelfSupError(f"{method}: {e}") from None


def hparams_to_dict(hp: Any) -> dict:
    """Plain values (tuples as lists) for config.yaml."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(hp).items()}


def describe_fields(hparams_cls: type) -> list[tuple[str, str, Any, str]]:
    """(name, type name, default, help) of every setting; the default is the value a default-constructed
    Hparams holds (so a preset's value, not the None that stands for it)."""
    types_ = field_types(hparams_cls)
    defaults = dataclasses.asdict(hparams_cls())
    return [(f.name, type_name(types_[f.name]), defaults[f.name], f.metadata.get("help", ""))
            for f in dataclasses.fields(hparams_cls)]


def field_sources(hparams_cls: type) -> dict[str, str]:
    """Setting name -> where its default comes from ('' when the method does not say)."""
    return {f.name: f.metadata.get("source", "") for f in dataclasses.fields(hparams_cls)}
