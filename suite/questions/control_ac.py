"""DeepMind Control with the actor-critic loop (`tasks/control_ac.py`) and the offline loop (`tasks/control_offline.py`):
claims C1, C2, C3 (PMPO, DPO and MPO on a learned Q, `004 §5.2`), C6 (offline accept/reject, `004 §5.3`, Table 1)
and C7 (VIREL, `000 §9`).

Every online run is scored by its **final evaluation return**: the mean return of the deterministic policy (Gaussian
mean, per-dimension argmax bin) over the loop's evaluation episodes at the end of training (DMC returns lie in
[0, 1000]); a run that diverged scores 0. A uniform-random policy is measured on the same evaluation episodes. Aggregates
are IQMs over seeds with stratified-bootstrap 95% CIs; comparisons use the CI of the IQM difference
(`suite.stats.difference_ci`). Every threshold below is a module constant quoted in the rule text.

Why cartpole-swingup at `quick`: the paper's tasks (humanoid, manipulator; Figure 2) need millions of steps; the three
questions C1–C3 alone are 26 cells × 5 seeds, which leaves about 4,000 environment steps per run on a 2-core laptop.
Cartpole-swingup is the cheapest listed task on which an actor-critic moves clearly above a random policy in that budget
(to the "swinging" regime, returns of a few hundred; balancing needs far more), so `quick` compares *early learning*:
a method that collapses, stalls or learns slower shows, one that wins only late does not.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from algorithms.awr import AWRConfig
from algorithms.dpo import DPOConfig
from algorithms.mpo import MPOConfig
from algorithms.pmpo import PMPOConfig
from algorithms.sft import SFTConfig
from algorithms.virel import VIRELConfig
from suite import plotting, stats
from suite.analysis import cell, curve, fmt_ci, iqm_ci, n_diverged
from suite.claims import Claim, Deviation, Outcome, Verdict, combine
from suite.questions.base import Analysis, Budget, Question, Variant
from suite.questions.control_onpolicy import PAPER as ONPOLICY_PAPER
from suite.questions.control_onpolicy import QUICK as ONPOLICY_QUICK
from suite.questions.control_onpolicy import QUICK_CARTPOLE as ONPOLICY_QUICK_CARTPOLE
from suite.questions.control_onpolicy import SMOKE as ONPOLICY_SMOKE
from suite.questions.control_onpolicy import TASK_CONFIGS as ONPOLICY_TASK_CONFIGS
from suite.questions.control_onpolicy import VMPO, VMPO_LOOP, scores
from tasks.control_ac import ActorCriticConfig
from tasks.control_offline import OfflineConfig
from tasks.control_onpolicy import OnPolicyConfig

TASK = "cartpole-swingup"

# ---------------------------------------------------------------------------------------------------- rules (constants)
LEARN_FACTOR = 3.0
"""A variant *learns* when the lower end of its final-return IQM CI exceeds 3 × the random policy's IQM."""
FAIL_FACTOR = 1.5
"""C3: a cell *fails* (collapses or stalls) when the upper end of its IQM CI lies below 1.5 × the random policy's IQM."""
MATCH_FRACTION = 0.2
"""C1: PMPO *matches or outperforms* MPO when the CI of IQM(PMPO) − IQM(MPO) lies above −20% of MPO's IQM."""
EQUIV_FRACTION = 0.2
"""C3: accept-only is *insensitive* to β when the CI of IQM(worst β) − IQM(best β) lies within ±20% of the best IQM."""

# ---------------------------------------------------------------------------------------------------- budgets
SMOKE_AC = dict(total_steps=200, eval_every=200, eval_episodes=1, hidden=(16, 16), batch_size=16, learning_starts=50,
                updates_per_step=0.25, log_every=100, replay_size=10_000)
"""A second or two per cell: 1-second episodes (100 steps), 40 learner steps, one evaluation episode."""
QUICK_AC = dict(total_steps=4_000, eval_every=4_000, eval_episodes=3, hidden=(64, 64), batch_size=128, learning_starts=1_000,
                updates_per_step=0.5, log_every=1_000)
"""4 episodes of training per seed, 1,500 learner steps, one evaluation of 3 episodes at the end (the learning curves are
the training episodes' returns, one per 1,000 steps)."""
PAPER_AC = dict(total_steps=1_000_000, eval_every=50_000, eval_episodes=100)
"""Acme's MPO settings (the config's defaults) for 1M steps; evaluations of 100 episodes as in `004` Figure 2."""

BEHAVIOUR = {
    "smoke": ActorCriticConfig(total_steps=200, eval_every=200, eval_episodes=1, log_every=200, **{k: SMOKE_AC[k] for k in
                               ("hidden", "batch_size", "learning_starts", "updates_per_step", "replay_size")}),
    "quick": ActorCriticConfig(total_steps=10_000, eval_every=10_000, eval_episodes=1, log_every=10_000, hidden=(64, 64),
                               batch_size=128, learning_starts=1_000, updates_per_step=0.5),
    "paper": ActorCriticConfig(total_steps=100_000, eval_every=100_000, eval_episodes=1, log_every=10_000),
}
"""The behaviour run (MPO) whose episodes make up the offline dataset of C6."""
SMOKE_OFF = dict(steps=20, batch_size=16, hidden=(16, 16), eval_every=20, eval_episodes=1, log_every=10, random_episodes=1,
                 final_episodes=1, value_rounds=1, value_epochs=1, value_hidden=(16, 16), behaviour=BEHAVIOUR["smoke"])
