"""The Ray backend (`suite.ray_backend`): the same records as the process pool, resume after the driver is killed, a
group that raises or whose worker dies recorded `failed`, and CUDA refused up front where there is none.

The in-process tests join a one-node cluster started as the README says (`ray start --head`, the `cluster`
fixture) with `--address`; the kill test's driver, a subprocess, starts its own local instance. A Ray worker
learns of the toy family by importing this module to unpickle a `RayToy` (the cluster's PYTHONPATH holds
tests/), which registers the family where `EMRL_RAY_TOY` is set: in the workers only.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import Dirs, cli_command, subprocess_env

from algorithms.base import Needs
from algorithms.pmpo import PMPOConfig
from suite import overrides
from suite.questions import get_question
from suite.questions.base import GridPoint
from suite.runner import MAX_TRIES, execute, run_id
from suite.store import Store
from tasks.base import TASKS, Family, RunResult, RunSpec, register_task

# A driver joining a token-authenticated cluster by its address says so (README, "Running on a cluster"); Ray reads
# this when it is first imported, which is here.
os.environ.setdefault("RAY_AUTH_MODE", "token")
# Ray ≥ 2.60's `ray start` refuses to start a token-authenticated head without a token, where earlier versions wrote one
# to ~/.ray: the tests bring their own (driver and head read the same variable), and nothing is written under ~/.ray.
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
ray = pytest.importorskip("ray")
pytestmark = pytest.mark.usefixtures("restore_torch_threads")

TOY, TOY_ENV = "ray-toy", "EMRL_RAY_TOY"
TIMING = ("started_at", "wall_time_s")  # what differs between two trainings of the same run
SMOKE_BANDITS = ["bandits-kl", "--profile", "smoke", "--set", "train.steps=50"]
"""90 bandit runs in 45 groups of 2 seeds, ~0.2 s a group: the sweep is mostly the backends' own cost."""


@dataclass(frozen=True)
class RayToy:
    mode: str = "ok"  # ok | raise | die


@dataclass(frozen=True)
class RayToyLoop:
    steps: int = 1


def _toy_train(specs: list[RunSpec]) -> list[RunResult]:
    mode = specs[0].task_config.mode
    if mode == "raise":
        raise ZeroDivisionError("toy family always fails")
    if mode == "die":  # the worker process dies, as under the OOM killer or with its node
        os.kill(os.getpid(), signal.SIGKILL)
    return [RunResult(status="ok", rows=[(0, "f", float(s.seed))]) for s in specs]


def _register() -> None:
    family = Family(name=TOY, train_config=RayToyLoop, provides=Needs(min_samples=4, labels=True), train=_toy_train,
                    description="test only")
    register_task(TOY, family, RayToy(), "a toy task that raises or kills its worker (test only)")


if os.environ.get(TOY_ENV) and TOY not in TASKS:  # a Ray worker unpickling a RayToy group
    _register()


