"""L6, MaxMin-RLHF (`[EM-LLM] §8`): annotator groups with different preferences, a single reward model on their pooled
labels against EM over a mixture of reward models and the max-min policy update.

The task `lm-english-groups` (`tasks/lm/groups.py`): 20 annotators label pairs of the SFT model's continuations; 80% of
them prefer a positive continuation (VADER's sentiment, the family's gold reward), 20% a short one (brevity), the two
groups of `[MaxMin-RLHF]`'s GPT-2 experiment. Reward models are linear in the response's bag of tokens. Both arms
fine-tune with V-MPO (the family's EM fine-tuner: "the policy is updated through an exponential-tilted target
distribution … followed by a projection back to the parametric policy family", `[EM-LLM] §8`) on the same prompts,
budget and KL penalty:
- **single reward**: one Bradley–Terry model on every label;
- **MaxMin**: EM over a mixture of two (hard E-step, Algorithm 2), then each update the rollout's mean of each
  component's standardised reward, the component whose utility is lowest, and V-MPO on its reward (Algorithm 1).

Each group's **gain** is its gold utility on the fixed score set at the end minus at the start, divided by that utility's
standard deviation over the SFT model's responses (the unit in which the max-min selection compares its reward
models, which are standardised the same way): a gain of 1 moves the group's mean by one SFT spread.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from suite import plotting
from suite.analysis import cell, check, first_value, fmt_ci, iqm_or_nan, n_diverged, observation
from suite.claims import Check, Claim, Deviation, Knob, Verdict
from suite.questions.base import Analysis, Variant
from suite.questions.lm import (COMMON_DEVIATIONS, VMPO, VMPO_LOOP, LMQuestion, _diff, _iqm, _trend, end_value,
                                grouped_decide, panel_curves, with_premise)
from tasks.base import get_task
from tasks.lm import corpora, groups
from tasks.lm.rlhf import LMRLHFConfig, language_of

GROUPS_TASK = "lm-english-groups"
POP = get_task(GROUPS_TASK).config
"""The 80/20 population's task config: the numbers the deviation table states come from it."""
SHARE_TASKS = {0.1: "lm-english-groups-10", 0.2: GROUPS_TASK, 0.3: "lm-english-groups-30"}
"""L6's knob, the minority's share of the annotators: one task per value (the population is part of the task)."""
NAMES = groups.GROUPS[POP.groups]
MAJORITY, MINORITY = NAMES
SINGLE, MAXMIN = "single reward", "MaxMin (EM mixture)"
PURITY = 0.9
"""L6 (b): the mixture *recovers* the groups when the CI of the hard EM's purity lies at or above this (the threshold of
the planted-groups test); it does *not* when the CI lies at or below the majority's share (all annotators in one
cluster scores exactly that)."""


def _loop(objective: str):
    return dataclasses.replace(VMPO_LOOP, group_reward=objective)


def gains(runs: pd.DataFrame, rows: pd.DataFrame) -> dict[str, pd.Series]:
    """Per group: (end − start) of its gold utility on the fixed score set / its SD over the SFT model's responses, per
    run (NaN for a diverged run: it has no end)."""
    out = {}
    for g, name in enumerate(NAMES):
        metric = f"final/utility_{name}"
        sd = first_value(rows, f"groups/utility_sd_g{g}").reindex(runs.run_id)
        out[name] = (end_value(runs, rows, metric) - first_value(rows, metric).reindex(runs.run_id)) / sd
    return out


def share_of(runs: pd.DataFrame, task: str, default: float = float("nan")) -> float:
    """The minority share the runs of `task` used (their task config), or `default`."""
    col = "task_config.minority"
    sel = runs[runs.task == task]
    return float(sel[col].median()) if col in sel and len(sel) else default


def step0(rows: pd.DataFrame, runs: pd.DataFrame, metric: str) -> pd.Series:
    return first_value(rows, metric).reindex(runs.run_id)