QUICK_OFF = dict(steps=2_000, hidden=(64, 64), eval_every=2_000, eval_episodes=5, log_every=500, random_episodes=3,
                 final_episodes=5, behaviour=BEHAVIOUR["quick"])
"""18 episodes (3 random, 10 of the behaviour run, 5 of its final policy); the first 5 are labelled (40/140 of 18)."""
PAPER_OFF = dict(eval_episodes=100, behaviour=BEHAVIOUR["paper"])

LOOP_BUDGETS: dict[str, dict[type, dict]] = {
    "smoke": {ActorCriticConfig: SMOKE_AC, OfflineConfig: SMOKE_OFF, OnPolicyConfig: ONPOLICY_SMOKE},
    "quick": {ActorCriticConfig: QUICK_AC, OfflineConfig: QUICK_OFF, OnPolicyConfig: {**ONPOLICY_QUICK, **ONPOLICY_QUICK_CARTPOLE}},
    "paper": {ActorCriticConfig: PAPER_AC, OfflineConfig: PAPER_OFF, OnPolicyConfig: ONPOLICY_PAPER},
}
"""Per profile, the fields each training loop's config takes (one question may mix loops: C7)."""
BUDGETS = {"smoke": Budget(seeds=2), "quick": Budget(seeds=5), "paper": Budget(seeds=10)}
TASK_CONFIGS = {"smoke": {"time_limit": 1.0}}
"""Task-config changes per profile: smoke uses 1-second episodes so that an evaluation takes milliseconds."""

# ---------------------------------------------------------------------------------------------------- variants
AC_G20 = ActorCriticConfig(policy="gaussian", samples=20)
AC_B20 = ActorCriticConfig(policy="binned", samples=20)
AC_G4 = ActorCriticConfig(policy="gaussian", samples=4)
AC_B4 = ActorCriticConfig(policy="binned", samples=4)
RANDOM = ActorCriticConfig(random_baseline=True)
PMPO_AR, PMPO_A, PMPO_R = PMPOConfig(alpha=0.5, beta=0.5), PMPOConfig(alpha=1.0, beta=0.0), PMPOConfig(alpha=0.0, beta=2.0)
"""SPEC §5 / `004 §5`: α = 0.5, β = 0.5 accept&reject; α = 1, β = 0 accept-only; α = 0, β = 2 reject-only."""
DPO_LARGE, DPO_SMALL = DPOConfig(beta=20.0), DPOConfig(beta=1.0)
"""`004 §5.2`: Gaussian DPO needs β = 20; the binned β is not given (1.0 here, the same 'moderate' β as the Gaussian contrast)."""
RANDOM_LABEL = "random policy"


class ControlACQuestion(Question):
    """A control question whose variants may use different training loops: `LOOP_BUDGETS[profile][type(loop config)]`
    replaces fields of each variant's loop config; `TASK_CONFIGS[profile]` replaces fields of the task config (that of
    the on-policy questions for on-policy variants)."""

    tasks = (TASK,)
    budgets = BUDGETS

    def train_changes(self, profile, task, train_config):
        return LOOP_BUDGETS[profile].get(type(train_config), {})

    def task_changes(self, profile, task, train_config):
        # on-policy variants (C7's AWR and V-MPO) run on the on-policy questions' task config, so they share runs
        if isinstance(train_config, OnPolicyConfig):
            return ONPOLICY_TASK_CONFIGS.get(profile, {}).get(task, {})
        return TASK_CONFIGS.get(profile, {})


def _ci(runs, s, variant, rng) -> tuple[float, float, float]:
    x = cell(runs, s, TASK, variant)
    return iqm_ci(x, rng) if len(x) else (float("nan"),) * 3


def learns(ci: tuple[float, float, float], random_iqm: float) -> Outcome:
    """`supported` if the CI lies wholly above LEARN_FACTOR × random, `not supported` if wholly below, else inconclusive."""
    bar = LEARN_FACTOR * random_iqm
    return "supported" if ci[1] > bar else ("not supported" if ci[2] < bar else "inconclusive")


def above(diff: tuple[float, float, float], margin: float = 0.0) -> Outcome:
    """`supported` if the difference CI lies wholly above −margin (0: wholly above 0), `not supported` if wholly below."""
    return "supported" if diff[1] > -margin else ("not supported" if diff[2] < -margin else "inconclusive")


def _row(runs, s, variant, rng, random_iqm, **extra) -> dict:
    ci = _ci(runs, s, variant, rng)
    return {"variant": variant, "final return IQM [95% CI]": fmt_ci(ci, 1),
            "diverged": f"{n_diverged(runs, TASK, variant)}/{len(cell(runs, s, TASK, variant))}",
            f"learns (> {LEARN_FACTOR:g}× random = {LEARN_FACTOR * random_iqm:.0f})": learns(ci, random_iqm), **extra}


def curves_figure(runs, rows, rng, panels: dict[str, list[str]], random_ci, metric="train/episode_return",
                  ylabel="training episode return (IQM, 95% CI)", logx: bool = False):
    """One panel per group of variants: `metric` against env steps with 95% CIs, the random policy's final evaluation
    return as a dashed line with its CI as a grey band."""
    c = curve(rows, runs, metric, rng)
    fig, axes = plotting.figure(ncols=len(panels))
    order = [v for vs in panels.values() for v in vs]
    palette = plotting.colors(list(dict.fromkeys(order)))
    for ax, (title, variants) in zip(axes, panels.items()):
        if len(c):
            plotting.ci_lines(ax, c, variants, palette=palette)
        ax.axhline(random_ci[0], color="grey", linestyle="--", linewidth=1, label=RANDOM_LABEL)
        ax.axhspan(random_ci[1], random_ci[2], color="grey", alpha=0.15, linewidth=0)
        ax.set_title(f"{TASK}: {title}" if title else TASK)
        if logx:
            ax.set_xscale("log")
        ax.set_xlabel("environment steps" + (" (log scale)" if logx else ""))
        ax.set_ylabel(ylabel)
        ax.legend(loc="best", fontsize=7)
    return fig


