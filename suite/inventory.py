"""Finding stored runs: `emrl runs` (a table), `emrl export` (one long-format file), `emrl show` (one run).

A run is stored by the hash of its config, so the store itself does not know which question asked for
it; `suite.catalogue` maps every run id of every question's grid (each profile, default seeds) to its
question, variant and profile. A run outside those grids (one trained with `--set` or `--seeds`) shows
"—" as its question: `emrl show <id>` prints its config.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import pandas as pd

from suite import catalogue
from suite.errors import UserError
from suite.store import Store

TABLE_COLUMNS = ("id", "question", "variant", "profile", "task", "algo", "seed", "status", "steps", "wall_s", "date")


def question_name(name: str) -> str:
    return catalogue.question(name)["name"]


def _members(run_id: str) -> list[list[str]]:
    return catalogue.load()["members"].get(run_id, [])


def _ids_of(store: Store, question: str | None) -> list[str]:
    ids = store.run_ids()
    if question is None:
        return ids
    name = question_name(question)
    return [i for i in ids if any(m[0] == name for m in _members(i))]


def _membership(run_id: str, question: str | None) -> tuple[str, str, str]:
    """(question, variant, profile) of a run: in the asked question, or else its first question with "+n" noting the
    others that share the run."""
    members = _members(run_id)
    if question is not None:
        asked = [m for m in members if m[0] == question_name(question)]
        return tuple(asked[0]) if asked else ("—", "—", "—")
    if not members:
        return "—", "—", "—"
    q, variant, profile = members[0]
    others = len({m[0] for m in members}) - 1
    return (f"{q} +{others}" if others else q), variant, profile


def runs_table(results: str | Path, question: str | None = None, status: str | None = None) -> pd.DataFrame:
    """One row per stored run (filtered by question and status), oldest first."""
    store = Store(results)
    loaded = store.load(_ids_of(store, question))
    if loaded.problems:
        raise UserError("\n".join(str(p) for p in loaded.problems))
    if loaded.runs.empty:
        return pd.DataFrame(columns=list(TABLE_COLUMNS))
    runs = loaded.runs
    if status:
        runs = runs[runs.status == status]
    steps = loaded.rows.groupby("run_id").step.max() if len(loaded.rows) else pd.Series(dtype=float)
    rows = []
    for r in runs.itertuples(index=False):
        record = r._asdict()
        q, variant, profile = _membership(record["run_id"], question)
        rows.append({"id": record["run_id"], "question": q, "variant": variant, "profile": profile, "task": record.get("task"),
                     "algo": record.get("algo"), "seed": record.get("seed"), "status": record["status"],
                     "steps": steps.get(record["run_id"]), "wall_s": record["wall_time_s"],
                     "date": record.get("started_at", "")})
    table = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    return table.sort_values(["date", "question", "variant", "seed"], kind="stable").reset_index(drop=True)


def store_problems(results: str | Path) -> list:
    """Files under the store's `runs/` that it never reads (misplaced records, stray files, stale temporary files)."""
    return Store(results).problems()


def render(table: pd.DataFrame) -> str:
    """A plain aligned text table (readable in a terminal and in a log file)."""
    shown = table.copy()
    shown["steps"] = [("—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{int(v):,}") for v in shown.steps]
    shown["wall_s"] = [f"{v:.1f}" for v in shown.wall_s]
    shown["date"] = [str(d)[:16].replace("T", " ") for d in shown.date]
    cols = [str(c) for c in shown.columns]
    cells = [[str(v) for v in row] for row in shown.itertuples(index=False)]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines)


def empty_message(results: str | Path, question: str | None, status: str | None) -> str:
    what = "runs" + (f" of {question_name(question)}" if question else "") + (f" with status {status}" if status else "")
    return (f"No stored {what} in {Path(results)}/. The store fills when you train: `make reproduce`, or "
            f"`emrl run {question_name(question) if question else '<question>'}`.")


