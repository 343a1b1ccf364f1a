"""The results store: one JSON record per run, written atomically, never silently overwritten.

Layout: `<root>/runs/<id[:2]>/<id>.json`, where `id` is the content hash of the run's fully resolved
config (`suite.configs.content_hash`). A record holds the config, status (`ok`, `diverged` with step
and reason, `failed` with the traceback), timings, code commit (with a dirty flag), package versions
and the metric rows in long format (seed, step, metric, value).

Writes go to a temporary file in the same folder, are fsync'ed and hard-linked into place: a run is
either complete in the store or absent (also after `kill -9`), and as a link never replaces a file,
of two processes storing the same run one gets `StoreConflict`. A stored `ok`/`diverged` run is never
replaced. A `failed` run is archived (renamed `<id>.failed-<n>.json`) when it is retried, never
deleted; writers lock the record's folder while they check, archive and link, so two retries cannot
archive each other's record. (Where the file system has no hard links, the record is created with
O_EXCL: never replacing, but a crash mid-write leaves a truncated record, reported as corrupt.)

A record that cannot be read is reported by its path and the field that is wrong, and so is a file
under `runs/` that the store would never read: a misplaced record, a stray file, a temporary file
left by a writer that died over an hour ago. The loader collects such problems instead of crashing
or skipping them silently; nothing is ever deleted.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import pandas as pd

from suite.configs import content_hash
from suite.errors import UserError

RECORD_SCHEMA = 1
STATUSES = ("ok", "diverged", "failed")
REQUIRED = {
    "schema": int, "run_id": str, "config": dict, "status": str, "wall_time_s": (int, float),
    "started_at": str, "code": dict, "packages": dict, "rows": dict,
}
ROW_COLUMNS = ("seed", "step", "metric", "value")
RECORD_NAME = re.compile(r"[0-9a-f]{16}\.json")
ARCHIVE_NAME = re.compile(r"[0-9a-f]{16}\.failed-[0-9]+\.json")
TEMP_NAME = re.compile(r"\.[0-9a-f]{16}\..+\.tmp")
ROW_TYPES = {  # column -> (test of one entry, what is allowed); bool is an int to Python but not here
    "seed": (lambda v: type(v) is int, "integers"),
    "step": (lambda v: type(v) is int, "integers"),
    "metric": (lambda v: type(v) is str, "strings"),
    "value": (lambda v: v is None or type(v) in (int, float), "numbers, or null for NaN"),
}
STALE_TEMP_S = 3600  # a younger temporary file may belong to a writer still running


class CorruptRecord(UserError):
    """A record file that is not a valid run record; the message names the file and what is wrong."""

    def __init__(self, path: Path, reason: str):
        self.path, self.reason = path, reason
        super().__init__(f"corrupt results file {path}: {reason}. Move it aside (it is never overwritten) and re-run to recompute it.")


class StrayFile(UserError):
    """A file under `runs/` that is not a record the store reads; the message names it and why."""

    def __init__(self, path: Path, reason: str):
        self.path, self.reason = path, reason
        super().__init__(f"stray file in the results store {path}: {reason}. It is never read as a run; move it out of runs/.")


class StoreConflict(UserError):
    """An attempt to overwrite a stored run (e.g. two runners storing the same run): refused, exit code 2 at the CLI."""


def validate(record: Any, path: Path) -> dict:
    """Check the record's fields and types; raise `CorruptRecord` naming the first problem."""
    if not isinstance(record, dict):
        raise CorruptRecord(path, f"top level is {type(record).__name__}, expected an object")
    for key, typ in REQUIRED.items():
        if key not in record:
            raise CorruptRecord(path, f"missing field {key!r}")
        if not isinstance(record[key], typ):
            raise CorruptRecord(path, f"field {key!r} has type {type(record[key]).__name__}")
    if record["schema"] != RECORD_SCHEMA:
        raise CorruptRecord(path, f"field 'schema' = {record['schema']!r}, this version reads schema {RECORD_SCHEMA} only")
    if record["status"] not in STATUSES:
        raise CorruptRecord(path, f"field 'status' = {record['status']!r}, allowed: {', '.join(STATUSES)}")
    if path.stem.split(".")[0] != record["run_id"]:
        raise CorruptRecord(path, f"field 'run_id' = {record['run_id']!r} does not match the file name")
    if not record["config"]:
        raise CorruptRecord(path, "field 'config' is empty")
    if (digest := content_hash(record["config"])) != record["run_id"]:
        raise CorruptRecord(path, f"field 'config' hashes to {digest!r}, not to the run id {record['run_id']!r} "
                                  "(edited, or another run's)")
    rows = record["rows"]
    if set(rows) != set(ROW_COLUMNS):
        raise CorruptRecord(path, f"field 'rows' has columns {sorted(rows)}, expected {list(ROW_COLUMNS)}")
    for column, (ok, allowed) in ROW_TYPES.items():
        values = rows[column]
        if not isinstance(values, list):
            raise CorruptRecord(path, f"field 'rows' column {column!r} has type {type(values).__name__}, expected a list")
        if not all(map(ok, values)):
            i, bad = next((i, v) for i, v in enumerate(values) if not ok(v))
            raise CorruptRecord(path, f"field 'rows' column {column!r} has {bad!r} at row {i}, allowed: {allowed}")
    if len({len(rows[c]) for c in ROW_COLUMNS}) != 1:
        raise CorruptRecord(path, "field 'rows' has columns of different lengths")
    return record


