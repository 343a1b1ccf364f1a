"""The bandit family: test functions, the loop's contracts, and learning on Sphere (known optimum 0)."""

import math

import numpy as np
import pytest
from conftest import assert_readable_figures
import torch

import tasks
from algorithms.base import Needs
from algorithms.config import ConfigError
from algorithms.mpo import MPOConfig
from algorithms.pmpo import PMPOConfig
from suite import stats
from tasks import RunSpec
from tasks.bandits import FUNCTIONS, BanditConfig, BanditLoopConfig, rosenbrock, schwefel, sphere


def test_functions_exact_values_and_optima():
    x = torch.tensor([[1.0, 2.0, 3.0]])
    assert sphere(x).item() == 14.0  # 1 + 4 + 9
    # 100(2 − 1)² + (1 − 1)² + 100(3 − 4)² + (1 − 2)² = 100 + 0 + 100 + 1
    assert rosenbrock(x).item() == 201.0
    # partial sums 1, 3, 6 -> 1 + 9 + 36
    assert schwefel(x).item() == 46.0
    assert sphere(torch.zeros(1, 10)).item() == 0.0
    assert rosenbrock(torch.ones(1, 10)).item() == 0.0
    assert schwefel(torch.zeros(1, 10)).item() == 0.0


def test_every_function_is_registered_as_a_task():
    assert set(FUNCTIONS) <= set(tasks.TASKS)
    assert all(tasks.TASKS[f].family.name == "bandit" for f in FUNCTIONS)


def test_loop_config_refuses_accepting_every_sample():
    with pytest.raises(ConfigError, match="accept"):
        BanditLoopConfig(samples=4, accept=4)
    with pytest.raises(ConfigError, match="BanditConfig.dim"):
        BanditConfig(dim=1)


def test_needs_a_family_cannot_meet_are_named():
    bandit = tasks.TASKS["sphere"].family.provides
    assert Needs(values=True, min_samples=8).missing(bandit) == ["min_samples=8 (task gives K=4)", "values"]
    tasks.check_compatible("sphere", "pmpo")  # does not raise


def _train(algo, cfg, fn="sphere", seeds=range(10), **loop):
    specs = [RunSpec(fn, tasks.TASKS[fn].config, algo, cfg, BanditLoopConfig(**loop), s) for s in seeds]
    return tasks.TASKS[fn].family.train(specs)


def _final(result, metric="f"):
    return [v for _, m, v in result.rows if m == metric][-1]


def test_reference_is_refreshed_every_period_and_the_kl_is_to_it():
    # right after a refresh the policy equals the reference, so the logged KL at a refresh step is the
    # KL accumulated by one step only, far below the KL logged just before the next refresh
    res = _train("pmpo", PMPOConfig(alpha=1.0, beta=0.0), seeds=[0], steps=200, ref_period=100, log_every=1)[0]
    kl = {s: v for s, m, v in res.rows if m == "kl/ref"}
    assert kl[101] < 0.1 * kl[100]


def test_a_diverging_variant_is_recorded_with_step_and_reason_and_others_are_unaffected():
    res = _train("pmpo", PMPOConfig(alpha=0.0, beta=0.0), seeds=[0, 1], steps=3000)
    assert all(r.status == "diverged" for r in res)
    for r in res:
        assert isinstance(r.diverged["step"], int) and r.diverged["step"] > 0
        assert "KL" in r.diverged["reason"] or "non-finite" in r.diverged["reason"]
    # rows stop at the divergence step
    assert max(s for s, _, _ in res[0].rows) <= res[0].diverged["step"]


def test_sphere_learning_threshold():
    """PMPO-AR, 10 seeds, 1500 steps: the IQM of log10 f(μ_T)/f(μ_0) is below −1 (10× closer to 0)."""
    res = _train("pmpo", PMPOConfig(alpha=0.5, beta=0.5), steps=1500)
    scores = np.array([math.log10(_final(r) / _final(r, "f_init")) for r in res])
    assert all(r.status == "ok" for r in res)
    assert stats.iqm(scores) < -1.0


def test_dual_temperature_adapts_to_the_score_scale():
    # Rosenbrock's score gaps are ~10³ at the start, so with η = 1 the E-step KL is far above ε_η and
    # the dual raises η step after step (its lr bounds each step to ~1e-2 in softplus space)
    res = _train("mpo", MPOConfig(), fn="rosenbrock", seeds=[0], steps=300)[0]
    etas = [v for _, m, v in res.rows if m == "dual/eta"]
    assert all(b > a for a, b in zip(etas, etas[1:]))
    assert etas[-1] > 3.0


