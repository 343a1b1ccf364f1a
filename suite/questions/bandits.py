"""Synthetic bandits (`papers/004_71574c67b927da2f.txt §5.1`): claims B1–B4.

Every run is scored by how many decades it moved the function value at the policy mean:
    score = log10( f(μ_T) / f(μ_0) )        (lower is better; −1 = ten times closer to the optimum)
A diverged run scores max(its last logged score, 0): it counts as no better than where it started.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from algorithms.dpo import DPOConfig
from algorithms.mpo import MPOConfig
from algorithms.pmpo import PMPOConfig
from suite import plotting, stats
from suite.analysis import curve, first_value, fmt_ci, iqm_ci, last_value
from suite.claims import Claim, Deviation, Verdict, below, combine, within
from suite.questions.base import Analysis, Budget, Question, Variant
from tasks.bandits import BanditConfig, BanditLoopConfig

FUNCTIONS = ("sphere", "rosenbrock", "schwefel")
BUDGETS = {
    "smoke": Budget(seeds=2, train=dict(steps=40, log_every=20)),
    "quick": Budget(seeds=10, train=dict(steps=1200, log_every=50)),
    "paper": Budget(seeds=20, train=dict(steps=20000, log_every=200)),
}
SUCCESS_DECADES = -1.0
"""A run 'drives the function toward its optimum' when its IQM score is below −1 (10× closer), CI included."""
EQUIVALENCE_DECADES = 0.5
"""Two methods 'perform alike' when the CI of their IQM score difference lies within ±0.5 decades."""

_TASK, _LOOP = BanditConfig(), BanditLoopConfig()
COMMON_DEVIATIONS = (
    Deviation("dimension D", "not given", f"{_TASK.dim}", "the paper does not state it"),
    Deviation("initial policy", "not given", f"μ_0 ~ U(task box), σ_0 = {_LOOP.init_std:g}", "the paper does not state it"),
    Deviation("optimiser", "not given", f"Adam, lr {_LOOP.lr:g} (duals {_LOOP.dual_lr:g}), one step per iteration", "the paper does not state it"),
    Deviation("Schwefel", "Hansen et al. 2003", "Schwefel 1.2 (double sum)", "the unimodal form with optimum 0 in Hansen et al.'s suite"),
)

PMPO_AR = PMPOConfig(alpha=0.5, beta=0.5)
PMPO_A = PMPOConfig(alpha=1.0, beta=0.0)
PMPO_R = PMPOConfig(alpha=0.0, beta=2.0)
DPO_BANDIT = DPOConfig(beta=0.1)


def scores(runs: pd.DataFrame, rows: pd.DataFrame) -> pd.Series:
    """log10 f(μ_T)/f(μ_0) per run (indexed by run_id); diverged runs count as no better than their start."""
    f0 = first_value(rows, "f_init")
    ft = last_value(rows, "f")
    s = np.log10(np.maximum(ft, 1e-300) / f0)
    diverged = runs.set_index("run_id").status.eq("diverged").reindex(s.index, fill_value=False)
    s[diverged] = np.maximum(s[diverged].fillna(0.0), 0.0)
    return s


def by_cell(runs: pd.DataFrame, s: pd.Series, task: str, variant: str) -> np.ndarray:
    ids = runs[(runs.task == task) & (runs.variant == variant)].run_id
    return s.reindex(ids).to_numpy(dtype=float)


def learning_curves(runs, rows, rng, order, title_suffix="") -> "plotting.Figure":
    """f(μ) against step per function, IQM over seeds with 95% CIs, log scale."""
    c = curve(rows, runs, "f", rng)
    fig, axes = plotting.figure(ncols=len(FUNCTIONS))
    palette = plotting.colors(order)
    for ax, fn in zip(axes, FUNCTIONS):
        plotting.ci_lines(ax, c[c.task == fn], order, palette=palette)
        ax.set_yscale("log")
        ax.set_title(fn + title_suffix)
        ax.set_xlabel("gradient step")
        ax.set_ylabel("f(μ) (IQM, 95% CI)")
    axes[-1].legend(loc="upper right")
    return fig


class BanditsPMPO(Question):
    name = "bandits-pmpo"
    title = "PMPO from accepted and/or rejected samples on synthetic functions, against DPO and MPO"
    description = (
        "Each iteration a lagged reference proposes 4 samples; the best 2 are accepted, the other 2 rejected "
        "(`papers/004_71574c67b927da2f.txt §5.1`, Figure 1)."
    )
    tasks = FUNCTIONS
    budgets = BUDGETS
    claims = (
        Claim(
            "B1", "PMPO-AR, PMPO-A and PMPO-R all drive each function toward its optimum.",
            "papers/004_71574c67b927da2f.txt §5.1, Figure 1",
            f"For every variant and function, the IQM over seeds of log10 f(μ_T)/f(μ_0) has a 95% CI wholly below "
            f"{SUCCESS_DECADES:g} (at least 10× closer to the optimum): supported if all are; not supported if any CI lies wholly above; "
            "otherwise inconclusive.",
            COMMON_DEVIATIONS,
        ),
        Claim(
            "B2", "DPO on the best vs worst of 4 samples performs like PMPO-AR.",
            "papers/004_71574c67b927da2f.txt §5.1",
            f"Per function, the 95% CI of IQM(DPO) − IQM(PMPO-AR) of log10 f(μ_T)/f(μ_0): supported if it lies within "
            f"±{EQUIVALENCE_DECADES:g} decades on every function and PMPO-AR learns there (its CI wholly below "
            f"{SUCCESS_DECADES:g}; alike without learning proves nothing); not supported if on some function it lies wholly "
            "outside; otherwise inconclusive.",
            COMMON_DEVIATIONS + (Deviation("DPO β", "not given", f"{DPO_BANDIT.beta:g}", "TRL's default; the paper gives none for bandits"),),
        ),
    )

    def variants(self):
        return [
            Variant("PMPO-AR", "pmpo", PMPO_AR),
            Variant("PMPO-A", "pmpo", PMPO_A),
            Variant("PMPO-R", "pmpo", PMPO_R),
            Variant("DPO", "dpo", DPO_BANDIT),
            Variant("MPO", "mpo", MPOConfig()),
        ]

    def analyse(self, runs, rows, rng):
        s = scores(runs, rows)
        order = [v.label for v in self.variants()]
        table = []
        b1_parts = []
        for fn in FUNCTIONS:
            for v in order:
                ci = iqm_ci(by_cell(runs, s, fn, v), rng)
                n_div = int(((runs.task == fn) & (runs.variant == v) & (runs.status == "diverged")).sum())
                table.append({"function": fn, "variant": v, "IQM log10 f_T/f_0 [95% CI]": fmt_ci(ci), "diverged": n_div,
                              "n": int(((runs.task == fn) & (runs.variant == v)).sum())})
                if v.startswith("PMPO"):
                    b1_parts.append(below(ci, SUCCESS_DECADES))
        b1 = combine(b1_parts)
        b2_rows, b2_parts = [], []
        for fn in FUNCTIONS:
            x, y = by_cell(runs, s, fn, "DPO"), by_cell(runs, s, fn, "PMPO-AR")
            diff = stats.difference_ci(x, y, stats.iqm, rng)
            # lower score is better, so DPO improves on PMPO-AR when its score is lower
            poi = stats.probability_of_improvement(-x, -y, rng)
            alike = within(diff, EQUIVALENCE_DECADES)
            learns = below(iqm_ci(y, rng), SUCCESS_DECADES) == "supported"
            b2_parts.append("inconclusive" if alike == "supported" and not learns else alike)
            b2_rows.append({"function": fn, "IQM(DPO) − IQM(PMPO-AR) [95% CI]": fmt_ci(diff),
                            "P(DPO better) [95% CI]": fmt_ci(poi), "verdict": b2_parts[-1]})
        b2 = combine(b2_parts)
        verdicts = [
            Verdict(self.claims[0], b1, f"{b1_parts.count('supported')} of {len(b1_parts)} PMPO variant × function cells "
                    f"reach {SUCCESS_DECADES:g} decades with confidence.", [r for r in table if r["variant"].startswith("PMPO")]),
            Verdict(self.claims[1], b2, f"{b2_parts.count('supported')} of {len(b2_parts)} functions show DPO within "
                    f"±{EQUIVALENCE_DECADES:g} decades of PMPO-AR.", b2_rows),
        ]
        figures = {"learning_curves.png": learning_curves(runs, rows, rng, order)}
        return Analysis(verdicts, figures, tables=[("Final scores of every variant", pd.DataFrame(table))])


# ---------------------------------------------------------------------------------------------------------------- B3
ALPHAS = (0.0, 0.5, 1.0)
BETAS = (0.0, 0.5, 1.0, 1.5, 2.0)
LEARNS_BELOW = -0.5
"""B3: a cell learns when its IQM score's CI lies wholly below −0.5 decades (≥ 3× closer to the optimum)."""
FAILS_ABOVE = -0.1
"""B3: a cell fails (collapses or stalls) when its CI lies wholly above −0.1 decades (< 1.26× closer); diverged runs score ≥ 0."""