COMMON_DEVIATIONS = (
    Deviation("task (quick)", "humanoid run/stand/walk, manipulator, … (Figure 2)", "cartpole-swingup",
              "the 2-core `quick` budget; the paper's tasks need millions of steps"),
    Deviation("training budget (quick)", "not given (curves to convergence)", f"{QUICK_AC['total_steps']:,} env steps, "
              f"{int(QUICK_AC['total_steps'] * QUICK_AC['updates_per_step'] - QUICK_AC['learning_starts'] * QUICK_AC['updates_per_step']):,} "
              "learner steps, 5 seeds", "C1–C3 and C7 together in about 10 minutes on 2 cores; `paper`: 1M steps, 10 seeds"),
    Deviation("evaluation", "100 episodes per evaluation (Figure 2)", "3 deterministic episodes at the end at quick (100 every "
              "50k steps at paper); curves are training-episode returns", "cost; evaluation episodes cost as much as training steps"),
    Deviation("critic", "not given (a learned Q)", "one MLP Q, 5-step returns (Acme MPO), target nets every 100 learner steps",
              "Acme's MPO defaults; Acme's critic is distributional"),
    Deviation("networks, replay ratio (quick)", "Acme: (256, 256, 256), batch 256, 0.125 learner steps per env step",
              f"{QUICK_AC['hidden']}, batch {QUICK_AC['batch_size']}, {QUICK_AC['updates_per_step']} learner steps per env step",
              "small networks and more updates per sample learn faster per env step at a laptop budget; `paper` uses Acme's"),
    Deviation("MPO trust region", "Acme: decoupled ε_μ = 0.0025, ε_Σ = 1e-6", "one KL(π_tgt‖π_θ) bound ε = 0.1",
              "`algorithms/mpo.py` has one trust region"),
    Deviation("time-limit truncation", "—", "bootstrapped from Q of the final observation", "SPEC §5"),
)


# ---------------------------------------------------------------------------------------------------------------- C1
class ControlPMPO(ControlACQuestion):
    name = "control-pmpo"
    title = "PMPO from accepted and/or rejected Q-ranked actions against MPO on DeepMind Control, Gaussian and binned"
    description = (
        "The actor-critic loop: for each replayed state the target policy proposes K actions scored by a learned Q; PMPO "
        "accepts the top 2 of 4 and rejects the other 2, MPO weighs 20 samples by softmax(Q/η) "
        "(`papers/004_71574c67b927da2f.txt §5.2`, Figure 2)."
    )
    claims = (
        Claim(
            "C1", "PMPO (accept&reject, accept-only, reject-only) matches or outperforms MPO, with Gaussian policies and with "
            "per-dimension categorical bins.",
            "papers/004_71574c67b927da2f.txt §5.2, Figure 2",
            f"Per policy kind (Gaussian, binned), on final evaluation returns (diverged runs score 0): MPO must learn (the lower "
            f"end of its IQM CI above {LEARN_FACTOR:g}× the random policy's IQM), else every comparison of that kind is "
            f"inconclusive. Per PMPO variant, the CI of IQM(PMPO) − IQM(MPO) lying above −{MATCH_FRACTION:g}×IQM(MPO) supports "
            "'matches or outperforms'; lying wholly below it contradicts it; otherwise inconclusive. Supported if all six "
            "comparisons are supported; not supported if any is contradicted; otherwise inconclusive.",
            COMMON_DEVIATIONS + (
                Deviation("PMPO α, β", "A&R 0.5/0.5, A 1/0, R 0/2", "the same", "—"),
                Deviation("bins", "not given", "11 per action dimension in [−1, 1]", "suite default"),),
        ),
    )

    def variants(self):
        out = []
        for kind, k20, k4 in (("Gaussian", AC_G20, AC_G4), ("binned", AC_B20, AC_B4)):
            out += [Variant(f"MPO ({kind})", "mpo", MPOConfig(), k20), Variant(f"PMPO-AR ({kind})", "pmpo", PMPO_AR, k4),
                    Variant(f"PMPO-A ({kind})", "pmpo", PMPO_A, k4), Variant(f"PMPO-R ({kind})", "pmpo", PMPO_R, k4)]
        return out + [Variant(RANDOM_LABEL, "mpo", MPOConfig(), RANDOM)]

    def analyse(self, runs, rows, rng):
        s = scores(runs, rows)
        rand = _ci(runs, s, RANDOM_LABEL, rng)
        table, checks, parts = [], [], []
        for kind in ("Gaussian", "binned"):
            mpo_label = f"MPO ({kind})"
            mpo_ci = _ci(runs, s, mpo_label, rng)
            mpo_learns = learns(mpo_ci, rand[0])
            table.append(_row(runs, s, mpo_label, rng, rand[0]))
            for v in ("PMPO-AR", "PMPO-A", "PMPO-R"):
                label = f"{v} ({kind})"
                table.append(_row(runs, s, label, rng, rand[0]))
                diff = stats.difference_ci(cell(runs, s, TASK, label), cell(runs, s, TASK, mpo_label), stats.iqm, rng)
                poi = stats.probability_of_improvement(cell(runs, s, TASK, label), cell(runs, s, TASK, mpo_label), rng)
                found = above(diff, MATCH_FRACTION * mpo_ci[0])
                part = found if mpo_learns == "supported" else "inconclusive"
                parts.append(part)
                checks.append({"policy": kind, "comparison": f"{v} − MPO", "IQM difference [95% CI]": fmt_ci(diff, 1),
                               "margin": f"−{MATCH_FRACTION * mpo_ci[0]:.1f}", "P(PMPO > MPO) [95% CI]": fmt_ci(poi),
                               "check": part if part == found else f"{found} → inconclusive (MPO has not learned)"})
        table.append({"variant": RANDOM_LABEL, "final return IQM [95% CI]": fmt_ci(rand, 1), "diverged": "—"})
        outcome = combine(parts)
        verdict = Verdict(self.claims[0], outcome, f"{parts.count('supported')} of {len(parts)} PMPO-vs-MPO comparisons "
                          f"support 'matches or outperforms', {parts.count('not supported')} contradict it.", checks)
        panels = {kind: [f"{v} ({kind})" for v in ("MPO", "PMPO-AR", "PMPO-A", "PMPO-R")] for kind in ("Gaussian", "binned")}
        figures = {"learning_curves.png": curves_figure(runs, rows, rng, panels, rand)}
        return Analysis([verdict], figures, tables=[("Every variant", pd.DataFrame(table))])


