"""Helpers questions share to turn stored rows into scores, curves and CIs (rliable conventions)."""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from suite import stats
from suite.claims import Check, Outcome, above, below, within


def last_value(rows: pd.DataFrame, metric: str) -> pd.Series:
    """The value of `metric` at each run's last logged step, indexed by run_id."""
    sel = rows[rows.metric == metric].sort_values(["run_id", "step"])
    return sel.groupby("run_id").value.last()


def first_value(rows: pd.DataFrame, metric: str) -> pd.Series:
    """The value of `metric` at each run's first logged step, indexed by run_id."""
    sel = rows[rows.metric == metric].sort_values(["run_id", "step"])
    return sel.groupby("run_id").value.first()


NAN3 = (float("nan"),) * 3
"""The (point, lo, hi) of a cell without data: every number NaN, formatted "nan [nan, nan]"."""
NO_DATA = "no runs completed"
"""The statistic of a verdict check whose cell has no value (every run failed, or diverged where a rule drops them)."""
NO_DATA_DECIDE = "runs of this cell (every run failed or diverged)"
"""What would decide a check on a cell without data."""


def has_data(x) -> bool:
    """True when `x` holds at least one value that is not NaN."""
    x = np.asarray(x, dtype=float)
    return bool(x.size) and not bool(np.isnan(x).all())


def iqm_ci(scores: np.ndarray, rng: np.random.Generator, n_boot: int = 2000) -> tuple[float, float, float]:
    """IQM of a runs (× tasks) array with its stratified-bootstrap 95% CI; three NaNs when it is empty or all NaN (every
    run of the cell failed or diverged). A NaN beside finite values still raises (`suite.stats`: drop runs explicitly)."""
    scores = np.asarray(scores, dtype=float)
    if not has_data(scores):
        return NAN3
    return stats.stratified_bootstrap_ci(scores, stats.iqm, rng, n_boot=n_boot)


def curve(rows: pd.DataFrame, runs: pd.DataFrame, metric: str, rng: np.random.Generator, n_boot: int = 500) -> pd.DataFrame:
    """Per variant and task, the IQM of `metric` over seeds at each logged step with a 95% CI.

    Runs that stopped early (diverged) hold their last value, so the IQM at a step always covers all
    seeds of the variant (a run that diverged is not dropped from later steps, which would flatter it).
    Returns columns: task, variant, step, iqm, lo, hi, n — with no rows where no run logged `metric` (every run failed).
    """
    columns = ["task", "variant", "step", "iqm", "lo", "hi", "n"]
    if rows.empty or runs.empty or "metric" not in rows:
        return pd.DataFrame(columns=columns)
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
    return pd.DataFrame(out, columns=columns)


def fmt_ci(ci: tuple[float, float, float], digits: int = 2) -> str:
    """"point [lo, hi]" with a fixed number of decimals."""
    p, lo, hi = ci
    return f"{p:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def per_run_mean(rows: pd.DataFrame, metric: str) -> pd.Series:
    """Mean over a run's logged updates of `metric`, indexed by run_id."""
    return rows[rows.metric == metric].groupby("run_id").value.mean()


def cell(runs: pd.DataFrame, values: pd.Series, task: str, variant: str) -> np.ndarray:
    """The finite per-run `values` of one grid cell (task, variant); empty when no run of it has one (every run failed)."""
    if runs.empty or len(values) == 0:
        return np.empty(0)
    ids = runs[(runs.task == task) & (runs.variant == variant)].run_id
    v = values.reindex(ids).to_numpy(dtype=float)
    return v[np.isfinite(v)]


def in_grid(runs: pd.DataFrame, task: str, variant: str) -> bool:
    """True when the grid has runs of the cell (task, variant), whatever their status: a cell whose runs all failed is
    still part of the claim (its checks read `inconclusive`), unlike one this profile does not run."""
    return bool(len(runs)) and bool(((runs.task == task) & (runs.variant == variant)).any())


def n_diverged(runs: pd.DataFrame, task: str, variant: str) -> int:
    """How many runs of one grid cell diverged."""
    return int(((runs.task == task) & (runs.variant == variant) & (runs.status == "diverged")).sum())


def iqm_or_nan(x: np.ndarray, rng: np.random.Generator) -> tuple[float, float, float]:
    """`iqm_ci` of x without its NaNs (a 1-D cell), or three NaNs when nothing is left."""
    return iqm_ci(_drop_nan(x), rng)


def at_least(diff: tuple[float, float, float], margin: float) -> Outcome:
    """Non-inferiority: `supported` if the difference CI lies above −margin, `not supported` if wholly below it."""
    return "supported" if diff[1] > -margin else ("not supported" if diff[2] < -margin else "inconclusive")


# ----------------------------------------------------------------------------------------------- checks with power
AFFORDABLE_SEEDS = 1000
"""Above this many seeds per cell a check counts as too close to its margin for any affordable number."""

_TESTS = {"above": above, "below": below, "within": within}


def _sd(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=float).ravel()
    return float(np.std(x, ddof=1)) if x.size > 1 else float("nan")


