"""A question: its grid (tasks × variants × seeds × budget, per profile), its analysis and its claims."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from suite.claims import Claim, Verdict
from suite.profiles import PROFILE_DOC, PROFILES, check_defined  # noqa: F401 - PROFILE_DOC re-exported: questions import it from here
from tasks import RunSpec, check_compatible, get_task


@dataclass(frozen=True)
class Variant:
    """One algorithm configuration in a question's grid, with the label the report uses."""

    label: str
    algo: str
    algo_config: Any
    train_config: Any = None
    """The training loop's config when it is not the family's default loop (e.g. actor-critic vs on-policy control)."""


@dataclass(frozen=True)
class Budget:
    """A profile's scale: seeds per variant and the training-loop settings that differ from defaults."""

    seeds: int
    train: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GridPoint:
    variant: str
    spec: RunSpec


@dataclass
class Analysis:
    """What a question's analysis returns: one verdict per claim, figures (file name -> figure), tables."""

    verdicts: list[Verdict]
    figures: dict[str, Figure] = field(default_factory=dict)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class Question:
    """Subclasses set the class attributes and implement `variants` and `analyse`."""

    name: str
    title: str
    description: str
    claims: tuple[Claim, ...]
    tasks: tuple[str, ...]
    budgets: dict[str, Budget]

    def variants(self) -> list[Variant]:
        raise NotImplementedError

    def analyse(self, runs: pd.DataFrame, rows: pd.DataFrame, rng: np.random.Generator) -> Analysis:
        """Turn stored runs into verdicts. `runs`: one row per run with a `variant` column; `rows`: long metrics."""
        raise NotImplementedError

    def train_changes(self, profile: str, task: str, train_config) -> dict:
        """Fields of a variant's training-loop config that `profile` replaces on `task` (default: the budget's)."""
        return self.budgets[profile].train

    def adjust(self, points: list[GridPoint]) -> list[GridPoint]:
        """The grid after the command line's `--set` overrides (default: unchanged). A question whose variants' budgets
        derive from one another (L7: the one-step methods' updates from the others') re-derives them here, so that an
        override keeps the relation."""
        return points

    def task_changes(self, profile: str, task: str, train_config) -> dict:
        """Fields of the task's config that `profile` replaces for a variant with this training config (default: none)."""
        return {}

    def grid(self, profile: str, seeds: int | None = None) -> list[GridPoint]:
        """Every run of this question at `profile`: tasks × variants × seeds, with the profile's budget."""
        check_defined(self.name, profile, [p for p in PROFILES if p in self.budgets])
        budget = self.budgets[profile]
        n_seeds = budget.seeds if seeds is None else seeds
        points = []
        for task in self.tasks:
            entry = get_task(task)
            for v in self.variants():
                base = entry.family.train_config() if v.train_config is None else v.train_config
                changes = self.train_changes(profile, task, base)
                unknown_keys = set(changes) - {f.name for f in dataclasses.fields(base)}
                if unknown_keys:
                    raise ValueError(f"{self.name}: budget keys {sorted(unknown_keys)} are not fields of {type(base).__name__}")
                train = dataclasses.replace(base, **changes)
                task_config = dataclasses.replace(entry.config, **self.task_changes(profile, task, base))
                check_compatible(task, v.algo, v.algo_config, train)
                for seed in range(n_seeds):
                    points.append(GridPoint(v.label, RunSpec(task, task_config, v.algo, v.algo_config, train, seed)))
        return points