# --------------------------------------------------------------------------------------- the verdicts (synthetic runs)
NOISE = (-2.0, -1.0, 0.0, 1.0, 2.0, -1.5, 1.5, -0.5, 0.5, 0.0)


def _synthetic(question: str, final, *, falling=lambda v, t: True, kl=lambda v, t, s: 0.5, diverged=(), profile="quick"):
    """Stored-looking runs and rows for a bandit question's grid. `final(variant, task, seed)` is the run's score
    log10 f_T/f_0; a falling curve is linear in the step to the end, otherwise it reaches `final` at mid-budget and stays;
    `kl` is the largest KL to the reference; (variant, task, seed) in `diverged` diverged (rows stop at mid-budget)."""
    import pandas as pd

    from suite.questions import QUESTIONS
    from suite.runner import run_id

    runs, rows = [], []
    for p in QUESTIONS[question].grid(profile):
        rid, cfg, v, t, s = run_id(p.spec), p.spec.train_config, p.variant, p.spec.task, p.spec.seed
        dead = (v, t, s) in diverged
        runs.append({"run_id": rid, "task": t, "variant": v, "seed": s, "status": "diverged" if dead else "ok", "wall_time_s": 1.0})
        rows.append((rid, s, 0, "f_init", 100.0))
        end = cfg.steps // 2 if dead else cfg.steps
        for step in range(0, end + 1, cfg.log_every):
            frac = step / cfg.steps if falling(v, t) else min(1.0, 2.0 * step / cfg.steps)
            rows.append((rid, s, step, "f", 100.0 * 10 ** (final(v, t, s) * frac)))
            rows.append((rid, s, step, "kl/ref", kl(v, t, s) * frac))
            rows.append((rid, s, step, "weights/ess", 1.0 if v.startswith("η=") and float(v[2:]) < 50 else 3.0))
            rows.append((rid, s, step, "dual/eta", float(v[2:]) if v.startswith("η=") else 1.0 + 9.0 * frac))
    return pd.DataFrame(runs), pd.DataFrame(rows, columns=["run_id", "seed", "step", "metric", "value"])


def _analyse(question, runs, rows):
    from suite.questions import QUESTIONS

    analysis = QUESTIONS[question].analyse(runs, rows, np.random.default_rng(0))
    assert_readable_figures(analysis.figures)
    return analysis.verdicts


def test_grid_runs_the_b1_and_b2_knobs_at_quick_standard_and_paper_and_only_their_defaults_at_smoke():
    from suite.questions import QUESTIONS
    from suite.questions import bandits as q
    from suite.runner import run_id

    question = QUESTIONS["bandits-pmpo"]
    b1, b2 = question.claims
    assert b1.knob.values == q.REFRESH_PERIODS and b1.knob.run_at == b2.knob.run_at == ("quick", "standard", "paper")
    assert len(b2.knob.values) >= 3 and min(b2.knob.values) <= 0.1 and max(b2.knob.values) >= 20
    for profile in ("quick", "standard", "paper"):
        points = question.grid(profile)
        labels = {p.variant for p in points}
        assert {q.dpo_label(b) for b in q.DPO_BETAS} <= labels
        assert {q.pmpo_label(v, n) for v in q.PMPO_VARIANTS for n in q.REFRESH_PERIODS} <= labels
        periods = {p.variant: p.spec.train_config.ref_period for p in points}
        assert periods["PMPO-A N=25"] == 25 and periods["PMPO-A N=400"] == 400 and periods["PMPO-A"] == q.PAPER_PERIOD
        assert len({run_id(p.spec) for p in points}) == len(points)
    smoke = question.grid("smoke")
    assert len(smoke) == 30 and {p.variant for p in smoke} == {"PMPO-AR", "PMPO-A", "PMPO-R", "DPO β=0.1", "MPO"}


def test_last_quarter_change_reads_the_last_quarter_and_skips_diverged_runs():
    import pandas as pd

    from suite.questions.bandits import last_quarter_change

    runs = pd.DataFrame({"run_id": ["a", "b"], "status": ["ok", "diverged"]})
    # a: f = 100, 80, 40, 10, 5 at steps 0..400; the last quarter runs from step 300 (f = 10) to 400 (f = 5)
    rows = pd.DataFrame([("a", s, "f", v) for s, v in zip(range(0, 401, 100), (100, 80, 40, 10, 5))]
                        + [("b", s, "f", 1.0) for s in (0, 100)], columns=["run_id", "step", "metric", "value"])
    out = last_quarter_change(runs, rows)
    assert out.loc["a", "change"] == pytest.approx(math.log10(5 / 10)) and out.loc["a", "window"] == 100
    assert np.isnan(out.loc["b", "change"])


