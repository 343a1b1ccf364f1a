"""The results store (`suite.store`): atomic writes, no silent overwrite, archived failures, the loader.

Records are built with `suite.runner.make_record` from real run specs, so these tests check the
format the runner actually writes.
"""

from __future__ import annotations

import errno
import json
import os
import time

import pandas as pd
import pytest

from algorithms.pmpo import PMPOConfig
from suite.configs import content_hash
from suite.runner import make_record, run_id
from suite.store import STALE_TEMP_S, CorruptRecord, Store, StoreConflict, StrayFile
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


@pytest.mark.parametrize("theirs", ["ok", "diverged", "failed"])
def test_a_run_stored_by_another_process_during_a_write_is_never_replaced(tmp_path, monkeypatch, theirs):
    store = Store(tmp_path / "results")
    mine, other = record(status="ok", n_steps=5), record(status=theirs, error="Traceback: theirs")
    path = store.path(mine["run_id"])
    real_fsync, raced = os.fsync, []

    def fsync_while_another_process_stores_the_run(fd):
        # `mine` is in its temporary file, past the check that found the run absent: now the other
        # process (a second sweep over the same grid) stores the same run, complete
        real_fsync(fd)
        if not raced:
            raced.append(fd)
            Store(store.root).write(other)

    monkeypatch.setattr(os, "fsync", fsync_while_another_process_stores_the_run)
    d = f"{mine['run_id'][:2]}/"
    if theirs == "failed":  # theirs is archived, as any failed run on retry, and mine is stored
        store.write(mine)
        assert files(store) == [d + f"{mine['run_id']}.failed-1.json", d + f"{mine['run_id']}.json"]
        assert store.read(mine["run_id"]) == mine
        return
    with pytest.raises(StoreConflict) as info:
        store.write(mine)
    assert f"already stored at {path} with status '{theirs}'" in str(info.value)
    assert store.read(mine["run_id"]) == other  # the first record is intact
    assert files(store) == [d + f"{mine['run_id']}.json"]  # and no temporary file is left


def test_a_file_appearing_just_before_the_link_is_never_replaced(tmp_path, monkeypatch):
    """A writer that does not take the folder's lock (an older version, another host): the link still refuses."""
    store = Store(tmp_path / "results")
    mine, other = record(n_steps=5), record()
    path = store.path(mine["run_id"])
    real_link = os.link

    def link_after_another_writer(src, dst):
        path.write_text(json.dumps(other))
        return real_link(src, dst)

    monkeypatch.setattr(os, "link", link_after_another_writer)
    with pytest.raises(StoreConflict, match=rf"already stored at {path} with status 'ok'"):
        store.write(mine)
    assert store.read(mine["run_id"]) == other
    assert files(store) == [f"{mine['run_id'][:2]}/{mine['run_id']}.json"]


def test_without_hard_links_records_are_created_exclusively(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted", str(dst))

    monkeypatch.setattr(os, "link", no_links)
    store = Store(tmp_path / "results")
    rid = record()["run_id"]
    store.write(record(status="failed", error="Traceback: first"))
    path = store.write(record())
    assert store.read(rid) == record() and path.stat().st_mode & 0o777 == 0o644
    with pytest.raises(StoreConflict, match="status 'ok'"):
        store.write(record(n_steps=5))
    assert store.read(rid) == record()
    d = f"{rid[:2]}/"
    assert files(store) == [d + f"{rid}.failed-1.json", d + f"{rid}.json"]


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
    if kind == "other schema":
        good["schema"] = 99
        path.write_text(json.dumps(good))
        return path, rid, "field 'schema' = 99, this version reads schema 1 only"
    if kind == "edited config":
        good["config"]["algo_config"]["beta"] = 9.0  # the record no longer says which run it holds
        path.write_text(json.dumps(good))
        return path, rid, f"field 'config' hashes to '{content_hash(good['config'])}', not to the run id '{rid}'"
    if kind == "empty config":
        good["config"] = {}
        path.write_text(json.dumps(good))
        return path, rid, "field 'config' is empty"
    if kind == "string value":
        good["rows"]["value"][1] = "1.7"
        path.write_text(json.dumps(good))
        return path, rid, "field 'rows' column 'value' has '1.7' at row 1, allowed: numbers, or null for NaN"
    if kind == "string step":
        good["rows"]["step"][2] = "1"
        path.write_text(json.dumps(good))
        return path, rid, "field 'rows' column 'step' has '1' at row 2, allowed: integers"
    if kind == "float seed":
        good["rows"]["seed"][0] = 7.5
        path.write_text(json.dumps(good))
        return path, rid, "field 'rows' column 'seed' has 7.5 at row 0, allowed: integers"
    if kind == "directory":
        path.mkdir()
        return path, rid, "is a directory, expected a JSON file"
    raise AssertionError(kind)


CORRUPTIONS = ["invalid json", "missing field", "wrong status", "wrong type", "ragged rows", "run_id mismatch", "top-level list",
               "other schema", "edited config", "empty config", "string value", "string step", "float seed", "directory"]


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
    if rid == record(seed=7)["run_id"]:
        with pytest.raises(CorruptRecord):  # and it is never written over
            store.write(record(seed=7))


def test_null_values_are_nan_and_every_stored_config_hashes_to_its_id(tmp_path):
    store = Store(tmp_path / "results")
    rec = make_record(spec(), RunResult("ok", [(0, "f", float("nan")), (1, "f", 2.0)]), "2026-01-01", 0.1, 1, PROV)
    assert rec["rows"]["value"] == [None, 2.0]
    store.write(rec)
    assert store.read(rec["run_id"]) == rec
    assert content_hash(store.read(rec["run_id"])["config"]) == rec["run_id"] == run_id(spec())
    assert store.load().rows.value.isna().tolist() == [True, False]


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


def test_stray_and_stale_files_are_problems_by_path_and_never_deleted(tmp_path):
    store = Store(tmp_path / "results")
    rec = record()
    rid = rec["run_id"]
    store.write(record(status="failed", error="Traceback"))
    store.write(rec)  # leaves the archive <id>.failed-1.json, which is not a problem
    folder, runs = store.path(rid).parent, store.root / "runs"
    stale = folder / f".{rid}.old123.tmp"
    young = folder / f".{rid}.new456.tmp"
    strays = [folder / "notes.json", folder / f"{rid[:15]}.json", folder / f"{rid.upper()}.json", runs / "README",
              runs / "ab" / "deeper" / f"{rid}.json", folder / f"{rid}.json.bak"]
    for p in [stale, young, *strays]:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("{}")
    old = time.time() - STALE_TEMP_S - 60
    os.utime(stale, (old, old))
    before = files(store)

    problems = store.problems()
    assert sorted(p.path for p in problems) == sorted([stale, *strays])  # not the young temporary file: a writer may own it
    assert all(isinstance(p, StrayFile) and str(p.path) in str(p) for p in problems)
    assert "temporary file 1.0 h old" in str(next(p for p in problems if p.path == stale))
    assert "not a run record" in str(next(p for p in problems if p.path == folder / "notes.json"))

    loaded = store.load()  # the whole store: the same problems, and the run itself is loaded
    assert sorted(p.path for p in loaded.problems) == sorted(p.path for p in problems)
    assert list(loaded.runs.run_id) == [rid] and store.run_ids() == [rid]
    assert store.load([rid]).problems == []  # asked for one run: only that run's file is looked at
    assert files(store) == before  # nothing deleted
