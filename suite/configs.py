"""Config values from the command line and the run's identity.

Overrides (`--set section.field=value`) are parsed by the field's declared type, never with `eval`;
the content hash of the fully resolved config is the run's identity in the store. A float must be
finite (the config is stored as JSON, which has no NaN or inf), and a step count (a field named
`steps` or ending in `_steps`) at most `MAX_STEPS`, so that a typo such as `train.steps=10000000000`
is refused instead of running for days.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from typing import Any, Literal, get_args, get_origin

from algorithms.config import ConfigError as UserError, unknown

SCHEMA_VERSION = 1
MAX_STEPS = 10**9  # the largest step count `--set` accepts; the longest run of any profile is 10M steps


def parse_value(cls: type, name: str, raw: str) -> Any:
    """Parse the string `raw` as the declared type of field `name` of dataclass `cls`."""
    tp = typing.get_type_hints(cls)[name]
    where = f"{cls.__name__}.{name}"
    origin, args = get_origin(tp), get_args(tp)
    if origin is typing.Union or origin is types.UnionType:  # Optional[float] and float | None
        inner = [a for a in args if a is not type(None)]
        if raw.lower() in ("none", "null") and type(None) in args:
            return None
        tp, origin, args = inner[0], get_origin(inner[0]), get_args(inner[0])
    try:
        if origin is Literal:
            if raw not in [str(a) for a in args]:
                raise unknown(f"value for {where}", raw, [str(a) for a in args])
            return next(a for a in args if str(a) == raw)
        if tp is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if tp is int:
            value = int(raw)
            if (name == "steps" or name.endswith("_steps")) and value > MAX_STEPS:
                raise UserError(f"{where} = {value} is invalid: a step count must be at most {MAX_STEPS} (10**9).")
            return value
        if tp is float:
            return _finite(where, raw, float(raw))
        if tp is str:
            return raw
        if origin is tuple:
            parts = [p for p in raw.strip("()[]").split(",") if p.strip()]
            item = args[0]
            values = tuple(item(p.strip()) for p in parts)
            return tuple(_finite(where, raw, v) for v in values) if item is float else values
    except UserError:
        raise
    except ValueError:
        pass
    else:
        raise UserError(f"{where} has type {tp} which cannot be set from the command line.")
    name_of = getattr(tp, "__name__", str(tp))
    raise UserError(f"{where} = {raw!r} is malformed: expected a value of type {name_of}.")


def _finite(where: str, raw: str, value: float) -> float:
    """`value`, or an error: NaN and ±inf (also an overflow such as 1e999) cannot be stored as JSON."""
    if not math.isfinite(value):
        raise UserError(f"{where} = {raw!r} is invalid: must be a finite number (NaN and ±inf cannot be stored in a "
                        "run's config).")
    return value


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (nested) config dataclass; tuples become lists."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def content_hash(payload: dict[str, Any]) -> str:
    """Stable 16-hex-digit hash of a JSON-ready dict (sorted keys, schema version included)."""
    blob = json.dumps({"schema": SCHEMA_VERSION, **payload}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
