"""Expand a question's grid, skip what is stored, train the rest on a local process pool.

The unit of work is a *group*: the runs of one grid cell that differ only in their seed, which a task
family trains as one vectorised batch. Each finished run is written to the store atomically by the
worker that trained it, so killing a sweep (even with `kill -9`) loses at most the groups in flight;
running it again trains exactly the runs that are absent. A group that raises is recorded as
`failed` with its traceback and the sweep goes on; a diverged seed is recorded as `diverged` with
its step and reason.
"""

from __future__ import annotations

import datetime as dt
import os
import time
import traceback
from collections import defaultdict
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context

from suite import provenance
from suite.configs import content_hash, to_dict
from suite.errors import UserError
from suite.questions.base import GridPoint
from suite.store import CorruptRecord, Store
from tasks import RunResult, RunSpec, get_task


def spec_payload(spec: RunSpec) -> dict:
    """The fully resolved config of a run, JSON-ready: what is stored and hashed."""
    return {
        "task": spec.task, "task_config": to_dict(spec.task_config),
        "algo": spec.algo, "algo_config": to_dict(spec.algo_config),
        "train_loop": type(spec.train_config).__name__, "train_config": to_dict(spec.train_config), "seed": spec.seed,
    }


def run_id(spec: RunSpec) -> str:
    return content_hash(spec_payload(spec))


@dataclass
class Summary:
    total: int
    skipped: int
    statuses: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    wall_s: float = 0.0


def pending(points: list[GridPoint], store: Store) -> tuple[list[list[RunSpec]], int]:
    """Groups of runs still to train (absent or failed), and how many are already stored.

    A corrupt record anywhere in the grid stops everything before any run starts (nothing is written).
    """
    groups: dict[tuple, list[RunSpec]] = {}
    stored, corrupt = 0, []
    for p in points:
        try:
            record = store.read(run_id(p.spec))
        except CorruptRecord as exc:
            corrupt.append(exc)
            continue
        if record is not None and record["status"] != "failed":
            stored += 1
            continue
        groups.setdefault(p.spec.without_seed(), []).append(p.spec)
    if corrupt:
        raise UserError("\n".join(str(c) for c in corrupt))
    return list(groups.values()), stored


def make_record(spec: RunSpec, result: RunResult, started: str, wall_s: float, group_size: int, prov: dict) -> dict:
    rows = result.rows
    return {
        "schema": 1,
        "run_id": run_id(spec),
        "config": spec_payload(spec),
        "status": result.status,
        "diverged": result.diverged,
        "error": result.error,
        "started_at": started,
        "wall_time_s": wall_s,
        "vectorised_with": group_size,
        "code": prov["code"],
        "packages": prov["packages"],
        "rows": {
            "seed": [spec.seed] * len(rows),
            "step": [int(r[0]) for r in rows],
            "metric": [str(r[1]) for r in rows],
            "value": [float(r[2]) if r[2] == r[2] else None for r in rows],
        },
    }


def train_group(specs: list[RunSpec], root: str, prov: dict, threads: int = 1) -> list[str]:
    """Train one group (same cell, different seeds) and store each run. Returns the statuses."""
    import torch

    torch.set_num_threads(threads)
    store = Store(root)
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    try:
        family = get_task(specs[0].task).family
        results = family.train(specs)
        if len(results) != len(specs):  # zip below would silently drop runs
            raise RuntimeError(f"task family {family.name!r} returned {len(results)} results for {len(specs)} runs")
    except Exception:  # noqa: BLE001 - any failure of a run is data, recorded with its traceback
        tb = traceback.format_exc()
        results = [RunResult(status="failed", error=tb) for _ in specs]
    wall = (time.perf_counter() - t0) / len(specs)
    for spec, result in zip(specs, results):
        store.write(make_record(spec, result, started, wall, len(specs), prov))
    return [r.status for r in results]


def execute(points: list[GridPoint], store: Store, workers: int | None = None, progress: bool = True, label: str = "") -> Summary:
    """Train every run of `points` that is not stored. `workers=1` trains in this process."""
    groups, stored = pending(points, store)
    total = sum(len(g) for g in groups)
    summary = Summary(total=len(points), skipped=stored)
    if not groups:
        return summary
    prov = {"code": provenance.code(), "packages": provenance.packages()}
    workers = max(1, workers or os.cpu_count() or 1)
    # longest groups first keeps the pool busy at the end of a sweep
    groups.sort(key=lambda g: -getattr(g[0].train_config, "steps", 0))
    t0 = time.perf_counter()
    with _progress(progress, label, total) as bar:
        if workers == 1:
            for g in groups:
                for status in train_group(g, str(store.root), prov):
                    summary.statuses[status] += 1
                bar.advance(len(g))
        else:
            with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
                futures = {pool.submit(train_group, g, str(store.root), prov): g for g in groups}
                while futures:
                    done, _ = wait(futures, return_when=FIRST_COMPLETED)
                    for fut in done:
                        g = futures.pop(fut)
                        for status in fut.result():
                            summary.statuses[status] += 1
                        bar.advance(len(g))
    summary.wall_s = time.perf_counter() - t0
    return summary


class _progress:
    """A rich progress bar (runs done / total, elapsed, ETA), or nothing when disabled."""

    def __init__(self, enabled: bool, label: str, total: int):
        self.enabled, self.label, self.total = enabled, label, total

    def __enter__(self):
        if not self.enabled:
            return self
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("runs"),
                                  TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
        self._progress.__enter__()
        self._task = self._progress.add_task(self.label, total=self.total)
        return self

    def advance(self, n: int) -> None:
        if self.enabled:
            self._progress.advance(self._task, n)

    def __exit__(self, *exc):
        if self.enabled:
            self._progress.__exit__(*exc)
        return False