@pytest.fixture(scope="module")
def cluster():
    """A one-node Ray cluster started as the README says (`ray start --head`), with the toy family's environment; yields
    its address. Stopped at the end by signalling its process group (`ray stop` would stop every Ray on the machine)."""
    ray.shutdown()
    tests = str(Path(__file__).resolve().parent)
    env = {**subprocess_env(), TOY_ENV: "1", "PYTHONPATH": os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")]))}
    env.pop("RAY_ADDRESS", None)
    with socket.socket() as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    log = Path(tempfile.mkdtemp()) / "ray-start.log"
    with open(log, "w") as out:
        head = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", f"--port={port}",
                                 "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats"],
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline, address = time.monotonic() + 120, None
        while address is None and time.monotonic() < deadline and head.poll() is None:
            address = next(iter(re.findall(r"ray start --address='([^']+)'", log.read_text())), None)
            time.sleep(0.2)
        assert address, f"ray start did not come up:\n{log.read_text()[-3000:]}"
        yield address
    finally:
        ray.shutdown()
        for sig, wait_s in ((signal.SIGTERM, 3), (signal.SIGKILL, 10)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(head.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                head.wait(timeout=wait_s)
                break


@pytest.fixture
def toy():
    _register()
    yield
    TASKS.pop(TOY)


def records(results: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (results / "runs").glob("*/*.json")}


def without_timing(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in TIMING}


@pytest.mark.parametrize("args", [SMOKE_BANDITS, ["control-pmpo", "--profile", "smoke"]], ids=["bandits", "control"])
def test_ray_stores_the_same_records_as_the_process_pool(tmp_path, cli, cluster, args):
    pool, on_ray = tmp_path / "pool", tmp_path / "ray"
    assert cli("--results", pool, "run", *args, "--no-report", "--quiet", "--workers", "2").rc == 0
    result = cli("--results", on_ray, "run", *args, "--no-report", "--quiet", "--backend", "ray", "--address", cluster)
    assert result.rc == 0, result.out + result.err
    a, b = records(pool), records(on_ray)
    assert a.keys() == b.keys() and len(a) > 20
    assert {k: without_timing(r) for k, r in a.items()} == {k: without_timing(r) for k, r in b.items()}


def test_a_killed_driver_resumes_from_the_store_with_no_duplicate(tmp_path, cli):
    args = ["run", *SMOKE_BANDITS[:-1], "train.steps=200", "--no-report", "--backend", "ray"]
    grid = overrides.apply(get_question("bandits-kl").grid("smoke"), ["train.steps=200"])
    ids = sorted(run_id(p.spec) for p in grid)
    results = tmp_path / "results"
    runs = results / "runs"
    log = open(tmp_path / "driver.log", "w")
    env = {k: v for k, v in subprocess_env().items() if k != "RAY_ADDRESS"}  # its own local instance, not this module's
    proc = subprocess.Popen(cli_command(Dirs(results, tmp_path / "reports"), *args), cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline, n = time.monotonic() + 240, 0
        while time.monotonic() < deadline and proc.poll() is None and n < 6:
            n = len(list(runs.glob("*/*.json"))) if runs.exists() else 0
            time.sleep(0.05)
        assert proc.poll() is None and n >= 6, (f"the sweep ended or stalled before the kill ({n} runs stored):\n"
                                                 + (tmp_path / "driver.log").read_text()[-3000:])
        os.killpg(proc.pid, signal.SIGKILL)  # the driver, its local Ray instance and the tasks in flight
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    store = Store(results)
    before = store.load()
    assert before.problems == [] and 0 < len(before.runs) < len(ids)

    again = cli("--results", results, *args, "--quiet")
    assert again.rc == 0, again.out + again.err
    assert f"{len(ids)} runs, {len(before.runs)} already stored, trained: " in again.out
    assert sum(map(int, re.findall(r"(\d+) (?:ok|diverged|failed)", again.out))) == len(ids) - len(before.runs)
    after = store.load()
    assert after.problems == [] and sorted(after.runs.run_id) == ids and after.runs.run_id.is_unique


def test_a_group_that_raises_or_whose_worker_dies_is_recorded_failed_and_the_sweep_goes_on(tmp_path, cluster, toy):
    def points(mode: str) -> list[GridPoint]:
        return [GridPoint(mode, RunSpec(TOY, RayToy(mode), "pmpo", PMPOConfig(), RayToyLoop(), s)) for s in (0, 1)]

    raises, dies, good = points("raise"), points("die"), points("ok")
    store = Store(tmp_path / "results")
    summary = execute(raises + dies + good, store, progress=False, backend="ray", address=cluster)
    assert dict(summary.statuses) == {"failed": 4, "ok": 2}
    for p in raises:
        rec = store.read(run_id(p.spec))
        assert rec["status"] == "failed" and "ZeroDivisionError: toy family always fails" in rec["error"]
    for p in dies:
        rec = store.read(run_id(p.spec))
        assert rec["status"] == "failed" and rec["error"].startswith(f"the Ray task was lost on {MAX_TRIES} tries")
    assert [store.status(run_id(p.spec)) for p in good] == ["ok", "ok"]


def test_cuda_is_refused_before_anything_trains_where_there_is_none(tmp_path, cli, cluster):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    for backend in (["--backend", "process"], ["--backend", "ray", "--address", cluster]):
        result = cli("--results", tmp_path / "results", "run", "control-pmpo", "--profile", "smoke", "--device", "cuda",
                     "--no-report", *backend)
        assert result.rc == 2, result.out + result.err
        assert "--device cuda" in result.err and ("no CUDA device" in result.err or "no GPU" in result.err), result.err
    assert not (tmp_path / "results" / "runs").exists() or not any((tmp_path / "results" / "runs").rglob("*.json"))