# ---------------------------------------------------------------------------------------------------------------- C2
class ControlDPO(ControlACQuestion):
    name = "control-dpo"
    title = "DPO on the best and worst of 4 Q-ranked actions, binned and Gaussian, against PMPO-AR"
    description = (
        "DPO in the actor-critic loop: of the 4 actions the target policy proposes per state, the best and the worst by Q "
        "form the preference pair; the target policy is DPO's reference (`papers/004_71574c67b927da2f.txt §5.2`)."
    )
    claims = (
        Claim(
            "C2", "DPO (best vs worst of 4 Q-ranked actions) works with binned actions, but in the Gaussian case needs a very "
            "large β (paper: 20) and learns slower.",
            "papers/004_71574c67b927da2f.txt §5.2, Figure 2",
            f"On final evaluation returns (diverged runs score 0): (a) binned DPO (β = {DPO_SMALL.beta:g}) learns — the lower end "
            f"of its IQM CI above {LEARN_FACTOR:g}× the random IQM (wholly below: not supported); (b) Gaussian DPO needs the "
            f"large β: the CI of IQM(β = {DPO_LARGE.beta:g}) − IQM(β = {DPO_SMALL.beta:g}) lies wholly above 0 (wholly below: "
            f"not supported); (c) Gaussian DPO (β = {DPO_LARGE.beta:g}) learns slower than PMPO-AR: the CI of the IQM difference "
            "PMPO-AR − DPO of the mean training-episode return over the run (the area under the learning curve) lies wholly "
            "above 0 (wholly below: not supported). Supported if (a)–(c) hold; not supported if any is contradicted; otherwise "
            "inconclusive.",
            COMMON_DEVIATIONS + (
                Deviation("DPO β (binned)", "not given", f"{DPO_SMALL.beta:g}", "a moderate β, the same as the Gaussian contrast"),
                Deviation("DPO β (Gaussian)", "20", f"{DPO_LARGE.beta:g}, contrasted with {DPO_SMALL.beta:g}", "to test 'needs a very large β'"),
                Deviation("'learns slower'", "read off Figure 2", "area under the training-return curve", "a number with a CI"),),
        ),
    )

    def variants(self):
        return [Variant("DPO β=1 (binned)", "dpo", DPO_SMALL, AC_B4), Variant("PMPO-AR (binned)", "pmpo", PMPO_AR, AC_B4),
                Variant("DPO β=20 (Gaussian)", "dpo", DPO_LARGE, AC_G4), Variant("DPO β=1 (Gaussian)", "dpo", DPO_SMALL, AC_G4),
                Variant("PMPO-AR (Gaussian)", "pmpo", PMPO_AR, AC_G4), Variant(RANDOM_LABEL, "mpo", MPOConfig(), RANDOM)]

    def analyse(self, runs, rows, rng):
        s = scores(runs, rows)
        auc = rows[rows.metric == "train/episode_return"].groupby("run_id").value.mean()
        rand = _ci(runs, s, RANDOM_LABEL, rng)
        labels = [v.label for v in self.variants() if v.label != RANDOM_LABEL]
        table = [_row(runs, s, v, rng, rand[0], **{"mean training return (AUC) IQM [95% CI]": fmt_ci(_ci(runs, auc, v, rng), 1)})
                 for v in labels]
        table.append({"variant": RANDOM_LABEL, "final return IQM [95% CI]": fmt_ci(rand, 1), "diverged": "—"})
        a = learns(_ci(runs, s, "DPO β=1 (binned)", rng), rand[0])
        d_beta = stats.difference_ci(cell(runs, s, TASK, "DPO β=20 (Gaussian)"), cell(runs, s, TASK, "DPO β=1 (Gaussian)"),
                                     stats.iqm, rng)
        b = above(d_beta)
        d_auc = stats.difference_ci(cell(runs, auc, TASK, "PMPO-AR (Gaussian)"), cell(runs, auc, TASK, "DPO β=20 (Gaussian)"),
                                    stats.iqm, rng)
        c = above(d_auc)
        checks = [
            {"check": "(a) binned DPO learns", "statistic [95% CI]": f"{fmt_ci(_ci(runs, s, 'DPO β=1 (binned)', rng), 1)} vs "
             f"{LEARN_FACTOR:g}× random = {LEARN_FACTOR * rand[0]:.1f}", "outcome": a},
            {"check": "(b) Gaussian DPO needs large β", "statistic [95% CI]": f"IQM(β=20) − IQM(β=1) = {fmt_ci(d_beta, 1)}",
             "outcome": b},
            {"check": "(c) Gaussian DPO learns slower", "statistic [95% CI]": f"AUC: IQM(PMPO-AR) − IQM(DPO β=20) = {fmt_ci(d_auc, 1)}",
             "outcome": c},
        ]
        outcome = combine([a, b, c])
        verdict = Verdict(self.claims[0], outcome, f"(a) {a}, (b) {b}, (c) {c}.", checks)
        panels = {"binned": ["DPO β=1 (binned)", "PMPO-AR (binned)"],
                  "Gaussian": ["DPO β=20 (Gaussian)", "DPO β=1 (Gaussian)", "PMPO-AR (Gaussian)"]}
        figures = {"learning_curves.png": curves_figure(runs, rows, rng, panels, rand)}
        return Analysis([verdict], figures, tables=[("Every variant", pd.DataFrame(table))])