def predicted_learns(alpha: float, beta: float) -> bool | None:
    """The paper's prediction for an (α, β) cell with α ∈ {0, 0.5} (`004 §3.2`, §5.2 Figure 3, SPEC B3).

    Reject-only (α = 0) needs β > 1 − α = 1; accept&reject (α = 0.5) fails without KL and learns for
    β ≳ 0.5. Accept-only (α = 1) is tested for insensitivity instead (see `BanditsKL.analyse`).
    """
    if alpha == 0.0:
        return beta > 1.0
    if alpha == 0.5:
        return beta >= 0.5
    return None


def cell_outcome(ci: tuple[float, float, float]) -> str:
    _, lo, hi = ci
    if hi < LEARNS_BELOW:
        return "learns"
    if lo > FAILS_ABOVE:
        return "fails"
    return "unclear"


def cell_label(alpha: float, beta: float) -> str:
    return f"α={alpha:g} β={beta:g}"


class BanditsKL(Question):
    name = "bandits-kl"
    title = "How PMPO's KL weight β interacts with accept-only, reject-only and accept&reject feedback"
    description = "A β × α sweep of PMPO on the three functions (`papers/004_71574c67b927da2f.txt §5.2`, Figure 3, asked here of the bandits)."
    tasks = FUNCTIONS
    budgets = BUDGETS
    claims = (
        Claim(
            "B3", "Reject-only needs a high β (β > 1−α) and collapses without KL; accept-only is insensitive to β; "
            "accept&reject needs β ≳ 0.5.",
            "papers/004_71574c67b927da2f.txt §3.2, §5.2 (Figure 3), App. A",
            f"Per (α, β, function) cell, on the IQM over seeds of log10 f(μ_T)/f(μ_0) with its 95% CI: the cell *learns* if the "
            f"CI lies wholly below {LEARNS_BELOW:g}, *fails* if wholly above {FAILS_ABOVE:g} (diverged runs score ≥ 0), else is "
            "unclear. Predicted: α=0 fails for β ≤ 1 and learns for β ≥ 1.5; α=0.5 fails at β=0 and learns for β ≥ 0.5. "
            f"Accept-only (α=1) is insensitive when the CI of IQM(worst β) − IQM(best β) lies within ±{EQUIVALENCE_DECADES:g} "
            "decades. Supported if every check holds on every function; not supported if any cell shows the opposite outcome or "
            "the accept-only spread lies wholly outside the margin; otherwise inconclusive.",
            COMMON_DEVIATIONS + (Deviation("setting", "control suite (Figure 3)", "synthetic bandits", "SPEC B3 asks it of the bandits"),),
        ),
    )

    def variants(self):
        return [Variant(cell_label(a, b), "pmpo", PMPOConfig(alpha=a, beta=b)) for a in ALPHAS for b in BETAS]

    def analyse(self, runs, rows, rng):
        s = scores(runs, rows)
        table, parts = [], []
        for fn in FUNCTIONS:
            cis = {}
            for a in ALPHAS:
                for b in BETAS:
                    label = cell_label(a, b)
                    cis[(a, b)] = ci = iqm_ci(by_cell(runs, s, fn, label), rng)
                    observed, expect = cell_outcome(ci), predicted_learns(a, b)
                    if expect is None:
                        match = "—"
                    elif observed == "unclear":
                        match = "inconclusive"
                    else:
                        match = "supported" if (observed == "learns") == expect else "not supported"
                        parts.append(match)
                    if match == "inconclusive":
                        parts.append(match)
                    n_div = int(((runs.task == fn) & (runs.variant == label) & (runs.status == "diverged")).sum())
                    table.append({"function": fn, "α": a, "β": b, "IQM score [95% CI]": fmt_ci(ci), "diverged": n_div,
                                  "predicted": {True: "learns", False: "fails", None: "(insensitive)"}[expect],
                                  "observed": observed, "check": match})
            best = min(BETAS, key=lambda b: cis[(1.0, b)][0])
            worst = max(BETAS, key=lambda b: cis[(1.0, b)][0])
            spread = stats.difference_ci(by_cell(runs, s, fn, cell_label(1.0, worst)), by_cell(runs, s, fn, cell_label(1.0, best)), stats.iqm, rng)
            parts.append(within(spread, EQUIVALENCE_DECADES))
            table.append({"function": fn, "α": 1.0, "β": f"{worst:g} − {best:g}", "IQM score [95% CI]": fmt_ci(spread),
                          "diverged": "", "predicted": f"within ±{EQUIVALENCE_DECADES:g}", "observed": "spread", "check": parts[-1]})
        outcome = combine(parts)
        verdict = Verdict(self.claims[0], outcome, f"{parts.count('supported')} of {len(parts)} checks hold, "
                          f"{parts.count('not supported')} are contradicted, {parts.count('inconclusive')} are unclear.", table)
        fig, axes = plotting.figure(ncols=len(FUNCTIONS))
        palette = plotting.colors([f"α={a:g}" for a in ALPHAS])
        for ax, fn in zip(axes, FUNCTIONS):
            for a in ALPHAS:
                cis = [iqm_ci(by_cell(runs, s, fn, cell_label(a, b)), rng) for b in BETAS]
                key = f"α={a:g}"
                ax.plot(BETAS, [c[0] for c in cis], marker="o", color=palette[key], label=key)
                ax.fill_between(BETAS, [c[1] for c in cis], [c[2] for c in cis], color=palette[key], alpha=0.2, linewidth=0)
            ax.axhspan(FAILS_ABOVE, ax.get_ylim()[1], color="grey", alpha=0.1, linewidth=0)
            ax.axhline(LEARNS_BELOW, color="grey", linestyle="--", linewidth=1)
            ax.set_title(fn)
            ax.set_xlabel("KL weight β")
            ax.set_ylabel("log10 f(μ_T)/f(μ_0) (IQM, 95% CI)")
        axes[-1].legend(title="PMPO", loc="best")
        return Analysis([verdict], {"beta_sweep.png": fig})


