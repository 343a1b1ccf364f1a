"""The small-LM RLHF family (`tasks/lm_rlhf.py`): claims L1, L2, L3, L4, L5, L8 and L9.

Every RLHF run starts from the suite's SFT model (a `transformers` GPT-2 pretrained and SFT'd on the synthetic language of
`tasks/lm_language.py`) and is scored by its **gold improvement**: the mean gold reward of one sampled response per
held-out prompt at the end of training minus the same at the start (the SFT model, same evaluation seed). A diverged run
scores `UNGRAMMATICAL` − start (its policy is no longer usable). KL to the reference (closed form, summed over a
response's tokens, on the same held-out samples) is reported beside every reward. Aggregates are IQMs over seeds with
stratified-bootstrap 95% CIs; comparisons use the CI of the IQM difference (`suite.stats.difference_ci`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from algorithms.awr import AWRConfig
from algorithms.dar import DARConfig
from algorithms.dpo import DPOConfig
from algorithms.gempi import GEMPIConfig
from algorithms.pmpo import PMPOConfig
from algorithms.ppo import PPOConfig
from algorithms.vmpo import VMPOConfig
from suite import plotting, stats
from suite.analysis import at_least, cell, curve, first_value, fmt_ci, iqm_or_nan, last_value, n_diverged, per_run_mean
from suite.claims import Claim, Deviation, Outcome, Verdict, combine
from suite.questions.base import Analysis, Budget, Question, Variant
from suite.questions.bandits import eta_label
from tasks.lm_language import UNGRAMMATICAL
from tasks.base import get_task
from tasks.lm_rlhf import LMRLHFConfig
from tasks.lm_sft_check import LMSFTCheckConfig

LM, SMALL, PROXY = "lm-grammar", "lm-grammar-small", "lm-grammar-proxy"
SMALL_PROMPTS = get_task(SMALL).config.train_prompts
PROXY_PAIRS = get_task(PROXY).config.rm_pairs

# ---------------------------------------------------------------------------------------------------- rules (constants)
MATCH_FRACTION = 0.2
"""Two methods *match* when the CI of their IQM difference lies above −20% of the reference method's IQM improvement."""
EQUIVALENCE_FRACTION = 0.2
"""L5 (b): *behaves like* when the CI of the IQM difference lies within ±20% of the reference's IQM improvement."""
FALL_MARGIN = 0.0
"""L4: gold *falls* when the CI of IQM(gold at mid-training − gold at the end) lies wholly above this."""
L8_TOLERANCE = 1e-5
"""L8: the two SFT trainings are equal step for step when no parameter ever differs by more than this (float32) and the
gradients never differ by more than `L8_GRAD_TOLERANCE` relative to their norm."""
L8_GRAD_TOLERANCE = 1e-4
DROPOUT = 0.1
"""The dropout p of L2 and L9 (GPT-2's own value; `001 §9`)."""
SWEEP = (0.0, 0.05, DROPOUT, 0.2)
"""L2's figure of reward against dropout p runs PPO and V-MPO (the policy gradient and the EM method the claim contrasts)
at every level; the verdict reads p = 0 and p = DROPOUT only."""

# ---------------------------------------------------------------------------------------------------- budgets
SMOKE = dict(updates=2, prompts_per_update=4, eval_every=2)
QUICK = dict(updates=40, eval_every=10)
PAPER = dict(updates=500, prompts_per_update=64, eval_every=50)
TASK_CONFIGS = {"smoke": dict(stages="tiny", eval_prompts=8)}
"""smoke: the tiny artifact stages (seconds to build), 8 evaluation prompts; quick and paper use the default stages."""

LOOP = dict(epochs=2, minibatches=2)
"""Every method: two passes over each update's samples in two minibatches of prompts (4 gradient steps per update)."""
PPO = PPOConfig()
"""Token-level PPO (TRL / Ziegler et al.): per-token ratio, clip 0.2, clipped value head, GAE(γ=1, λ=0.95) on per-token
KL-shaped rewards, advantages normalised per minibatch."""
PPO_LOOP = LMRLHFConfig(**LOOP, target_kl=0.1)
"""PPO's KL early stopping (1.5 × 0.1) counts the 'early stops' of L2."""
VMPO = VMPOConfig(epsilon_eta=0.1)
"""Sequence-level V-MPO (`001 §6`): dual η (softplus, init 1), top half of the batch's advantages, α trust region on the
per-sequence KL(π_old‖π_θ); ε_η = 0.1 (V-MPO's DMLab value: the batch is 64 sequences)."""
VALUE_LOOP = LMRLHFConfig(**LOOP, advantage="value")
"""V-MPO and AWR: A = r − β·KL − V(x) from the value head on the prompt's last hidden state (`001 §6`)."""
AWR = AWRConfig()
DAR = DARConfig()
"""SPEC §5: α + β = 0.05, α/(α+β) = 0.1, K-sample baseline, batch-normalised advantages, weights clipped at 20."""
DPO = DPOConfig(beta=0.1)
"""Online DPO on the best and worst of each prompt's 4 samples by reward (TRL β = 0.1)."""
BASE_LOOP = LMRLHFConfig(**LOOP)


def _dropout(loop: LMRLHFConfig, p: float) -> LMRLHFConfig:
    return dataclasses.replace(loop, dropout=p)


def _budgets(quick: dict = QUICK, paper: dict = PAPER, seeds: int = 5) -> dict[str, Budget]:
    return {"smoke": Budget(seeds=2, train=SMOKE), "quick": Budget(seeds=seeds, train=quick),
            "paper": Budget(seeds=10, train=paper)}


COMMON_DEVIATIONS = (
    Deviation("model", "LLMs (billions of parameters)", "a 2-layer GPT-2 (transformers) pretrained and SFT'd by the suite on "
              "a synthetic grammar", "no weights can be downloaded here; `policy=<hub id>` loads any causal LM"),
    Deviation("reward", "human or AI preference / reward models", "a programmatic gold reward (sentiment and topic of a "
              "grammatical reply), or a Bradley–Terry proxy trained on gold-labelled pairs", "the gold reward is known exactly"),
    Deviation("scale (quick)", "thousands of updates", "40 updates of 16 prompts × 4 samples, 5 seeds",
              "the family fits 25 minutes on 2 cores"),
)


