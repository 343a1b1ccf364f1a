"""`--set section.field=value` overrides applied to every run of a grid that has that field.

Sections: `task` (the task's config), `train` (the family's training loop), `algo` (every algorithm
in the grid that has the field), or an algorithm's name (`pmpo.beta=1.0`: only that algorithm's runs).
Values are parsed by the field's declared type; an unknown section or field, or a malformed value,
is refused with what is allowed, closest match first, and so is a field given twice. Importing this
module imports neither torch nor the task registry, so the CLI refuses a malformed override at once.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from algorithms.config import ConfigError, unknown
from suite.configs import parse_value

if TYPE_CHECKING:
    from suite.questions.base import GridPoint
    from tasks import RunSpec

SECTIONS = ("task", "train", "algo")


def parse(items: list[str]) -> list[tuple[str, str, str]]:
    """`["algo.beta=1", ...]` -> `[("algo", "beta", "1"), ...]`; malformed items are refused.

    So is one `section.field` given twice: which value was meant is not ours to guess. (`algo.beta`
    and `pmpo.beta` are different overrides, applied in the order given.)
    """
    out, seen = [], {}
    for item in items:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or not section or not name or not value:
            raise ConfigError(f"malformed override {item!r}: expected section.field=value, e.g. algo.beta=1.0 or train.steps=500 "
                              f"(sections: {', '.join(SECTIONS)}, or an algorithm's name).")
        section, name, value = section.strip(), name.strip(), value.strip()
        if (section, name) in seen:
            raise ConfigError(f"override {section}.{name} is given twice ({seen[section, name]!r} and {value!r}): give it once.")
        seen[section, name] = value
        out.append((section, name, value))
    return out


def _target(spec: RunSpec, section: str) -> tuple[str, Any] | None:
    if section == "task":
        return "task_config", spec.task_config
    if section == "train":
        return "train_config", spec.train_config
    if section in ("algo", spec.algo):
        return "algo_config", spec.algo_config
    return None


def apply(points: list[GridPoint], items: list[str]) -> list[GridPoint]:
    """The grid with every override applied; each override must change at least one run."""
    parsed = parse(items)
    algos = sorted({p.spec.algo for p in points})
    for section, name, raw in parsed:
        if section not in SECTIONS and section not in algos:
            raise unknown("override section", section, [*SECTIONS, *algos])
        hit, allowed = False, set()
        new_points = []
        for p in points:
            target = _target(p.spec, section)
            if target is None:
                new_points.append(p)
                continue
            attr, cfg = target
            names = {f.name for f in dataclasses.fields(cfg)}
            allowed |= names
            if name not in names:
                new_points.append(p)
                continue
            value = parse_value(type(cfg), name, raw)
            new_cfg = dataclasses.replace(cfg, **{name: value})  # re-validates in __post_init__
            new_points.append(dataclasses.replace(p, spec=dataclasses.replace(p.spec, **{attr: new_cfg})))
            hit = True
        if not hit:
            raise unknown(f"{section!r} field", name, allowed)
        points = new_points
    return points
