"""The runner (`suite.runner`): resume after kill -9, determinism, vectorised == per seed, failure isolation.

Bandit training is cheap enough at a few dozen steps to run real runs here.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import time
from dataclasses import dataclass

import pytest
from conftest import cli_command, snapshot, subprocess_env

import tasks
from algorithms.base import Needs
from algorithms.dpo import DPOConfig
from algorithms.mpo import MPOConfig
from algorithms.pmpo import PMPOConfig
from suite import overrides
from suite.errors import UserError
from suite.questions import get_question
from suite.questions.base import GridPoint
from suite.runner import execute, pending, run_id, train_group
from suite.store import Store
from tasks import RunResult, RunSpec, get_task
from tasks.base import Family
from tasks.bandits import BanditLoopConfig

pytestmark = pytest.mark.usefixtures("restore_torch_threads")

PROV = {"code": {"commit": None, "dirty": True}, "packages": {}}


def bandit_spec(task: str = "sphere", algo: str = "pmpo", cfg=None, seed: int = 0, **loop) -> RunSpec:
    cfg = cfg if cfg is not None else PMPOConfig()
    loop = {"steps": 30, "log_every": 10, **loop}
    return RunSpec(task, get_task(task).config, algo, cfg, BanditLoopConfig(**loop), seed)


# --------------------------------------------------------------------------------------- kill -9


KILL_STEPS = 50
KILL_ARGS = ["run", "bandits-kl", "--profile", "smoke", "--set", f"train.steps={KILL_STEPS}", "--workers", "2", "--no-report"]
"""bandits-kl at smoke: 3 functions × 15 (α, β) cells × 2 seeds = 90 runs in 45 groups of 2 seeds.
At 50 steps a group trains in ~0.2 s; most of the ~15 s a sweep takes is starting the interpreter and
its two pool workers (torch, and torch._dynamo on the first optimiser), so the budget is kept small."""


def test_resume_after_kill_minus_9_trains_exactly_the_missing_runs(dirs, cli):
    grid = overrides.apply(get_question("bandits-kl").grid("smoke"), [f"train.steps={KILL_STEPS}"])
    grid_ids = sorted(run_id(p.spec) for p in grid)
    assert len(set(grid_ids)) == len(grid) == 90
    runs_dir = dirs.results / "runs"
    dirs.results.parent.mkdir(parents=True, exist_ok=True)

    log_path = dirs.results.parent / "first.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(cli_command(dirs, *KILL_ARGS), cwd=dirs.results.parent, env=subprocess_env(),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        n = 0
        while time.monotonic() < deadline and proc.poll() is None:
            n = len(list(runs_dir.glob("*/*.json"))) if runs_dir.exists() else 0
            if n >= 6:  # a few groups are stored; most are still to come or in flight
                break
            time.sleep(0.02)
        assert proc.poll() is None, (f"the sweep ended (exit {proc.returncode}) before it could be killed, with {n} runs "
                                     f"stored; its output:\n{log_path.read_text()[-3000:]}")
        assert n >= 6, f"only {n} runs stored after 240 s; its output:\n{log_path.read_text()[-3000:]}"
        os.killpg(proc.pid, signal.SIGKILL)  # the parent and its pool workers, without any clean-up
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    assert proc.returncode == -signal.SIGKILL

    store = Store(dirs.results)
    # a write cut short (as a kill -9 inside json.dump would leave it) must not count as a run either
    missing = sorted(set(grid_ids) - set(store.run_ids()))
    planted = runs_dir / missing[0][:2] / f".{missing[0]}.killed.tmp"
    planted.parent.mkdir(parents=True, exist_ok=True)
    planted.write_text('{"schema": 1, "run_id": "' + missing[0])

    after_kill = store.load()
    assert after_kill.problems == []  # every file present is a complete, valid record
    stored_before = sorted(after_kill.runs.run_id)
    assert 0 < len(stored_before) < len(grid)
    assert set(stored_before) <= set(grid_ids)
    assert missing[0] not in stored_before
    assert set(after_kill.runs.status) == {"ok"}
    assert len(stored_before) == len(list(runs_dir.glob("*/*.json")))  # .tmp files are not runs
    before = {k: v for k, v in snapshot(runs_dir).items() if k.endswith(".json")}
    assert len(before) == len(stored_before)

    # the same command again, in this process to save an interpreter start (its pool workers are fresh processes)
    second = cli(*dirs.options(), *KILL_ARGS)
    assert second.rc == 0, second.out + second.err
    assert f"90 runs, {len(stored_before)} already stored, trained: {90 - len(stored_before)} ok" in second.out

    final = store.load()
    assert final.problems == []
    assert sorted(final.runs.run_id) == grid_ids  # every grid run exactly once, nothing else
    assert final.runs.run_id.is_unique and len(final.runs) == 90
    assert sorted(store.run_ids()) == grid_ids
    json_files = sorted(p.name for p in runs_dir.glob("*/*.json"))
    assert json_files == [f"{i}.json" for i in grid_ids]  # no archived or duplicate records
    after = snapshot(runs_dir)
    for name, (mtime, content) in before.items():  # runs stored before the kill were not rewritten
        assert after[name] == (mtime, content), name
    # every seed of every cell is there with its rows
    assert set(final.rows.run_id) == set(grid_ids)
    assert final.rows.groupby("run_id").seed.nunique().eq(1).all()


# --------------------------------------------------------------------------------------- determinism


def rows_close(a: list, b: list, rel: float = 1e-9) -> bool:
    if [r[:2] for r in a] != [r[:2] for r in b]:
        return False
    return all(math.isclose(x[2], y[2], rel_tol=rel, abs_tol=0.0) or (math.isnan(x[2]) and math.isnan(y[2])) for x, y in zip(a, b))


@pytest.mark.parametrize("task, algo, cfg", [("sphere", "pmpo", PMPOConfig(alpha=0.5, beta=0.5)),
                                             ("rosenbrock", "mpo", MPOConfig())])
def test_same_spec_and_seed_give_identical_rows(task, algo, cfg):
    family = get_task(task).family
    specs = [bandit_spec(task, algo, cfg, seed=s) for s in (0, 1)]
    first, again = family.train(specs), family.train(specs)
    for a, b in zip(first, again):
        assert a.status == b.status == "ok"
        assert a.rows == b.rows  # bit for bit
    assert sorted({r[0] for r in first[0].rows}) == [0, 10, 20, 30]  # steps=30, log_every=10


@pytest.mark.parametrize("task, algo, cfg", [("sphere", "pmpo", PMPOConfig(alpha=0.0, beta=2.0)),
                                             ("rosenbrock", "mpo", MPOConfig()),
                                             ("schwefel", "dpo", DPOConfig(beta=0.1))])
def test_vectorised_seed_sweep_equals_each_seed_alone(task, algo, cfg):
    family = get_task(task).family
    specs = [bandit_spec(task, algo, cfg, seed=s, steps=40) for s in (0, 1, 2)]
    together = family.train(specs)
    alone = [family.train([s])[0] for s in specs]
    for seed, (v, a) in enumerate(zip(together, alone)):
        assert v.status == a.status == "ok"
        assert len(v.rows) == len(a.rows) > 10
        assert rows_close(v.rows, a.rows, rel=1e-9), f"seed {seed}: batched run differs from the run alone"
    # and the order of seeds in the batch does not matter either
    reversed_ = family.train(specs[::-1])[::-1]
    assert all(rows_close(v.rows, r.rows) for v, r in zip(together, reversed_))


def test_different_seeds_give_different_rows():
    family = get_task("sphere").family
    r0, r1 = family.train([bandit_spec(seed=0), bandit_spec(seed=1)])
    f0 = {(s, m): v for s, m, v in r0.rows}
    f1 = {(s, m): v for s, m, v in r1.rows}
    assert f0.keys() == f1.keys()
    assert f0[(0, "f_init")] != f1[(0, "f_init")]  # different instance (starting point)
    assert f0[(30, "f")] != f1[(30, "f")]
    assert sum(f0[k] != f1[k] for k in f0) >= len(f0) - 3  # only constants (e.g. initial std 1.0) may agree


def test_train_group_stores_identical_rows_for_identical_specs(tmp_path):
    specs = [bandit_spec(seed=s) for s in (4, 5)]
    assert train_group(specs, str(tmp_path / "a"), PROV) == ["ok", "ok"]
    assert train_group(specs, str(tmp_path / "b"), PROV) == ["ok", "ok"]
    for s in specs:
        a, b = Store(tmp_path / "a").read(run_id(s)), Store(tmp_path / "b").read(run_id(s))
        assert a["rows"] == b["rows"]
        assert a["rows"]["seed"] == [s.seed] * len(a["rows"]["step"])
        assert a["config"]["seed"] == s.seed and a["vectorised_with"] == 2


# --------------------------------------------------------------------------------------- failure isolation


@dataclass(frozen=True)
class ToyLoop:
    steps: int = 10**9  # sorts this group first in a sweep (longest first), so the others run after it fails


@dataclass(frozen=True)
class ToyTask:
    size: int = 1


def _train_raises(specs):
    raise ZeroDivisionError("toy family always fails")


def _train_returns_too_few(specs):
    return [RunResult(status="ok", rows=[(0, "f", 1.0)])]


@pytest.fixture
def toy_tasks():
    names = {"toy-raises": _train_raises, "toy-short": _train_returns_too_few}
    for name, train in names.items():
        family = Family(name=name, train_config=ToyLoop, provides=Needs(min_samples=4, labels=True, logp_old=True,
                        logp_ref=True, kl_ref=True, kl_old=True), train=train, description="test only")
        tasks.register_task(name, family, ToyTask(), "a task whose family is broken (test only)")
    yield list(names)
    for name in names:
        tasks.TASKS.pop(name, None)
    assert not set(names) & set(tasks.TASKS)


def toy_point(task: str, seed: int) -> GridPoint:
    return GridPoint("toy", RunSpec(task, ToyTask(), "pmpo", PMPOConfig(), ToyLoop(), seed))


def test_a_family_that_raises_gives_failed_records_and_the_sweep_goes_on(tmp_path, toy_tasks):
    store = Store(tmp_path / "results")
    bad = [toy_point("toy-raises", s) for s in (0, 1)]
    short = [toy_point("toy-short", s) for s in (0, 1)]
    good = [GridPoint("ok", bandit_spec(seed=s, steps=10)) for s in (0, 1)]
    summary = execute(bad + short + good, store, workers=1, progress=False)
    assert dict(summary.statuses) == {"failed": 4, "ok": 2}
    assert summary.total == 6 and summary.skipped == 0 and summary.trained == 6 and not summary.all_failed

    for p in bad:
        rec = store.read(run_id(p.spec))
        assert rec["status"] == "failed" and rec["rows"]["step"] == []
        assert "Traceback (most recent call last)" in rec["error"]
        assert "ZeroDivisionError: toy family always fails" in rec["error"]
    for p in short:  # a family that loses runs is a failure, not a silent gap
        rec = store.read(run_id(p.spec))
        assert rec["status"] == "failed" and "returned 1 results for 2 runs" in rec["error"]
    for p in good:
        assert store.status(run_id(p.spec)) == "ok"

    # a failed run is retried by the next sweep; its old record is archived, the ok runs are left alone
    ok_before = {run_id(p.spec): store.path(run_id(p.spec)).stat().st_mtime_ns for p in good}
    groups, stored = pending(bad + short + good, store)
    assert stored == 2 and sorted(len(g) for g in groups) == [2, 2]
    summary = execute(bad + good, store, workers=1, progress=False)
    assert dict(summary.statuses) == {"failed": 2} and summary.skipped == 2
    assert summary.all_failed  # every run it trained failed (the ok runs were stored before): `emrl run` exits non-zero
    for p in bad:
        rid = run_id(p.spec)
        assert store.path(rid).with_name(f"{rid}.failed-1.json").exists()
    assert {rid: store.path(rid).stat().st_mtime_ns for rid in ok_before} == ok_before


def test_a_diverged_run_is_stored_with_step_and_reason(tmp_path):
    # PMPO reject-only without KL (α = 0, β = 0) pushes the policy away from every rejected sample;
    # with lr 0.1 the KL to the reference passes the 100 limit within ~25 steps (seeds 0, 1).
    store = Store(tmp_path / "results")
    points = [GridPoint("R no KL", bandit_spec(cfg=PMPOConfig(alpha=0.0, beta=0.0), seed=s, steps=200, lr=0.1,
                                               kl_limit=100.0)) for s in (0, 1)]
    summary = execute(points, store, workers=1, progress=False)
    assert dict(summary.statuses) == {"diverged": 2}
    loaded = store.load()
    assert loaded.problems == []
    for p in points:
        rec = store.read(run_id(p.spec))
        assert rec["status"] == "diverged"
        step, reason = rec["diverged"]["step"], rec["diverged"]["reason"]
        assert isinstance(step, int) and 0 < step < 200
        assert reason.startswith("KL(π_ref‖π_θ) = ") and reason.endswith("> 100")
        assert max(rec["rows"]["step"]) <= step  # nothing logged after the divergence
        assert set(rec["rows"]["seed"]) == {p.spec.seed}
    runs = loaded.runs.set_index("run_id")
    assert set(runs.status) == {"diverged"} and runs.diverged_step.between(1, 199).all()


# --------------------------------------------------------------------------------------- sweeps


def test_a_second_sweep_trains_nothing_and_rewrites_nothing(tmp_path):
    store = Store(tmp_path / "results")
    points = [GridPoint(str(b), bandit_spec(cfg=PMPOConfig(beta=b), seed=s, steps=10)) for b in (0.5, 1.0) for s in (0, 1)]
    first = execute(points, store, workers=1, progress=False)
    assert dict(first.statuses) == {"ok": 4} and first.skipped == 0
    before = snapshot(store.root)
    second = execute(points, store, workers=1, progress=False)
    assert dict(second.statuses) == {} and second.skipped == 4 and second.total == 4
    assert snapshot(store.root) == before


def test_pending_groups_by_cell_and_stops_on_a_corrupt_record(tmp_path):
    store = Store(tmp_path / "results")
    points = [GridPoint(str(b), bandit_spec(cfg=PMPOConfig(beta=b), seed=s)) for b in (0.5, 1.0) for s in (0, 1, 2)]
    groups, stored = pending(points, store)
    assert stored == 0 and sorted(len(g) for g in groups) == [3, 3]
    assert all(len({s.algo_config for s in g}) == 1 for g in groups)  # a group is one cell, seeds only differ

    bad = store.path(run_id(points[4].spec))
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_text("{")
    with pytest.raises(UserError, match=f"corrupt results file {bad}"):
        execute(points, store, workers=1, progress=False)
    assert snapshot(store.root) == {str(bad.relative_to(store.root)): (bad.stat().st_mtime_ns, b"{")}
