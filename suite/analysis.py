"""Helpers questions share to turn stored rows into scores, curves and CIs (rliable conventions)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from suite import stats
from suite.claims import Outcome


def last_value(rows: pd.DataFrame, metric: str) -> pd.Series:
    """The value of `metric` at each run's last logged step, indexed by run_id."""
    sel = rows[rows.metric == metric].sort_values(["run_id", "step"])
    return sel.groupby("run_id").value.last()


def first_value(rows: pd.DataFrame, metric: str) -> pd.Series:
    """The value of `metric` at each run's first logged step, indexed by run_id."""
    sel = rows[rows.metric == metric].sort_values(["run_id", "step"])
    return sel.groupby("run_id").value.first()


def iqm_ci(scores: np.ndarray, rng: np.random.Generator, n_boot: int = 2000) -> tuple[float, float, float]:
    """IQM of a runs (× tasks) array with its stratified-bootstrap 95% CI."""
    return stats.stratified_bootstrap_ci(np.asarray(scores, dtype=float), stats.iqm, rng, n_boot=n_boot)


def curve(rows: pd.DataFrame, runs: pd.DataFrame, metric: str, rng: np.random.Generator, n_boot: int = 500) -> pd.DataFrame:
    """Per variant and task, the IQM of `metric` over seeds at each logged step with a 95% CI.

    Runs that stopped early (diverged) hold their last value, so the IQM at a step always covers all
    seeds of the variant (a run that diverged is not dropped from later steps, which would flatter it).
    Returns columns: task, variant, step, iqm, lo, hi, n.
    """
    sel = rows[rows.metric == metric].merge(runs[["run_id", "task", "variant"]], on="run_id")
    out = []
    for (task, variant), group in sel.groupby(["task", "variant"], sort=False):
        wide = group.pivot_table(index="step", columns="run_id", values="value").sort_index().ffill()
        for step, values in wide.iterrows():
            v = values.to_numpy(dtype=float)
            v = v[np.isfinite(v)]
            if len(v) == 0:
                continue
            point, lo, hi = stats.stratified_bootstrap_ci(v, stats.iqm, rng, n_boot=n_boot)
            out.append(dict(task=task, variant=variant, step=step, iqm=point, lo=lo, hi=hi, n=len(v)))
    return pd.DataFrame(out)


def fmt_ci(ci: tuple[float, float, float], digits: int = 2) -> str:
    """"point [lo, hi]" with a fixed number of decimals."""
    p, lo, hi = ci
    return f"{p:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def per_run_mean(rows: pd.DataFrame, metric: str) -> pd.Series:
    """Mean over a run's logged updates of `metric`, indexed by run_id."""
    return rows[rows.metric == metric].groupby("run_id").value.mean()


def cell(runs: pd.DataFrame, values: pd.Series, task: str, variant: str) -> np.ndarray:
    """The finite per-run `values` of one grid cell (task, variant)."""
    ids = runs[(runs.task == task) & (runs.variant == variant)].run_id
    v = values.reindex(ids).to_numpy(dtype=float)
    return v[np.isfinite(v)]


def n_diverged(runs: pd.DataFrame, task: str, variant: str) -> int:
    """How many runs of one grid cell diverged."""
    return int(((runs.task == task) & (runs.variant == variant) & (runs.status == "diverged")).sum())


def iqm_or_nan(x: np.ndarray, rng: np.random.Generator) -> tuple[float, float, float]:
    """`iqm_ci` of x, or three NaNs when x is empty."""
    return iqm_ci(x, rng) if len(x) else (float("nan"),) * 3


def at_least(diff: tuple[float, float, float], margin: float) -> Outcome:
    """Non-inferiority: `supported` if the difference CI lies above −margin, `not supported` if wholly below it."""
    return "supported" if diff[1] > -margin else ("not supported" if diff[2] < -margin else "inconclusive")
