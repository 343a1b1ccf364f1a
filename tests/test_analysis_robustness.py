"""A question's analysis never crashes on missing data: every run of a cell, or of the whole grid, failed or diverged.

It returns verdicts instead — `inconclusive` where a cell has no data, each with at least one verdict check that says why
("no runs completed") — and figures that may be empty. Three layers: every question on a smoke grid whose runs all
failed (no training: records written directly), two cheap bandit questions trained at `smoke` with one cell rewritten as
failed or diverged, and the shared helpers on empty and all-NaN input.
"""

from __future__ import annotations

import io

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from suite import analysis, plotting, report
from suite.questions import QUESTIONS
from suite.runner import execute, make_record, run_id
from suite.store import Store
from tasks import RunResult

PROV = {"code": {"commit": None, "dirty": False}, "packages": {}}
STARTED = "2026-01-01T00:00:00+00:00"
EMPIRICAL = sorted(q for q in QUESTIONS if q != "theory")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _failed(spec) -> dict:
    return make_record(spec, RunResult("failed", error="Traceback: boom"), STARTED, 0.1, 1, PROV)


def _assert_verdicts(analysis_, *, no_data: bool, draw: bool = True) -> None:
    """Every verdict has a verdict check; with `no_data` (every run failed) each is inconclusive, says what would decide
    it, and has a check that says no run completed. With `draw`, every figure draws (at a low resolution: the draw, which
    takes most of the time, is what is tested)."""
    assert analysis_.verdicts
    for v in analysis_.verdicts:
        checks = [c for c in v.checks if c.kind == "verdict"]
        assert checks, f"{v.claim.id}: no verdict check"
        if no_data:
            assert v.outcome == "inconclusive", (v.claim.id, v.outcome, [(c.name, c.outcome, c.statistic) for c in checks])
            assert v.decide, f"{v.claim.id}: an inconclusive verdict must say what would decide it"
            assert any(analysis.NO_DATA in c.statistic for c in checks), [c.statistic for c in checks]
    for name, fig in analysis_.figures.items():
        assert fig.axes, name
        if draw:
            fig.savefig(io.BytesIO(), format="png", dpi=20)


# ------------------------------------------------------------------------------------------------- (a) every run failed
@pytest.mark.parametrize("name", EMPIRICAL)
def test_every_run_failed_gives_inconclusive_verdicts(tmp_path, name):
    question = QUESTIONS[name]
    points = question.grid("smoke")
    store = Store(tmp_path / "results")
    for p in points:
        store.write(_failed(p.spec))
    result, runs = report.analyse(question, points, store)
    assert set(runs.status) == {"failed"}
    _assert_verdicts(result, no_data=True)


# ------------------------------------------------------------------------------------------ (b) one cell failed/diverged
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """bandits-pmpo and bandits-kl trained at smoke (a few seconds together): question name -> (points, store)."""
    out = {}
    for name in ("bandits-pmpo", "bandits-kl"):
        points = QUESTIONS[name].grid("smoke")
        store = Store(tmp_path_factory.mktemp(name) / "results")
        summary = execute(points, store, workers=1, progress=False)
        assert summary.statuses.get("ok", 0) + summary.statuses.get("diverged", 0) == len(points)
        out[name] = (points, store)
    return out


def _rewritten(points, store: Store, dest: Store, hit, mode: str) -> int:
    """Copy every record of `points` into `dest`; those for which `hit(point)` holds become `mode`: "failed" (no rows),
    or "diverged" with their rows cut to the first logged step. Returns how many were rewritten."""
    n = 0
    for p in points:
        rec = store.read(run_id(p.spec))
        if not hit(p):
            dest.write(rec)
            continue
        n += 1
        if mode == "failed":
            dest.write(_failed(p.spec))
            continue
        r = rec["rows"]
        first = min(r["step"])
        rows = [(s, m, float("nan") if v is None else v) for s, m, v in zip(r["step"], r["metric"], r["value"]) if s == first]
        result = RunResult("diverged", rows, diverged={"step": first, "reason": "non-finite loss (test)"})
        dest.write(make_record(p.spec, result, STARTED, 0.1, 1, PROV))
    return n


CASES = [("bandits-pmpo", "PMPO-A", "sphere"), ("bandits-pmpo", "PMPO-AR", None), ("bandits-kl", "α=0.5 β=0.5", None)]
"""(question, variant, task): one cell (a variant on one function), or a variant on every function (task None). PMPO-AR is
the reference B2 compares DPO with; α = β = 0.5 sets B3's collapse bar."""


@pytest.mark.parametrize("mode", ["failed", "diverged"])
@pytest.mark.parametrize("name,variant,task", CASES)
def test_one_cell_failed_or_diverged_still_gives_verdicts(tmp_path, trained, name, variant, task, mode):
    points, store = trained[name]
    dest = Store(tmp_path / "results")
    hit = lambda p: p.variant == variant and (task is None or p.spec.task == task)  # noqa: E731
    assert _rewritten(points, store, dest, hit, mode) > 0
    result, runs = report.analyse(QUESTIONS[name], points, dest)
    assert set(runs[runs.run_id.isin({run_id(p.spec) for p in points if hit(p)})].status) == {mode}
    _assert_verdicts(result, no_data=False, draw=False)


