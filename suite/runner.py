"""Expand a question's grid, skip what is stored, train the rest on a local process pool or on Ray.

The unit of work is a *group*: the runs of one grid cell that differ only in their seed, which a task
family trains as one vectorised batch. Each finished run is written to the store atomically by the
worker that trained it, so killing a sweep (even with `kill -9`) loses at most the groups in flight;
running it again trains exactly the runs that are absent. A group whose training raises is
recorded as `failed` with its traceback and the sweep goes on; a diverged seed is recorded as
`diverged` with its step and reason. A store that cannot take the records stops the sweep instead
of letting it train on for nothing: an unwritable store is refused before anything trains, and an
error outside training (a failed store write) ends the sweep once the groups in flight finish. A
worker process that dies (OOM killer, kill -9) is replaced and its groups retried (`MAX_TRIES`).
On Ray (`suite.ray_backend`) the driver writes the records the tasks send back, with the same guarantees.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
import time
import traceback
from collections import defaultdict, deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import TYPE_CHECKING

from suite import provenance
from suite.devices import on_gpu
from suite.configs import content_hash, to_dict
from suite.errors import UserError
from suite.store import CorruptRecord, Store
from tasks.base import RunResult, RunSpec, get_task

if TYPE_CHECKING:  # the questions import plotting and statistics, which a pool worker never needs
    from suite.progress import SweepProgress
    from suite.questions.base import GridPoint

MAX_TRIES = 3
"""A group whose worker process dies under it on this many tries (the retries alone) is recorded `failed`."""


def spec_payload(spec: RunSpec) -> dict:
    """The fully resolved config of a run, JSON-ready: what is stored and hashed.

    A training loop's `device` is part of it, except the CPU: runs stored before loops had a device all ran on the
    CPU, and leaving `"device": "cpu"` out keeps their identity. A config with no device ran on the CPU."""
    return {
        "task": spec.task, "task_config": to_dict(spec.task_config),
        "algo": spec.algo, "algo_config": to_dict(spec.algo_config),
        "train_loop": type(spec.train_config).__name__, "train_config": _without_cpu(to_dict(spec.train_config)),
        "seed": spec.seed,
    }


def _without_cpu(config: dict) -> dict:
    """`config` with every `"device": "cpu"` left out, at any depth (a loop may nest another's config)."""
    return {k: _without_cpu(v) if isinstance(v, dict) else v for k, v in config.items() if (k, v) != ("device", "cpu")}


def run_id(spec: RunSpec) -> str:
    return content_hash(spec_payload(spec))


@dataclass
class Summary:
    total: int
    skipped: int
    statuses: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    wall_s: float = 0.0

    @property
    def trained(self) -> int:
        return sum(self.statuses.values())

    @property
    def all_failed(self) -> bool:
        """Runs were trained and every one failed: the sweep produced nothing to analyse (the CLI exits non-zero)."""
        return self.trained > 0 and self.statuses.get("failed", 0) == self.trained


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


def utc_now() -> str:
    """A record's `started_at`: UTC, to the second."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


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


def train_records(specs: list[RunSpec], prov: dict, threads: int = 1, gpu: int | None = None) -> list[dict]:
    """Train one group (same cell, different seeds): one record per run, ready for the store.

    `gpu` is the CUDA device index a `cuda` run uses in a process-pool worker; Ray places its tasks itself (each sees
    the GPU it was given as device 0)."""
    import torch

    torch.set_num_threads(threads)
    # The same numbers per device type: on CUDA, without deterministic kernels cuBLAS and the scatter/index kernels
    # (embedding and gather backward) may sum in a different order on every call. An op with no deterministic kernel
    # raises, and its runs are recorded failed naming it, rather than giving numbers that cannot be reproduced. (Set per
    # group: a worker trains CPU groups, left as they always ran, between CUDA ones.)
    torch.use_deterministic_algorithms(on_gpu(specs[0]))
    if on_gpu(specs[0]):
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        if gpu is not None:
            torch.cuda.set_device(gpu)
    started = utc_now()
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
    return [make_record(spec, result, started, wall, len(specs), prov) for spec, result in zip(specs, results)]


def train_group(specs: list[RunSpec], root: str, prov: dict, threads: int = 1, gpu: int | None = None) -> list[str]:
    """A process-pool worker: train one group and store each run. Returns the statuses."""
    store = Store(root)
    records = train_records(specs, prov, threads, gpu)
    for record in records:
        store.write(record)
    return [r["status"] for r in records]


def check_writable(store: Store) -> None:
    """Refuse a store that cannot take a record before anything trains, rather than losing the first groups' work."""
    runs = store.root / "runs"
    try:
        runs.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=runs, prefix=".write-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(f"cannot write to the results store at {runs} ({exc}); nothing was trained. "
                        "Fix its permissions or choose another store (--results, or EMRL_RESULTS).") from None


BACKENDS = ("process", "ray")


