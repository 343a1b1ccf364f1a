"""The Ray backend (`emrl run --backend ray [--address ADDR]`): each group of a sweep is a Ray task.

A task declares what its group needs from its training config (one CPU thread; one GPU for a `cuda` run) and
Ray places it on any node of the cluster. The task returns its records; the driver, the only writer, stores
each one atomically as the process pool's workers do, so the nodes need no shared file system (an artifact that
runs share, such as C6's offline dataset or the LM base models, is built on each node where it is first
needed), and a killed driver loses only the groups in flight: the same command trains exactly the runs that
are absent.

A task whose worker or node dies is retried by Ray (`MAX_TRIES` tries in all), then recorded `failed` with
the reason. A node must run the driver's code: a task that finds another commit (or other uncommitted
changes) records its runs `failed` rather than mixing two versions of the suite in one store. Its package
versions are the node's own, recorded with each run.

Ray is imported here only, and this module only when the backend is chosen: the laptop path never loads it.
Without an address, a local Ray instance is started with one CPU per worker, and it stays up for the rest of
the process (`emrl reproduce` runs every question on it); with one, emrl connects to a running cluster.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import ray
from ray.exceptions import RayError, RayTaskError

from suite import provenance
from suite.devices import on_gpu
from suite.errors import UserError
from suite.runner import MAX_TRIES, make_record, train_records, utc_now
from tasks.base import RunResult, RunSpec

if TYPE_CHECKING:
    from suite.runner import _Sweep

THREADS = 1
"""CPU threads per group: the families train single-threaded and take their speed from vectorising over seeds."""


def connect(address: str | None, workers: int | None) -> None:
    """Join the cluster at `address` (or at `RAY_ADDRESS`, Ray's own convention), else start a local Ray instance of
    `workers` CPUs; a second call reuses the first connection."""
    if ray.is_initialized():
        return
    options = {"include_dashboard": False, "logging_level": "WARNING", "log_to_driver": True}
    where = f"--address {address}" if address else f"RAY_ADDRESS={os.environ.get('RAY_ADDRESS')}"
    address = address or os.environ.get("RAY_ADDRESS")
    if address is None:  # "local": a new instance, even where `ray start` runs a cluster on this machine
        ray.init(address="local", num_cpus=workers or os.cpu_count() or 1, **options)
        return
    # The cluster's workers did not start from this shell: give them what the families read from the environment. Shared
    # artifacts (C6's offline dataset, the LM base models) are built on each node, at the same absolute path as here.
    env = {k: str(Path(os.environ[k]).resolve()) if k.startswith("EMRL_") else os.environ[k]
           for k in ("MUJOCO_GL", "EMRL_RESULTS", "EMRL_ARTIFACTS") if k in os.environ}
    try:
        ray.init(address=address, runtime_env={"env_vars": env}, **options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UserError(f"{where}: cannot connect to a Ray cluster there ({exc}). Start one with `ray start --head` and "
                        "give the address it prints; a cluster with token authentication (Ray's default) needs "
                        "RAY_AUTH_MODE=token here and its token (`ray get-auth-token` on the head) in ~/.ray/auth_token "
                        "or RAY_AUTH_TOKEN. Or leave the address out to run on a local Ray instance.") from None


def gpus() -> int:
    return int(ray.cluster_resources().get("GPU", 0))


def check_gpus(needed: bool) -> None:
    """Refuse `cuda` runs on a cluster without a GPU before anything trains (Ray would wait for one forever)."""
    if needed and not gpus():
        raise UserError("--device cuda: the Ray cluster has no GPU (ray.cluster_resources() lists none). Use "
                        "--device cpu, or add a node with a GPU.")


def _train(specs: list[RunSpec], driver_code: dict, threads: int) -> list[dict]:
    """The Ray task: train one group on this node, with this node's provenance."""
    prov = {"code": provenance.code(), "packages": provenance.packages()}
    if prov["code"] != driver_code:
        reason = (f"this node runs the suite at {prov['code']}, the driver at {driver_code}: install the driver's "
                  "checkout on every node")
        return [make_record(s, RunResult(status="failed", error=reason), utc_now(), 0.0, len(specs), prov) for s in specs]
    return train_records(specs, prov, threads)


def run(sweep: _Sweep) -> None:
    """Train the sweep's groups as Ray tasks, as many in flight as the cluster has CPUs; store what comes back.

    An error outside training (a store write that fails) stops the sweep as on the process pool: the groups in
    flight finish and are stored, nothing else starts, and the error is re-raised."""
    task = ray.remote(_train)
    capacity = max(1, int(ray.cluster_resources().get("CPU", 1)))
    queue, running, error = list(range(len(sweep.groups)))[::-1], {}, None
    while queue or running:
        while queue and error is None and len(running) < capacity:
            i = queue.pop()
            group = sweep.groups[i]
            sweep.start(i)
            ref = task.options(num_cpus=THREADS, num_gpus=1 if on_gpu(group[0]) else 0, max_retries=MAX_TRIES - 1,
                               retry_exceptions=False, name=sweep.cells[i]).remote(group, sweep.prov["code"], THREADS)
            running[ref] = i
        if not running:
            break
        done, _ = ray.wait(list(running), num_returns=1)
        i = running.pop(done[0])
        try:
            records = ray.get(done[0])
        except RayTaskError as exc:  # the task itself raised outside training (training errors are records already)
            records = sweep.failed_records(i, f"the Ray task raised: {exc}")
        except RayError as exc:  # its worker or node died on every try
            records = sweep.failed_records(i, f"the Ray task was lost on {MAX_TRIES} tries ({type(exc).__name__}: {exc})")
        try:
            for record in records:
                sweep.store.write(record)
        except Exception as exc:  # noqa: BLE001 - re-raised once the groups in flight are stored
            error = error or exc
            continue
        sweep.finish(i, [r["status"] for r in records])
    if error is not None:
        raise error