def scores(runs: pd.DataFrame, rows: pd.DataFrame, metric: str = "eval/gold") -> pd.Series:
    """Gold improvement per run (indexed by run_id): last − first `metric`; a diverged run ends at UNGRAMMATICAL."""
    start = first_value(rows, metric).reindex(runs.run_id)
    end = last_value(rows, metric).reindex(runs.run_id)
    diverged = runs.set_index("run_id").status.eq("diverged").reindex(end.index).fillna(False).to_numpy()
    end[diverged] = UNGRAMMATICAL
    return end - start


def improves(ci: tuple[float, float, float]) -> Outcome:
    """`supported` if the IQM improvement's CI lies wholly above 0, `not supported` if wholly below."""
    return "supported" if ci[1] > 0 else ("not supported" if ci[2] < 0 else "inconclusive")


def _diff(runs, s, task, a, b, rng):
    x, y = cell(runs, s, task, a), cell(runs, s, task, b)
    return stats.difference_ci(x, y, stats.iqm, rng) if len(x) and len(y) else (float("nan"),) * 3


def summary_table(runs, rows, rng, task, labels) -> pd.DataFrame:
    """Per variant: gold improvement, final held-out gold, final KL to the reference, proxy, grammatical share."""
    s = scores(runs, rows)
    final = {m: last_value(rows, f"eval/{m}") for m in ("gold", "kl_ref", "proxy", "grammatical")}
    out = []
    for v in labels:
        out.append({"variant": v, "gold improvement IQM [95% CI]": fmt_ci(iqm_or_nan(cell(runs, s, task, v), rng)),
                    "final gold": fmt_ci(iqm_or_nan(cell(runs, final["gold"], task, v), rng)),
                    "final KL to ref (nats)": fmt_ci(iqm_or_nan(cell(runs, final["kl_ref"], task, v), rng)),
                    "final proxy": fmt_ci(iqm_or_nan(cell(runs, final["proxy"], task, v), rng)),
                    "grammatical": fmt_ci(iqm_or_nan(cell(runs, final["grammatical"], task, v), rng)),
                    "diverged": f"{n_diverged(runs, task, v)}/{int(((runs.task == task) & (runs.variant == v)).sum())}"})
    return pd.DataFrame(out)


def curves_figure(runs, rows, rng, order, metrics: tuple[tuple[str, str], ...], task: str | None = None):
    """One panel per metric: IQM over seeds with 95% CIs against RLHF updates."""
    fig, axes = plotting.figure(ncols=len(metrics))
    palette = plotting.colors(order)
    sel = runs if task is None else runs[runs.task == task]
    for ax, (metric, ylabel) in zip(axes, metrics):
        c = curve(rows, sel, metric, rng)
        if len(c):
            plotting.ci_lines(ax, c, [v for v in order if v in set(c.variant)], palette=palette)
        ax.set_xlabel("RLHF updates")
        ax.set_ylabel(ylabel)
    axes[0].legend(loc="best", fontsize=6)
    return fig


class LMQuestion(Question):
    tasks = (LM,)
    budgets = _budgets()

    def task_changes(self, profile, task, train_config):
        return TASK_CONFIGS.get(profile, {})


# ---------------------------------------------------------------------------------------------------------------- L1
ETAS = (0.01, 0.1, 1.0, 10.0)
"""Fixed temperatures spanning three orders of magnitude on the sequence advantages (rewards lie in [−2, 7])."""


def fixed_eta(eta: float) -> GEMPIConfig:
    """V-MPO with η held fixed: the GEMPI tuple of `VMPO` with temperature 'fixed' (T8 checks GEMPI ≡ V-MPO)."""
    return dataclasses.replace(VMPO.to_gempi(), coefficients=(eta,), temperature="fixed", epsilons=())


