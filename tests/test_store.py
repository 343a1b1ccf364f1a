"""The results store (`suite.store`): atomic writes, no silent overwrite, archived failures, the loader.

Records are built with `suite.runner.make_record` from real run specs, so these tests check the
format the runner actually writes.
"""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest

from algorithms.pmpo import PMPOConfig
from suite.runner import make_record, run_id
from suite.store import CorruptRecord, Store, StoreConflict
from tasks import RunResult, RunSpec, get_task
from tasks.bandits import BanditLoopConfig

PROV = {"code": {"commit": "0" * 40, "dirty": False}, "packages": {"python": "3", "torch": "x"}}


def spec(seed: int = 0, beta: float = 0.5) -> RunSpec:
    return RunSpec("sphere", get_task("sphere").config, "pmpo", PMPOConfig(alpha=0.5, beta=beta),
                   BanditLoopConfig(steps=10, log_every=5), seed)


def record(seed: int = 0, status: str = "ok", n_steps: int = 2, beta: float = 0.5, error: str | None = None) -> dict:
    """A record of `spec(seed)` with `n_steps` logged steps of metrics f and loss (values step + seed/10)."""
    rows = [(0, "f_init", 100.0 + seed)]
    rows += [(s, m, s + seed / 10) for s in range(1, n_steps + 1) for m in ("f", "loss")]
    diverged = {"step": n_steps, "reason": "non-finite loss"} if status == "diverged" else None
    result = RunResult(status=status, rows=rows, diverged=diverged, error=error)
    return make_record(spec(seed, beta), result, "2026-01-01T00:00:00+00:00", 0.25, 1, PROV)


def files(store: Store) -> list[str]:
    """Every file under the store's runs/ (hidden temporary files included), relative, sorted."""
    base = store.root / "runs"
    return sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file()) if base.exists() else []


# ------------------------------------------------------------------------------------------ writes


def test_write_read_round_trip_and_layout(tmp_path):
    store = Store(tmp_path / "results")
    rec = record(seed=3)
    path = store.write(rec)
    rid = run_id(spec(3))
    assert rec["run_id"] == rid
    assert path == tmp_path / "results" / "runs" / rid[:2] / f"{rid}.json"
    assert store.read(rid) == rec
    assert store.status(rid) == "ok"
    assert store.status("f" * 16) == "absent"
    assert store.read("f" * 16) is None
    assert store.run_ids() == [rid]
    assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's private 0600


class Crash(Exception):
    pass


