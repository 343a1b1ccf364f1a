"""The runner when things go wrong or take long: progress output, an unwritable store, a store write that fails
in a worker, a worker process that dies, and the summary's "every run failed".

The pool tests train a toy family in spawned workers. A worker learns of the family by importing this module
(unpickling a group's `ToyTask` imports it), which registers the family there; in the pytest process the
`toy_family` fixture registers it for the test only. Each pool start costs a worker's imports (torch: a few
seconds), so this module imports nothing at the top that a worker does not need (see `point`).
"""

from __future__ import annotations

import io
import multiprocessing
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from algorithms.base import Needs
from algorithms.pmpo import PMPOConfig
from suite import runner
from suite.errors import UserError
from suite.progress import SweepProgress, cell_name
from suite.runner import MAX_TRIES, Summary, execute, run_id
from suite.store import Store
from tasks.bandits import BanditLoopConfig
from tasks.base import TASKS, Family, RunResult, RunSpec, get_task, register_task

pytestmark = pytest.mark.usefixtures("restore_torch_threads")

TOY = "toy-touch"
MARKERS = "EMRL_TOY_MARKERS"
"""Folder where a toy group leaves a file each time it trains (the environment reaches spawned workers)."""


def point(variant: str, spec: RunSpec):
    from suite.questions.base import GridPoint  # here, not at the top: it loads every question (scipy, matplotlib, …)

    return GridPoint(variant, spec)


def bandit_points(betas=(0.5, 1.0), seeds=(0, 1), steps: int = 10) -> list:
    loop = BanditLoopConfig(steps=steps, log_every=10)
    return [point(f"β={b}", RunSpec("sphere", get_task("sphere").config, "pmpo", PMPOConfig(beta=b), loop, s))
            for b in betas for s in seeds]


# --------------------------------------------------------------------------------------- progress


def test_redirected_output_gets_one_flushed_line_per_group(tmp_path, capsys):
    summary = execute(bandit_points(), Store(tmp_path / "results"), workers=1, label="toy")
    assert dict(summary.statuses) == {"ok": 4}
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2, lines
    line = r"\[{n}/4 runs\] done: sphere pmpo β={b} ×2 seeds \(2 runs, ok 2\) in \d+\.\d s; elapsed \d+:\d\d:\d\d, ETA {eta}"
    assert re.fullmatch(line.format(n=2, b=0.5, eta=r"\d+:\d\d:\d\d"), lines[0]), lines[0]
    assert re.fullmatch(line.format(n=4, b=1.0, eta="0:00:00"), lines[1]), lines[1]


def test_quiet_prints_nothing(tmp_path, capsys):
    execute(bandit_points(betas=(0.5,)), Store(tmp_path / "results"), workers=1, progress=False)
    assert capsys.readouterr() == ("", "")


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True

    def text(self) -> str:
        """What was written, without the terminal's colour and cursor codes."""
        return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", self.getvalue())


