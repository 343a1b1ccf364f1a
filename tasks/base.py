"""What every task family shares: the run spec it trains, the result it returns, and its registry.

A task family (bandits, control, Atari, LM) owns its environments, policies and training loop. It
declares which `Batch` fields it can fill (`provides`) so an algorithm it cannot serve is refused at
config time, and a `train` function that trains a group of runs that differ only in their seed —
vectorised where the family allows. A task file registers its tasks with `register_task`, so adding a
task is one file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from algorithms import REGISTRY as ALGORITHMS
from algorithms.base import Needs
from algorithms.config import ConfigError, unknown

Status = Literal["ok", "diverged", "failed"]
Device = Literal["cpu", "cuda"]
"""Where a training loop keeps its networks, rollout tensors and losses (the `device` field of the control, Atari and
LM loops' configs). Only the device *type* is part of a run's identity: which GPU a `cuda` run uses is the runner's
placement (`emrl run --device cuda:N`, or Ray's scheduler), and numbers are promised equal per device type."""


@dataclass(frozen=True)
class RunSpec:
    """One fully resolved run: the task, the algorithm, the training loop, their configs and the seed."""

    task: str
    task_config: Any
    algo: str
    algo_config: Any
    train_config: Any
    seed: int

    def without_seed(self) -> tuple:
        """Key shared by runs that differ only in their seed (they can train as one vectorised batch)."""
        return (self.task, repr(self.task_config), self.algo, repr(self.algo_config), repr(self.train_config))


@dataclass
class RunResult:
    """What training one seed produced. Rows are long-format (step, metric, value)."""

    status: Status
    rows: list[tuple[int, str, float]] = field(default_factory=list)
    diverged: dict[str, Any] | None = None
    """For status "diverged": {"step": int, "reason": str}."""
    error: str | None = None
    """For status "failed": the traceback."""


@dataclass(frozen=True)
class Family:
    """A task family: its loop's config type, what its batches provide, and its trainer."""

    name: str
    train_config: type
    """The default training-loop config class (a family may accept several, one per loop it runs)."""
    provides: Needs | Callable[[Any], Needs]
    """What its batches carry: a `Needs`, or a function of the training-loop config when loops differ."""
    train: Callable[[list[RunSpec]], list[RunResult]]
    description: str

    def provides_for(self, train_config: Any) -> Needs:
        return self.provides(train_config) if callable(self.provides) else self.provides


@dataclass(frozen=True)
class TaskEntry:
    name: str
    family: Family
    config: Any
    """The task's default config instance (a frozen dataclass)."""
    description: str


TASKS: dict[str, TaskEntry] = {}


def register_task(name: str, family: Family, config: Any, description: str) -> None:
    if name in TASKS:
        raise ValueError(f"task {name!r} registered twice")
    TASKS[name] = TaskEntry(name, family, config, description)


def get_task(name: str) -> TaskEntry:
    if name not in TASKS:
        import tasks  # a caller that imported this module directly has not loaded the task files yet

        tasks.load_all()
    if name not in TASKS:
        raise unknown("task", name, TASKS)
    return TASKS[name]


def check_compatible(task: str, algo: str, algo_config: Any = None, train_config: Any = None) -> None:
    """Refuse an algorithm (configuration) whose needs the task's training loop cannot provide (at config time)."""
    entry = get_task(task)
    if algo not in ALGORITHMS:
        raise unknown("algorithm", algo, ALGORITHMS)
    cls = ALGORITHMS[algo]
    needs = cls.needs if algo_config is None else cls.needs_for(algo_config)
    loop = entry.family.train_config() if train_config is None else train_config
    missing = needs.missing(entry.family.provides_for(loop))
    if missing:
        raise ConfigError(
            f"algorithm {algo!r} needs {', '.join(missing)}, which task {task!r} "
            f"(family {entry.family.name!r}) does not provide."
        )


def replace(cfg: Any, **changes: Any) -> Any:
    """`dataclasses.replace` that re-runs validation (frozen dataclasses validate in __post_init__)."""
    return dataclasses.replace(cfg, **changes)
