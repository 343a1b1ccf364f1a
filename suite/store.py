"""The results store: one JSON record per run, written atomically, never silently overwritten.

Layout: `<root>/runs/<id[:2]>/<id>.json`, where `id` is the content hash of the run's fully resolved
config (`suite.configs.content_hash`). A record holds the config, status (`ok`, `diverged` with step
and reason, `failed` with the traceback), timings, code commit (with a dirty flag), package versions
and the metric rows in long format (seed, step, metric, value).

Writes go to a temporary file in the same folder, are fsync'ed and renamed into place, so a run is
either complete in the store or absent — also after `kill -9`. A stored `ok`/`diverged` run is never
replaced: writing it again is an error. A `failed` run is archived (renamed `<id>.failed-<n>.json`)
when it is retried, never deleted. A record that cannot be read is reported by its path and the field
that is wrong; the loader collects such problems instead of crashing or skipping them silently.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from suite.errors import UserError

RECORD_SCHEMA = 1
STATUSES = ("ok", "diverged", "failed")
REQUIRED = {
    "schema": int, "run_id": str, "config": dict, "status": str, "wall_time_s": (int, float),
    "started_at": str, "code": dict, "packages": dict, "rows": dict,
}
ROW_COLUMNS = ("seed", "step", "metric", "value")


class CorruptRecord(UserError):
    """A record file that is not a valid run record; the message names the file and what is wrong."""

    def __init__(self, path: Path, reason: str):
        self.path, self.reason = path, reason
        super().__init__(f"corrupt results file {path}: {reason}. Move it aside (it is never overwritten) and re-run to recompute it.")


class StoreConflict(RuntimeError):
    """An attempt to overwrite a stored run."""


def validate(record: Any, path: Path) -> dict:
    """Check the record's fields and types; raise `CorruptRecord` naming the first problem."""
    if not isinstance(record, dict):
        raise CorruptRecord(path, f"top level is {type(record).__name__}, expected an object")
    for key, typ in REQUIRED.items():
        if key not in record:
            raise CorruptRecord(path, f"missing field {key!r}")
        if not isinstance(record[key], typ):
            raise CorruptRecord(path, f"field {key!r} has type {type(record[key]).__name__}")
    if record["status"] not in STATUSES:
        raise CorruptRecord(path, f"field 'status' = {record['status']!r}, allowed: {', '.join(STATUSES)}")
    if path.stem.split(".")[0] != record["run_id"]:
        raise CorruptRecord(path, f"field 'run_id' = {record['run_id']!r} does not match the file name")
    rows = record["rows"]
    if set(rows) != set(ROW_COLUMNS):
        raise CorruptRecord(path, f"field 'rows' has columns {sorted(rows)}, expected {list(ROW_COLUMNS)}")
    lengths = {len(rows[c]) for c in ROW_COLUMNS}
    if len(lengths) != 1:
        raise CorruptRecord(path, "field 'rows' has columns of different lengths")
    return record


@dataclass
class Loaded:
    """Runs loaded from the store. `runs`: one row per run; `rows`: long-format metrics; `problems`: corrupt files."""

    runs: pd.DataFrame
    rows: pd.DataFrame
    problems: list[CorruptRecord] = field(default_factory=list)


class Store:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, run_id: str) -> Path:
        return self.root / "runs" / run_id[:2] / f"{run_id}.json"

    def read(self, run_id: str) -> dict | None:
        """The stored record, or None if absent. Raises `CorruptRecord` if the file is unreadable."""
        path = self.path(run_id)
        if not path.exists():
            return None
        return self._read_path(path)

    @staticmethod
    def _read_path(path: Path) -> dict:
        try:
            record = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CorruptRecord(path, f"not valid JSON ({exc})") from None
        return validate(record, path)

    def status(self, run_id: str) -> str:
        """"absent", "corrupt", or the stored status."""
        try:
            record = self.read(run_id)
        except CorruptRecord:
            return "corrupt"
        return "absent" if record is None else record["status"]

    def write(self, record: dict) -> Path:
        """Write a complete record atomically. Refuses to replace a stored ok/diverged run."""
        run_id = record["run_id"]
        path = self.path(run_id)
        validate(record, path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            existing = self.read(run_id)
            if existing["status"] != "failed":
                raise StoreConflict(f"run {run_id} is already stored at {path} with status {existing['status']!r}")
            self._archive_failed(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{run_id}.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o644)  # mkstemp makes it 0600; a stored run is readable like any other file
            with os.fdopen(fd, "w") as fh:
                json.dump(record, fh, separators=(",", ":"))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @staticmethod
    def _archive_failed(path: Path) -> None:
        n = 1
        while (archived := path.with_name(f"{path.stem}.failed-{n}.json")).exists():
            n += 1
        os.replace(path, archived)

    def _record_files(self) -> list[Path]:
        """Every current record file under `runs/` (archived failures and temporary files excluded)."""
        base = self.root / "runs"
        if not base.exists():
            return []
        return sorted(p for p in base.glob("*/*.json") if "." not in p.stem)

    def run_ids(self) -> list[str]:
        """Ids of every current record (archived failures excluded)."""
        return [p.stem for p in self._record_files() if p == self.path(p.stem)]

    def load(self, run_ids: Iterable[str] | None = None) -> Loaded:
        """Load the given runs (default: all) as DataFrames; corrupt files go to `problems`, by path.

        With no ids, every record file is looked at; one outside the folder its name belongs in
        (`runs/<id[:2]>/`) is a problem too, since `read` would never find it.
        """
        runs, frames, problems = [], [], []
        if run_ids is None:
            ids = []
            for p in self._record_files():
                if p == self.path(p.stem):
                    ids.append(p.stem)
                else:
                    problems.append(CorruptRecord(p, f"misplaced: a record of this name belongs at {self.path(p.stem)}"))
        else:
            ids = list(run_ids)
        for run_id in ids:
            try:
                record = self.read(run_id)
            except CorruptRecord as exc:
                problems.append(exc)
                continue
            if record is None:
                continue
            runs.append(summary_row(record))
            rows = pd.DataFrame(record["rows"], columns=list(ROW_COLUMNS))
            rows.insert(0, "run_id", run_id)
            frames.append(rows)
        runs_df = pd.DataFrame(runs)
        rows_df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["run_id", *ROW_COLUMNS])
        return Loaded(runs_df, rows_df, problems)


def summary_row(record: dict) -> dict:
    """One flat row per run: identity, status and the config flattened as `section.field` columns."""
    row = {"run_id": record["run_id"], "status": record["status"], "wall_time_s": record["wall_time_s"]}
    diverged = record.get("diverged") or {}
    row["diverged_step"] = diverged.get("step")
    row["diverged_reason"] = diverged.get("reason")
    for key, value in record["config"].items():
        if isinstance(value, dict):
            for sub, v in value.items():
                row[f"{key}.{sub}"] = tuple(v) if isinstance(v, list) else v
        else:
            row[key] = value
    return row