def test_a_failed_cell_reads_no_runs_completed(tmp_path, trained):
    """PMPO-AR, the paper's default, failed everywhere: B1's check on it says so, and B2 (which compares DPO with it)
    cannot be decided."""
    points, store = trained["bandits-pmpo"]
    dest = Store(tmp_path / "results")
    _rewritten(points, store, dest, lambda p: p.variant == "PMPO-AR", "failed")
    result, _ = report.analyse(QUESTIONS["bandits-pmpo"], points, dest)
    _assert_verdicts(result, no_data=False)
    b1, b2 = result.verdicts
    ar = next(c for c in b1.checks if c.name.startswith("PMPO-AR"))
    assert ar.outcome == "inconclusive" and analysis.NO_DATA in ar.statistic and "failed or diverged" in ar.decide
    assert b2.outcome == "inconclusive"


# ------------------------------------------------------------------------------------------------- (c) shared helpers
def test_helpers_on_empty_and_all_nan_input():
    rng = np.random.default_rng(0)
    nan3 = lambda t: len(t) == 3 and all(np.isnan(v) for v in t)  # noqa: E731
    for x in (np.empty(0), np.array([np.nan, np.nan]), [], np.empty((0, 2))):
        assert nan3(analysis.iqm_ci(x, rng))
        assert nan3(analysis.iqm_or_nan(x, rng))
        outcome, ci, decide = analysis.ci_test(x, rng, test="above", threshold=0.0)
        assert outcome == "inconclusive" and nan3(ci) and "failed or diverged" in decide
        outcome, ci, _ = analysis.ci_test([1.0, 2.0, 3.0], rng, test="within", threshold=1.0, y=x)
        assert outcome == "inconclusive" and nan3(ci)
        c = analysis.check("c", "words", x, rng, test="below", threshold=1.0)
        assert (c.kind, c.outcome, c.statistic) == ("verdict", "inconclusive", analysis.NO_DATA) and c.decide
    # a cell's NaNs are dropped (runs without a number), and the remaining values decide as before
    a = analysis.iqm_or_nan(np.array([1.0, np.nan, 2.0, 3.0]), np.random.default_rng(1))
    b = analysis.iqm_or_nan(np.array([1.0, 2.0, 3.0]), np.random.default_rng(1))
    assert a == b
    assert analysis.fmt_ci(analysis.NAN3) == "nan [nan, nan]"

    runs = pd.DataFrame({"run_id": ["a", "b", "c"], "task": ["t"] * 3, "variant": ["v", "v", "w"],
                         "status": ["failed", "failed", "ok"]})
    empty = pd.Series(dtype=float)
    assert analysis.cell(runs, empty, "t", "v").size == 0
    assert analysis.cell(runs.iloc[:0], pd.Series({"a": 1.0}), "t", "v").size == 0
    assert analysis.cell(runs, pd.Series({"a": np.nan, "b": np.inf, "c": 1.0}), "t", "v").size == 0
    assert analysis.in_grid(runs, "t", "v")  # its runs failed, but the cell is part of the grid
    assert not analysis.in_grid(runs, "t", "x") and not analysis.in_grid(runs.iloc[:0], "t", "v")

    # curves: no rows (every run failed) or no logged metric give an empty frame that still has its columns
    columns = ["task", "variant", "step", "iqm", "lo", "hi", "n"]
    no_rows = pd.DataFrame({"run_id": [], "seed": [], "step": [], "metric": [], "value": []})
    other_metric = pd.DataFrame({"run_id": ["c"], "seed": [0], "step": [0], "metric": ["x"], "value": [1.0]})
    for rows in (no_rows, pd.DataFrame(), other_metric):
        c = analysis.curve(rows, runs, "f", rng)
        assert c.empty and list(c.columns) == columns
        assert c[c.task == "t"].empty and c[c.variant == "v"].empty


def test_plotting_draws_an_empty_curve_frame_as_no_data():
    fig, axes = plotting.figure(ncols=3)
    plotting.ci_lines(axes[0], pd.DataFrame(), ["a", "b"])  # no columns at all
    plotting.ci_lines(axes[1], pd.DataFrame(columns=["task", "variant", "step", "iqm", "lo", "hi", "n"]), ["a"])
    curves = pd.DataFrame({"variant": ["a", "a"], "step": [0, 1], "iqm": [1.0, 2.0], "lo": [0.5, 1.5], "hi": [1.5, 2.5]})
    plotting.ci_lines(axes[2], curves, ["a", "b"])
    assert [t.get_text() for t in axes[0].texts] and [t.get_text() for t in axes[1].texts]
    assert not axes[2].texts and len(axes[2].lines) == 1
    plotting.legend_below(fig, axes)
    fig.canvas.draw()


def test_a_figure_whose_log_panel_has_only_nan_values_still_draws():
    """matplotlib leaves a log axis at limits around 0 when a line and a band of only NaNs share a panel, and then refuses to
    draw it; the suite's figures give such an axis positive limits, and leave a panel with data alone."""
    fig, (empty, full) = plotting.figure(ncols=2)
    etas = [0.1, 1.0, 10.0]
    empty.plot(etas, [np.nan] * 3, marker="o")
    empty.fill_between(etas, [np.nan] * 3, [np.nan] * 3)
    empty.axhline(np.nan)
    empty.set_xscale("log")
    empty.set_yscale("log")
    full.plot(etas, [1.0, 2.0, 3.0])
    full.set_xscale("log")
    before = full.get_xlim()
    fig.savefig(io.BytesIO(), format="png", dpi=20)
    lo, hi = empty.get_xlim()
    assert 0 < lo < 0.1 and hi > 10.0
    assert empty.get_ylim()[0] > 0
    assert full.get_xlim() == before