def execute(points: list[GridPoint], store: Store, workers: int | None = None, progress: bool = True, label: str = "",
            backend: str = "process", address: str | None = None, gpu: int | None = None) -> Summary:
    """Train every run of `points` that is not stored.

    `backend`: "process", a local process pool of `workers` processes (`workers=1` trains in this process; `gpu` is
    the CUDA index its `cuda` runs use), or "ray" (`suite.ray_backend`: a local Ray instance of `workers` CPUs, or the
    cluster at `address`). An error from outside training (a store that refuses a write, a conflicting record) stops
    the sweep: the groups in flight finish, nothing else starts, and the error is re-raised.
    """
    from suite.progress import SweepProgress, cell_name  # the display is the parent's alone

    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r}: allowed are {', '.join(BACKENDS)}")

    groups, stored = pending(points, store)
    summary = Summary(total=len(points), skipped=stored)
    if not groups:
        return summary
    check_writable(store)
    if backend == "ray":
        from suite import ray_backend  # Ray is imported only when chosen

        ray_backend.connect(address, workers)
        ray_backend.check_gpus(any(on_gpu(g[0]) for g in groups))
    prov = {"code": provenance.code(), "packages": provenance.packages()}
    workers = max(1, workers or os.cpu_count() or 1)
    # longest groups first keeps the pool busy at the end of a sweep
    groups.sort(key=lambda g: -getattr(g[0].train_config, "steps", 0))
    variant = {p.spec: p.variant for p in points}
    cells = [cell_name(g[0].task, g[0].algo, variant[g[0]], len(g)) for g in groups]
    t0 = time.perf_counter()
    with SweepProgress(label, sum(map(len, groups)), enabled=progress) as bar:
        sweep = _Sweep(groups, cells, store, prov, bar, summary, gpu)
        if backend == "ray":
            ray_backend.run(sweep)
        elif workers == 1:
            sweep.inline()
        else:
            sweep.on_pools(workers)
    summary.wall_s = time.perf_counter() - t0
    return summary


class _Sweep:
    """Hands groups to workers and counts each finished group once, into the summary and the progress display."""

    def __init__(self, groups: list[list[RunSpec]], cells: list[str], store: Store, prov: dict, bar: SweepProgress,
                 summary: Summary, gpu: int | None = None):
        self.groups, self.cells, self.store, self.prov, self.bar, self.summary = groups, cells, store, prov, bar, summary
        self.gpu = gpu
        self.tries = [0] * len(groups)
        self.started: dict[int, tuple[str, float]] = {}

    def start(self, i: int) -> None:
        self.tries[i] += 1
        self.started[i] = (utc_now(), time.perf_counter())
        self.bar.start(i, self.cells[i])

    def finish(self, i: int, statuses: list[str]) -> None:
        for status in statuses:
            self.summary.statuses[status] += 1
        self.bar.finish(i, self.cells[i], statuses, time.perf_counter() - self.started[i][1])

    def inline(self) -> None:
        for i, g in enumerate(self.groups):
            self.start(i)
            self.finish(i, train_group(g, str(self.store.root), self.prov, gpu=self.gpu))

    def on_pools(self, workers: int) -> None:
        """Train on a process pool; when a worker dies (OOM killer, kill -9) and takes the groups in flight with it,
        go on with a fresh pool. The groups lost are retried one at a time, so that a second death names the group
        that caused it and no bystander is blamed; after `MAX_TRIES` deaths a group is recorded `failed`."""
        queue, suspects = deque(range(len(self.groups))), deque()
        while queue or suspects:
            with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
                died = sorted(self._until_death(pool, workers, queue, suspects))
            if not died:
                continue
            retry = [i for i in died if self.tries[i] < MAX_TRIES]
            given_up = [i for i in died if i not in retry]
            names = lambda ids: "; ".join(self.cells[i] for i in ids)  # noqa: E731
            self.bar.stopped(died, f"a worker process died (BrokenProcessPool) while training: {names(died)}"
                                   + (f". Retrying alone: {names(retry)}" if retry else "")
                                   + (f". Recorded failed after {MAX_TRIES} tries: {names(given_up)}" if given_up else ""))
            suspects.extend(retry)
            for i in given_up:
                self._record_death(i)

    def _until_death(self, pool: ProcessPoolExecutor, workers: int, queue: deque, suspects: deque) -> list[int]:
        """Train until both queues are empty or a worker dies; returns the groups lost, if any.

        At most `workers` groups are submitted at once, so nothing waits inside the pool: an error stops the sweep
        with only the running groups left to finish, and a dying worker takes only running groups with it."""
        running, died = {}, []
        while True:
            while not died and ((suspects and not running) or (not suspects and queue and len(running) < workers)):
                i = (suspects or queue).popleft()
                self.start(i)
                running[pool.submit(train_group, self.groups[i], str(self.store.root), self.prov, gpu=self.gpu)] = i
            if not running:
                return died
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                i = running.pop(fut)
                try:
                    statuses = fut.result()
                except BrokenProcessPool:
                    died.append(i)
                    continue
                self.finish(i, statuses)

    def failed_records(self, i: int, reason: str) -> list[dict]:
        """Group `i`'s runs as `failed` records with `reason`, timed from the group's start (a worker or task lost)."""
        group, (started, t0) = self.groups[i], self.started[i]
        wall = (time.perf_counter() - t0) / len(group)
        return [make_record(spec, RunResult(status="failed", error=reason), started, wall, len(group), self.prov) for spec in group]

    def _record_death(self, i: int) -> None:
        reason = (f"worker process died while training this group (BrokenProcessPool) on {MAX_TRIES} tries, the retries "
                  "with no other group running (killed by the OOM killer or a signal?)")
        for record in self.failed_records(i, reason):
            self.store.write(record)
        self.finish(i, ["failed"] * len(self.groups[i]))
