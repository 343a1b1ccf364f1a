"""What `emrl list` prints and what the CLI checks names against, without importing torch.

Questions, claims, tasks, training loops and algorithms, each with its one-sentence description and
config fields, and which question, variant and profile each run id of every grid belongs to, are read from the registries once and cached as JSON, keyed by a hash of the source of
`algorithms/`, `tasks/` and `suite/`; any change to that code builds a fresh entry. So `emrl list`
and a rejected name (`emrl run B99`, `--set ppo.clip=…` on a question without PPO) answer in a
fraction of a second, and only a command that trains or analyses imports the heavy stack.

The cache lives in `$EMRL_CACHE`, else `$XDG_CACHE_HOME/emrl`, else `~/.cache/emrl`; when none is
writable the catalogue is simply rebuilt each time.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from algorithms.config import ConfigError, unknown
from suite.overrides import SECTIONS

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("algorithms", "tasks", "suite")


def source_key() -> str:
    """Hash of every source file whose registries the catalogue reads (and of the Python version)."""
    h = hashlib.sha256(sys.version.encode())
    for folder in SOURCES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            h.update(str(path.relative_to(ROOT)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def cache_dir() -> Path:
    if "EMRL_CACHE" in os.environ:
        return Path(os.environ["EMRL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "emrl"


@functools.lru_cache(maxsize=1)
def load() -> dict:
    """The catalogue: from the cache when the source is unchanged, else built from the registries (and cached)."""
    path = cache_dir() / f"catalogue-{source_key()}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    data = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh)
        os.replace(tmp, path)
    except OSError:
        pass  # an unwritable cache only costs speed
    return data


# ------------------------------------------------------------------------------------------------ building


def first_paragraph(doc: str | None) -> str:
    """The first paragraph of a docstring on one line: the sentence `emrl list` prints, never cut."""
    lines = []
    for line in (doc or "").strip().splitlines():
        if not line.strip():
            break
        lines.append(line.strip())
    return " ".join(lines)


def fields(cfg: Any) -> list[list[str]]:
    """[[name, default as typed on the command line, description], ...] of a config dataclass instance."""
    return [[f.name, _typed(getattr(cfg, f.name)), f.metadata.get("doc", "")] for f in dataclasses.fields(cfg)]


def _typed(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return "none" if value is None else str(value)


def build() -> dict:
    """Read every registry (imports torch, dm_control and transformers: seconds)."""
    import algorithms
    import tasks
    from suite.profiles import PROFILES
    from suite.questions import QUESTIONS
    from suite.runner import run_id

    questions, claims, loops, members = [], [], {}, {}
    for q in QUESTIONS.values():
        points = []
        defined = [profile for profile in PROFILES if profile in q.budgets]
        for profile in defined:
            grid = q.grid(profile)
            points += grid
            for p in grid:
                members.setdefault(run_id(p.spec), []).append([q.name, p.variant, profile])
        sections: dict[str, set[str]] = {s: set() for s in SECTIONS}
        for p in points:
            sections["task"] |= {f.name for f in dataclasses.fields(p.spec.task_config)}
            sections["train"] |= {f.name for f in dataclasses.fields(p.spec.train_config)}
            names = {f.name for f in dataclasses.fields(p.spec.algo_config)}
            sections["algo"] |= names
            sections.setdefault(p.spec.algo, set()).update(names)
            family = tasks.get_task(p.spec.task).family.name
            loops.setdefault(family, {})[type(p.spec.train_config).__name__] = p.spec.train_config
        questions.append({"name": q.name, "title": q.title, "claims": [c.id for c in q.claims], "profiles": defined,
                          "tasks": sorted({p.spec.task for p in points}),
                          "algorithms": sorted({p.spec.algo for p in points}),
                          "sections": {s: sorted(names) for s, names in sections.items()}})
        claims += [{"id": c.id, "question": q.name, "statement": c.statement} for c in q.claims]
    families: dict[str, dict] = {}
    for t in tasks.TASKS.values():
        fam = families.setdefault(t.family.name, {"name": t.family.name, "tasks": [], "loops": {}})
        fam["tasks"].append({"name": t.name, "description": t.description, "fields": fields(t.config)})
        default = t.family.train_config
        fam["loops"].setdefault(default.__name__, fields(default()))
    for family, by_class in loops.items():
        for name, cfg in by_class.items():
            families[family]["loops"].setdefault(name, fields(type(cfg)()))
    algos = []
    for name, cls in sorted(algorithms.REGISTRY.items()):
        summary = cls.summary or first_paragraph(sys.modules[cls.__module__].__doc__)
        algos.append({"name": name, "summary": summary, "fields": fields(cls.Config())})
    return {"questions": questions, "claims": claims, "families": list(families.values()), "algorithms": algos,
            "members": members}


# ------------------------------------------------------------------------------------------------ checking


def question(name: str) -> dict:
    """The catalogue entry of a question given by its name or by one of its claim IDs; refused otherwise."""
    cat = load()
    by_name = {q["name"]: q for q in cat["questions"]}
    if name in by_name:
        return by_name[name]
    by_claim = {c["id"]: by_name[c["question"]] for c in cat["claims"]}
    if name.upper() in by_claim:
        return by_claim[name.upper()]
    raise unknown("question", name, [*by_name, *by_claim])


def check_overrides(entry: dict, parsed: list[tuple[str, str, str]]) -> None:
    """Refuse an override whose section or field no run of the question has, before anything heavy is imported."""
    sections = entry["sections"]
    every_algorithm = {a["name"] for a in load()["algorithms"]}
    for section, name, _ in parsed:
        if section not in sections:
            if section in every_algorithm:
                raise ConfigError(f"override section {section!r}: {section} is not in question {entry['name']!r} "
                                  f"(its algorithms: {', '.join(entry['algorithms'])}; sections: {', '.join(sections)}).")
            raise unknown("override section", section, sections)
        if name not in sections[section]:
            raise unknown(f"{section!r} field in question {entry['name']!r}", name, sections[section])