# ---------------------------------------------------------------------------------------------------------------- C3
ALPHAS = (0.0, 0.5, 1.0)
BETAS = (0.0, 0.5, 1.0, 1.5, 2.0)


def cell_label(alpha: float, beta: float) -> str:
    return f"α={alpha:g} β={beta:g}"


def c3_prediction(alpha: float, beta: float) -> str | None:
    """The paper's prediction for one (α, β) cell (`004 §5.2`, Figure 3; SPEC C3): 'learns', 'fails' or None (no cell-level
    prediction: accept-only is tested for insensitivity, accept&reject at β ≤ 0.5 by comparison)."""
    if alpha == 0.0:
        return "learns" if beta > 1.0 else "fails"
    if alpha == 0.5 and beta > 0.5:
        return "learns"
    if alpha == 1.0:
        return "learns"
    return None


def c3_outcome(ci, random_iqm: float) -> str:
    if ci[1] > LEARN_FACTOR * random_iqm:
        return "learns"
    if ci[2] < FAIL_FACTOR * random_iqm:
        return "fails"
    return "unclear"


class ControlPMPOKL(ControlACQuestion):
    name = "control-pmpo-kl"
    title = "How PMPO's KL weight β interacts with accept-only, reject-only and accept&reject feedback on DeepMind Control"
    description = ("A β × α sweep of PMPO (Gaussian policy, K = 4 Q-ranked actions, top 2 accepted) in the actor-critic loop "
                   "(`papers/004_71574c67b927da2f.txt §5.2`, Figure 3).")
    claims = (
        Claim(
            "C3", "β sweep (0, 0.5, 1, 1.5, 2) × α ∈ {0, 0.5, 1}: reject-only is sensitive to β (needs β > 1), accept-only is "
            "not, accept&reject partially (needs β > 0.5).",
            "papers/004_71574c67b927da2f.txt §5.2 (Figure 3), §3.2",
            f"Per (α, β) cell, on the IQM of final evaluation returns with its 95% CI (diverged runs score 0): the cell *learns* "
            f"if the CI lies wholly above {LEARN_FACTOR:g}× the random policy's IQM, *fails* if wholly below {FAIL_FACTOR:g}× it, "
            "else is unclear. Checks: α=0 fails for β ≤ 1 and learns for β ≥ 1.5; α=0.5 learns for β ≥ 1 and is worse at β=0 "
            "than at its best β ≥ 1 (the CI of the IQM difference wholly below 0); α=1 learns at every β and is insensitive: "
            f"the CI of IQM(worst β) − IQM(best β) lies within ±{EQUIV_FRACTION:g}×IQM(best β). Each check is supported when "
            "it holds, contradicted when the opposite is observed (a predicted failure learns, a predicted learner fails, a "
            "difference or spread CI lies wholly on the wrong side) and inconclusive otherwise. Supported if every check holds; "
            "not supported if any is contradicted; otherwise inconclusive.",
            COMMON_DEVIATIONS + (Deviation("policy", "not stated for Figure 3", "Gaussian", "the cheaper of the two C1 kinds"),),
        ),
    )

    def variants(self):
        return [Variant(cell_label(a, b), "pmpo", PMPOConfig(alpha=a, beta=b), AC_G4) for a in ALPHAS for b in BETAS] + \
            [Variant(RANDOM_LABEL, "mpo", MPOConfig(), RANDOM)]

    def analyse(self, runs, rows, rng):
        s = scores(runs, rows)
        rand = _ci(runs, s, RANDOM_LABEL, rng)
        cis = {(a, b): _ci(runs, s, cell_label(a, b), rng) for a in ALPHAS for b in BETAS}
        table, parts = [], []
        for a in ALPHAS:
            for b in BETAS:
                observed, expect = c3_outcome(cis[(a, b)], rand[0]), c3_prediction(a, b)
                if expect is None:
                    check = "—"
                elif observed == "unclear":
                    check = "inconclusive"
                else:
                    check = "supported" if observed == expect else "not supported"
                if check != "—":
                    parts.append(check)
                table.append({"α": a, "β": b, "final return IQM [95% CI]": fmt_ci(cis[(a, b)], 1),
                              "diverged": n_diverged(runs, TASK, cell_label(a, b)), "predicted": expect or "(see below)",
                              "observed": observed, "check": check})
        best_ar = max((1.0, 1.5, 2.0), key=lambda b: cis[(0.5, b)][0])
        d0 = stats.difference_ci(cell(runs, s, TASK, cell_label(0.5, 0.0)), cell(runs, s, TASK, cell_label(0.5, best_ar)), stats.iqm, rng)
        ar_check = "supported" if d0[2] < 0 else ("not supported" if d0[1] > 0 else "inconclusive")
        parts.append(ar_check)
        table.append({"α": 0.5, "β": f"0 − {best_ar:g}", "final return IQM [95% CI]": fmt_ci(d0, 1), "diverged": "",
                      "predicted": "below 0 (β = 0 worse)", "observed": "difference", "check": ar_check})
        best_a = max(BETAS, key=lambda b: cis[(1.0, b)][0])
        worst_a = min(BETAS, key=lambda b: cis[(1.0, b)][0])
        spread = stats.difference_ci(cell(runs, s, TASK, cell_label(1.0, worst_a)), cell(runs, s, TASK, cell_label(1.0, best_a)),
                                     stats.iqm, rng)
        margin = EQUIV_FRACTION * cis[(1.0, best_a)][0]
        a_check = "supported" if -margin < spread[1] and spread[2] < margin else (
            "not supported" if spread[2] < -margin or spread[1] > margin else "inconclusive")
        parts.append(a_check)
        table.append({"α": 1.0, "β": f"{worst_a:g} − {best_a:g}", "final return IQM [95% CI]": fmt_ci(spread, 1), "diverged": "",
                      "predicted": f"within ±{margin:.1f}", "observed": "spread", "check": a_check})
        outcome = combine(parts)
        verdict = Verdict(self.claims[0], outcome, f"{parts.count('supported')} of {len(parts)} checks hold, "
                          f"{parts.count('not supported')} are contradicted, {parts.count('inconclusive')} are unclear "
                          f"(random policy {fmt_ci(rand, 1)}).", table)
        fig, axes = plotting.figure(ncols=1, width=4.4, height=3.0)
        ax = axes[0]
        palette = plotting.colors([f"α={a:g}" for a in ALPHAS])
        names = {0.0: "reject-only", 0.5: "accept&reject", 1.0: "accept-only"}
        for a in ALPHAS:
            key = f"α={a:g}"
            ax.plot(BETAS, [cis[(a, b)][0] for b in BETAS], marker="o", color=palette[key], label=f"{key} ({names[a]})")
            ax.fill_between(BETAS, [cis[(a, b)][1] for b in BETAS], [cis[(a, b)][2] for b in BETAS], color=palette[key], alpha=0.2,
                            linewidth=0)
        ax.axhline(LEARN_FACTOR * rand[0], color="grey", linestyle="--", linewidth=1, label=f"learns above ({LEARN_FACTOR:g}× random)")
        ax.axhline(FAIL_FACTOR * rand[0], color="grey", linestyle=":", linewidth=1, label=f"fails below ({FAIL_FACTOR:g}× random)")
        ax.set_title(f"{TASK}: PMPO β × α")
        ax.set_xlabel("KL weight β")
        ax.set_ylabel("final evaluation return (IQM, 95% CI)")
        ax.legend(loc="best", fontsize=7)
        curves = curves_figure(runs, rows, rng, {f"α={a:g} ({names[a]})": [cell_label(a, b) for b in BETAS] for a in ALPHAS}, rand)
        return Analysis([verdict], {"beta_sweep.png": fig, "learning_curves.png": curves})