class LMMaxMin(LMQuestion):
    name = "lm-maxmin"
    title = "MaxMin-RLHF: a single reward against EM over a mixture of reward models and the max-min policy"
    description = ("Two annotator groups (80% prefer a positive continuation, 20% a short one) label the SFT model's "
                   "samples; RLHF with V-MPO against one reward model on the pooled labels, or against the worst-off "
                   "component of an EM mixture of two (`[EM-LLM] §8` Algorithms 1–2).")
    tasks = tuple(SHARE_TASKS.values())
    claims = (Claim(
        "L6", "With two annotator groups, single-reward RLHF neglects the minority; EM over a mixture of Bradley–Terry reward "
        "models recovers the groups, and the max-min policy raises the worst-off group's utility.",
        "[EM-LLM] §8 'MaxMin-RLHF' (summarising [MaxMin-RLHF], Theorem 1 and Algorithms 1–2)",
        "Each group's gain = its gold utility on the fixed score set, end − start, in units of its SD over the SFT model's "
        "responses. (a) “make accurate alignment via a single reward improbable”: under the single reward, the CI of "
        "IQM(majority gain − minority gain) over runs lies wholly above 0 (wholly below: not supported); premise, the "
        "single reward aligned someone: the majority's gain has a CI above 0, else a `not supported` reads inconclusive. "
        f"(b) “each component models a coherent sub-population preference”: the purity of the hard EM's clusters against "
        f"the true groups has a CI at or above {PURITY:g} (at or below the majority's share, the purity of one cluster: not "
        "supported). (c) “toward improving that subgroup's objective”: per run, the worst-off group's gain (the lower of "
        "the two); the CI of IQM(MaxMin) − IQM(single reward) lies wholly above 0 (wholly below: not supported); premise, "
        "(b)'s recovery and (a)'s failure mode, which the sentence says MaxMin addresses (else a `not supported` reads "
        "inconclusive; the second premise was added after the `quick` sweep, in which at a 30% minority the single reward "
        "served both groups and MaxMin's worst-off gain was lower). The three checks are one conjunction. Observations: "
        "each group's gain under each arm, the soft E-step's purity, each component's held-out accuracy on its group "
        "against the labels' own ceiling, the single reward model's accuracy per group, how often each component was "
        "selected, and the KL to the SFT model.",
        COMMON_DEVIATIONS + (
            Deviation("annotator groups", "human annotators with diverse preferences (Tulu2-7B; GPT-2 with sentiment vs "
                      "conciseness in [MaxMin-RLHF])", f"{POP.annotators} simulated annotators, {1 - POP.minority:.0%} scoring VADER "
                      f"sentiment and {POP.minority:.0%} brevity (1 − 2·min(words, {groups.BREVITY_WORDS})/"
                      f"{groups.BREVITY_WORDS}), each labelling {POP.annotator_pairs} of its non-tied pairs from a shared "
                      f"pool of {POP.pair_pool:,} pairs of SFT samples with Bradley–Terry noise "
                      f"σ({POP.label_scale:g}·Δu)", "the true groups and utilities "
                      "are known, so purity and per-group utility are exact"),
            Deviation("reward models", "LLM reward models", "linear in the response's bag of tokens (Theorem 1's "
                      f"linear parametrisation), fitted by L-BFGS with a ridge of {groups.L2:g}", "EM's M-step is convex and "
                      "takes seconds; a pilot found the SFT model's hidden states less informative (0.56 vs 0.69 held-out "
                      "sentiment accuracy)"),
            Deviation("E-step", "in-sample BT likelihood", "each pair scored by heads fitted on the other half of the "
                      f"annotator's pairs (two-fold cross-fitting); {LMRLHFConfig().em_restarts} restarts, the highest marginal "
                      "likelihood wins",
                      f"with {len(corpora.tokenizer(language_of(POP))):,} features (the vocabulary) an in-sample likelihood makes any initial split a fixed point (pilot: "
                      "purity stayed at the random split's)"),
            Deviation("fine-tuner", "PPO (Algorithm 1)", "V-MPO for both arms (the KL-regularised EM update of the "
                      "section's text), the family's V-MPO settings", "the same fine-tuner on both arms; the family's "
                      "PPO diverged on learned rewards (L4)"),
            Deviation("max-min selection", "argmin of the raw reward models' expected reward", "argmin of the rollout's "
                      "mean standardised reward (each model's mean 0, SD 1 over the SFT responses)", "BT rewards have "
                      "no common scale; the gains of the verdict use the same unit")),
        quote="The consequence is that high subpopulation diversity or vanishing subgroup mass η(u) make accurate alignment "
              "via a single reward improbable. … To address this failure mode, we learn a mixture of |U| reward models "
              "and simultaneously clusters annotators (or annotator-derived signals) so that each component models a "
              "coherent sub-population preference. … Optimisation is performed by iterated policy improvement that (1) "
              "selects the worst-performing sub-population under the current policy and (2) updates the policy using a "
              "standard RL fine-tuner (e.g. PPO) toward improving that subgroup's objective.",
        knob=Knob("minority share of the annotators", tuple(SHARE_TASKS), "not given (Tulu2-7B: 10:1)",
                  run_at=("quick", "paper")),
        decides="paper"),)

    def grid(self, profile, seeds=None):
        # every minority share (the knob) runs at `quick` and `paper`; `smoke` runs the 80/20 population only
        return [p for p in super().grid(profile, seeds) if profile != "smoke" or p.spec.task == GROUPS_TASK]

    def variants(self):
        return [Variant(SINGLE, "vmpo", VMPO, train_config=_loop("pooled")),
                Variant(MAXMIN, "vmpo", VMPO, train_config=_loop("maxmin"))]

    def analyse(self, runs, rows, rng):
        g = gains(runs, rows)
        worst = pd.concat([g[MAJORITY], g[MINORITY]], axis=1).min(axis=1, skipna=False)
        purity = step0(rows, runs, "mixture/hard/purity")
        checks: list[Check] = []
        tables = []
        shares = [s for s, t in SHARE_TASKS.items() if ((runs.task == t)).any()]
        for share in shares:
            task = SHARE_TASKS[share]
            share = share_of(runs, task, share)  # what the runs used (a `--set task.minority` override moves it)
            group = f"minority {share:.0%}" if len(shares) > 1 else ""
            served = iqm_or_nan(cell(runs, g[MAJORITY], task, SINGLE), rng)
            c = check("(a) single reward: majority gain − minority gain", "make accurate alignment via a single reward "
                      "improbable", cell(runs, g[MAJORITY] - g[MINORITY], task, SINGLE), rng, test="above",
                      threshold=0.0, fmt="{} (SD units)", group=group)
            a = with_premise(c, served[1] > 0, f"the single reward did not raise the majority's utility either "
                             f"({fmt_ci(served)})", "a budget at which the single reward model is optimised (more "
                             "updates); planned at the `paper` profile")
            checks.append(a)
            pur = cell(runs, purity, task, MAXMIN)
            b = check("(b) hard EM purity against the true groups", "each component models a coherent sub-population "
                      "preference", pur, rng, test="above", threshold=PURITY - 1e-9, fmt="{}", group=group)
            if b.outcome == "inconclusive" and len(pur) and iqm_or_nan(pur, rng)[2] <= 1 - share + 1e-9:
                b.outcome, b.decide = "not supported", ""
                b.statistic += f"; at or below the majority's share {1 - share:g} (one cluster)"
            checks.append(b)
            recovered, neglected = b.outcome == "supported", a.outcome == "supported"
            c = check("(c) worst-off group's gain, MaxMin − single reward", "toward improving that subgroup's objective",
                      cell(runs, worst, task, MAXMIN), rng, test="above", threshold=0.0,
                      y=cell(runs, worst, task, SINGLE), fmt="{} (SD units)", group=group)
            c = with_premise(c, recovered, "the mixture did not recover the groups, so the max-min selection compared "
                             "other clusters", "reward learning that recovers the groups (more pairs per annotator); "
                             "planned at the `paper` profile")
            checks.append(with_premise(c, neglected, "(a) did not establish the failure mode MaxMin addresses (“To address "
                                       "this failure mode”): the single reward did not neglect the minority here",
                                       "a population in which the single reward neglects the minority (a smaller "
                                       "minority share, or more seeds for (a)); planned at the `paper` profile"))
            for arm in (SINGLE, MAXMIN):
                parts = [f"{n} {fmt_ci(iqm_or_nan(cell(runs, g[n], task, arm), rng))}" for n in NAMES]
                checks.append(observation(f"{arm}: each group's gain (SD units)", _served(runs, g, task, arm, rng),
                                          "; ".join(parts), group))
            for n in NAMES:
                d = _diff(runs, g[n], task, MAXMIN, SINGLE, rng)
                checks.append(observation(f"{n} gain, MaxMin − single reward", _trend(d), fmt_ci(d), group))
            soft = cell(runs, step0(rows, runs, "mixture/soft/purity"), task, MAXMIN)
            checks.append(observation("soft EM purity (the posterior E-step with learned priors)",
                                      "recovers" if len(soft) and _iqm(soft) >= PURITY else "does not recover",
                                      fmt_ci(iqm_or_nan(soft, rng)), group))
            acc = "; ".join(f"{n}: component {_iqm(cell(runs, step0(rows, runs, f'mixture/hard/accuracy_g{i}'), task, MAXMIN)):.2f}"
                            f", single reward {_iqm(cell(runs, step0(rows, runs, f'groups/pooled_accuracy_g{i}'), task, SINGLE)):.2f}"
                            f", label ceiling {_iqm(cell(runs, step0(rows, runs, f'groups/label_ceiling_g{i}'), task, SINGLE)):.2f}"
                            for i, n in enumerate(NAMES))
            checks.append(observation("held-out pair accuracy per group (its annotators' labels)",
                                      "the single reward model fits the majority", acc, group))
            chosen = rows[(rows.metric == "maxmin/cluster") & rows.run_id.isin(runs[(runs.task == task) & (runs.variant == MAXMIN)].run_id)]
            of_minor = step0(rows, runs, "mixture/cluster_of_g1")
            if len(chosen):
                share_minor = float((chosen.value.to_numpy() == of_minor.reindex(chosen.run_id).to_numpy()).mean())
                checks.append(observation("updates on which the max-min step chose the minority's component",
                                          "both groups' rewards were optimised" if 0.1 < share_minor < 0.9 else "mostly one",
                                          f"{share_minor:.0%} of {len(chosen)} updates", group))
            n_div = {arm: n_diverged(runs, task, arm) for arm in (SINGLE, MAXMIN)}
            if any(n_div.values()):
                n_arm = {arm: int(((runs.task == task) & (runs.variant == arm)).sum()) for arm in (SINGLE, MAXMIN)}
                checks.append(observation("runs that diverged (KL to the reference above the limit: they feed no gain)",
                                          "the single reward was exploited" if n_div[SINGLE] > n_div[MAXMIN] else "both arms",
                                          "; ".join(f"{arm} {n_div[arm]}/{n_arm[arm]}" for arm in (SINGLE, MAXMIN)), group))
            dis = _iqm(cell(runs, step0(rows, runs, "groups/disagreement"), task, SINGLE))
            checks.append(observation("labelled pairs the two groups' utilities order oppositely", "the groups' "
                                      "preferences differ" if dis > 0.2 else "the groups mostly agree", f"{dis:.0%}", group))
            tables.append((f"Every arm (fixed score set{', minority ' + f'{share:.0%}' if len(shares) > 1 else ''})",
                           self._table(runs, rows, rng, task, g, worst)))
        verdict_summary = "; ".join(self._summary(runs, rng, g, worst, purity, SHARE_TASKS[s]) for s in shares) + "."
        verdict = Verdict(self.claims[0], None, verdict_summary, checks=checks, decide=grouped_decide(checks),
                          by="minority share" if len(shares) > 1 else "",
                          sensitivity=("run at every value (tasks " + ", ".join(SHARE_TASKS[s] for s in shares) + ")"
                                       if len(shares) > 1 else f"not run at this profile: only {GROUPS_TASK} ran; the "
                                       f"minority shares 0.1 and 0.3 run at `quick` and `paper` ({SHARE_TASKS[0.1]}, "
                                       f"{SHARE_TASKS[0.3]})."))
        return Analysis([verdict], {"utilities.png": self._figure(runs, rows, rng, g)}, tables=tables)

    def _summary(self, runs, rng, g, worst, purity, task) -> str:
        d = _diff(runs, worst, task, MAXMIN, SINGLE, rng)
        return (f"minority {share_of(runs, task):.0%}: single reward gains majority "
                f"{_iqm(cell(runs, g[MAJORITY], task, SINGLE)):.2f} / minority {_iqm(cell(runs, g[MINORITY], task, SINGLE)):.2f} SD, "
                f"MaxMin {_iqm(cell(runs, g[MAJORITY], task, MAXMIN)):.2f} / {_iqm(cell(runs, g[MINORITY], task, MAXMIN)):.2f}, "
                f"hard EM purity {_iqm(cell(runs, purity, task, MAXMIN)):.2f}, worst-off gain MaxMin − single {fmt_ci(d)}")

    def _table(self, runs, rows, rng, task, g, worst) -> pd.DataFrame:
        kl = end_value(runs, rows, "final/kl_ref")
        out = []
        for arm in (SINGLE, MAXMIN):
            n = int(((runs.task == task) & (runs.variant == arm)).sum())
            row = {"arm": arm}
            for name in NAMES:
                row[f"{name} gain (SD)"] = fmt_ci(iqm_or_nan(cell(runs, g[name], task, arm), rng))
                row[f"final {name}"] = fmt_ci(iqm_or_nan(cell(runs, end_value(runs, rows, f"final/utility_{name}"), task, arm), rng))
            row["worst-off gain (SD)"] = fmt_ci(iqm_or_nan(cell(runs, worst, task, arm), rng))
            row["final KL to SFT (nats)"] = fmt_ci(iqm_or_nan(cell(runs, kl, task, arm), rng))
            row["diverged"] = f"{n_diverged(runs, task, arm)}/{n}"
            out.append(row)
        return pd.DataFrame(out)

    def _figure(self, runs, rows, rng, g):
        fig, axes = plotting.figure(ncols=3, width=3.4)
        arms = [SINGLE, MAXMIN]
        palette = plotting.colors(arms)
        sel = runs[runs.task == GROUPS_TASK]
        for ax, name in zip(axes[:2], NAMES):
            panel_curves(ax, sel, rows, rng, f"eval/utility_{name}", arms, palette)
            ax.set_ylabel(f"{name} utility")
            ax.set_title(f"{'Majority' if name == MAJORITY else 'Minority'}: {name} (curve)")
        for arm in arms:
            x, y = cell(sel, g[MAJORITY], GROUPS_TASK, arm), cell(sel, g[MINORITY], GROUPS_TASK, arm)
            axes[2].scatter(x, y, s=14, alpha=0.6, color=palette[arm])
            axes[2].scatter([_iqm(x)], [_iqm(y)], s=70, color=palette[arm], edgecolor="black", label=arm, zorder=3)
        axes[2].axhline(0, color="grey", linewidth=0.8)
        axes[2].axvline(0, color="grey", linewidth=0.8)
        axes[2].set_xlabel(f"{MAJORITY} gain (SD)")
        axes[2].set_ylabel(f"{MINORITY} gain (SD)")
        axes[2].set_title("Per-group gains (fixed set)")
        plotting.legend_below(fig, axes)
        return fig


def _served(runs, g, task, arm, rng) -> str:
    up = [n for n in NAMES if iqm_or_nan(cell(runs, g[n], task, arm), rng)[1] > 0]
    return f"raises {' and '.join(up)}" if up else "raises neither group's utility clearly"