class LMTemperature(LMQuestion):
    name = "lm-temperature"
    title = "Sequence-level V-MPO: dual-adaptive temperature against fixed η (RQ3 at sequence level)"
    description = ("Sequence-level V-MPO on the LM task with its E-step temperature adapted by the dual of `001 §6` (top-k, "
                   "log-sum-exp, softplus) or held fixed across three orders of magnitude; everything else identical.")
    claims = (Claim(
        "L1", "At sequence level, a dual-adaptive temperature (the full `001 §6` procedure) gives stable learning without "
        "tuning: it matches the best fixed η, without more KL blow-ups, while some fixed η do worse.",
        "papers/001_8b44b9ea6e2e604b.txt §6; papers/000_18d00f82fad2bd94.txt §1 (RQ3)",
        f"On gold improvements (diverged runs end at {UNGRAMMATICAL:g}): (a) the CI of IQM(adaptive) − IQM(best fixed η) lies "
        f"above −{MATCH_FRACTION:g}×IQM(best fixed η) (wholly below: not supported); (b) the adaptive variant's divergence "
        "(KL blow-up or non-finite) rate is at most the fixed sweep's pooled rate (above: not supported); (c) some fixed η "
        f"is worse: the CI of IQM(adaptive) − IQM(fixed η) lies wholly above +{MATCH_FRACTION:g}×IQM(best fixed η), or it "
        "diverges more often. Supported if (a), (b), (c); not supported if any is contradicted; else inconclusive. ESS, η "
        "and KL to the reference are reported beside.",
        COMMON_DEVIATIONS + (Deviation("fixed-η V-MPO", "—", "GEMPI tuple of V-MPO with temperature 'fixed'",
                                       "V-MPO has no fixed-η option; T8 checks GEMPI equals V-MPO"),)),)

    def variants(self):
        fixed = [Variant(eta_label(e), "gempi", fixed_eta(e), train_config=VALUE_LOOP) for e in ETAS]
        return [*fixed, Variant("adaptive η", "vmpo", VMPO, train_config=VALUE_LOOP)]

    def analyse(self, runs, rows, rng):
        task, s = LM, scores(runs, rows)
        fixed = [eta_label(e) for e in ETAS]
        labels = [*fixed, "adaptive η"]
        cis = {v: iqm_or_nan(cell(runs, s, task, v), rng) for v in labels}
        best = max(fixed, key=lambda v: cis[v][0] if np.isfinite(cis[v][0]) else -np.inf)
        ref = abs(cis[best][0])
        d_best = _diff(runs, s, task, "adaptive η", best, rng)
        a = at_least(d_best, MATCH_FRACTION * ref)
        rate = {v: n_diverged(runs, task, v) / max(len(cell(runs, s, task, v)), 1) for v in labels}
        pooled = sum(n_diverged(runs, task, v) for v in fixed) / max(sum(len(cell(runs, s, task, v)) for v in fixed), 1)
        b = "supported" if rate["adaptive η"] <= pooled else "not supported"
        worse, within_all, checks = [], True, []
        for v in fixed:
            d = _diff(runs, s, task, "adaptive η", v, rng)
            is_worse = d[1] > MATCH_FRACTION * ref or rate[v] > rate["adaptive η"]
            worse.append(is_worse)
            within_all &= -MATCH_FRACTION * ref < d[1] and d[2] < MATCH_FRACTION * ref and not rate[v] > rate["adaptive η"]
            checks.append({"check": f"(c) adaptive − {v}", "statistic [95% CI]": fmt_ci(d),
                           "outcome": "fixed η worse" if is_worse else "not shown worse"})
        c = "supported" if any(worse) else ("not supported" if within_all else "inconclusive")
        checks = [{"check": f"(a) adaptive − best fixed ({best})", "statistic [95% CI]": f"{fmt_ci(d_best)}; margin "
                   f"−{MATCH_FRACTION * ref:.2f}", "outcome": a},
                  {"check": "(b) divergence rate", "statistic [95% CI]": f"adaptive {rate['adaptive η']:.2f} vs fixed sweep "
                   f"{pooled:.2f}", "outcome": b}, *checks,
                  {"check": "(c) some fixed η worse", "statistic [95% CI]": f"{sum(worse)} of {len(fixed)}", "outcome": c}]
        verdict = Verdict(self.claims[0], combine([a, b, c]), f"(a) {a}, (b) {b}, (c) {c}: adaptive "
                          f"{fmt_ci(cis['adaptive η'])} vs best fixed {best} {fmt_ci(cis[best])} (gold improvement).", checks)
        table = summary_table(runs, rows, rng, task, labels)
        ess, eta = per_run_mean(rows, "weights/ess"), pd.concat([per_run_mean(rows, "dual/eta"), per_run_mean(rows, "dual/Lambda")])
        table["ESS (mean over updates)"] = [fmt_ci(iqm_or_nan(cell(runs, ess, task, v), rng), 1) for v in labels]
        table["η (mean over updates)"] = [fmt_ci(iqm_or_nan(cell(runs, eta, task, v), rng), 3) for v in labels]
        fig = curves_figure(runs, rows, rng, labels, (("eval/gold", "held-out gold reward"), ("kl/ref_seq", "KL to reference"),
                                                     ("weights/ess", "ESS of the E-step weights"), ("dual/eta", "η (adaptive)")))
        return Analysis([verdict], {"curves.png": fig}, tables=[("Every variant", table)])


# ---------------------------------------------------------------------------------------------------------------- L2, L9
EM_METHODS = (("V-MPO", "vmpo", VMPO, VALUE_LOOP), ("AWR", "awr", AWR, VALUE_LOOP), ("DAR", "dar", DAR, BASE_LOOP))


SWEPT = ("PPO", "V-MPO")


def _dropout_variants(with_ppo: bool = True, sweep: bool = False) -> list[Variant]:
    """Each method at p = 0 and p = DROPOUT; with `sweep`, the `SWEPT` methods at every level of `SWEEP`."""
    methods = ((("PPO", "ppo", PPO, PPO_LOOP),) if with_ppo else ()) + EM_METHODS
    return [Variant(f"{label} p={p:g}", algo, cfg, train_config=_dropout(loop, p)) for label, algo, cfg, loop in methods
            for p in (SWEEP if sweep and label in SWEPT else (0.0, DROPOUT))]


def _dropout_effect(runs, s, task, label, rng):
    return _diff(runs, s, task, f"{label} p={DROPOUT:g}", f"{label} p=0", rng)