@dataclass
class Loaded:
    """Runs loaded from the store. `runs`: one row per run; `rows`: long-format metrics; `problems`: bad files, by path."""

    runs: pd.DataFrame
    rows: pd.DataFrame
    problems: list[CorruptRecord | StrayFile] = field(default_factory=list)


class Store:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, run_id: str) -> Path:
        return self.root / "runs" / run_id[:2] / f"{run_id}.json"

    def read(self, run_id: str) -> dict | None:
        """The stored record, or None if absent. Raises `CorruptRecord` if the file is unreadable."""
        try:
            return self._read_path(self.path(run_id))
        except FileNotFoundError:  # also when archived between a check and the read
            return None

    @staticmethod
    def _read_path(path: Path) -> dict:
        try:
            record = json.loads(path.read_text())
        except IsADirectoryError:
            raise CorruptRecord(path, "is a directory, expected a JSON file") from None
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
        """Write a complete record atomically. Refuses (`StoreConflict`) to replace a stored ok/diverged
        run, also one another process stores while this one writes; archives a stored failed run."""
        run_id = record["run_id"]
        path = self.path(run_id)
        validate(record, path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{run_id}.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o644)  # mkstemp makes it 0600; a stored run is readable like any other file
            with os.fdopen(fd, "w") as fh:
                json.dump(record, fh, separators=(",", ":"))
                fh.flush()
                os.fsync(fh.fileno())
            with _locked(path.parent):  # two retries of a failed run must not archive each other's record
                self._make_room(path)
                while not _create_if_absent(tmp, path):  # stored since the check, by a writer that does not lock
                    self._make_room(path)
        finally:
            Path(tmp).unlink(missing_ok=True)  # after the link it is a second name of the record
        return path

    def _make_room(self, path: Path) -> None:
        """Return once `path` is free, archiving a failed record there; refuse a finished or corrupt one."""
        try:
            existing = self._read_path(path)
        except FileNotFoundError:
            return
        if existing["status"] != "failed":
            raise StoreConflict(f"run {existing['run_id']} is already stored at {path} with status {existing['status']!r}")
        self._archive_failed(path)

    @staticmethod
    def _archive_failed(path: Path) -> None:
        n = 1
        while (archived := path.with_name(f"{path.stem}.failed-{n}.json")).exists():
            n += 1
        os.replace(path, archived)

    def _record_files(self) -> list[Path]:
        """Every file under `runs/` named as a current record, wherever it lies (archives and temporary files excluded)."""
        base = self.root / "runs"
        if not base.exists():
            return []
        return sorted(p for p in base.glob("*/*.json") if RECORD_NAME.fullmatch(p.name))

    def run_ids(self) -> list[str]:
        """Ids of every current record (archived failures excluded)."""
        return [p.stem for p in self._record_files() if p == self.path(p.stem)]

    def problems(self) -> list[CorruptRecord | StrayFile]:
        """Files under `runs/` that the store would never read, by path; no record is read, nothing deleted.

        A record outside the folder its name belongs in (`read` would never find it), a file that is not
        a record (`notes.json`, a name that is not a 16-hex id, anything deeper), a temporary file older
        than `STALE_TEMP_S` (its writer stopped; a younger one may belong to a running writer). Records
        that cannot be read are found by `read` and `load`.
        """
        base = self.root / "runs"
        if not base.exists():
            return []
        found: list[CorruptRecord | StrayFile] = []
        for p in sorted(base.rglob("*")):
            in_folder = len(p.relative_to(base).parts) == 2
            if in_folder and RECORD_NAME.fullmatch(p.name):
                if p != self.path(p.stem):
                    found.append(CorruptRecord(p, f"misplaced: a record of this name belongs at {self.path(p.stem)}"))
            elif p.is_dir() or (in_folder and ARCHIVE_NAME.fullmatch(p.name)):
                continue
            elif in_folder and TEMP_NAME.fullmatch(p.name):
                try:
                    age = time.time() - p.stat().st_mtime
                except FileNotFoundError:  # its writer just finished
                    continue
                if age > STALE_TEMP_S:
                    found.append(StrayFile(p, f"a temporary file {age / 3600:.1f} h old, left by a write that stopped "
                                              "(a finished write removes its temporary file)"))
            else:
                found.append(StrayFile(p, "not a run record (records are runs/<id[:2]>/<id>.json with a 16-hex-digit id)"))
        return found

    def load(self, run_ids: Iterable[str] | None = None) -> Loaded:
        """Load the given runs (default: all) as DataFrames; corrupt files go to `problems`, by path.

        With no ids, every record file is read, and every file the store would never read
        (`Store.problems`: misplaced records, stray files, stale temporary files) is a problem too.
        """
        runs, frames, problems = [], [], []
        if run_ids is None:
            problems, ids = self.problems(), self.run_ids()
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
        rows_df = pd.concat(frames, ignore_index=True) if frames else empty_rows()
        return Loaded(runs_df, rows_df, problems)


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on `folder` itself (no lock file to leave behind)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _create_if_absent(src: str | Path, dst: Path) -> bool:
    """Give the complete, fsync'ed file `src` the name `dst`, unless `dst` exists (then False).

    A hard link is atomic and never replaces. Where the file system has no hard links, `dst` is
    created with O_EXCL and `src` copied into it: still never replacing, but not atomic.
    """
    try:
        os.link(src, dst)
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS):
            raise
    try:
        with open(src, "rb") as fin, open(dst, "xb") as fout:
            shutil.copyfileobj(fin, fout)
            fout.flush()
            os.fsync(fout.fileno())
    except FileExistsError:
        return False
    return True


def empty_rows() -> pd.DataFrame:
    """The long-format rows of no run, typed like real ones (untyped empty columns break arithmetic on them)."""
    return pd.DataFrame({"run_id": pd.Series(dtype=str), "seed": pd.Series(dtype="int64"), "step": pd.Series(dtype="int64"),
                         "metric": pd.Series(dtype=str), "value": pd.Series(dtype="float64")})


def summary_row(record: dict) -> dict:
    """One flat row per run: identity, status and the config flattened as `section.field` columns."""
    row = {"run_id": record["run_id"], "status": record["status"], "wall_time_s": record["wall_time_s"],
           "started_at": record["started_at"]}
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