def test_a_cell_still_falling_above_the_bar_is_open_with_the_budget_that_would_decide_it():
    from suite.questions.bandits import LEARNS_DECADES, learns_part

    rng = np.random.default_rng(0)
    x = np.full(10, -0.1) + 0.001 * np.array(NOISE)
    flat = learns_part(x, (0.0, 0.0, 0.0), 300.0, 1200, rng)
    assert flat.outcome == "not supported"
    # −0.05 decades per 300 steps: the remaining 0.2 decades to −0.30 take ≈ 4 × 300 more steps
    falling = learns_part(x, (-0.05, -0.06, -0.04), 300.0, 1200, rng)
    assert falling.outcome == "inconclusive" and "longer budget" in falling.decide
    assert falling.steps == pytest.approx(1200 + (LEARNS_DECADES + 0.1) / (-0.05 / 300.0), rel=0.01)
    assert learns_part(x - 1.0, (0.0, 0.0, 0.0), 300.0, 1200, rng).outcome == "supported"


def test_b1_still_improving_never_reads_not_supported_and_b2_depends_on_dpo_beta():
    """B1: every cell halves f except PMPO-A on sphere at N = 400, still falling at −0.2 → inconclusive there, not
    `not supported`; flat at −0.2 it is `not supported` and B1 depends on N. B2: DPO at β = 0.1 is 1.5 decades better
    than PMPO-AR (not alike), at β = 1, 5, 20 alike; the tuned β and N are picked on the even seeds only."""

    def final(v, t, s):
        if v == "PMPO-A N=400" and t == "sphere":
            return -0.2 + 0.01 * NOISE[s]
        if v == "DPO β=0.1":
            return -2.5 + 0.05 * NOISE[s]
        if v == "DPO β=5":  # best on the even seeds, worst on the odd ones
            return (-1.3 if s % 2 == 0 else -0.8) + 0.01 * NOISE[s]
        return -1.0 + 0.05 * NOISE[s]

    still = _analyse("bandits-pmpo", *_synthetic("bandits-pmpo", final))
    b1, b2 = still
    assert b1.outcome == "inconclusive" and "longer budget" in b1.decide and "PMPO-A on sphere at N=400" in b1.decide
    groups = {c.group: c.outcome for c in b1.checks if c.kind == "verdict" and c.name.startswith("PMPO-A ")}
    assert groups == {"N=25": "supported", "N=100": "supported", "N=400": "inconclusive"}
    assert any(c.kind == "observation" and "still falling" in c.name for c in b1.checks)

    flat = _analyse("bandits-pmpo", *_synthetic("bandits-pmpo", final, falling=lambda v, t: not v.endswith("N=400")))[0]
    assert flat.outcome == "depends on" and flat.label == "depends on reference refresh period N"

    assert b2.outcome == "depends on" and b2.label == "depends on DPO β"
    per_beta = {c.group: c.outcome for c in b2.checks if c.kind == "verdict"}
    assert per_beta["β=0.1"] == "not supported" and per_beta["β=1"] == "supported" and per_beta["β=20"] == "supported"
    tuned = [c for c in b2.checks if c.kind == "observation" and c.name.startswith("tuned")]
    # every PMPO-AR period scores alike here, so the first (N = 25) is PMPO-AR's pick
    assert len(tuned) == 3 and all("DPO β = 0.1, PMPO-AR N = 25, each picked on the even seeds" in c.statistic for c in tuned)
    assert "Tuned against tuned (DPO β = 0.1, PMPO-AR N = 25" in b2.summary