class LMDropout(LMQuestion):
    name = "lm-dropout"
    title = "Dropout under PPO and under EM methods (RQ5), with a small-data regime"
    description = (f"PPO (token level) and the EM methods V-MPO, AWR and DAR, each with dropout p = 0 and p = {DROPOUT:g} in "
                   "their training passes (rollouts and old log-probs in eval mode, `001 §9`), PPO and V-MPO also at p ∈ "
                   f"{{{', '.join(f'{p:g}' for p in SWEEP)}}}; then the EM methods on a pool of {SMALL_PROMPTS} training "
                   "prompts, scored on held-out prompts.")
    tasks = (LM, SMALL)
    claims = (Claim(
        "L2", "With dropout on, PPO degrades (ratio noise, clip fraction, early stops, reward) while V-MPO, AWR and DAR are "
        "unaffected; in a small-data regime dropout helps the EM methods on held-out prompts.",
        "papers/001_8b44b9ea6e2e604b.txt §9; papers/000_18d00f82fad2bd94.txt §1 (RQ5), §10",
        f"On {LM}: (a) PPO degrades: the CI of IQM(first-minibatch ratio std, p={DROPOUT:g}) − IQM(p=0) lies above 0 and the "
        f"CI of IQM(gold improvement, p={DROPOUT:g}) − IQM(p=0) lies wholly below 0 (the reward CI wholly above 0: not "
        f"supported); (b) each EM method is unaffected: the CI of IQM(p={DROPOUT:g}) − IQM(p=0) lies above "
        f"−{MATCH_FRACTION:g}×IQM(p=0) (wholly below for any: not supported). On {SMALL} ({SMALL_PROMPTS} training prompts): (c) the CI of "
        f"IQM(held-out gold improvement, p={DROPOUT:g}) − IQM(p=0) lies wholly above 0 for at least one EM method and wholly "
        "below for none (wholly below for any, or every CI within ±the margin: not supported). Supported if (a), (b), (c); "
        "not supported if any is contradicted; else inconclusive.",
        COMMON_DEVIATIONS + (Deviation("dropout p", "not given", f"{DROPOUT:g} (GPT-2's value) for the verdict; PPO and V-MPO "
                                       f"also at p ∈ {{{', '.join(f'{p:g}' for p in SWEEP)}}} for the sweep figure",
                                       "one level keeps the grid small"),
                             Deviation("small data", "not specified", f"{SMALL_PROMPTS} training prompts ({SMALL})",
                                       "few enough that the policy can overfit them")),),)

    def variants(self):
        return _dropout_variants(sweep=True)

    def grid(self, profile, seeds=None):
        # the small-data task runs only the EM methods at p = 0 and p = DROPOUT
        small = {v.label for v in _dropout_variants(with_ppo=False)}
        return [p for p in super().grid(profile, seeds) if p.spec.task != SMALL or p.variant in small]

    def analyse(self, runs, rows, rng):
        s = scores(runs, rows)
        std = first_value(rows, "first/ratio_std")
        r_std = _dropout_effect(runs, std, LM, "PPO", rng)
        r_gold = _dropout_effect(runs, s, LM, "PPO", rng)
        a = combine(["supported" if r_std[1] > 0 else "inconclusive",
                     "supported" if r_gold[2] < 0 else ("not supported" if r_gold[1] > 0 else "inconclusive")])
        checks = [{"check": "(a) PPO ratio std at θ = θ_old, dropout − none", "statistic [95% CI]": fmt_ci(r_std, 4), "outcome": "—"},
                  {"check": "(a) PPO gold improvement, dropout − none", "statistic [95% CI]": fmt_ci(r_gold), "outcome": a}]
        bs, cs, helps, within = [], [], [], True
        for label, *_ in EM_METHODS:
            ref = abs(iqm_or_nan(cell(runs, s, LM, f"{label} p=0"), rng)[0])
            d = _dropout_effect(runs, s, LM, label, rng)
            bs.append(at_least(d, MATCH_FRACTION * ref))
            checks.append({"check": f"(b) {label} gold improvement, dropout − none", "statistic [95% CI]":
                           f"{fmt_ci(d)}; margin −{MATCH_FRACTION * ref:.2f}", "outcome": bs[-1]})
            ref_small = abs(iqm_or_nan(cell(runs, s, SMALL, f"{label} p=0"), rng)[0])
            d = _dropout_effect(runs, s, SMALL, label, rng)
            helps.append(d[1] > 0)
            cs.append(d[2] < 0)
            within &= -MATCH_FRACTION * ref_small < d[1] and d[2] < MATCH_FRACTION * ref_small
            checks.append({"check": f"(c) {label}, {SMALL_PROMPTS} prompts: held-out gold, dropout − none", "statistic [95% CI]": fmt_ci(d),
                           "outcome": "helps" if d[1] > 0 else ("hurts" if d[2] < 0 else "no clear effect")})
        b = combine(bs)
        c = "not supported" if any(cs) or within else ("supported" if any(helps) else "inconclusive")
        checks.append({"check": "(c) dropout helps an EM method on held-out prompts", "statistic [95% CI]":
                       f"{sum(helps)} help, {sum(cs)} hurt", "outcome": c})
        verdict = Verdict(self.claims[0], combine([a, b, c]), f"(a) PPO degrades: {a}; (b) EM unaffected: {b}; "
                          f"(c) dropout helps with small data: {c}.", checks)
        labels = [v.label for v in self.variants()]
        table = summary_table(runs, rows, rng, LM, labels)
        for col, metric, digits in (("ratio std, 1st minibatch", "first/ratio_std", 4), ("clip fraction, 1st minibatch",
                                    "first/clipfrac", 3), ("early stops per update", "update/early_stop", 2)):
            values = per_run_mean(rows, metric)
            table[col] = [fmt_ci(iqm_or_nan(cell(runs, values, LM, v), rng), digits) if v.startswith("PPO") else "—"
                          for v in labels]
        # the trust-region term: with dropout on, θ is evaluated in train mode and π_old in eval mode, so this KL holds
        # the dropout noise too (V-MPO's α term then pulls against it). PPO logs the k3 estimate per token; V-MPO the
        # closed form summed over a sequence's tokens.
        kl_old = per_run_mean(rows, "kl/old")
        table["KL(π_old‖π_θ) (PPO per token, V-MPO per sequence)"] = [fmt_ci(iqm_or_nan(cell(runs, kl_old, LM, v), rng), 3)
                                                if len(cell(runs, kl_old, LM, v)) else "—" for v in labels]
        small = summary_table(runs, rows, rng, SMALL, [v.label for v in _dropout_variants(with_ppo=False)])
        train_gap = scores(runs, rows, "eval_train/gold")
        small["train-prompt gold improvement"] = [fmt_ci(iqm_or_nan(cell(runs, train_gap, SMALL, v), rng))
                                                  for v in small.variant]
        figures = {"dropout.png": self._figure(runs, rows, rng),
                   "curves.png": curves_figure(runs, rows, rng, labels, (("eval/gold", "held-out gold reward"),
                                                                         ("kl/ref_seq", "KL to reference")), LM)}
        return Analysis([verdict], figures, tables=[(f"{LM}: every variant", table), (f"{SMALL}: {SMALL_PROMPTS} training prompts", small)])

    def _figure(self, runs, rows, rng):
        fig, axes = plotting.figure(ncols=5)
        s = scores(runs, rows)
        panels = ((per_run_mean(rows, "first/ratio_std"), "PPO ratio std (θ = θ_old)", ["PPO"], LM),
                  (per_run_mean(rows, "first/clipfrac"), "PPO clip fraction (θ = θ_old)", ["PPO"], LM),
                  (s, f"gold improvement ({LM})", ["PPO"] + [m[0] for m in EM_METHODS], LM),
                  (s, f"held-out gold improvement ({SMALL})", [m[0] for m in EM_METHODS], SMALL))
        for ax, (values, ylabel, methods, task) in zip(axes, panels):
            for i, m in enumerate(methods):
                for j, p in enumerate((0.0, DROPOUT)):
                    ci = iqm_or_nan(cell(runs, values, task, f"{m} p={p:g}"), rng)
                    x = i + (j - 0.5) * 0.3
                    ax.errorbar([x], [ci[0]], yerr=[[ci[0] - ci[1]], [ci[2] - ci[0]]], fmt="o",
                                color=plotting.PALETTE[j], label=f"p={p:g}" if i == 0 else None)
            ax.set_xticks(range(len(methods)), methods)
            ax.set_ylabel(ylabel)
        axes[0].legend(loc="best")
        ax = axes[-1]
        for i, label in enumerate(SWEPT):
            cis = np.array([iqm_or_nan(cell(runs, s, LM, f"{label} p={p:g}"), rng) for p in SWEEP])
            ax.errorbar(SWEEP, cis[:, 0], yerr=[cis[:, 0] - cis[:, 1], cis[:, 2] - cis[:, 0]], fmt="o-", capsize=2,
                        color=plotting.PALETTE[i + 2], label=label)
        ax.set_xlabel("dropout p")
        ax.set_ylabel(f"gold improvement ({LM})")
        ax.legend(loc="best")
        return fig