# ---------------------------------------------------------------------------------------------------------------- C6
PAPER_TABLE1 = {"BC": 24, "Accept+BC": 26, "Accept": 27, "Reject+BC": 77, "Accept+Reject+BC": 93}
"""`004` Table 1: average reward over 100 evaluation episodes, RGB Stacking (all 5 triplets)."""
OFFLINE = OfflineConfig()
OFFLINE_VARIANTS = (
    ("BC", "sft", SFTConfig(), dataclasses.replace(OFFLINE, learn_on="all")),
    ("Accept+BC", "pmpo", PMPOConfig(alpha=1.0, beta=2.0), OFFLINE),
    ("Accept", "pmpo", PMPOConfig(alpha=1.0, beta=0.0), OFFLINE),
    ("Reject+BC", "pmpo", PMPOConfig(alpha=0.0, beta=2.0), OFFLINE),
    ("Accept+Reject+BC", "pmpo", PMPOConfig(alpha=0.5, beta=1.0), OFFLINE),
)
"""Every '+BC' variant weighs the BC term (β · −E_all log π) twice each signal term (α, 1 − α); see `tasks/control_offline.py`."""


class ControlOffline(ControlACQuestion):
    name = "control-offline"
    title = "Offline learning from accepted and rejected transitions of a mixed-quality dataset (PMPO Table 1)"
    description = (
        "A fixed dataset of dm_control episodes of mixed quality (a random policy, the successive checkpoints of a short MPO "
        "run, its final policy); a value function fitted on all of it labels the transitions of the leading episodes accept "
        "(positive advantage) or reject; BC and PMPO's accept, reject and KL-to-data pieces are trained on it "
        "(`papers/004_71574c67b927da2f.txt §5.3`, Table 1)."
    )
    claims = (
        Claim(
            "C6", "On an offline dataset of mixed-quality episodes labelled by a value function, Accept+Reject+BC > Reject+BC > "
            "{Accept, Accept+BC, BC} (paper, Table 1: BC 24, Accept+BC 26, Accept 27, Reject+BC 77, Accept+Reject+BC 93).",
            "papers/004_71574c67b927da2f.txt §5.3, Table 1",
            "On final evaluation returns (diverged runs score 0): (a) the CI of IQM(Accept+Reject+BC) − IQM(Reject+BC) lies wholly "
            "above 0; (b) for each of Accept, Accept+BC and BC, the CI of IQM(Reject+BC) − IQM(it) lies wholly above 0. Each "
            "comparison is contradicted when its CI lies wholly below 0 and inconclusive when it covers 0. Supported if all four "
            "hold; not supported if any is contradicted; otherwise inconclusive.",
            (
                Deviation("task and data", "RGB Stacking from pixels; 140k episodes of a converged multi-task run",
                          f"{TASK}; {QUICK_OFF['random_episodes']} random + {BEHAVIOUR['quick'].total_steps // 1000} episodes of a "
                          f"{BEHAVIOUR['quick'].total_steps:,}-step MPO run + {QUICK_OFF['final_episodes']} of its final policy (quick)",
                          "laptop budget; the same structure (most early episodes bad, few good)"),
                Deviation("labelled subset", "first 40k of 140k episodes", "first 40/140 of the episodes", "the same fraction"),
                Deviation("value function / advantage", "not given", "V(s) MLP, GAE(0.99, 0.95) fitted by 3 rounds of λ-return regression",
                          "the paper gives no estimator"),
                Deviation("loss weights", "not given", "BC = sft on all data; +BC variants: β = 2 × each signal weight "
                          "(A+BC α=1 β=2, R+BC α=0 β=2, A+R+BC α=0.5 β=1)", "β > 1 − α keeps reject-only bounded (`004 §3.2`)"),
                Deviation("KL to the reference", "KL on all 140k episodes", "sample estimate −E_all log π_θ (cross-entropy to the data)",
                          "the behaviour policies' densities are not stored"),
                Deviation("evaluation", "100 episodes, reward normalised to the stacking success scale",
                          f"{QUICK_OFF['eval_episodes']} deterministic episodes (quick), raw DMC return in [0, 1000]", "cost"),
                Deviation("learner budget", "not given", f"{QUICK_OFF['steps']:,} gradient steps of batch 256 (quick)", "cost"),
            ),
        ),
    )

    def variants(self):
        return [Variant(label, algo, cfg, loop) for label, algo, cfg, loop in OFFLINE_VARIANTS]

    def analyse(self, runs, rows, rng):
        s = scores(runs, rows)
        labels = [label for label, *_ in OFFLINE_VARIANTS]
        cis = {v: _ci(runs, s, v, rng) for v in labels}
        ranks = {v: i + 1 for i, v in enumerate(sorted(labels, key=lambda v: -cis[v][0]))}
        paper_ranks = {v: i + 1 for i, v in enumerate(sorted(labels, key=lambda v: -PAPER_TABLE1[v]))}
        table = [{"variant": v, "paper (Table 1)": PAPER_TABLE1[v], "paper rank": paper_ranks[v],
                  "ours: final return IQM [95% CI]": fmt_ci(cis[v], 1), "our rank": ranks[v],
                  "diverged": f"{n_diverged(runs, TASK, v)}/{len(cell(runs, s, TASK, v))}"} for v in labels]
        checks, parts = [], []
        for x, y in (("Accept+Reject+BC", "Reject+BC"), ("Reject+BC", "Accept"), ("Reject+BC", "Accept+BC"), ("Reject+BC", "BC")):
            d = stats.difference_ci(cell(runs, s, TASK, x), cell(runs, s, TASK, y), stats.iqm, rng)
            poi = stats.probability_of_improvement(cell(runs, s, TASK, x), cell(runs, s, TASK, y), rng)
            parts.append(above(d))
            checks.append({"comparison": f"{x} > {y}", "IQM difference [95% CI]": fmt_ci(d, 1),
                           "P(first > second) [95% CI]": fmt_ci(poi), "check": parts[-1]})
        outcome = combine(parts)
        verdict = Verdict(self.claims[0], outcome, f"{parts.count('supported')} of 4 orderings hold, "
                          f"{parts.count('not supported')} are reversed; our ranking "
                          f"{' > '.join(sorted(labels, key=lambda v: ranks[v]))}.", checks,
                          paper="BC 24, Accept+BC 26, Accept 27, Reject+BC 77, Accept+Reject+BC 93 (average reward, 100 episodes)")
        data = rows[rows.metric.str.startswith("data/")].groupby("metric").value.first()
        notes = [f"dataset: {int(data.get('data/episodes', 0))} episodes ({int(data.get('data/transitions', 0))} transitions); "
                 f"mean return of its random episodes {data.get('data/random_return_mean', float('nan')):.1f}, of the behaviour "
                 f"run {data.get('data/behaviour_run_return_mean', float('nan')):.1f}, of the final policy "
                 f"{data.get('data/final_policy_return_mean', float('nan')):.1f}; {int(data.get('data/labelled_transitions', 0))} "
                 f"labelled transitions, {100 * data.get('data/accept_fraction', float('nan')):.0f}% accepted; the value function "
                 f"explains {100 * data.get('data/value_explained_variance', float('nan')):.0f}% of the λ-returns' variance."]
        fig, axes = plotting.figure(ncols=2, width=3.6)
        x = np.arange(len(labels))
        ours = [cis[v] for v in labels]
        axes[0].bar(x, [c[0] for c in ours], color=plotting.PALETTE[0],
                    yerr=[[c[0] - c[1] for c in ours], [c[2] - c[0] for c in ours]], capsize=3)
        axes[0].set_title(f"ours: {TASK}")
        axes[0].set_ylabel("final evaluation return (IQM, 95% CI)")
        axes[1].bar(x, [PAPER_TABLE1[v] for v in labels], color=plotting.PALETTE[1])
        axes[1].set_title("paper: RGB Stacking (Table 1)")
        axes[1].set_ylabel("average reward")
        for ax in axes:
            ax.set_xticks(x, labels, rotation=30, ha="right")
        return Analysis([verdict], {"offline_table1.png": fig}, tables=[("Beside the paper's Table 1", pd.DataFrame(table))],
                        notes=notes)