def _dump_half_then_crash(obj, fh, **kwargs):
    """Write the first half of the JSON text, then die as a process killed mid-write would."""
    text = json.dumps(obj, **kwargs)
    fh.write(text[: len(text) // 2])
    fh.flush()
    raise Crash("simulated crash in json.dump")


def _crash_in_fsync(fd):
    raise KeyboardInterrupt  # a BaseException: the cleanup must not depend on catching Exception only


@pytest.mark.parametrize("where", ["json.dump", "os.fsync"])
def test_crash_mid_write_leaves_no_record_and_no_temporary_file(tmp_path, monkeypatch, where):
    store = Store(tmp_path / "results")
    rec = record()
    if where == "json.dump":
        monkeypatch.setattr(json, "dump", _dump_half_then_crash)
        expected = Crash
    else:
        monkeypatch.setattr(os, "fsync", _crash_in_fsync)
        expected = KeyboardInterrupt
    with pytest.raises(expected):
        store.write(rec)
    monkeypatch.undo()
    assert files(store) == []  # neither <id>.json nor a leftover .<id>.*.tmp
    assert store.read(rec["run_id"]) is None
    assert store.status(rec["run_id"]) == "absent"
    loaded = store.load()
    assert loaded.problems == [] and len(loaded.runs) == 0
    store.write(rec)  # the run can be written normally afterwards
    assert store.read(rec["run_id"]) == rec


@pytest.mark.parametrize("status", ["ok", "diverged"])
def test_refuses_to_overwrite_a_finished_run(tmp_path, status):
    store = Store(tmp_path / "results")
    first = record(status=status)
    path = store.write(first)
    before = path.read_bytes()
    second = record(status="ok", n_steps=5)  # same spec -> same run id, different content
    assert second["run_id"] == first["run_id"]
    with pytest.raises(StoreConflict, match=rf"already stored .* status '{status}'"):
        store.write(second)
    assert path.read_bytes() == before
    assert files(store) == [f"{first['run_id'][:2]}/{first['run_id']}.json"]


def test_refuses_to_overwrite_a_corrupt_file(tmp_path):
    store = Store(tmp_path / "results")
    rec = record()
    path = store.path(rec["run_id"])
    path.parent.mkdir(parents=True)
    path.write_text("{ not json")
    with pytest.raises(CorruptRecord) as info:
        store.write(rec)
    assert info.value.path == path
    assert path.read_text() == "{ not json"  # the evidence is kept, never replaced


def test_failed_record_is_archived_never_deleted_when_rewritten(tmp_path):
    store = Store(tmp_path / "results")
    rid = record()["run_id"]
    store.write(record(status="failed", error="Traceback: first"))
    store.write(record(status="failed", error="Traceback: second"))
    store.write(record(status="ok"))
    d = f"{rid[:2]}/"
    assert files(store) == [d + f"{rid}.failed-1.json", d + f"{rid}.failed-2.json", d + f"{rid}.json"]
    base = store.path(rid).parent
    assert json.loads((base / f"{rid}.failed-1.json").read_text())["error"] == "Traceback: first"
    assert json.loads((base / f"{rid}.failed-2.json").read_text())["error"] == "Traceback: second"
    assert store.read(rid)["status"] == "ok"
    assert store.run_ids() == [rid]  # archives are not current runs
    loaded = store.load()
    assert list(loaded.runs.run_id) == [rid] and list(loaded.runs.status) == ["ok"]
    assert loaded.problems == []


# ------------------------------------------------------------------------------------------ load


def test_load_several_runs_gives_runs_frame_and_long_rows_with_seed_on_every_row(tmp_path):
    store = Store(tmp_path / "results")
    # seeds 0, 1, 2 with 1, 2, 3 logged steps: 1 + 2*n rows each -> 3, 5, 7 rows, 15 in all
    recs = [record(seed=s, n_steps=s + 1, status="diverged" if s == 2 else "ok") for s in range(3)]
    for r in recs:
        store.write(r)
    loaded = store.load()
    assert loaded.problems == []

    runs = loaded.runs.set_index("run_id")
    assert sorted(runs.index) == sorted(r["run_id"] for r in recs)
    for r, s in zip(recs, range(3)):
        row = runs.loc[r["run_id"]]
        assert row["seed"] == s
        assert row["task"] == "sphere" and row["algo"] == "pmpo"
        assert row["algo_config.alpha"] == 0.5 and row["train_config.steps"] == 10
        assert row["wall_time_s"] == 0.25
    assert runs.loc[recs[2]["run_id"], "status"] == "diverged"
    assert runs.loc[recs[2]["run_id"], "diverged_step"] == 3
    assert runs.loc[recs[2]["run_id"], "diverged_reason"] == "non-finite loss"
    assert pd.isna(runs.loc[recs[0]["run_id"], "diverged_step"])

    rows = loaded.rows
    assert list(rows.columns) == ["run_id", "seed", "step", "metric", "value"]
    assert len(rows) == 3 + 5 + 7
    assert rows.seed.notna().all()
    for r, s in zip(recs, range(3)):
        mine = rows[rows.run_id == r["run_id"]]
        assert len(mine) == 1 + 2 * (s + 1)
        assert set(mine.seed) == {s}  # the seed is on every row
        # value of metric f at step k is k + seed/10 (see `record`)
        f = mine[mine.metric == "f"].set_index("step").value
        assert f.to_dict() == {k: k + s / 10 for k in range(1, s + 2)}

    only = store.load([recs[1]["run_id"], "0" * 16])  # an absent id is simply not there
    assert list(only.runs.run_id) == [recs[1]["run_id"]] and set(only.rows.seed) == {1}


def test_load_of_an_empty_store(tmp_path):
    loaded = Store(tmp_path / "nothing-here").load()
    assert len(loaded.runs) == 0 and len(loaded.rows) == 0 and loaded.problems == []
    assert list(loaded.rows.columns) == ["run_id", "seed", "step", "metric", "value"]
    assert not (tmp_path / "nothing-here").exists()  # reading creates nothing


def _corrupt(store: Store, kind: str) -> tuple:
    """Plant one bad file; return (its path, the id under which `read` finds it, what the message must say)."""
    good = record(seed=7)
    rid = good["run_id"]
    path = store.path(rid)
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "invalid json":
        path.write_text(json.dumps(good)[:-20])  # truncated
        return path, rid, "not valid JSON"
    if kind == "missing field":
        del good["status"]
        path.write_text(json.dumps(good))
        return path, rid, "missing field 'status'"
    if kind == "wrong status":
        good["status"] = "done"
        path.write_text(json.dumps(good))
        return path, rid, "'status' = 'done', allowed: ok, diverged, failed"
    if kind == "wrong type":
        good["rows"] = [1, 2, 3]
        path.write_text(json.dumps(good))
        return path, rid, "field 'rows' has type list"
    if kind == "ragged rows":
        good["rows"]["value"].pop()
        path.write_text(json.dumps(good))
        return path, rid, "columns of different lengths"
    if kind == "run_id mismatch":
        other = "ab" + rid[2:] if not rid.startswith("ab") else "cd" + rid[2:]
        path = store.path(other)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(good))  # the record of `rid` under another run's name
        return path, other, f"'run_id' = '{rid}' does not match the file name"
    if kind == "top-level list":
        path.write_text("[]")
        return path, rid, "top level is list"
    raise AssertionError(kind)


CORRUPTIONS = ["invalid json", "missing field", "wrong status", "wrong type", "ragged rows", "run_id mismatch", "top-level list"]


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_corrupt_record_is_reported_by_path(tmp_path, kind):
    store = Store(tmp_path / "results")
    fine = record(seed=1)
    store.write(fine)
    path, rid, reason = _corrupt(store, kind)

    loaded = store.load()  # neither crashes nor skips silently
    assert list(loaded.runs.run_id) == [fine["run_id"]]
    assert set(loaded.rows.run_id) == {fine["run_id"]}
    assert len(loaded.problems) == 1
    problem = loaded.problems[0]
    assert isinstance(problem, CorruptRecord)
    assert problem.path == path
    assert str(path) in str(problem) and reason in str(problem)

    explicit = store.load([fine["run_id"], rid])  # the same when the ids are given
    assert [p.path for p in explicit.problems] == [path]

    with pytest.raises(CorruptRecord) as info:
        store.read(rid)
    assert info.value.path == path and str(path) in str(info.value) and reason in str(info.value)
    assert store.status(rid) == "corrupt"


def test_misplaced_record_is_a_problem_not_silently_skipped(tmp_path):
    store = Store(tmp_path / "results")
    rec = record()
    rid = rec["run_id"]
    wrong = store.root / "runs" / ("zz" if not rid.startswith("zz") else "yy") / f"{rid}.json"
    wrong.parent.mkdir(parents=True)
    wrong.write_text(json.dumps(rec))
    loaded = store.load()
    assert len(loaded.runs) == 0
    assert [p.path for p in loaded.problems] == [wrong]
    assert "misplaced" in str(loaded.problems[0]) and str(store.path(rid)) in str(loaded.problems[0])
    assert store.run_ids() == []


def test_temporary_files_are_not_runs(tmp_path):
    store = Store(tmp_path / "results")
    rec = record()
    store.write(rec)
    folder = store.path(rec["run_id"]).parent
    (folder / f".{rec['run_id']}.abc123.tmp").write_text(json.dumps(rec)[:50])  # a write cut short by kill -9
    assert store.run_ids() == [rec["run_id"]]
    loaded = store.load()
    assert loaded.problems == [] and list(loaded.runs.run_id) == [rec["run_id"]]