# ---------------------------------------------------------------------------------------------------------------- B4
ETAS = (0.1, 1.0, 10.0, 100.0, 1000.0)


def eta_label(eta: float) -> str:
    return f"η={eta:g}"


class BanditsTemperature(Question):
    name = "bandits-temperature"
    title = "Dual-adaptive temperature against a fixed-temperature sweep (RQ3) on synthetic functions"
    description = (
        "The MPO-style learner (softmax of scores over the 4 proposals, KL trust region) with its temperature η either "
        "held fixed across five orders of magnitude or adapted by its dual (`papers/000_18d00f82fad2bd94.txt §1` RQ3, "
        "`papers/001_8b44b9ea6e2e604b.txt §6`)."
    )
    tasks = FUNCTIONS
    budgets = BUDGETS
    claims = (
        Claim(
            "B4", "A dual-adaptive η matches the best fixed η of a sweep spanning ≥ 3 orders of magnitude, without tuning; "
            "the extremes of the sweep fail.",
            "papers/000_18d00f82fad2bd94.txt §1 (RQ3); papers/001_8b44b9ea6e2e604b.txt §6",
            f"Per function: (a) the 95% CI of IQM(dual) − IQM(best fixed η) lies below +{EQUIVALENCE_DECADES:g} decades "
            f"(matches; wholly above = not supported); (b) both extremes (η = {ETAS[0]:g}, {ETAS[-1]:g}) are worse than the "
            f"best fixed η by more than {EQUIVALENCE_DECADES:g} decades, CI included (wholly within = not supported). "
            "Supported if (a) and (b) hold on every function; not supported if either is contradicted on any; else "
            "inconclusive. The best fixed η is chosen on the same runs, which favours the sweep.",
            COMMON_DEVIATIONS + (Deviation("MPO trust region", "ε_μ=0.0025, ε_σ=1e-6 (Acme)", "one KL, ε=0.1",
                                           "one bandit step per proposal batch; Acme's bounds would barely move the policy"),),
        ),
    )

    def variants(self):
        fixed = [Variant(eta_label(e), "mpo", MPOConfig(temperature="fixed", eta=e)) for e in ETAS]
        return fixed + [Variant("dual η", "mpo", MPOConfig(temperature="dual"))]

    def analyse(self, runs, rows, rng):
        s = scores(runs, rows)
        table, parts, per_fn = [], [], []
        for fn in FUNCTIONS:
            cis = {e: iqm_ci(by_cell(runs, s, fn, eta_label(e)), rng) for e in ETAS}
            dual_ci = iqm_ci(by_cell(runs, s, fn, "dual η"), rng)
            best = min(ETAS, key=lambda e: cis[e][0])
            best_scores = by_cell(runs, s, fn, eta_label(best))
            diff = stats.difference_ci(by_cell(runs, s, fn, "dual η"), best_scores, stats.iqm, rng)
            a = "supported" if diff[2] < EQUIVALENCE_DECADES else ("not supported" if diff[1] > EQUIVALENCE_DECADES else "inconclusive")
            ext = []
            for e in (ETAS[0], ETAS[-1]):
                d = stats.difference_ci(by_cell(runs, s, fn, eta_label(e)), best_scores, stats.iqm, rng)
                ext.append("supported" if d[1] > EQUIVALENCE_DECADES else ("not supported" if d[2] < EQUIVALENCE_DECADES else "inconclusive"))
                per_fn.append({"function": fn, "comparison": f"η={e:g} − best (η={best:g})", "Δ IQM [95% CI]": fmt_ci(d), "check": ext[-1]})
            per_fn.append({"function": fn, "comparison": f"dual − best (η={best:g})", "Δ IQM [95% CI]": fmt_ci(diff), "check": a})
            parts += [a, *ext]
            for e in ETAS:
                table.append({"function": fn, "variant": eta_label(e), "IQM score [95% CI]": fmt_ci(cis[e])})
            table.append({"function": fn, "variant": "dual η", "IQM score [95% CI]": fmt_ci(dual_ci)})
        outcome = combine(parts)
        verdict = Verdict(self.claims[0], outcome, f"{parts.count('supported')} of {len(parts)} checks hold, "
                          f"{parts.count('not supported')} are contradicted.", per_fn)
        fig, axes = plotting.figure(ncols=len(FUNCTIONS))
        for ax, fn in zip(axes, FUNCTIONS):
            cis = [iqm_ci(by_cell(runs, s, fn, eta_label(e)), rng) for e in ETAS]
            ax.plot(ETAS, [c[0] for c in cis], marker="o", color=plotting.PALETTE[0], label="fixed η")
            ax.fill_between(ETAS, [c[1] for c in cis], [c[2] for c in cis], color=plotting.PALETTE[0], alpha=0.2, linewidth=0)
            d = iqm_ci(by_cell(runs, s, fn, "dual η"), rng)
            ax.axhline(d[0], color=plotting.PALETTE[1], label="dual η")
            ax.axhspan(d[1], d[2], color=plotting.PALETTE[1], alpha=0.15, linewidth=0)
            ax.set_xscale("log")
            ax.set_title(fn)
            ax.set_xlabel("fixed temperature η")
            ax.set_ylabel("log10 f(μ_T)/f(μ_0) (IQM, 95% CI)")
        axes[-1].legend(loc="best")
        eta_curves = curve(rows, runs, "dual/eta", rng)
        fig2, axes2 = plotting.figure(ncols=len(FUNCTIONS))
        for ax, fn in zip(axes2, FUNCTIONS):
            plotting.ci_lines(ax, eta_curves[(eta_curves.task == fn)], ["dual η"])
            ax.set_yscale("log")
            ax.set_title(fn)
            ax.set_xlabel("gradient step")
            ax.set_ylabel("adapted η (IQM, 95% CI)")
        return Analysis([verdict], {"temperature_sweep.png": fig, "dual_eta.png": fig2},
                        tables=[("Final scores", pd.DataFrame(table))])