# ---------------------------------------------------------------------------------------------------------------- C7
VIREL = VIRELConfig()
AWR = AWRConfig()


class ControlVIREL(ControlACQuestion):
    name = "control-virel"
    title = "VIREL (actor-critic as variational EM) on DeepMind Control, beside AWR and V-MPO"
    description = (
        "VIREL in the actor-critic loop: the critic's Bellman residual sets the temperature ε_ω, the actor minimises "
        "ε_ω KL(π_θ ‖ softmax(Q/ε_ω)) by the score-function gradient with the closed-form entropy "
        "(`papers/000_18d00f82fad2bd94.txt §9`); AWR and V-MPO run in the on-policy loop at its own budget."
    )
    claims = (
        Claim(
            "C7", "VIREL, the variational-EM actor-critic, learns (beats a random policy by a clear margin) on a control task; "
            "compared with AWR and V-MPO.",
            "papers/000_18d00f82fad2bd94.txt §9",
            f"On final evaluation returns (diverged runs score 0): supported if the lower end of VIREL's IQM CI lies above "
            f"{LEARN_FACTOR:g}× the random policy's IQM; not supported if the upper end lies below it; otherwise inconclusive. "
            "AWR and V-MPO are reported beside it (final return, environment steps used, curves); they do not enter the verdict.",
            COMMON_DEVIATIONS + (
                Deviation("VIREL critic and ε", "ε_ω = c‖TQ − Q‖ over the state-action distribution",
                          "c = 1, mean squared residual of the minibatch, floor 1e-3; residual-minimising critic", "`algorithms/virel.py`"),
                Deviation("VIREL actor", "eq. 19 with ∇H", "K = 4 samples of π_θ, Q minus its per-state mean, closed-form entropy",
                          "variance reduction; the expected gradient is eq. 19's"),
                Deviation("AWR, V-MPO budget", "—", f"the on-policy loop at {ONPOLICY_QUICK_CARTPOLE['total_steps']:,} steps (quick), "
                          "shared with C4", "on-policy methods need more samples; their runs are the C4 budget's"),
                Deviation("AWR", "its own off-policy replay of recent rollouts", "AWR's loss in the on-policy (PPO-style) loop",
                          "the suite's on-policy loop"),),
        ),
    )

    def variants(self):
        return [Variant("VIREL", "virel", VIREL, AC_G4), Variant("AWR", "awr", AWR, OnPolicyConfig()),
                Variant("V-MPO", "vmpo", VMPO, VMPO_LOOP), Variant(RANDOM_LABEL, "mpo", MPOConfig(), RANDOM)]

    def analyse(self, runs, rows, rng):
        s = scores(runs, rows)
        rand = _ci(runs, s, RANDOM_LABEL, rng)
        steps = rows[rows.metric == "eval/return"].groupby("run_id").step.max()
        repeat = runs.set_index("run_id").get("task_config.action_repeat", pd.Series(1, index=runs.run_id))
        table = []
        for v in ("VIREL", "AWR", "V-MPO"):
            ids = runs[runs.variant == v].run_id
            physics = (steps.reindex(ids) * repeat.reindex(ids)).max() if len(ids) else float("nan")
            table.append(_row(runs, s, v, rng, rand[0], **{"physics steps per run": f"{int(physics):,}" if physics == physics else "—"}))
        table.append({"variant": RANDOM_LABEL, "final return IQM [95% CI]": fmt_ci(rand, 1), "diverged": "—"})
        virel = _ci(runs, s, "VIREL", rng)
        outcome = learns(virel, rand[0])
        verdict = Verdict(self.claims[0], outcome, f"VIREL {fmt_ci(virel, 1)} against {LEARN_FACTOR:g}× the random policy's "
                          f"IQM = {LEARN_FACTOR * rand[0]:.1f} (random {fmt_ci(rand, 1)}).", table)
        figures = {"learning_curves.png": curves_figure(runs, rows, rng, {"": ["VIREL", "AWR", "V-MPO"]}, rand, logx=True)}
        eps = curve(rows, runs, "dual/epsilon", rng)
        if eps.empty:
            return Analysis([verdict], figures)
        fig, axes = plotting.figure(ncols=1)
        plotting.ci_lines(axes[0], eps, ["VIREL"])
        axes[0].set_yscale("log")
        axes[0].set_title(f"{TASK}: VIREL's ε_ω")
        axes[0].set_xlabel("environment steps")
        axes[0].set_ylabel("ε_ω = mean squared Bellman residual (IQM, 95% CI)")
        figures["virel_epsilon.png"] = fig
        return Analysis([verdict], figures)