def test_b3_counts_collapse_and_divergence_as_failure():
    """Reject-only: β = 0, 0.5 diverge; β = 1 does not diverge but its KL to the reference runs 100× past the default
    PMPO-AR's (collapse) although its f fell far; β ≥ 1.5 stable and learning. Accept-only stable and learning at every
    β: supported. The same β = 1 runs without the collapse read `not supported` (stable where the paper predicts not)."""
    from suite.questions.bandits import cell_label

    diverged = {(cell_label(a, b), t, s) for a in (0.0, 0.5) for b in (0.0, 0.5) if (a, b) != (0.5, 0.5)
                for t in FUNCTIONS for s in range(10)}
    final = lambda v, t, s: -1.0 + 0.05 * NOISE[s]  # noqa: E731
    collapse = lambda v, t, s: 500.0 if v == cell_label(0.0, 1.0) else 2.0  # noqa: E731
    (b3,) = _analyse("bandits-kl", *_synthetic("bandits-kl", final, kl=collapse, diverged=diverged))
    assert b3.outcome == "supported", b3.summary
    assert "120 of 450 runs failed: 90 diverged, 30 collapsed" in b3.summary
    assert all(c.kind == "observation" for c in b3.checks if "α = 0.5" in c.name)

    (calm,) = _analyse("bandits-kl", *_synthetic("bandits-kl", final, diverged=diverged))
    assert calm.outcome == "not supported"
    assert {c.name.rsplit(", ", 1)[0] for c in calm.checks if c.outcome == "not supported"} == {"reject-only unstable at β ≤ 1 − α"}


def test_b4_best_fixed_eta_is_picked_on_other_seeds_and_a_flat_sweep_cannot_decide():
    """Sphere and Schwefel: the sweep's largest η is 1 decade worse than the rest, the dual matches the best → supported
    there. Rosenbrock: every η scores alike, so the dual's match says nothing → inconclusive with what would decide it.
    The extremes of the sweep are observations, and no check compares a setting with itself."""
    from suite.questions.bandits import ETAS, eta_label

    largest = eta_label(ETAS[-1])

    def final(v, t, s):
        if v == largest and t != "rosenbrock":
            return 0.0 + 0.05 * NOISE[s]
        return -1.0 + 0.05 * NOISE[s]

    from suite.questions.bandits import EPS_ETAS

    (b4,) = _analyse("bandits-temperature", *_synthetic("bandits-temperature", final))
    groups = [c.group for c in b4.checks if c.kind == "verdict"]
    assert groups == [f"ε_η={e:g}" for _ in range(3) for e in EPS_ETAS] and b4.by == "ε_η"  # one group per knob value
    verdict_checks = {c.name.rsplit(", ", 1)[-1]: c for c in b4.checks if c.kind == "verdict" and c.group == "ε_η=0.1"}
    assert [c.words for c in verdict_checks.values()] == ["automatically tunes the temperature"] * 3
    assert verdict_checks["sphere"].outcome == verdict_checks["schwefel"].outcome == "supported"
    assert verdict_checks["rosenbrock"].outcome == "inconclusive" and "score scale" in verdict_checks["rosenbrock"].decide
    assert b4.outcome == "inconclusive" and "score scale" in b4.decide
    extremes = {c.name.rsplit(", ", 1)[-1]: c for c in b4.checks if "extremes" in c.name}
    assert all(c.kind == "observation" for c in extremes.values())
    # all fixed η tie on the selecting seeds, so η = 0.1 is picked: it is not compared with itself
    assert "η=0.1 is the best fixed η" in extremes["sphere"].outcome and f"{largest} fails" in extremes["sphere"].outcome
    assert "still rising" in b4.summary


def test_b3_a_reject_only_run_that_has_not_gone_far_has_not_tested_stability():
    """Too short a budget: reject-only at β ≤ 1 has neither diverged nor collapsed, but its f fell only 0.1 decades
    (not halved): that cannot contradict 'β > 1 − α is necessary', so the check is open, not `not supported`."""
    from suite.questions.bandits import cell_label

    def final(v, t, s):
        return (-0.1 if v in {cell_label(0.0, b) for b in (0.0, 0.5, 1.0)} else -1.0) + 0.01 * NOISE[s]

    (b3,) = _analyse("bandits-kl", *_synthetic("bandits-kl", final, falling=lambda v, t: False))
    necessary = [c for c in b3.checks if c.name.startswith("reject-only unstable")]
    assert [c.outcome for c in necessary] == ["inconclusive"] * 3 and "halve f" in necessary[0].decide
    assert b3.outcome == "inconclusive"


def test_standard_runs_the_seeds_the_quick_reports_asked_for_at_a_longer_budget():
    """B2's and B4's open checks at `quick` asked for ≈ 16–69 seeds per cell; `standard` runs 40, at ≥ 4× quick's steps."""
    from suite.questions import QUESTIONS

    for name in ("bandits-pmpo", "bandits-kl", "bandits-temperature"):
        question = QUESTIONS[name]
        quick, standard = question.budgets["quick"], question.budgets["standard"]
        assert standard.seeds == 40 and standard.train["steps"] >= 2 * quick.train["steps"]
        assert {c.decides for c in question.claims} == {"standard"}