def long_rows(results: str | Path, question: str | None = None) -> pd.DataFrame:
    """Every logged value of the chosen runs, with the run's question, variant, task, algorithm, seed and status."""
    store = Store(results)
    loaded = store.load(_ids_of(store, question))
    if loaded.problems:
        raise UserError("\n".join(str(p) for p in loaded.problems))
    if loaded.runs.empty:
        return pd.DataFrame()
    info = {}
    for r in loaded.runs.to_dict("records"):
        q, variant, profile = _membership(r["run_id"], question)
        info[r["run_id"]] = {"question": q, "variant": variant, "profile": profile, "task": r.get("task"),
                             "algo": r.get("algo"), "status": r["status"]}
    meta = pd.DataFrame.from_dict(info, orient="index").rename_axis("run_id").reset_index()
    rows = loaded.rows.merge(meta, on="run_id", how="left")
    order = ["run_id", "question", "variant", "profile", "task", "algo", "status", "seed", "step", "metric", "value"]
    return rows[order]


def write_export(rows: pd.DataFrame, output: Path, fmt: str) -> None:
    """Write atomically; an existing file is never replaced (choose another --output or move it aside)."""
    if output.exists():
        raise UserError(f"--output {output} exists; it is never replaced. Move it aside or choose another path.")
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise UserError("--format parquet needs pyarrow (a dependency of emrl: `make install` or `pip install pyarrow`); "
                            "--format csv needs nothing.") from None
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
    os.close(fd)
    try:
        if fmt == "parquet":
            rows.to_parquet(tmp, index=False)
        else:
            rows.to_csv(tmp, index=False)
        os.chmod(tmp, 0o644)
        os.link(tmp, output)  # fails if the file appeared meanwhile: never replace
    except FileExistsError:
        raise UserError(f"--output {output} exists; it is never replaced. Move it aside or choose another path.") from None
    finally:
        Path(tmp).unlink(missing_ok=True)


def show(results: str | Path, prefix: str) -> str:
    """One run, for reading: where it belongs, status, provenance, config and last logged values (floats rounded)."""
    store = Store(results)
    matches = [i for i in store.run_ids() if i.startswith(prefix)]
    if len(matches) != 1:
        if not matches:
            raise UserError(f"no stored run has an id starting with {prefix!r} in {store.root}; `emrl runs` lists them.")
        raise UserError(f"run id prefix {prefix!r} is ambiguous: {', '.join(matches[:10])}.")
    record = store.read(matches[0])
    out = [f"run {record['run_id']}  status: {record['status']}  wall: {record['wall_time_s']:.2f} s  started: {record['started_at']}"]
    members = _members(record["run_id"])
    if members:
        out += ["in: " + "; ".join(f"{q} variant {v!r} ({p})" for q, v, p in members)]
    else:
        out += ["in: no question's grid at its default seeds (an ablation run: --set or --seeds)"]
    if record.get("diverged"):
        out += [f"diverged at step {record['diverged']['step']}: {record['diverged']['reason']}"]
    if record.get("error"):
        out += [record["error"].rstrip()]
    code = record["code"]
    out += [f"code: commit {code.get('commit') or 'unknown'}" + (" (dirty)" if code.get("dirty") else "")]
    out += ["packages: " + ", ".join(f"{k} {v}" for k, v in record["packages"].items() if k != "platform" and v)]
    out += ["config: " + json.dumps(record["config"], indent=1)]
    rows = record["rows"]
    final: dict[str, tuple[int, float]] = {}
    for step, metric, value in zip(rows["step"], rows["metric"], rows["value"]):
        final[metric] = (step, value)
    out += ["last logged values:"]
    for metric, (step, value) in sorted(final.items()):
        shown = "nan" if value is None else f"{value:.6g}"
        out += [f"  {metric:<24} {shown:>14}  (step {step})"]
    return "\n".join(out)