class LMDropoutCompatible(LMQuestion):
    name = "lm-dropout-em"
    title = "Dropout compatibility of EM methods (RQ5): with dropout in the M-step they still learn; PPO needs it off"
    description = ("The runs of `lm-dropout` on the full prompt pool (the store shares them): whether each EM method learns "
                   "with dropout on, and whether PPO with dropout falls behind PPO without.")
    claims = (Claim(
        "L9", "With dropout on during the M-step, EM methods (V-MPO, AWR, DAR) still learn; PPO needs it off.",
        "papers/000_18d00f82fad2bd94.txt §10; papers/001_8b44b9ea6e2e604b.txt §9",
        f"(a) for each EM method with p = {DROPOUT:g}, the CI of its IQM gold improvement lies wholly above 0 (wholly below "
        f"for any: not supported); (b) the CI of IQM(PPO p={DROPOUT:g}) − IQM(PPO p=0) lies wholly below 0, or PPO with "
        "dropout does not learn while PPO without does (wholly above 0: not supported). Supported if (a) and (b); not "
        "supported if either is contradicted; else inconclusive.", COMMON_DEVIATIONS),)

    def variants(self):
        return _dropout_variants()

    def analyse(self, runs, rows, rng):
        s = scores(runs, rows)
        checks, parts = [], []
        for label, *_ in EM_METHODS:
            ci = iqm_or_nan(cell(runs, s, LM, f"{label} p={DROPOUT:g}"), rng)
            parts.append(improves(ci))
            checks.append({"check": f"(a) {label} p={DROPOUT:g} learns", "statistic [95% CI]": fmt_ci(ci), "outcome": parts[-1]})
        a = combine(parts)
        d = _dropout_effect(runs, s, LM, "PPO", rng)
        on, off = (improves(iqm_or_nan(cell(runs, s, LM, f"PPO p={p:g}"), rng)) for p in (DROPOUT, 0.0))
        b = "supported" if d[2] < 0 or (on != "supported" and off == "supported") else ("not supported" if d[1] > 0 else "inconclusive")
        checks += [{"check": "(b) PPO gold improvement, dropout − none", "statistic [95% CI]": fmt_ci(d), "outcome": b},
                   {"check": "(b) PPO learns without / with dropout", "statistic [95% CI]": f"{off} / {on}", "outcome": "—"}]
        verdict = Verdict(self.claims[0], combine([a, b]), f"(a) EM methods learn with dropout: {a}; (b) PPO needs it off: {b}.",
                          checks)
        labels = [v.label for v in self.variants()]
        fig = curves_figure(runs, rows, rng, labels, (("eval/gold", "held-out gold reward"), ("kl/ref_seq", "KL to reference")), LM)
        return Analysis([verdict], {"curves.png": fig}, tables=[("Every variant", summary_table(runs, rows, rng, LM, labels))])


# ---------------------------------------------------------------------------------------------------------------- L3
PMPO_VARIANTS = (("PMPO accept & reject", PMPOConfig(alpha=0.5, beta=0.5)), ("PMPO accept", PMPOConfig(alpha=1.0, beta=0.0)),
                 ("PMPO reject β=2", PMPOConfig(alpha=0.0, beta=2.0)), ("PMPO reject β=0.5", PMPOConfig(alpha=0.0, beta=0.5)))


class LMPMPO(LMQuestion):
    name = "lm-pmpo"
    title = "PMPO on a language model: accept & reject, accept only, reject only (two β), against online DPO"
    description = ("PMPO with each prompt's top 2 of 4 samples accepted and the other 2 rejected, KL(π_ref‖π_θ) in closed form "
                   "summed over tokens (`004 §5.4`); online DPO on the best and worst of the same 4 samples.")
    claims = (Claim(
        "L3", "Accept & reject learns faster than accept-only or reject-only and is competitive with DPO (best vs worst); "
        "reject-only needs β > 1 − α.",
        "papers/004_71574c67b927da2f.txt §5.4, §4",
        "On gold improvements: (a) the CI of IQM(AR) − IQM(A) and of IQM(AR) − IQM(R, β=2) each lie wholly above 0 (wholly "
        f"below for either: not supported); (b) the CI of IQM(AR) − IQM(DPO) lies above −{MATCH_FRACTION:g}×IQM(DPO) (wholly "
        "below: not supported); (c) reject-only with β = 2 > 1 − α does better than with β = 0.5 < 1 − α: the CI of their "
        "difference lies wholly above 0 (wholly below: not supported). Supported if (a), (b), (c); not supported if any is "
        "contradicted; else inconclusive. 'Faster' is read at the quick budget's end.", COMMON_DEVIATIONS),)

    def variants(self):
        return [*(Variant(label, "pmpo", cfg, train_config=BASE_LOOP) for label, cfg in PMPO_VARIANTS),
                Variant("DPO", "dpo", DPO, train_config=BASE_LOOP)]

    def analyse(self, runs, rows, rng):
        s, task = scores(runs, rows), LM
        ar, acc, rej, rej_low = (label for label, _ in PMPO_VARIANTS)
        d_a, d_r = _diff(runs, s, task, ar, acc, rng), _diff(runs, s, task, ar, rej, rng)
        a = combine(["supported" if d[1] > 0 else ("not supported" if d[2] < 0 else "inconclusive") for d in (d_a, d_r)])
        dpo = abs(iqm_or_nan(cell(runs, s, task, "DPO"), rng)[0])
        d_dpo = _diff(runs, s, task, ar, "DPO", rng)
        b = at_least(d_dpo, MATCH_FRACTION * dpo)
        d_beta = _diff(runs, s, task, rej, rej_low, rng)
        c = "supported" if d_beta[1] > 0 else ("not supported" if d_beta[2] < 0 else "inconclusive")
        checks = [{"check": "(a) AR − accept", "statistic [95% CI]": fmt_ci(d_a), "outcome": "—"},
                  {"check": "(a) AR − reject (β=2)", "statistic [95% CI]": fmt_ci(d_r), "outcome": a},
                  {"check": "(b) AR − DPO", "statistic [95% CI]": f"{fmt_ci(d_dpo)}; margin −{MATCH_FRACTION * dpo:.2f}", "outcome": b},
                  {"check": "(c) reject β=2 − reject β=0.5", "statistic [95% CI]": fmt_ci(d_beta), "outcome": c}]
        verdict = Verdict(self.claims[0], combine([a, b, c]), f"(a) AR fastest: {a}; (b) AR competitive with DPO: {b}; "
                          f"(c) reject-only needs β > 1 − α: {c}.", checks)
        labels = [v.label for v in self.variants()]
        fig = curves_figure(runs, rows, rng, labels, (("eval/gold", "held-out gold reward"), ("kl/ref_seq", "KL to reference")))
        return Analysis([verdict], {"curves.png": fig}, tables=[("Every variant", summary_table(runs, rows, rng, task, labels))])