def test_terminal_bar_counts_runs_and_names_the_cells_in_flight(monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")
    out = FakeTerminal()
    with SweepProgress("bandits-kl", 6, stream=out) as bar:
        bar.start(0, "sphere pmpo α=0 β=0 ×2 seeds")
        bar.start(1, "rosenbrock pmpo α=0 β=1 ×2 seeds")
        bar.bar.refresh()
        first = out.text()
        bar.finish(0, "sphere pmpo α=0 β=0 ×2 seeds", ["ok", "ok"], 1.0)
        bar.bar.refresh()
        second = out.text()[len(first):]
    assert "0/6 runs" in first and "ETA …" in first
    assert "running: sphere pmpo α=0 β=0 ×2 seeds | rosenbrock pmpo α=0 β=1 ×2 seeds" in first
    assert "2/6 runs" in second and "running: rosenbrock pmpo α=0 β=1 ×2 seeds" in second
    assert "sphere pmpo" not in second.split("running:")[-1]


def test_cell_names_say_the_algorithm_once():
    assert cell_name("cartpole-swingup", "vmpo", "V-MPO lr=1e-4", 5) == "cartpole-swingup V-MPO lr=1e-4 ×5 seeds"
    assert cell_name("tmaze-memory", "vmpo", "GTrXL", 5) == "tmaze-memory vmpo GTrXL ×5 seeds"
    assert cell_name("cartpole-swingup", "at_dar", "AT-DAR", 1) == "cartpole-swingup AT-DAR ×1 seed"
    assert cell_name("sphere", "pmpo", "", 2) == "sphere pmpo ×2 seeds"


# --------------------------------------------------------------------------------------- failing late


def test_an_unwritable_store_is_refused_before_anything_trains(tmp_path, monkeypatch):
    root = tmp_path / "results"
    root.mkdir()
    (root / "runs").symlink_to(tmp_path / "unmounted")  # unwritable even for root, unlike a chmod
    trained = []
    monkeypatch.setattr(runner, "train_group", lambda *a, **k: trained.append(a))
    with pytest.raises(UserError, match=f"cannot write to the results store at {root / 'runs'}"):
        execute(bandit_points(), Store(root), workers=1, progress=False)
    assert trained == []


@dataclass(frozen=True)
class ToyTask:
    tag: str = ""
    sleep: float = 0.0
    die: bool = False


@dataclass(frozen=True)
class ToyLoop:
    steps: int = 1  # orders the groups of a sweep (longest first)


def _toy_train(specs: list[RunSpec]) -> list[RunResult]:
    """Leaves a file saying it trained, sleeps, returns ok runs — or kills its own process, as the OOM killer would."""
    cfg = specs[0].task_config
    if cfg.die:
        os.kill(os.getpid(), signal.SIGKILL)
    (Path(os.environ[MARKERS]) / f"trained-{cfg.tag}-{time.monotonic_ns()}").touch()
    time.sleep(cfg.sleep)
    return [RunResult(status="ok", rows=[(0, "f", float(s.seed))]) for s in specs]


def _register() -> None:
    family = Family(name=TOY, train_config=ToyLoop, provides=Needs(min_samples=4, labels=True), train=_toy_train,
                    description="test only")
    register_task(TOY, family, ToyTask(), "a toy task that leaves marker files (test only)")


if multiprocessing.parent_process() is not None:  # a spawned pool worker, importing this module to unpickle a group
    _register()


@pytest.fixture
def toy_family(tmp_path, monkeypatch):
    markers = tmp_path / "markers"
    markers.mkdir()
    monkeypatch.setenv(MARKERS, str(markers))
    _register()
    yield lambda: sorted(p.name.split("-")[1] for p in markers.iterdir())
    TASKS.pop(TOY)


def toy_group(tag: str, steps: int, seeds=(0, 1), **cfg) -> list:
    return [point(tag, RunSpec(TOY, ToyTask(tag, **cfg), "pmpo", PMPOConfig(), ToyLoop(steps), s)) for s in seeds]


def test_a_failing_store_write_stops_the_sweep_after_the_groups_in_flight(tmp_path, toy_family):
    # a trains first and fails to write; b (in flight with it on the other worker) finishes; c and d never start
    a, b = toy_group("a", 4), toy_group("b", 3, sleep=1.5)
    c, d = toy_group("c", 2), toy_group("d", 1)
    store = Store(tmp_path / "results")
    blocked = store.path(run_id(a[0].spec)).parent
    assert all(store.path(run_id(p.spec)).parent != blocked for p in b + c + d)  # configs are fixed, so is this
    blocked.parent.mkdir(parents=True)
    blocked.symlink_to(tmp_path / "unmounted")  # a's records go nowhere
    with pytest.raises(FileExistsError):
        execute(a + b + c + d, store, workers=2, progress=False)
    assert toy_family() == ["a", "b"]
    assert [store.status(run_id(p.spec)) for p in b + c + d] == ["ok"] * 2 + ["absent"] * 4


def test_a_worker_that_dies_is_replaced_and_its_group_recorded_failed_after_its_tries(tmp_path, toy_family, capsys):
    # `dies` kills its worker every time; `bystander`, in flight with it on the other worker, is lost with it once
    dies, bystander = toy_group("dies", 2, die=True), toy_group("bystander", 1, sleep=0.5)
    store = Store(tmp_path / "results")
    summary = execute(dies + bystander, store, workers=2, label="toy")
    assert dict(summary.statuses) == {"failed": 2, "ok": 2} and not summary.all_failed
    for p in dies:
        rec = store.read(run_id(p.spec))
        assert rec["status"] == "failed" and rec["rows"]["step"] == [] and rec["vectorised_with"] == 2
        assert rec["error"].startswith(f"worker process died while training this group (BrokenProcessPool) on {MAX_TRIES} tries")
    assert [store.status(run_id(p.spec)) for p in bystander] == ["ok", "ok"]
    assert "bystander" in toy_family()
    out = capsys.readouterr().out
    deaths = [line for line in out.splitlines() if line.startswith("a worker process died (BrokenProcessPool) while training:")]
    assert len(deaths) == MAX_TRIES and all("toy-touch pmpo dies ×2 seeds" in line for line in deaths)
    assert f"Recorded failed after {MAX_TRIES} tries: toy-touch pmpo dies ×2 seeds" in out
    assert re.search(r"\[\d/4 runs\] done: toy-touch pmpo dies ×2 seeds \(2 runs, failed 2\)", out)


# --------------------------------------------------------------------------------------- summary


def test_all_failed_means_runs_were_trained_and_none_succeeded():
    assert Summary(total=4, skipped=0, statuses={"failed": 4}).all_failed
    assert not Summary(total=4, skipped=1, statuses={"failed": 2, "diverged": 1}).all_failed
    assert not Summary(total=4, skipped=4).all_failed  # nothing trained is not a failure
