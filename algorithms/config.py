"""Typed-config helpers shared by algorithms, tasks and the suite: fields with docs, validation, errors.

Every algorithm, task and training loop has one frozen dataclass. Each field carries a one-line
description in its metadata (`doc`) and is validated in `__post_init__` with the helpers below, so a
bad value is refused with the field, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from typing import Any, Iterable, Literal, get_args, get_origin


class ConfigError(ValueError):
    """Bad input: an unknown name, an invalid value, a malformed override, a corrupt file.

    The message names the field, the value and what is allowed. The CLI prints it and exits with 2,
    having written nothing.
    """


def closest_first(value: str, allowed: Iterable[str]) -> list[str]:
    """`allowed` sorted with the closest matches to `value` first, then the rest alphabetically."""
    allowed = sorted(set(allowed))
    close = difflib.get_close_matches(value, allowed, n=len(allowed), cutoff=0.5)
    return close + [a for a in allowed if a not in close]


def unknown(kind: str, value: str, allowed: Iterable[str]) -> ConfigError:
    """A `UserError` for an unknown name, listing the allowed names, closest match first."""
    options = closest_first(value, allowed)
    hint = f" Did you mean {options[0]!r}?" if options and options[0] in difflib.get_close_matches(value, options, n=1, cutoff=0.5) else ""
    return ConfigError(f"unknown {kind} {value!r}.{hint} Allowed: {', '.join(options)}.")


def field(default: Any, doc: str, **kwargs: Any) -> Any:
    """A dataclass field with a one-line description kept in its metadata (shown by `emrl list`)."""
    return dataclasses.field(default=default, metadata={"doc": doc}, **kwargs)


def _where(cfg: Any, name: str) -> str:
    return f"{type(cfg).__name__}.{name}"


# Fields where +inf is a value with a meaning, not a typo: an infinite weight clip is no clip (the
# theory checks lift DAR's clip so). Every other field refuses ±inf, and every field refuses NaN.
INFINITY_ALLOWED = frozenset({"weight_clip"})


def _finite_or_allowed(name: str, v: Any) -> bool:
    """False for NaN (it fails no comparison, so a range check alone lets it through) and for ±inf
    unless the field is in `INFINITY_ALLOWED`."""
    if not isinstance(v, float):
        return True
    return not math.isnan(v) and (not math.isinf(v) or name in INFINITY_ALLOWED)


def check_positive(cfg: Any, *names: str, strict: bool = True) -> None:
    """Refuse a field that is not > 0 (or >= 0 with strict=False), NaN, or inf (see `INFINITY_ALLOWED`)."""
    for name in names:
        v = getattr(cfg, name)
        if v is None:
            continue
        bound = "> 0" if strict else ">= 0"
        if not _finite_or_allowed(name, v):
            raise ConfigError(f"{_where(cfg, name)} = {v!r} is invalid: must be a finite number {bound}.")
        if (strict and not v > 0) or (not strict and not v >= 0):
            raise ConfigError(f"{_where(cfg, name)} = {v!r} is invalid: must be {bound}.")


def check_range(cfg: Any, name: str, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> None:
    """Refuse a field outside [lo, hi] (with optionally open ends), NaN, or inf (see `INFINITY_ALLOWED`)."""
    v = getattr(cfg, name)
    bad = not _finite_or_allowed(name, v) or v < lo or v > hi or (lo_open and v == lo) or (hi_open and v == hi)
    if bad:
        left, right = ("(" if lo_open else "["), (")" if hi_open else "]")
        raise ConfigError(f"{_where(cfg, name)} = {v!r} is invalid: must lie in {left}{lo}, {hi}{right}.")


def check_choices(cfg: Any) -> None:
    """Refuse any `Literal[...]`-typed field whose value is not one of its literals."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        tp = hints[f.name]
        if get_origin(tp) is Literal:
            value = getattr(cfg, f.name)
            if value not in get_args(tp):
                raise unknown(f"value for {_where(cfg, f.name)}", str(value), [str(a) for a in get_args(tp)])


def fields_doc(cls: type) -> dict[str, str]:
    """Field name -> one-line description, for `emrl list` and error messages."""
    return {f.name: f.metadata.get("doc", "") for f in dataclasses.fields(cls)}