# ---------------------------------------------------------------------------------------------------------------- L4
HACK_QUICK = dict(updates=100, eval_every=10)
HACK_LOOP = dict(reward_kl=0.0)
"""L4 optimises the proxy without a KL penalty in the reward (each method keeps its own regulariser), as over-optimisation
studies sweep the KL budget down to 0."""
HACK_METHODS = (("PPO", "ppo", PPO, dataclasses.replace(PPO_LOOP, **HACK_LOOP)),
                ("V-MPO", "vmpo", VMPO, dataclasses.replace(VALUE_LOOP, **HACK_LOOP)),
                ("DAR", "dar", DAR, BASE_LOOP))


class LMRewardHacking(LMQuestion):
    name = "lm-hacking"
    title = "Reward hacking: optimising a learned proxy reward model, the gold reward rises then falls"
    description = (f"PPO, V-MPO and DAR optimise the Bradley–Terry proxy ({PROXY}: a reward model trained on {PROXY_PAIRS} gold-labelled "
                   "comparisons of SFT samples) for longer than the other questions; the gold reward of the same samples is "
                   "logged beside (`004 §5.4`, App. D; Gao et al. 2023).")
    tasks = (PROXY,)
    budgets = _budgets(quick=HACK_QUICK)
    claims = (Claim(
        "L4", "Against a learned proxy reward model, the gold reward rises then falls while the proxy keeps rising; the "
        "report says which method over-optimises first.",
        "papers/004_71574c67b927da2f.txt §5.4, App. D",
        "Per method, on held-out evaluations at the start, the middle and the end of training (fixed before the data): (i) "
        "gold rises: the CI of IQM(gold_mid − gold_start) lies wholly above 0; (ii) gold then falls: the CI of IQM(gold_mid − "
        f"gold_end) lies wholly above {FALL_MARGIN:g}; (iii) the proxy keeps rising: the CI of IQM(proxy_end − proxy_mid) "
        "lies wholly above 0. Supported if some method shows (i)–(iii); not supported if for every method (ii) is "
        "contradicted (gold_mid − gold_end wholly below 0, i.e. gold still rising); else inconclusive. The method that "
        "over-optimises first is the one whose IQM gold curve peaks earliest among those that show (i)–(iii). A run that "
        "diverged (KL blow-up) before an evaluation point has no value there and is left out of that difference; the "
        "report counts such runs.",
        COMMON_DEVIATIONS + (Deviation("proxy", "a reward model from human preferences", "GPT-2 with a scalar head trained on "
                                       f"{PROXY_PAIRS} gold-labelled pairs", "small enough to be hackable at laptop scale"),
                             Deviation("reward KL", "method-specific", "0 in the reward (L4 only)",
                                       "over-optimisation shows at low KL budgets")),),)

    def variants(self):
        return [Variant(label, algo, cfg, train_config=loop) for label, algo, cfg, loop in HACK_METHODS]

    def analyse(self, runs, rows, rng):
        task = PROXY
        evals = rows[rows.metric.isin(["eval/gold", "eval/proxy"])]
        steps = sorted(evals.step.unique())
        mid = steps[len(steps) // 2] if steps else 0

        def at(metric, step):
            sel = evals[(evals.metric == metric) & (evals.step == step)]
            return sel.set_index("run_id").value

        def lastv(metric):
            return last_value(evals, metric)

        start, middle, end = at("eval/gold", 0), at("eval/gold", mid), lastv("eval/gold")
        p_mid, p_end = at("eval/proxy", mid), lastv("eval/proxy")
        checks, shows, contradicted, peaks = [], [], [], {}
        c_gold = curve(rows, runs, "eval/gold", rng)
        for label, *_ in HACK_METHODS:
            rise = iqm_or_nan(cell(runs, (middle - start).dropna(), task, label), rng)
            fall = iqm_or_nan(cell(runs, (middle - end).dropna(), task, label), rng)
            prox = iqm_or_nan(cell(runs, (p_end - p_mid).dropna(), task, label), rng)
            ok = rise[1] > 0 and fall[1] > FALL_MARGIN and prox[1] > 0
            shows.append(ok)
            contradicted.append(fall[2] < 0)
            cv = c_gold[(c_gold.variant == label)]
            peaks[label] = int(cv.loc[cv.iqm.idxmax(), "step"]) if len(cv) else -1
            div = n_diverged(runs, task, label)
            checks.append({"check": f"{label}: gold mid − start / mid − end / proxy end − mid", "statistic [95% CI]":
                           f"{fmt_ci(rise)} / {fmt_ci(fall)} / {fmt_ci(prox)}; IQM gold peaks at update {peaks[label]}"
                           + (f"; {div} runs diverged (their evaluations stop there and are left out)" if div else ""),
                           "outcome": "over-optimises" if ok else "not shown"})
        outcome = "supported" if any(shows) else ("not supported" if all(contradicted) else "inconclusive")
        first = min((lbl for lbl, ok in zip([m[0] for m in HACK_METHODS], shows) if ok), key=lambda v: peaks[v], default=None)
        summary = (f"{sum(shows)} of {len(shows)} methods over-optimise the proxy" +
                   (f"; {first} first (IQM gold peaks at update {peaks[first]})." if first else "."))
        verdict = Verdict(self.claims[0], outcome, summary, checks)
        labels = [m[0] for m in HACK_METHODS]
        fig = curves_figure(runs, rows, rng, labels, (("eval/gold", "held-out gold reward"), ("eval/proxy", "held-out proxy reward"),
                                                     ("eval/kl_ref", "KL to reference")))
        return Analysis([verdict], {"gold_vs_proxy.png": fig},
                        tables=[("Every variant", summary_table(runs, rows, rng, task, labels))],
                        notes=[f"Mid-training evaluation: update {mid}."])


# ---------------------------------------------------------------------------------------------------------------- L5
DAR_SMALL_ALPHA = DARConfig(alpha=1e-4, beta=0.05 - 1e-4)
VMPO_FIXED_DAR = GEMPIConfig(anchors=("pi_t",), coefficients=(0.05,), coefficient_names=("eta",), temperature="fixed",
                             normalize="batch", weight_clip=None, baseline="context_mean", advantage_norm="batch")
"""V-MPO's fixed-η E-step (self-normalised exp(A/η) over the batch, η = α + β = 0.05) on DAR's advantages (K-sample
baseline, batch-normalised), no top-k and no trust region, so the only difference to DAR with α → 0 is DAR's clipped
unnormalised weights and the vanishing reference factor (`001 §7`, RQ4; T2 checks the weights exactly)."""


class LMDAR(LMQuestion):
    name = "lm-dar"
    title = "DAR against PPO and online DPO at matched KL; DAR with α → 0 against fixed-η V-MPO"
    description = ("DAR (SPEC §5), token-level PPO and online DPO on the LM task, compared at a matched KL to the reference; "
                   "and DAR with α = 1e-4 against V-MPO's fixed-η E-step at η = α + β (`000 §7`, `001 §7`).")
    claims = (Claim(
        "L5", "DAR matches or beats PPO and online DPO at matched KL to the reference; with α → 0 it behaves like fixed-η "
        "V-MPO.",
        "papers/000_18d00f82fad2bd94.txt §7; papers/001_8b44b9ea6e2e604b.txt §7",
        "Matched KL: κ = the smallest of the three methods' median final KLs; each run's held-out gold at κ is read off its "
        "(KL, gold) evaluation path by linear interpolation (a run that never reaches κ contributes its final gold). (a) the "
        f"CI of IQM(DAR) − IQM(PPO) and of IQM(DAR) − IQM(DPO) at κ each lie above −{MATCH_FRACTION:g}×(IQM(DAR at κ) − "
        "IQM(start)) (wholly below for either: not supported); (b) on gold improvements the CI of IQM(DAR α→0) − "
        f"IQM(fixed-η V-MPO) lies within ±{EQUIVALENCE_FRACTION:g}×IQM(fixed-η V-MPO) (wholly outside: not supported). "
        "Supported if (a) and (b); not supported if either is contradicted; else inconclusive.",
        COMMON_DEVIATIONS + (Deviation("α → 0", "a limit", "α = 1e-4 with α + β = 0.05", "a run needs a number"),)),)

    def variants(self):
        return [Variant("DAR", "dar", DAR, train_config=BASE_LOOP), Variant("PPO", "ppo", PPO, train_config=PPO_LOOP),
                Variant("DPO", "dpo", DPO, train_config=BASE_LOOP),
                Variant("DAR α=1e-4", "dar", DAR_SMALL_ALPHA, train_config=BASE_LOOP),
                Variant("fixed-η V-MPO (η=0.05)", "gempi", VMPO_FIXED_DAR, train_config=BASE_LOOP)]

    def analyse(self, runs, rows, rng):
        task = LM
        kl_end = last_value(rows, "eval/kl_ref")
        kappa = min(float(np.median(cell(runs, kl_end, task, v))) if len(cell(runs, kl_end, task, v)) else np.inf
                    for v in ("DAR", "PPO", "DPO"))
        matched = gold_at_kl(rows, kappa)
        start = first_value(rows, "eval/gold")
        dar_at = iqm_or_nan(cell(runs, matched, task, "DAR"), rng)[0] - float(np.median(start.reindex(runs.run_id)))
        margin = MATCH_FRACTION * abs(dar_at)
        d_ppo, d_dpo = (_diff(runs, matched, task, "DAR", v, rng) for v in ("PPO", "DPO"))
        a = combine([at_least(d_ppo, margin), at_least(d_dpo, margin)])
        s = scores(runs, rows)
        ref = abs(iqm_or_nan(cell(runs, s, task, "fixed-η V-MPO (η=0.05)"), rng)[0])
        d_eq = _diff(runs, s, task, "DAR α=1e-4", "fixed-η V-MPO (η=0.05)", rng)
        m = EQUIVALENCE_FRACTION * ref
        b = "supported" if -m < d_eq[1] and d_eq[2] < m else ("not supported" if d_eq[1] > m or d_eq[2] < -m else "inconclusive")
        checks = [{"check": f"(a) DAR − PPO, gold at KL κ = {kappa:.2f}", "statistic [95% CI]": f"{fmt_ci(d_ppo)}; margin −{margin:.2f}",
                   "outcome": at_least(d_ppo, margin)},
                  {"check": f"(a) DAR − DPO, gold at KL κ = {kappa:.2f}", "statistic [95% CI]": f"{fmt_ci(d_dpo)}; margin −{margin:.2f}",
                   "outcome": at_least(d_dpo, margin)},
                  {"check": "(b) DAR α→0 − fixed-η V-MPO (gold improvement)", "statistic [95% CI]": f"{fmt_ci(d_eq)}; ±{m:.2f}",
                   "outcome": b}]
        verdict = Verdict(self.claims[0], combine([a, b]), f"(a) DAR matches PPO and DPO at matched KL {kappa:.2f}: {a}; "
                          f"(b) DAR α→0 behaves like fixed-η V-MPO: {b}.", checks)
        labels = [v.label for v in self.variants()]
        table = summary_table(runs, rows, rng, task, labels)
        table[f"gold at KL κ = {kappa:.2f}"] = [fmt_ci(iqm_or_nan(cell(runs, matched, task, v), rng)) for v in labels]
        return Analysis([verdict], {"reward_vs_kl.png": self._frontier(runs, rows, rng, labels, kappa)},
                        tables=[("Every variant", table)])

    def _frontier(self, runs, rows, rng, labels, kappa):
        fig, axes = plotting.figure(ncols=2)
        kl, gold = curve(rows, runs, "eval/kl_ref", rng), curve(rows, runs, "eval/gold", rng)
        palette = plotting.colors(labels)
        for v in labels:
            k, g = kl[kl.variant == v], gold[gold.variant == v]
            merged = k.merge(g, on=["variant", "step"], suffixes=("_kl", "_gold"))
            axes[0].plot(merged.iqm_kl, merged.iqm_gold, marker="o", color=palette[v], label=v)
        axes[0].axvline(kappa, color="grey", linestyle=":", label="matched KL κ")
        axes[0].set_xlabel("KL to reference (IQM)")
        axes[0].set_ylabel("held-out gold reward (IQM)")
        axes[0].legend(loc="best", fontsize=6)
        plotting.ci_lines(axes[1], gold[gold.variant.isin(labels)], labels, palette=palette)
        axes[1].set_xlabel("RLHF updates")
        axes[1].set_ylabel("held-out gold reward")
        return fig


def gold_at_kl(rows: pd.DataFrame, kappa: float) -> pd.Series:
    """Per run: held-out gold at KL κ, linearly interpolated along its evaluation path (first crossing); its final gold if it
    never reaches κ."""
    ev = rows[rows.metric.isin(["eval/gold", "eval/kl_ref"])].pivot_table(index=["run_id", "step"], columns="metric",
                                                                          values="value").reset_index()
    out = {}
    for run_id, g in ev.sort_values("step").groupby("run_id"):
        k, y = g["eval/kl_ref"].to_numpy(), g["eval/gold"].to_numpy()
        out[run_id] = y[-1]
        for i in range(1, len(k)):
            if k[i] >= kappa > k[i - 1] or (i == 1 and k[0] >= kappa):
                lo = max(k[i - 1], 0.0)
                w = 1.0 if k[i] == lo else (kappa - lo) / (k[i] - lo)
                out[run_id] = y[i - 1] + min(max(w, 0.0), 1.0) * (y[i] - y[i - 1])
                break
    return pd.Series(out, dtype=float)


# ---------------------------------------------------------------------------------------------------------------- L8
class LMSFT(LMQuestion):
    name = "lm-sft"
    title = "SFT as the generic EM M-step with a delta target equals cross-entropy training, step for step"
    description = ("Two copies of the pretrained GPT-2 fine-tuned on the same demonstrations, batches and dropout masks: one "
                   "with `transformers`' own causal-LM cross-entropy (`labels=`), one with the suite's SFT method (the GEMPI "
                   "M-step with a delta target, per-token weights, `001 §6`); before every step the second copy is set to the "
                   "first's parameters, and the gradient and parameter differences of the two updates are recorded.")
    budgets = {"smoke": Budget(seeds=2, train=dict(steps=3)), "quick": Budget(seeds=5, train=dict(steps=50)),
               "paper": Budget(seeds=10, train=dict(steps=500))}
    claims = (Claim(
        "L8", "SFT written as the generic M-step with a delta target equals the standard cross-entropy training step for "
        "step.", "papers/001_8b44b9ea6e2e604b.txt §6 (eq. 2–3, 'Token-Level Form'); papers/000_18d00f82fad2bd94.txt §10",
        f"Supported if, over every step of every seed, the gradients differ by at most {L8_GRAD_TOLERANCE:g} relative to "
        f"their norm, the largest absolute parameter difference between the two models stays ≤ {L8_TOLERANCE:g} and the two "
        "losses agree to 1e-5; not supported otherwise.",
        (Deviation("model", "an LLM", "the suite's pretrained GPT-2 (dropout 0.1, identical masks in both copies)",
                   "laptop scale"),
         Deviation("optimiser", "any", "SGD (lr 0.02) for both copies", "Adam turns float rounding in gradients that are 0 in "
                   "exact arithmetic into full-size steps; the claim is about the loss"))),)

    def variants(self):
        from algorithms.sft import SFTConfig
        return [Variant("SFT as M-step vs cross-entropy", "sft", SFTConfig(), train_config=LMSFTCheckConfig())]

    def analyse(self, runs, rows, rng):
        dp = rows[rows.metric == "check/max_param_diff"].groupby("run_id").value.max()
        dl = rows[rows.metric == "check/loss_diff"].groupby("run_id").value.max()
        dg = rows[rows.metric == "check/grad_rel_diff"].groupby("run_id").value.max()
        ok = len(dp) > 0 and float(dp.max()) <= L8_TOLERANCE and float(dl.max()) <= 1e-5 and float(dg.max()) <= L8_GRAD_TOLERANCE
        outcome = "supported" if ok else ("not supported" if len(dp) else "inconclusive")
        worst_p, worst_l = (float(dp.max()) if len(dp) else float("nan")), (float(dl.max()) if len(dl) else float("nan"))
        worst_g = float(dg.max()) if len(dg) else float("nan")
        checks = [{"check": "max ‖g_M-step − g_CE‖ / ‖g_CE‖", "statistic [95% CI]": f"{worst_g:.2e} (≤ {L8_GRAD_TOLERANCE:g})",
                   "outcome": outcome},
                  {"check": "max |θ_M-step − θ_CE| over steps and seeds", "statistic [95% CI]": f"{worst_p:.2e} (≤ {L8_TOLERANCE:g})",
                   "outcome": outcome},
                  {"check": "max |loss_M-step − loss_CE|", "statistic [95% CI]": f"{worst_l:.2e} (≤ 1e-5)", "outcome": outcome}]
        verdict = Verdict(self.claims[0], outcome, f"largest parameter difference {worst_p:.2e} over {len(dp)} runs.", checks)
        fig, axes = plotting.figure(ncols=1)
        for i, (run_id, g) in enumerate(rows[rows.metric == "check/max_param_diff"].groupby("run_id")):
            axes[0].plot(g.step, g.value.clip(lower=1e-12), color=plotting.PALETTE[0], alpha=0.6, label="seeds" if i == 0 else None)
        axes[0].axhline(L8_TOLERANCE, color="grey", linestyle=":", label="tolerance")
        axes[0].set_yscale("log")
        axes[0].set_xlabel("SFT step")
        axes[0].set_ylabel("max |Δθ|")
        axes[0].legend(loc="best")
        return Analysis([verdict], {"param_diff.png": fig})