def seeds_needed(point: float, threshold: float, test: str, sd_x: float, sd_y: float) -> int | None:
    """Seeds per cell at 80% power for an open check whose estimate is `point` (`suite.stats.seeds_to_decide`); None
    when no affordable number would decide it or the spread is unknown (a NaN sd)."""
    if not (np.isfinite(sd_x) and np.isfinite(sd_y if sd_y == sd_y else 0.0)):
        return None
    effect = abs(abs(point) - threshold) if test == "within" else point - threshold
    return stats.seeds_to_decide(effect, sd_x, 0.0 if sd_y != sd_y else sd_y, max_seeds=AFFORDABLE_SEEDS)


def decide_note(point: float, threshold: float, test: str, sd_x: float, sd_y: float, n_now: int) -> str:
    """What would decide an open check: seeds per cell at 80% power (`suite.stats.seeds_to_decide`), or why none would."""
    if not (np.isfinite(sd_x) and np.isfinite(sd_y if sd_y == sd_y else 0.0)):
        return "more seeds (too few runs to estimate the spread)"
    n = seeds_needed(point, threshold, test, sd_x, sd_y)
    if n is None:
        return (f"no affordable number of seeds (> {AFFORDABLE_SEEDS} per cell at 80% power): the estimate sits at its margin; "
                "a longer budget that moves the effect would decide it")
    return f"≈ {n} seeds per cell at 80% power (now {n_now})"


def check(name: str, words: str, x: np.ndarray, rng: np.random.Generator, *, test: str, threshold: float,
          y: np.ndarray | None = None, fmt: str = "{}", digits: int = 2, group: str = "", statistic: Callable | None = None) -> Check:
    """A verdict check on one cell's IQM (or the IQM difference x − y) against `threshold` with a 95% CI.

    `test`: "above" (the CI wholly above the threshold supports), "below", or "within" (equivalence: the CI inside
    ±threshold). An open outcome carries what would decide it. `fmt` formats the CI into the statistic text.
    """
    outcome, ci, decide = ci_test(x, rng, test=test, threshold=threshold, y=y, statistic=statistic or stats.iqm)
    if not np.isfinite(ci[0]):
        return Check(name, "verdict", "inconclusive", NO_DATA, words=words, group=group, decide=decide)
    bound = {"above": f"> {threshold:.{digits}f}", "below": f"< {threshold:.{digits}f}", "within": f"within ±{threshold:.{digits}f}"}[test]
    text = fmt.format(fmt_ci(ci, digits)) + f"; needs {bound}"
    return Check(name, "verdict", outcome, text, words=words, group=group, decide=decide)


def ci_test(x, rng: np.random.Generator, *, test: str, threshold: float, y=None,
            statistic: Callable = stats.iqm) -> tuple[str, tuple[float, float, float], str]:
    """One cell's IQM (or the difference x − y, or another `statistic`) with its 95% CI against `threshold`:
    (outcome, CI, what would decide it when open). No value in x or y (a 1-D cell's NaNs dropped; none left when every
    run of the cell failed or diverged): inconclusive with a NaN CI."""
    x = _drop_nan(x)
    y = None if y is None else _drop_nan(y)
    if not has_data(x) or (y is not None and not has_data(y)):
        return "inconclusive", NAN3, NO_DATA_DECIDE
    if y is None:
        ci = stats.stratified_bootstrap_ci(x, statistic, rng)
        sd_y = 0.0
    else:
        ci = stats.difference_ci(x, y, statistic, rng)
        sd_y = _sd(y)
    outcome = _TESTS[test](ci, threshold)
    decide = decide_note(ci[0], threshold, test, _sd(x), sd_y, len(x)) if outcome == "inconclusive" else ""
    return outcome, ci, decide


def _drop_nan(x) -> np.ndarray:
    """x as a float array; a 1-D one (the runs of one cell) without its NaNs (runs without a number)."""
    x = np.asarray(x, dtype=float)
    return x[~np.isnan(x)] if x.ndim == 1 else x


def observation(name: str, finding: str, statistic: str = "", group: str = "") -> Check:
    """A measured quantity reported beside the verdict; it never changes it."""
    return Check(name, "observation", finding, statistic, group=group)


def split_seeds(runs: pd.DataFrame) -> tuple[set, set]:
    """Fair selection: the seeds split in two halves (even / odd seed numbers). A "best setting" is chosen on the
    first half and compared on the second, so the comparison is not made on the runs that picked it."""
    seeds = sorted(runs.seed.unique()) if "seed" in runs else []
    return set(seeds[0::2]), set(seeds[1::2])


def random_bar(random_iqm: float, relative: float, floor: float) -> float:
    """The score a method must clear to count as learning: the random policy's IQM plus a margin of
    max(relative × |random IQM|, floor). The absolute floor keeps a near-zero random score from making a tiny
    improvement count ("3× random" alone would accept 3 points over 1)."""
    return random_iqm + max(relative * abs(random_iqm), floor)
