"""The small-LM RLHF family (`tasks/lm/rlhf.py`): claims L1, L2, L3, L4, L5, L8 and L9.

Every RLHF run starts from the suite's SFT model: a `transformers` GPT-2 pretrained (with GPT-2's dropout 0.1) on the
speeches of 37 of Shakespeare's works and SFT'd to continue a speech's opening words (`tasks/lm/english.py`); the gold
reward is VADER's sentiment of the continuation. Prompts for scoring come from five held-out plays. **Scores** come from one fixed score set: 4 samples for each of the same 256 held-out prompts, for
every seed and method, drawn with one generator fixed by the task rather than the run, so that the differences between
runs are paired (`tasks.lm.rlhf`, rows `final/…`). A run's **gold improvement** is the mean gold reward on that set at the
end of training minus the same at the start (the SFT model: one number for every run of a task). Where a rule says so, a
diverged run scores `FLOOR` − start (the lowest gold reward) (its policy is no longer usable); it feeds no other number. The cheap curve
evaluation (64 prompts × 1 sample every `eval_every` updates) is plotted and never scored, except where a rule reads a
curve and says so. Aggregates are IQMs over seeds with stratified-bootstrap 95% CIs; comparisons use the CI of the IQM
difference (`suite.stats.difference_ci`). Every verdict check names the words of the quoted sentence it tests
(`suite.claims.Check`); everything else is an observation.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import scipy.stats

from algorithms.awr import AWRConfig
from algorithms.dar import DARConfig
from algorithms.dpo import DPOConfig
from algorithms.gempi import GEMPIConfig
from algorithms.pmpo import PMPOConfig
from algorithms.ppo import PPOConfig
from algorithms.vmpo import VMPOConfig
from suite import plotting, stats
from suite.analysis import (NO_DATA, NO_DATA_DECIDE, cell, check, curve, decide_note, first_value, fmt_ci, iqm_or_nan, last_value,
                            n_diverged, observation, per_run_mean, split_seeds)
from suite.claims import Check, Claim, Deviation, Knob, Verdict
from suite.questions.bandits import eta_label
from suite.questions.base import Analysis, Budget, Question, Variant
from tasks.base import get_task
from tasks.lm import corpora
from tasks.lm.rlhf import LMRLHFConfig, language_of, stages
from tasks.lm.sft_check import LMSFTCheckConfig

LM, SMALL, PROXY = "lm-english", "lm-english-small", "lm-english-proxy"
SMALL_PROMPTS = get_task(SMALL).config.train_prompts
PROXY_PAIRS = stages(get_task(PROXY).config)[1].pairs
FINAL_PROMPTS, FINAL_SAMPLES = get_task(LM).config.final_prompts, get_task(LM).config.final_samples
BASE_DROPOUT = stages(get_task(LM).config)[0].pretrain.model.dropout
FLOOR = corpora.floor(language_of(get_task(LM).config))
"""The lowest gold reward (VADER's compound score: −1), what a diverged run ends at where a rule says so."""
"""The dropout p the base model was pretrained and SFT'd with (`tasks.lm.models.ModelConfig.dropout`)."""

# ---------------------------------------------------------------------------------------------------- rules (constants)
MATCH_FRACTION = 0.2
"""Two methods *match* when the CI of their IQM difference lies above −20% of the reference method's IQM improvement."""
FALL_MARGIN = 0.0
"""L4: gold *falls* when the CI of IQM(gold at mid-training − gold at the end) lies wholly above this."""
L8_TOLERANCE = 1e-5
"""L8: the two SFT trainings are equal step for step when no parameter ever differs by more than this (float32) and the
gradients never differ by more than `L8_GRAD_TOLERANCE` relative to their norm."""
L8_GRAD_TOLERANCE = 1e-4
DROPOUT = 0.1
"""The dropout p of L9 and of L2's small-data arm (GPT-2's own value; `[EM-SFT] §9`)."""
SWEEP = (0.0, 0.05, DROPOUT, 0.2)
"""L2 runs PPO and V-MPO (the policy gradient and the EM method its sentence names) at every level at `paper`, and at 0 and
DROPOUT at `quick` (the family's 25-minute budget); its verdict is read at each p > 0 that ran, against p = 0 (the knob)."""
SMALL_LEARNS = 0.05
"""L2's small-data regime *learns* its reward when V-MPO's gain on its own training prompts at p = 0 has a CI above this
(VADER's neutral band: a compound score within ±0.05 reads as neutral); only then is a missing gap a budget question."""
ETA_MOVES = 2.0
"""L1's premise: the adaptive η *adapts* when it ends at least this factor away from its start (IQM over runs)."""

# ---------------------------------------------------------------------------------------------------- budgets
SMOKE = dict(updates=2, prompts_per_update=4, eval_every=2)
QUICK = dict(updates=40, eval_every=10)
PAPER = dict(updates=500, prompts_per_update=64, eval_every=50)
TASK_CONFIGS = {"smoke": dict(stages="tiny", eval_prompts=8, final_prompts=8, final_samples=2)}
"""smoke: the tiny artifact stages (seconds to build), 8 evaluation prompts, a score set of 8 prompts × 2 samples; quick and
paper use the default stages and the task's score set (256 held-out prompts × 4 samples)."""

LOOP = dict(epochs=2, minibatches=2)
"""Every method: two passes over each update's samples in two minibatches of prompts (4 gradient steps per update)."""
PPO = PPOConfig()
"""Token-level PPO (TRL / Ziegler et al.): per-token ratio, clip 0.2, clipped value head, GAE(γ=1, λ=0.95) on per-token
KL-shaped rewards, advantages normalised per minibatch."""
PPO_LOOP = LMRLHFConfig(**LOOP, target_kl=0.1)
"""PPO's KL early stopping (1.5 × 0.1) counts the 'early stops' L2 reports."""
VMPO = VMPOConfig(epsilon_eta=0.1)
"""Sequence-level V-MPO (`[EM-SFT] §6`): dual η (softplus, init 1), top half of the batch's advantages, α trust region on the
per-sequence KL(π_old‖π_θ); ε_η = 0.1 (V-MPO's DMLab value: the batch is 64 sequences)."""
VALUE_LOOP = LMRLHFConfig(**LOOP, advantage="value")
"""V-MPO and AWR: A = r − β·KL − V(x) from the value head on the prompt's last hidden state (`[EM-SFT] §6`)."""
VMPO_DUAL_LR = 0.1
"""V-MPO's dual step size (η and α, Adam) in every L question. η starts at V-MPO's 1; a pilot (seed 0, 40 updates) at the
loop's 0.01 moved η only 1 → 0.51, with the E-step weights' KL to uniform still short of ε_η = 0.1; at 0.1 η reached 0.34
and that KL hovered around ε_η — the dual doing its job."""
VMPO_LOOP = dataclasses.replace(VALUE_LOOP, dual_lr=VMPO_DUAL_LR)
AWR = AWRConfig()
DAR = DARConfig()
"""docs/reference-settings.md: α + β = 0.05, α/(α+β) = 0.1, K-sample baseline, batch-normalised advantages, weights clipped at 20."""
DPO = DPOConfig(beta=0.1)
"""Online DPO on the best and worst of each prompt's 4 samples by reward (TRL β = 0.1)."""
BASE_LOOP = LMRLHFConfig(**LOOP)


def _dropout(loop: LMRLHFConfig, p: float) -> LMRLHFConfig:
    return dataclasses.replace(loop, dropout=p)


def _budgets(quick: dict = QUICK, paper: dict = PAPER, smoke: dict = SMOKE, seeds: int = 5) -> dict[str, Budget]:
    return {"smoke": Budget(seeds=2, train=smoke), "quick": Budget(seeds=seeds, train=quick),
            "paper": Budget(seeds=10, train=paper)}


COMMON_DEVIATIONS = (
    Deviation("model", "LLMs (billions of parameters)", "a GPT-2 of 2 layers, width 64 (transformers), pretrained with "
              "dropout 0.1 on Shakespeare's speeches (BPE of 1,024 tokens) and SFT'd by the suite", "no weights can be "
              "downloaded here; `task.policy=<hub id or directory>` loads any causal LM"),
    Deviation("reward", "human or AI preference / reward models", "a human-rated lexicon as the gold reward (VADER's "
              "compound sentiment of the continuation, as in the DPO paper's controlled-sentiment task), or a "
              "Bradley–Terry proxy trained on VADER-labelled pairs", "the gold reward is known exactly"),
    Deviation("evaluation", "held-out benchmarks judged by a stronger model (GPT-4, MT-bench, Arena-Hard)",
              f"gold reward of {FINAL_SAMPLES} samples for each of {FINAL_PROMPTS} fixed held-out prompts, the same prompts and "
              "sampling generator for every seed and method (paired differences)", "the gold reward is the judge here"),
    Deviation("scale (quick)", "thousands of updates", "40 updates of 16 prompts × 4 samples, 5 seeds",
              "the family fits 25 minutes on 2 cores"),
)


# ---------------------------------------------------------------------------------------------------- scores
def end_value(runs: pd.DataFrame, rows: pd.DataFrame, metric: str) -> pd.Series:
    """`metric` at the end of training per run (indexed by run_id); NaN for a diverged run (it has no end)."""
    end = last_value(rows, metric).reindex(runs.run_id)
    diverged = runs.set_index("run_id").status.eq("diverged").reindex(end.index).fillna(False).to_numpy()
    end[diverged] = np.nan
    return end


def scores(runs: pd.DataFrame, rows: pd.DataFrame, metric: str = "final/gold") -> pd.Series:
    """Gold improvement per run (indexed by run_id) on the fixed score set: end − start; a diverged run ends at FLOOR."""
    start = first_value(rows, metric).reindex(runs.run_id)
    end = last_value(rows, metric).reindex(runs.run_id)
    diverged = runs.set_index("run_id").status.eq("diverged").reindex(end.index).fillna(False).to_numpy()
    end[diverged] = FLOOR
    return end - start


def improvement(runs: pd.DataFrame, rows: pd.DataFrame, metric: str = "final/gold") -> pd.Series:
    """End − start of `metric` per run; NaN for a diverged run (where a rule leaves diverged runs out of every number)."""
    return end_value(runs, rows, metric) - first_value(rows, metric).reindex(runs.run_id)


def _diff(runs, s, task, a, b, rng):
    x, y = cell(runs, s, task, a), cell(runs, s, task, b)
    return stats.difference_ci(x, y, stats.iqm, rng) if len(x) and len(y) else (float("nan"),) * 3


def _iqm(x) -> float:
    """IQM of the values of x that are not NaN (a diverged run may end on a NaN), NaN when none is left."""
    x = np.asarray(x, dtype=float).ravel()
    x = x[~np.isnan(x)]
    return float(stats.iqm(x)) if len(x) else float("nan")


def with_premise(c: Check, holds: bool, missing: str, decide: str) -> Check:
    """A verdict check whose setup may lack the paper's premise (README "How a verdict is decided"): where it does, a `not supported` from the data
    becomes `inconclusive` naming the missing premise (a supported one stands: it holds even without the premise)."""
    if not holds and c.outcome == "not supported":
        c.outcome = "inconclusive"
        c.statistic += f"; the data alone say not supported, but {missing}"
        c.decide = decide
    return c


def grouped_decide(checks: list[Check], profile: str = "paper") -> str:
    """What would decide an open verdict: one line per distinct remedy, with the open checks (and their groups) it applies
    to, instead of repeating a shared remedy once per check."""
    remedies: dict[str, dict[str, list[str]]] = {}
    for c in checks:
        if c.kind == "verdict" and c.outcome == "inconclusive" and c.decide:
            remedy = c.decide.split("; planned at")[0]
            groups = remedies.setdefault(remedy, {}).setdefault(c.name, [])
            if c.group and c.group not in c.name:
                groups.append(c.group)
    if not remedies:
        return ""
    return "; ".join(f"{d} — for " + ", ".join(f"{n}" + (f" at {', '.join(g)}" if g else "") for n, g in names.items())
                     for d, names in remedies.items()) + f" (planned at the `{profile}` profile)."


def difference_in_differences(a1, a0, b1, b0, rng: np.random.Generator, n_boot: int = 2000) -> tuple[float, float, float]:
    """[IQM(a1) − IQM(a0)] − [IQM(b1) − IQM(b0)] with a 95% percentile CI, each of the four cells resampled on its own."""
    cells = [np.asarray(c, dtype=float) for c in (a1, a0, b1, b0)]
    if any(len(c) == 0 for c in cells):
        return (float("nan"),) * 3
    point = _iqm(cells[0]) - _iqm(cells[1]) - (_iqm(cells[2]) - _iqm(cells[3]))
    boot = []
    for c in cells:
        idx = rng.integers(0, len(c), size=(n_boot, len(c)))
        boot.append(scipy.stats.trim_mean(c[idx], 0.25, axis=1))
    reps = boot[0] - boot[1] - (boot[2] - boot[3])
    return point, float(np.percentile(reps, 2.5)), float(np.percentile(reps, 97.5))


def summary_table(runs, rows, rng, task, labels, train: bool = False, diverged_scored: bool = True) -> pd.DataFrame:
    """Per variant, on the fixed score set: gold improvement, final gold, KL to the starting model, proxy, well-formed share
    (a diverged run has no final value: it feeds only the gold improvement, at FLOOR, unless `diverged_scored` is
    False, and the count)."""
    s = scores(runs, rows) if diverged_scored else improvement(runs, rows)
    final = {m: end_value(runs, rows, f"final/{m}") for m in ("gold", "kl_ref", "proxy", "well_formed")}
    out = []
    for v in labels:
        n = int(((runs.task == task) & (runs.variant == v)).sum())
        row = {"variant": v, "gold improvement IQM [95% CI]": fmt_ci(iqm_or_nan(cell(runs, s, task, v), rng)),
               "final gold": fmt_ci(iqm_or_nan(cell(runs, final["gold"], task, v), rng)),
               "final KL to ref (nats)": fmt_ci(iqm_or_nan(cell(runs, final["kl_ref"], task, v), rng)),
               "final proxy": fmt_ci(iqm_or_nan(cell(runs, final["proxy"], task, v), rng)),
               "well-formed (ends with [EOS])": fmt_ci(iqm_or_nan(cell(runs, final["well_formed"], task, v), rng)),
               "diverged": f"{n_diverged(runs, task, v)}/{n}"}
        if train:
            row["train-prompt gold improvement"] = fmt_ci(iqm_or_nan(cell(runs, improvement(runs, rows, "final_train/gold"), task, v),
                                                                     rng))
        out.append(row)
    return pd.DataFrame(out)


# ---------------------------------------------------------------------------------------------------- figures
def panel_curves(ax, runs, rows, rng, metric: str, variants: list[str], palette: dict[str, str], *,
                 label=lambda v: v, style=lambda v: "-", ok_only: bool = False) -> None:
    """IQM over seeds with a 95% CI against RLHF updates, one line per variant (at most `plotting.MAX_SERIES`).
    `ok_only`: leave diverged runs out (else they hold their last value, `suite.analysis.curve`)."""
    if len(variants) > plotting.MAX_SERIES:
        raise ValueError(f"{len(variants)} series on one axes; at most {plotting.MAX_SERIES}")
    sel = runs[runs.variant.isin(variants)]
    if ok_only:
        sel = sel[sel.status != "diverged"]
    c = curve(rows, sel, metric, rng) if len(sel) else pd.DataFrame()
    for v in variants:
        cv = c[c.variant == v].sort_values("step") if len(c) else c
        if len(cv) == 0:
            continue
        ax.plot(cv.step, cv.iqm, color=palette[v], linestyle=style(v), label=label(v))
        ax.fill_between(cv.step, cv.lo, cv.hi, color=palette[v], alpha=0.15, linewidth=0)
    ax.set_xlabel("RLHF updates")


def curves_figure(runs, rows, rng, order, panels: tuple[tuple[str, str, str], ...], task: str | None = None):
    """One titled panel per (metric, short y-label, title); one colour per variant of `order`; the legend below."""
    fig, axes = plotting.figure(ncols=len(panels))
    palette = plotting.colors(order)
    sel = runs if task is None else runs[runs.task == task]
    for ax, (metric, ylabel, title) in zip(axes, panels):
        panel_curves(ax, sel, rows, rng, metric, list(order), palette)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
    plotting.legend_below(fig, axes)
    return fig


def frontier_panel(ax, runs, rows, task: str, variants: list[str], palette: dict[str, str]) -> None:
    """Reward–KL frontier (the DPO paper's Figure 2): each run's final gold reward on the fixed score set against its
    KL to the starting model on the same samples (small dots), and each variant's IQM point (large)."""
    gold, kl = end_value(runs, rows, "final/gold"), end_value(runs, rows, "final/kl_ref")
    seen = []
    for v in variants:
        ids = runs[(runs.task == task) & (runs.variant == v)].run_id
        both = pd.DataFrame({"kl": kl.reindex(ids).to_numpy(), "gold": gold.reindex(ids).to_numpy()}).dropna()
        if both.empty:
            continue
        seen += list(both.kl)
        ax.scatter(both.kl, both.gold, s=10, alpha=0.5, color=palette[v])
        ax.scatter([_iqm(both.kl)], [_iqm(both.gold)], s=60, color=palette[v], edgecolor="black", label=v, zorder=3)
    if seen and min(seen) > 0 and max(seen) > 20 * min(seen):  # KLs spanning decades: a log axis keeps both ends
        ax.set_xscale("log")
    ax.set_xlabel("KL to the SFT model (nats / sequence)")
    ax.set_ylabel("gold reward (fixed set)")


def frontier_figure(runs, rows, task: str, variants: list[str], title: str = "Reward–KL frontier"):
    fig, axes = plotting.figure(ncols=1, width=4.6, height=3.4)
    frontier_panel(axes[0], runs, rows, task, variants, plotting.colors(variants))
    axes[0].set_title(title)
    plotting.legend_below(fig, axes, ncol=2)
    return fig


class LMQuestion(Question):
    tasks = (LM,)
    budgets = _budgets()

    def task_changes(self, profile, task, train_config):
        return TASK_CONFIGS.get(profile, {})


# ---------------------------------------------------------------------------------------------------------------- L1
ETAS = (0.01, 0.1, 1.0, 10.0)
"""Fixed temperatures spanning three orders of magnitude on the sequence advantages (the gold reward lies in [−1, 1])."""
DUAL_LRS = (0.01, 0.1, 1.0)
"""L1's knob: the step size of η's dual (Adam learning rate)."""
ETA_DUAL_LR = VMPO_DUAL_LR
ETA_LOOP = VMPO_LOOP
"""L1's loop: the adaptive variant is L2's V-MPO at p = 0 (the store shares the runs)."""


ETA_STILL = "the adaptive η barely moved, so this compares fixed temperatures, not adaptation"
ETA_DECIDE = ("an η start and dual step size that let η move (the knob: the dual step sizes "
              f"{', '.join(f'{x:g}' for x in DUAL_LRS)}); planned at the `paper` profile")


def fixed_eta(eta: float) -> GEMPIConfig:
    """V-MPO with η held fixed: the GEMPI tuple of `VMPO` with temperature 'fixed' (T8 checks GEMPI ≡ V-MPO)."""
    return dataclasses.replace(VMPO.to_gempi(), coefficients=(eta,), temperature="fixed", epsilons=())


def eta_path(runs: pd.DataFrame, rows: pd.DataFrame, variant: str) -> pd.DataFrame:
    """Per run of `variant`: η at the first update, at the middle update and at the last (columns start, mid, end)."""
    ids = set(runs[runs.variant == variant].run_id)
    sel = rows[(rows.metric == "dual/eta") & rows.run_id.isin(ids)].sort_values(["run_id", "step"])
    out = {}
    for rid, g in sel.groupby("run_id"):
        v = g.value.to_numpy()
        out[rid] = dict(start=v[0], mid=v[len(v) // 2], end=v[-1])
    return pd.DataFrame.from_dict(out, orient="index")


class LMTemperature(LMQuestion):
    name = "lm-temperature"
    title = "Sequence-level V-MPO: dual-adaptive temperature against fixed η (RQ3 at sequence level)"
    description = ("Sequence-level V-MPO on the LM task with its E-step temperature adapted by the dual of `[EM-SFT] §6` (top-k, "
                   "log-sum-exp, softplus) or held fixed across three orders of magnitude; everything else identical.")
    claims = (Claim(
        "L1", "An answer to RQ3, an open question (no experiment in the papers), on a small GPT-2 far below LLM scale: does "
        "adapting V-MPO's E-step temperature by its dual give a practical stability advantage over a fixed η?",
        "[EM-SFT] §2 (RQ3); procedure in §6 'Full Adaptive EM Procedure'",
        f"On gold improvements on the fixed score set (diverged runs end at {FLOOR:g}). Verdict checks: (a) premise, "
        f"“adaptive temperature optimization”: the dual moves η — IQM over runs of max(η_end/η_start, η_start/η_end) ≥ "
        f"{ETA_MOVES:g} (else inconclusive: an adaptive η that does not move is a fixed η near its start, and no comparison "
        f"tests adaptation, and a `not supported` of (b) or (c) is then reported as inconclusive); (b) “practical … "
        f"advantage over fixed-temperature weighting”: against every fixed η of the sweep "
        f"(no selection), the CI of IQM(adaptive) − IQM(fixed η) lies above −{MATCH_FRACTION:g}×|IQM(fixed η)| (wholly below "
        "for some η: not supported); (c) “stability advantage”: the adaptive variant diverges (KL to the reference above the "
        "loop's limit, or a non-finite loss) in a smaller share of runs than the fixed sweep pooled (larger: not supported; "
        "equal, e.g. no run diverges: inconclusive). Supported if (a)–(c); not supported if (b) or (c) is contradicted; "
        "else inconclusive. Observations: η's path, the best fixed η chosen on even seeds and compared on odd seeds, ESS, KL "
        "to the reference.",
        COMMON_DEVIATIONS + (Deviation("fixed-η V-MPO", "—", "GEMPI tuple of V-MPO with temperature 'fixed'",
                                       "V-MPO has no fixed-η option; T8 checks GEMPI equals V-MPO"),
                             Deviation("η dual", "the full `[EM-SFT] §6` procedure at LLM scale", f"η starts at 1 "
                                       f"(V-MPO's), Adam step {ETA_DUAL_LR:g} (the α dual too), 40 updates × 4 "
                                       "minibatches = 160 dual steps; the weights' KL to uniform is logged against ε_η",
                                       "at the loop's step 0.01 η barely moves in 160 steps (a pilot: 1 → 0.51)")),
        quote="Does adaptive temperature optimization in the E-step provide a practical stability advantage over "
              "fixed-temperature weighting at LLM scale?",
        knob=Knob("η dual step size (Adam learning rate)", DUAL_LRS, "not given"),
        decides="paper"),)

    def variants(self):
        fixed = [Variant(eta_label(e), "gempi", fixed_eta(e), train_config=ETA_LOOP) for e in ETAS]
        return [*fixed, Variant("adaptive η", "vmpo", VMPO, train_config=ETA_LOOP)]

    def analyse(self, runs, rows, rng):
        task, s = LM, scores(runs, rows)
        fixed = [eta_label(e) for e in ETAS]
        labels = [*fixed, "adaptive η"]
        adaptive = cell(runs, s, task, "adaptive η")
        # (a) premise: does the dual move η?
        path = eta_path(runs, rows, "adaptive η")
        ratio = (np.maximum(path.end / path.start, path.start / path.end).to_numpy() if len(path) else np.array([]))
        moved = _iqm(ratio)
        a = Check("(a) the dual moves η (premise)", "verdict", "supported" if moved >= ETA_MOVES else "inconclusive",
                  f"IQM of max(η_end/η_start, η_start/η_end) = {moved:.2f} (needs ≥ {ETA_MOVES:g}); η "
                  f"{_iqm(path.start) if len(path) else float('nan'):.2f} → {_iqm(path.mid) if len(path) else float('nan'):.2f} → "
                  f"{_iqm(path.end) if len(path) else float('nan'):.2f} (first, middle, last update)",
                  words="adaptive temperature optimization",
                  decide="" if moved >= ETA_MOVES else ETA_DECIDE)
        if not len(path):
            a = Check(a.name, "verdict", "inconclusive", NO_DATA, words=a.words, decide=NO_DATA_DECIDE)
        # (b) against every fixed η (no selection)
        checks = [a]
        for v in fixed:
            y = cell(runs, s, task, v)
            m = MATCH_FRACTION * abs(_iqm(y))
            checks.append(with_premise(check(f"(b) adaptive − {v}", "advantage over fixed-temperature weighting", adaptive, rng,
                                             test="above", threshold=-m, y=y, fmt="{} (gold improvement)"),
                                       moved >= ETA_MOVES, ETA_STILL, ETA_DECIDE))
        # (c) divergence
        done = runs.status != "failed"  # an error: no outcome, on neither side of a rate
        rate = {v: n_diverged(runs, task, v) / max(int(((runs.task == task) & (runs.variant == v) & done).sum()), 1)
                for v in labels}
        n_fixed = int(((runs.task == task) & runs.variant.isin(fixed) & done).sum())
        n_adaptive = int(((runs.task == task) & (runs.variant == "adaptive η") & done).sum())
        pooled = sum(n_diverged(runs, task, v) for v in fixed) / max(n_fixed, 1)
        c_out = ("supported" if rate["adaptive η"] < pooled else "not supported" if rate["adaptive η"] > pooled else "inconclusive")
        checks.append(with_premise(Check("(c) divergence rate, adaptive vs fixed sweep", "verdict", c_out,
                                         f"adaptive {rate['adaptive η']:.2f} vs fixed sweep pooled {pooled:.2f}",
                                         words="stability advantage",
                                         decide="" if c_out != "inconclusive" else "a budget at which some fixed η blows up "
                                         "(longer training or a larger step); no run diverged or the rates tie at this one"),
                                   moved >= ETA_MOVES, ETA_STILL, ETA_DECIDE))
        if not (n_fixed and n_adaptive):
            checks[-1] = Check(checks[-1].name, "verdict", "inconclusive", NO_DATA, words="stability advantage",
                               decide=NO_DATA_DECIDE)
        # observations
        even, odd = split_seeds(runs)
        ev = runs[runs.seed.isin(even)]
        od = runs[runs.seed.isin(odd)]
        best = max(fixed, key=lambda v: (_iqm(cell(ev, s, task, v)) if len(cell(ev, s, task, v)) else -np.inf))
        d_fair = _diff(od, s, task, "adaptive η", best, rng)
        checks.append(observation("best fixed η chosen on even seeds, compared on odd seeds", _trend(d_fair),
                                  f"adaptive − {best}: {fmt_ci(d_fair)} ({len(odd)} odd seeds per cell)"))
        checks.append(observation("η path of the adaptive variant (IQM over runs)",
                                  "η barely moves" if moved < ETA_MOVES else "η moves",
                                  f"first update {_iqm(path.start) if len(path) else float('nan'):.3f}, middle "
                                  f"{_iqm(path.mid) if len(path) else float('nan'):.3f}, last "
                                  f"{_iqm(path.end) if len(path) else float('nan'):.3f}; the plot shows every update"))
        wkl = per_run_mean(rows, "weights/kl")
        checks.append(observation("E-step weights' KL to uniform, adaptive η, against its bound ε_η",
                                  "at its bound" if abs(_iqm(cell(runs, wkl, task, "adaptive η")) - VMPO.epsilon_eta)
                                  <= 0.25 * VMPO.epsilon_eta else "away from its bound",
                                  f"mean over updates {_iqm(cell(runs, wkl, task, 'adaptive η')):.3f} (ε_η = "
                                  f"{VMPO.epsilon_eta:g}); the per-update values are in the store (`weights/kl`)"))
        kl_max = rows[rows.metric == "kl/ref_seq"].groupby("run_id").value.max()
        worst = max((_iqm(cell(runs, kl_max, task, v)) for v in labels if len(cell(runs, kl_max, task, v))), default=np.nan)
        checks.append(observation("largest rollout KL to the reference over training (IQM over runs, nats)",
                                  f"at most {worst:.1f} nats (the divergence limit: {VALUE_LOOP.kl_limit:g})",
                                  "; ".join(f"{v} {_iqm(cell(runs, kl_max, task, v)):.1f}" for v in labels)))
        ci_ad = iqm_or_nan(adaptive, rng)
        summary = ((f"the adaptive η stays within a factor {moved:.2f} of its start (needs {ETA_MOVES:g}), so the runs "
                    "compare fixed temperatures only" if moved < ETA_MOVES else
                    f"the adaptive η moves by a factor {moved:.2f} over training")
                   + f"; adaptive {fmt_ci(ci_ad)} gold improvement, fixed "
                   + ", ".join(f"{v} {_iqm(cell(runs, s, task, v)):.2f}" for v in fixed)
                   + f"; {sum(n_diverged(runs, task, v) for v in labels)} of {int((runs.task == task).sum())} runs diverged.")
        verdict = Verdict(self.claims[0], None, summary, checks=checks, decide=grouped_decide(checks),
                          sensitivity=f"not run at this profile: every run uses the dual step size {ETA_DUAL_LR:g}; the "
                                      f"values {', '.join(f'{x:g}' for x in DUAL_LRS)} are planned at `paper`.")
        table = summary_table(runs, rows, rng, task, labels)
        ess, eta = per_run_mean(rows, "weights/ess"), per_run_mean(rows, "dual/eta")
        table["ESS (mean over updates)"] = [fmt_ci(iqm_or_nan(cell(runs, ess, task, v), rng), 1) for v in labels]
        table["η (mean over updates)"] = [fmt_ci(iqm_or_nan(cell(runs, eta, task, v), rng), 3) if v == "adaptive η" else
                                          v.split("=")[1] for v in labels]
        fig = curves_figure(runs, rows, rng, labels, (
            ("eval/gold", "gold reward", "Held-out gold (curve)"),
            ("kl/ref_seq", "KL (nats)", "Rollout KL to π_ref"),
            ("weights/ess", "ESS", "ESS of E-step weights"),
            ("dual/eta", "η", "Adaptive η per update")))
        return Analysis([verdict], {"curves.png": fig}, tables=[("Every variant (fixed score set)", table)])


# ---------------------------------------------------------------------------------------------------------------- L2, L9
EM_METHODS = (("V-MPO", "vmpo", VMPO, VMPO_LOOP), ("AWR", "awr", AWR, VALUE_LOOP), ("DAR", "dar", DAR, BASE_LOOP))
METHOD_ORDER = ["PPO", "V-MPO", "AWR", "DAR"]
"""One colour per method across every panel of L2 and L9 (`plotting.colors(METHOD_ORDER)`)."""
SWEPT = ("PPO", "V-MPO")
LEVELS = tuple(p for p in SWEEP if p > 0)
"""L2's knob values: each dropout p > 0 is compared with p = 0."""

NO_DROPOUT_BASE = (f"the base model was pretrained and SFT'd without dropout (p = {BASE_DROPOUT:g}), so switching dropout on "
                   "moves the policy itself — the sentence's premise (a model trained with dropout, as GPT-2-style models are) "
                   "is missing")
DROPOUT_KL = f"V-MPO p={DROPOUT:g} (dropout-pass KL)"
"""L2's extra arm: V-MPO at p = DROPOUT with its KL(π_old‖π_θ) and KL(π_ref‖π_θ) on the training (dropout) pass, the
literal reading of 'one stochastic pass for the whole M-step'."""
DROPOUT_BASE_DECIDE = ("a base model pretrained and SFT'd with dropout (GPT-2's 0.1, `ModelConfig.dropout`); planned at "
                       "the `paper` profile")
FORWARD_PASSES = Deviation(
    "forward passes under dropout", "not specified ([EM-SFT] §9: rollouts and old log-probs without dropout; the "
    "weighted likelihood under one stochastic pass)",
    "rollouts, π_old, π_ref and every evaluation in eval mode (no dropout); PPO's ratio and k3 KL(π_old‖π_θ), and the "
    "weighted likelihoods of V-MPO, AWR and DAR, on the training pass with dropout; V-MPO's trust-region "
    "KL(π_old‖π_θ) on a second pass of π_θ without dropout (loop option `kl_pass`). "
    f"`{DROPOUT_KL}` runs V-MPO with that KL on the dropout pass too, an observation beside the verdict",
    "KL(π_old‖π_θ) is a quantity of the policy; on a dropout pass it measures the distance to a random sub-network, "
    "inflated by the mask (the paper's own 'Problem 3' for PPO), while §9's argument covers the weighted likelihood. "
    "The issue asked for both; the first refreshed runs show the choice decides whether V-MPO learns")


def _method(label: str) -> str:
    return label.split(" p=")[0]


def _dropout_variants(with_ppo: bool = True, sweep: bool = False) -> list[Variant]:
    """Each method at p = 0 and p = DROPOUT; with `sweep`, the `SWEPT` methods at every level of `SWEEP`."""
    methods = ((("PPO", "ppo", PPO, PPO_LOOP),) if with_ppo else ()) + EM_METHODS
    return [Variant(f"{label} p={p:g}", algo, cfg, train_config=_vmpo_clean(label, _dropout(loop, p)))
            for label, algo, cfg, loop in methods for p in (SWEEP if sweep and label in SWEPT else (0.0, DROPOUT))]


def _vmpo_clean(label: str, loop: LMRLHFConfig) -> LMRLHFConfig:
    """V-MPO with dropout computes its trust-region KL on a pass without dropout (`FORWARD_PASSES`)."""
    return dataclasses.replace(loop, kl_pass="clean") if label == "V-MPO" and loop.dropout > 0 else loop


def _at(runs, values, task, method, p):
    return cell(runs, values, task, f"{method} p={p:g}")


def _dot_panel(ax, runs, values, task, rng, methods, levels, palette, digits_offset: float = 0.004):
    """IQM with 95% CI against dropout p, one line per method (slightly offset so the bars do not hide each other)."""
    for i, m in enumerate(methods):
        ps = [p for p in levels if len(_at(runs, values, task, m, p))]
        if not ps:
            continue
        cis = np.array([iqm_or_nan(_at(runs, values, task, m, p), rng) for p in ps])
        x = np.array(ps) + (i - (len(methods) - 1) / 2) * digits_offset
        ax.errorbar(x, cis[:, 0], yerr=[cis[:, 0] - cis[:, 1], cis[:, 2] - cis[:, 0]], fmt="o-", capsize=2,
                    color=palette[m], label=m)
    ax.set_xlabel("dropout p")


class LMDropout(LMQuestion):
    name = "lm-dropout"
    title = "Dropout under PPO and under EM methods (RQ5), with a small-data regime"
    description = (f"PPO (token level) and the EM methods V-MPO, AWR and DAR, each with dropout p = 0 and p = {DROPOUT:g} in "
                   "their training passes (rollouts and old log-probs in eval mode, `[EM-SFT] §9`), V-MPO also with its KL "
                   f"terms on a pass without dropout; at `paper` PPO and V-MPO also at p ∈ "
                   f"{{{', '.join(f'{p:g}' for p in SWEEP)}}}; then V-MPO (at `paper` every EM method) on a pool of "
                   f"{SMALL_PROMPTS} training prompts with a prompt-dependent reward, scored on held-out prompts and on its "
                   "training prompts.")
    tasks = (LM, SMALL)
    claims = (Claim(
        "L2", "In a model trained with dropout, dropout can be switched on in V-MPO's M-step without changing the algorithm "
        "(it learns as well as without), which is an advantage over PPO (dropout costs V-MPO less than it costs PPO); where "
        "training data are few and the policy overfits them, dropout brings V-MPO a held-out gain.",
        "[EM-SFT] §9 'The Case for Dropout', 'Practical Implications' (RQ5)",
        f"Per dropout p ∈ {{{', '.join(f'{p:g}' for p in LEVELS)}}} (the knob; each against p = 0), on gold improvements on "
        f"the fixed score set of {LM}, V-MPO with dropout in its weighted likelihood and its trust-region KL on a pass "
        "without dropout (the deviation table says why; the dropout-pass KL is an observation): (1) “can be enabled during "
        "the M-step without any algorithmic modification”: the CI "
        f"of IQM(V-MPO p) − IQM(V-MPO p=0) lies above −{MATCH_FRACTION:g}×|IQM(V-MPO p=0)| (wholly below: not supported); (2) "
        "“offers a regularisation advantage over PPO”: the CI of [IQM(V-MPO p) − IQM(V-MPO 0)] − [IQM(PPO p) − IQM(PPO 0)] "
        f"(each cell resampled) lies wholly above 0 (wholly below: not supported). At p = {DROPOUT:g} on {SMALL} "
        f"({SMALL_PROMPTS} training prompts): (3) “providing the same generalisation benefits observed in supervised "
        f"fine-tuning”: the CI of IQM(held-out gold improvement, V-MPO p={DROPOUT:g}) − IQM(p=0) lies wholly above 0 (wholly "
        "below: not supported) — tested only where the regime overfits: V-MPO at p = 0 must gain more on its training "
        "prompts than on held-out ones (CI of the IQM gap wholly above 0), else (3) is inconclusive. Premise: where the base "
        "model was trained without dropout, a `not supported` of (1)–(3) is reported as inconclusive, naming it. A p "
        "supports if all its checks do; the headline is the verdict across p (`depends on dropout p` where they disagree). "
        "Observations: PPO's ratio spread and clip fraction at θ = θ_old, early stops and gold; AWR and DAR (the sentence "
        "names V-MPO); V-MPO's trust-region KL.",
        COMMON_DEVIATIONS + (Deviation("dropout p", "not given (GPT-2: 0.1)", f"p ∈ {{0, {DROPOUT:g}}} for every method "
                                       f"at `quick`; PPO and V-MPO at p ∈ {{{', '.join(f'{p:g}' for p in SWEEP)}}} at "
                                       "`paper`", "the family's 25-minute `quick` budget"),
                             Deviation("base model", "trained with dropout (GPT-2-style)", f"pretrained and SFT'd with dropout "
                                       f"p = {BASE_DROPOUT:g}", "GPT-2's value; the premise the sentence names"),
                             FORWARD_PASSES,
                             Deviation("small data", "'data is limited and overfitting is a practical concern'",
                                       f"{SMALL_PROMPTS} training prompts ({SMALL}) with a prompt-dependent gold reward "
                                       "(continue in the prompt's mood: the continuation's sentiment times the sign of "
                                       "the prompt's), so what the policy learns on its prompts may not carry to "
                                       "held-out plays; the train/held-out gap at p = 0 is measured",
                                       "the premise of check (3)")),
        quote="In the LLM fine-tuning regime where data is limited and overfitting is a practical concern, V-MPO’s EM "
              "structure therefore offers a regularisation advantage over PPO: dropout (and related stochastic regularisers "
              "such as DropPath or stochastic depth) can be enabled during the M-step without any algorithmic modification, "
              "providing the same generalisation benefits observed in supervised fine-tuning.",
        knob=Knob("dropout p", LEVELS, "not given (GPT-2: 0.1)", run_at=("paper",)),
        decides="paper"),)

    def variants(self):
        clean = Variant(DROPOUT_KL, "vmpo", VMPO, train_config=_dropout(VMPO_LOOP, DROPOUT))
        return [*_dropout_variants(sweep=True), clean]

    def grid(self, profile, seeds=None):
        # the small-data task runs the EM methods at p = 0 and p = DROPOUT (below `paper` V-MPO only, the method its
        # sentence names); below `paper` the main task runs every method at p = 0 and p = DROPOUT only
        small = {v.label for v in _dropout_variants(with_ppo=False)
                 if profile == "paper" or _method(v.label) == "V-MPO"}
        plain = {v.label for v in _dropout_variants()} | {DROPOUT_KL}
        return [p for p in super().grid(profile, seeds)
                if (p.spec.task != SMALL or p.variant in small) and (profile == "paper" or p.variant in plain)]

    def analyse(self, runs, rows, rng):
        s = scores(runs, rows)
        premise = BASE_DROPOUT > 0
        std, clip = per_run_mean(rows, "first/ratio_std"), per_run_mean(rows, "first/clipfrac")
        stops, kl_old = per_run_mean(rows, "update/early_stop"), per_run_mean(rows, "kl/old")
        checks: list[Check] = [observation("premise: the base model's own dropout", "missing" if not premise else "present",
                                           f"pretrained and SFT'd with p = {BASE_DROPOUT:g}", "every p")]
        vm0, pp0 = _at(runs, s, LM, "V-MPO", 0.0), _at(runs, s, LM, "PPO", 0.0)
        margin = MATCH_FRACTION * abs(_iqm(vm0))
        per_p = {}
        levels = [p for p in LEVELS if ((runs.task == LM) & (runs.variant == f"V-MPO p={p:g}")).any()] or [DROPOUT]
        for p in levels:
            g = f"dropout p={p:g}"
            vm, pp = _at(runs, s, LM, "V-MPO", p), _at(runs, s, LM, "PPO", p)
            c1 = with_premise(check("(1) V-MPO with dropout − without", "can be enabled during the M-step without any algorithmic "
                                    "modification", vm, rng, test="above", threshold=-margin, y=vm0,
                                    fmt="{} (gold improvement)", group=g), premise, NO_DROPOUT_BASE, DROPOUT_BASE_DECIDE)
            did = difference_in_differences(vm, vm0, pp, pp0, rng)
            out = "supported" if did[1] > 0 else "not supported" if did[2] < 0 else "inconclusive"
            sd_v, sd_p = float(np.hypot(_sd(vm), _sd(vm0))), float(np.hypot(_sd(pp), _sd(pp0)))
            text, decide = f"{fmt_ci(did)}; needs > 0.00", ""
            if not np.isfinite(did[0]):  # one of the four cells has no run that completed
                text, decide = NO_DATA, NO_DATA_DECIDE
            elif out == "inconclusive":
                decide = decide_note(did[0], 0.0, "above", sd_v, sd_p, min(len(vm), len(pp)))
            c2 = with_premise(Check("(2) dropout's effect on V-MPO − on PPO", "verdict", out, text,
                                    words="offers a regularisation advantage over PPO", group=g, decide=decide),
                              premise, NO_DROPOUT_BASE, DROPOUT_BASE_DECIDE)
            checks += [c1, c2]
            per_p[p] = (iqm_or_nan(vm, rng), _diff(runs, s, LM, f"PPO p={p:g}", "PPO p=0", rng))
            checks.append(observation(f"PPO p={p:g} − PPO p=0 (gold improvement)", _trend(per_p[p][1]), fmt_ci(per_p[p][1]), g))
            checks.append(observation(f"PPO ratio std / clip fraction at θ = θ_old, p={p:g} (p=0)",
                                      "dropout noise in the ratio",
                                      f"{_iqm(_at(runs, std, LM, 'PPO', p)):.3f} ({_iqm(_at(runs, std, LM, 'PPO', 0.0)):.3f}) / "
                                      f"{_iqm(_at(runs, clip, LM, 'PPO', p)):.3f} ({_iqm(_at(runs, clip, LM, 'PPO', 0.0)):.3f}); "
                                      f"early stops per update {_iqm(_at(runs, stops, LM, 'PPO', p)):.2f}", g))
            checks.append(observation(f"V-MPO trust-region KL(π_old‖π_θ) per sequence, p={p:g} (p=0)",
                                      "on the clean pass",
                                      f"{_iqm(_at(runs, kl_old, LM, 'V-MPO', p)):.3f} ({_iqm(_at(runs, kl_old, LM, 'V-MPO', 0.0)):.3f}) "
                                      "nats, mean over updates", g))
            if p == DROPOUT:
                d = _diff(runs, s, LM, DROPOUT_KL, f"V-MPO p={p:g}", rng)
                checks.append(observation(f"{DROPOUT_KL} − V-MPO p={p:g} (gold improvement): the KL's forward pass",
                                          _trend(d), f"{fmt_ci(d)}; its KL(π_old‖π_θ) "
                                          f"{_iqm(cell(runs, kl_old, LM, DROPOUT_KL)):.3f} nats per sequence against "
                                          f"{_iqm(_at(runs, kl_old, LM, 'V-MPO', p)):.3f} on the clean pass", g))
                d0 = _diff(runs, s, LM, DROPOUT_KL, "V-MPO p=0", rng)
                checks.append(observation(f"{DROPOUT_KL} − V-MPO p=0 (gold improvement): one dropout pass for the "
                                          "whole M-step", _trend(d0), fmt_ci(d0), g))
                checks += self._small_data(runs, rows, rng, s, premise, g)
                for m in ("AWR", "DAR"):
                    d = _diff(runs, s, LM, f"{m} p={p:g}", f"{m} p=0", rng)
                    checks.append(observation(f"{m} p={p:g} − {m} p=0 (gold improvement)", _trend(d), fmt_ci(d), g))
        summary = ("V-MPO's gold improvement with dropout, p " + ", ".join(
            f"{p:g}: {fmt_ci(per_p[p][0])}" for p in levels) + f" (p = 0: {fmt_ci(iqm_or_nan(vm0, rng))}); PPO with dropout − "
            "without, p " + ", ".join(f"{p:g}: {per_p[p][1][0]:+.2f}" for p in levels)
            + ("" if premise else f"; the base model was trained without dropout (p = {BASE_DROPOUT:g}), so no check reads "
               "as not supported")
            + (f"; with its trust-region KL on the dropout pass too, V-MPO at p = {DROPOUT:g} gains "
               f"{fmt_ci(iqm_or_nan(cell(runs, s, LM, DROPOUT_KL), rng))}" if len(cell(runs, s, LM, DROPOUT_KL)) else "")
            + ".")
        verdict = Verdict(self.claims[0], None, summary, checks=checks, by="dropout p", decide=grouped_decide(checks),
                          sensitivity=(f"run at every value: PPO and V-MPO at p ∈ {{{', '.join(f'{p:g}' for p in SWEEP)}}}"
                                       if len(levels) == len(LEVELS) else
                                       f"run at p = {', '.join(f'{p:g}' for p in levels)} only; p ∈ "
                                       f"{{{', '.join(f'{p:g}' for p in LEVELS if p not in levels)}}} is planned at "
                                       "`paper`") + f"; the verdict read per p > 0 against p = 0; the small-data check at "
                                      f"p = {DROPOUT:g} only.")
        labels = [v.label for v in self.variants() if ((runs.task == LM) & (runs.variant == v.label)).any()]
        table = summary_table(runs, rows, rng, LM, labels)
        for col, values, digits in (("ratio std, 1st minibatch", std, 4), ("clip fraction, 1st minibatch", clip, 3),
                                    ("early stops per update", stops, 2)):
            table[col] = [fmt_ci(iqm_or_nan(cell(runs, values, LM, v), rng), digits) if v.startswith("PPO") else "—"
                          for v in labels]
        table["KL(π_old‖π_θ) (PPO k3 per token, V-MPO per sequence)"] = [
            fmt_ci(iqm_or_nan(cell(runs, kl_old, LM, v), rng), 3) if len(cell(runs, kl_old, LM, v)) else "—" for v in labels]
        small = summary_table(runs, rows, rng, SMALL, [v.label for v in _dropout_variants(with_ppo=False)
                                                       if ((runs.task == SMALL) & (runs.variant == v.label)).any()],
                              train=True)
        figures = {"dropout.png": self._figure(runs, rows, rng, s), "curves.png": self._curves(runs, rows, rng)}
        return Analysis([verdict], figures, tables=[(f"{LM}: every variant (fixed score set)", table),
                                                    (f"{SMALL}: {SMALL_PROMPTS} training prompts (fixed score sets)", small)])

    def _small_data(self, runs, rows, rng, s, premise, group) -> list[Check]:
        held = s
        gap = (improvement(runs, rows, "final_train/gold") - improvement(runs, rows)).dropna()  # diverged runs: no gap
        g0 = _at(runs, gap, SMALL, "V-MPO", 0.0)
        gap_ci = iqm_or_nan(g0, rng)
        overfits = bool(gap_ci[1] > 0)
        c3 = check(f"(3) {SMALL}: V-MPO with dropout − without, held-out",
                   "providing the same generalisation benefits observed in supervised fine-tuning",
                   _at(runs, held, SMALL, "V-MPO", DROPOUT), rng, test="above", threshold=0.0,
                   y=_at(runs, held, SMALL, "V-MPO", 0.0), group=group)
        if not overfits:
            c3.outcome = "inconclusive"
            c3.statistic += (f"; not read: at p = 0 V-MPO gains no more on its {SMALL_PROMPTS} training prompts than on held-out "
                             f"ones (gap {fmt_ci(gap_ci)}), so there is no overfitting for dropout to reduce")
            train_gain = iqm_or_nan(_at(runs, improvement(runs, rows, "final_train/gold").dropna(), SMALL, "V-MPO", 0.0),
                                    rng)
            learned = bool(train_gain[1] > SMALL_LEARNS)
            c3.decide = ("a regime where V-MPO at p = 0 overfits its training prompts (more updates on the same prompts)"
                         if learned else
                         f"a prompt-dependent reward this model learns: at p = 0 V-MPO gains {fmt_ci(train_gain)} even on "
                         "its own training prompts (a larger model or many more updates)") + "; planned at the `paper` profile"
        else:
            c3 = with_premise(c3, premise, NO_DROPOUT_BASE, DROPOUT_BASE_DECIDE)
        train_gain = iqm_or_nan(_at(runs, improvement(runs, rows, "final_train/gold").dropna(), SMALL, "V-MPO", 0.0), rng)
        out = [c3, observation(f"{SMALL}: V-MPO p=0 train-prompt − held-out gold improvement (the regime's premise)",
                               "overfits" if overfits else "no train/held-out gap",
                               f"{fmt_ci(gap_ci)}; its gain on the training prompts {fmt_ci(train_gain)}", group)]
        for m in ("AWR", "DAR"):
            if not ((runs.task == SMALL) & (runs.variant == f"{m} p=0")).any():
                continue  # below `paper` the small-data arm runs V-MPO only
            d = _diff(runs, held, SMALL, f"{m} p={DROPOUT:g}", f"{m} p=0", rng)
            out.append(observation(f"{SMALL}: {m} p={DROPOUT:g} − p=0, held-out gold improvement", _trend(d), fmt_ci(d), group))
        return out

    def _figure(self, runs, rows, rng, s):
        fig, axes = plotting.figure(ncols=3, nrows=2, width=3.3)
        palette = plotting.colors(METHOD_ORDER)
        std, clip, kl_old = (per_run_mean(rows, m) for m in ("first/ratio_std", "first/clipfrac", "kl/old"))
        train = improvement(runs, rows, "final_train/gold")
        panels = ((std, LM, ["PPO"], SWEEP, "ratio std", "PPO ratio std, θ = θ_old"),
                  (clip, LM, ["PPO"], SWEEP, "clip fraction", "PPO clip fraction, θ = θ_old"),
                  (s, LM, METHOD_ORDER, SWEEP, "Δ gold", "Gold improvement (fixed set)"),
                  (kl_old, LM, ["V-MPO"], SWEEP, "KL (nats / seq.)", "V-MPO KL(π_old‖π_θ)"),
                  (s, SMALL, METHOD_ORDER[1:], (0.0, DROPOUT), "Δ gold", f"Small data: held-out"),
                  (train, SMALL, METHOD_ORDER[1:], (0.0, DROPOUT), "Δ gold", f"Small data: {SMALL_PROMPTS} train prompts"))
        for ax, (values, task, methods, levels, ylabel, title) in zip(axes, panels):
            _dot_panel(ax, runs, values, task, rng, methods, levels, palette)
            ax.set_ylabel(ylabel)
            ax.set_title(title)
        plotting.legend_below(fig, axes)
        return fig

    def _curves(self, runs, rows, rng):
        fig, axes = plotting.figure(ncols=len(SWEEP), nrows=2, width=3.0)
        palette = {f"{m} p={p:g}": c for m, c in plotting.colors(METHOD_ORDER).items() for p in SWEEP}
        sel = runs[runs.task == LM]
        for j, p in enumerate(SWEEP):
            variants = [f"{m} p={p:g}" for m in METHOD_ORDER if (sel.variant == f"{m} p={p:g}").any()]
            for i, (metric, ylabel, title) in enumerate((("eval/gold", "gold reward", "Held-out gold"),
                                                         ("kl/ref_seq", "KL (nats)", "KL to π_ref"))):
                ax = axes[i * len(SWEEP) + j]
                panel_curves(ax, sel, rows, rng, metric, variants, palette, label=_method)
                ax.set_ylabel(ylabel)
                ax.set_title(f"{title}, p = {p:g}")
        for i in range(2):  # one y-range per row, so that the dropout levels compare by eye
            row = axes[i * len(SWEEP):(i + 1) * len(SWEEP)]
            lo, hi = min(a.get_ylim()[0] for a in row), max(a.get_ylim()[1] for a in row)
            for a in row:
                a.set_ylim(lo, hi)
        plotting.legend_below(fig, axes)
        return fig


def _trend(d: tuple[float, float, float]) -> str:
    return "lower" if d[2] < 0 else "higher" if d[1] > 0 else "no clear difference"


def _sd(x) -> float:
    x = np.asarray(x, dtype=float).ravel()
    return float(np.std(x, ddof=1)) if x.size > 1 else float("nan")


class LMDropoutCompatible(LMQuestion):
    name = "lm-dropout-em"
    title = "Dropout compatibility of EM methods (RQ5): with dropout in the M-step they still learn"
    description = ("The runs of `lm-dropout` on the full prompt pool (the store shares them): whether each EM method whose "
                   "M-step is a weighted likelihood with detached E-step weights learns with dropout on; V-MPO and PPO beside.")
    claims = (Claim(
        "L9", "With dropout on during the M-step, EM methods whose M-step is a weighted likelihood with detached E-step weights "
        "(AWR, DAR) still learn.",
        "[EM-LLM] §10 'Dropout Compatibility' (RQ5)",
        f"“guarantees dropout compatibility”: for AWR and DAR at p = {DROPOUT:g}, the CI of the IQM gold improvement on the "
        "fixed score set lies wholly above 0 (wholly below for either: not supported; both must hold, the sentence is one "
        "guarantee for every such M-step). Premise: where the base model was trained without dropout, a `not supported` is "
        "reported as inconclusive, naming it. Observations: V-MPO (its M-step adds a KL(π_old‖π_θ) trust-region term, which "
        "compares a dropout pass with a no-dropout pass and which the guarantee does not cover), each method against itself "
        "at p = 0, and PPO with against without dropout (the PPO half of the paragraph, not of this sentence).",
        COMMON_DEVIATIONS + (Deviation("base model", "trained with dropout (GPT-2-style)", f"pretrained and SFT'd with dropout "
                                       f"p = {BASE_DROPOUT:g}", "GPT-2's value; the premise the sentence names"),
                             FORWARD_PASSES),
        quote="The GEMPI template guarantees dropout compatibility whenever the M-step uses detached (stop-gradient) weights "
              "from the E-step.",
        knob=Knob("dropout p", LEVELS, "not given (GPT-2: 0.1)"),
        decides="paper"),)

    def variants(self):
        return _dropout_variants()

    def analyse(self, runs, rows, rng):
        s = scores(runs, rows)
        premise = BASE_DROPOUT > 0
        checks: list[Check] = []
        for m in ("AWR", "DAR"):
            checks.append(with_premise(check(f"{m} p={DROPOUT:g} learns", "guarantees dropout compatibility",
                                             _at(runs, s, LM, m, DROPOUT), rng, test="above", threshold=0.0,
                                             fmt="{} (gold improvement)"), premise, NO_DROPOUT_BASE, DROPOUT_BASE_DECIDE))
        checks.append(observation("premise: the base model's own dropout", "missing" if not premise else "present",
                                  f"pretrained and SFT'd with p = {BASE_DROPOUT:g}"))
        vm = iqm_or_nan(_at(runs, s, LM, "V-MPO", DROPOUT), rng)
        checks.append(observation(f"V-MPO p={DROPOUT:g} (outside the guarantee: its trust-region term)",
                                  "learns" if vm[1] > 0 else "does not learn" if vm[2] < 0 else "unclear", fmt_ci(vm)))
        for m in ("V-MPO", "AWR", "DAR", "PPO"):
            d = _diff(runs, s, LM, f"{m} p={DROPOUT:g}", f"{m} p=0", rng)
            checks.append(observation(f"{m} p={DROPOUT:g} − {m} p=0 (gold improvement)", _trend(d), fmt_ci(d)))
        learns = {m: iqm_or_nan(_at(runs, s, LM, m, DROPOUT), rng) for m in ("AWR", "DAR")}
        summary = (f"with dropout p = {DROPOUT:g}: AWR {fmt_ci(learns['AWR'])}, DAR {fmt_ci(learns['DAR'])} gold improvement; "
                   f"V-MPO (outside the guarantee) {fmt_ci(vm)}"
                   + ("" if premise else f"; the base model was trained without dropout (p = {BASE_DROPOUT:g})") + ".")
        verdict = Verdict(self.claims[0], None, summary, checks=checks, decide=grouped_decide(checks),
                          sensitivity=f"not run at this profile: AWR and DAR run at p = {DROPOUT:g} only (PPO and V-MPO's "
                                      "sweep is L2's); the other values are planned at `paper`.")
        labels = [v.label for v in self.variants()]
        fig, axes = plotting.figure(ncols=2)
        palette = {f"{m} p={p:g}": c for m, c in plotting.colors(METHOD_ORDER).items() for p in (0.0, DROPOUT)}
        for ax, p in zip(axes, (0.0, DROPOUT)):
            panel_curves(ax, runs[runs.task == LM], rows, rng, "eval/gold", [f"{m} p={p:g}" for m in METHOD_ORDER], palette,
                         label=_method)
            ax.set_ylabel("gold reward")
            ax.set_title(f"Held-out gold, p = {p:g}")
        plotting.legend_below(fig, axes)
        return Analysis([verdict], {"curves.png": fig},
                        tables=[("Every variant (fixed score set)", summary_table(runs, rows, rng, LM, labels))])


# ---------------------------------------------------------------------------------------------------------------- L3
PMPO_VARIANTS = (("PMPO accept & reject", PMPOConfig(alpha=0.5, beta=0.5)), ("PMPO accept", PMPOConfig(alpha=1.0, beta=0.0)),
                 ("PMPO reject β=2", PMPOConfig(alpha=0.0, beta=2.0)), ("PMPO reject β=0.5", PMPOConfig(alpha=0.0, beta=0.5)))
"""[PMPO] §5: β = 0.5 for accept & reject, 0 for accept only, 2 for reject only; reject only also at β = 0.5 < 1 − α."""
REFRESH_PERIODS = (10, 20, 40)
"""L3's knob: updates between refreshes of π_ref to the current policy (`LMRLHFConfig.ref_refresh`)."""
REFRESH = REFRESH_PERIODS[0]
"""The period L3's runs use: 10 updates, so a `quick` run of 40 updates improves on 4 successive references."""
REFRESH_LOOP = dataclasses.replace(BASE_LOOP, ref_refresh=REFRESH)
NO_REFRESH = ("π_ref stayed the SFT model for the whole run, while the paper refreshes the reference of every method every N "
              "steps ([PMPO] §5)")
REFRESH_DECIDE = "runs with the reference refresh of [PMPO] §5 (`ref_refresh`); planned at the `paper` profile"
KL_RATIO = 2.0
"""L3: two variants end at *comparable* KL to the SFT model when their median final KLs differ by at most this factor.
Otherwise an end-of-budget gold difference mixes learning speed with how far each variant was allowed to move (PMPO
accept-only has β = 0, DPO's refreshed reference lets it drift), and the check reads inconclusive either way."""
UNMATCHED_DECIDE = ("a comparison at matched KL on the fixed score set along training (`final_every`), or budgets that "
                    "end at comparable KL (each variant's β at one KL); planned at the `paper` profile")


def kl_comparable(runs, kl, task, a, b) -> tuple[bool, str]:
    """(whether variants a and b end at comparable KL, the text that says so): median final KLs within KL_RATIO."""
    med = [float(np.median(cell(runs, kl, task, v))) if len(cell(runs, kl, task, v)) else np.nan for v in (a, b)]
    if not np.isfinite(med).all():
        return True, ""
    ratio = max(med) / max(min(med), 1e-9)
    return ratio <= KL_RATIO, f"median final KL {med[0]:.1f} vs {med[1]:.1f} nats (×{ratio:.1f}; comparable ≤ ×{KL_RATIO:g})"


def at_comparable_kl(c: Check, comparable: bool, text: str) -> Check:
    """An end-of-budget check between variants whose KLs differ by more than KL_RATIO reads inconclusive, saying so."""
    if comparable or c.outcome == "inconclusive" or not text:
        return c
    c.statistic += f"; not read: {text} — the end-of-budget difference mixes learning speed with how far each moved"
    c.outcome, c.decide = "inconclusive", UNMATCHED_DECIDE
    return c


class LMPMPO(LMQuestion):
    name = "lm-pmpo"
    title = "PMPO on a language model: accept & reject, accept only, reject only (two β), against online DPO"
    description = ("PMPO with each prompt's top 2 of 4 samples accepted and the other 2 rejected, KL(π_ref‖π_θ) in closed form "
                   "summed over tokens (`[PMPO] §5.4`); online DPO on the best and worst of the same 4 samples.")
    claims = (Claim(
        "L3", "Accept & reject learns faster than accept-only or reject-only, and PMPO (accept & reject) is competitive with "
        "online DPO (best vs worst of 4).",
        "[PMPO] §5.4 'Language Alignment Experiments' (Figure 4)",
        "On gold improvements on the fixed score set at the budget's end ('faster' is read as higher at the end of the "
        "same budget): (a) “faster learning compared to using either signal in isolation”: the CI of IQM(AR) − IQM(A) and "
        "of IQM(AR) − IQM(R, β=2) each lie wholly above 0 (wholly below: not supported); (b) “competitive to DPO”: the CI of "
        f"IQM(AR) − IQM(DPO) lies above −{MATCH_FRACTION:g}×|IQM(DPO)| (wholly below: not supported). Each of (a)–(b) "
        f"compares two variants that end at comparable KL to the SFT model (median final KLs within ×{KL_RATIO:g}); "
        "otherwise the end-of-budget difference mixes learning speed with how far each variant moved, and the check "
        "reads inconclusive either way (added after the first refreshed runs, in which accept-only and DPO ended 16–19× "
        "further from the SFT model than accept & reject). Premise, “our "
        "approach”: PMPO as the paper runs it, with π_ref refreshed every N steps; without the refresh the premise check is "
        "inconclusive and a `not supported` of (a)–(b) is reported as inconclusive, naming it. Observations: reject-only at "
        "β = 2 against β = 0.5 (the later β > 1 − α sentence, tested on bandits by B3), the area under the cheap gold "
        "curve, each variant's KL to the SFT model (the reward–KL frontier), each comparison again at matched KL (the lower "
        "of the two variants' median final KL, gold read off the cheap curve as L5 reads its paths), and how often the "
        "accept/reject labels tie.",
        COMMON_DEVIATIONS + (Deviation("reference policy", "refreshed every N steps for every method ([PMPO] §5; N not "
                                       "given for §5.4)", f"refreshed to the current policy every {REFRESH} updates for "
                                       "every variant, DPO included; KLs in the report are to the SFT model",
                                       "N is the knob"),
                             Deviation("label ties", "top 2 of 4 generations by reward accepted",
                                       "samples tied at the accept/reject boundary get neither label; DPO drops a prompt "
                                       "whose best and worst samples tie (many continuations score VADER's 0)",
                                       "a tie states no preference; the share of tied prompts is an observation")),
        quote="Notably, utilizing both types of feedback leads to faster learning compared to using either signal in "
              "isolation (PMPO-A or PMPO-R) and overall our approach is competitive to DPO,",
        knob=Knob("reference refresh period (updates)", REFRESH_PERIODS, "every N steps (N not given for §5.4; 100 in §5.1)"),
        decides="paper"),)

    def variants(self):
        return [*(Variant(label, "pmpo", cfg, train_config=REFRESH_LOOP) for label, cfg in PMPO_VARIANTS),
                Variant("DPO", "dpo", DPO, train_config=REFRESH_LOOP)]

    def grid(self, profile, seeds=None):
        # reject only at β = 0.5 feeds one observation (B3 tests that sentence on bandits): `paper` only
        low = PMPO_VARIANTS[3][0]
        return [p for p in super().grid(profile, seeds) if profile == "paper" or p.variant != low]

    def analyse(self, runs, rows, rng):
        s, task = scores(runs, rows), LM
        ar, acc, rej, rej_low = (label for label, _ in PMPO_VARIANTS)
        refreshed = set(rows[rows.metric == "ref/refreshed"].run_id)
        mine = runs[(runs.task == task) & (runs.status == "ok")]
        refresh = bool(len(mine)) and set(mine.run_id) <= refreshed  # read from the runs, not the config
        x = cell(runs, s, task, ar)
        checks = [Check("premise: π_ref refreshed every N updates", "verdict", "inconclusive" if not refresh else "supported",
                        "some completed run never refreshed π_ref" if not refresh else
                        f"every completed run refreshed π_ref ({len(mine)} runs)", words="our approach",
                        decide=REFRESH_DECIDE if not refresh else "")]
        kl = end_value(runs, rows, "final/kl_ref")
        for other in (acc, rej):
            c = check(f"(a) {ar} − {other}", "faster learning compared to using either signal in isolation", x, rng,
                      test="above", threshold=0.0, y=cell(runs, s, task, other), fmt="{} (gold improvement)")
            c = at_comparable_kl(c, *kl_comparable(runs, kl, task, ar, other))
            checks.append(with_premise(c, refresh, NO_REFRESH, REFRESH_DECIDE))
        dpo = cell(runs, s, task, "DPO")
        c = check(f"(b) {ar} − DPO", "competitive to DPO", x, rng, test="above",
                  threshold=-MATCH_FRACTION * abs(_iqm(dpo)), y=dpo, fmt="{} (gold improvement)")
        c = at_comparable_kl(c, *kl_comparable(runs, kl, task, ar, "DPO"))
        checks.append(with_premise(c, refresh, NO_REFRESH, REFRESH_DECIDE))
        if ((runs.task == task) & (runs.variant == rej_low)).any():
            d_beta = _diff(runs, s, task, rej, rej_low, rng)
            checks.append(observation("reject only, β = 2 − β = 0.5 (β > 1 − α: the later sentence, B3)",
                                      _trend(d_beta), fmt_ci(d_beta)))
        auc = per_run_mean(rows[rows.metric == "eval/gold"], "eval/gold")
        for other in (acc, rej):
            d = _diff(runs, auc, task, ar, other, rng)
            checks.append(observation(f"area under the cheap gold curve, {ar} − {other}", _trend(d), fmt_ci(d)))
        matched = {}
        for other in (acc, rej, "DPO"):
            # at matched KL: each pair compared at the lower of the two medians of the final KL to the SFT model, gold
            # read off each run's cheap curve (eval/kl_ref, eval/gold every eval_every updates), as L5 reads its paths
            med = [float(np.median(cell(runs, kl, task, v))) if len(cell(runs, kl, task, v)) else np.nan
                   for v in (ar, other)]
            kappa = float(np.nanmin(med)) if np.isfinite(med).any() else np.nan
            if not np.isfinite(kappa):
                continue
            at = gold_at_kl(rows, kappa, kl="eval/kl_ref", gold="eval/gold")
            d = matched[other] = _diff(runs, at, task, ar, other, rng)
            checks.append(observation(f"{ar} − {other} at matched KL {kappa:.1f} nats (cheap curve; the frontier figure)",
                                      _trend(d), f"{fmt_ci(d)} (gold at KL κ, κ = the lower median final KL of the two)"))
        names = [v for v in (*(lbl for lbl, _ in PMPO_VARIANTS), "DPO")
                 if ((runs.task == task) & (runs.variant == v)).any()]
        checks.append(observation("final KL to the SFT model (IQM, nats; the frontier figure)",
                                  "the comparisons are at unmatched KL",
                                  "; ".join(f"{v} {_iqm(cell(runs, kl, task, v)):.2f}" for v in names)))
        ties = per_run_mean(rows, "labels/boundary_ties")
        checks.append(observation("prompts whose 2nd and 3rd samples tie (the tied samples get neither label)",
                                  "ties are labelled neither (deviation table)",
                                  f"{_iqm(cell(runs, ties, task, ar)):.0%} of prompts per update ({ar} runs, mean over updates)"))
        first = rows[(rows.metric == "ref/refreshed") & rows.run_id.isin(mine.run_id)].groupby("run_id").step.min()
        period = int(first.median()) if len(first) else REFRESH  # the period the runs used, read from their rows
        summary = ((f"π_ref refreshed every {period} updates; " if refresh else "π_ref was not refreshed in every run, so "
                    "the verdict stays open; ") + f"gold improvement {ar} {fmt_ci(iqm_or_nan(x, rng))}, accept "
                   f"{_iqm(cell(runs, s, task, acc)):.2f}, reject β=2 {_iqm(cell(runs, s, task, rej)):.2f}, DPO "
                   f"{_iqm(dpo):.2f}; final KL to the SFT model "
                   + ", ".join(f"{v} {_iqm(cell(runs, kl, task, v)):.1f}" for v in (ar, acc, rej, "DPO"))
                   + (" nats; at matched KL (cheap curve) " + ", ".join(f"{ar} − {o} {d[0]:+.2f}" for o, d in matched.items())
                      if matched else "") + ".")
        verdict = Verdict(self.claims[0], None, summary, checks=checks, decide=grouped_decide(checks),
                          sensitivity=f"not run at this profile: every run refreshes π_ref every {period} updates; the "
                                      f"periods {', '.join(map(str, REFRESH_PERIODS))} are planned at `paper`.")
        labels = [v.label for v in self.variants() if ((runs.task == task) & (runs.variant == v.label)).any()]
        fig = curves_figure(runs, rows, rng, labels, (("eval/gold", "gold reward", "Held-out gold (curve)"),
                                                      ("kl/ref_seq", "KL (nats)", "Rollout KL to the current π_ref")))
        table = summary_table(runs, rows, rng, task, labels)
        table["tied prompts per update"] = [fmt_ci(iqm_or_nan(cell(runs, ties, task, v), rng)) for v in labels]
        figures = {"curves.png": fig, "frontier.png": frontier_figure(runs, rows, task, labels)}
        return Analysis([verdict], figures, tables=[("Every variant (fixed score set)", table)])


# ---------------------------------------------------------------------------------------------------------------- L4
HACK_QUICK = dict(updates=100, eval_every=10, final_every=50)
HACK_PAPER = dict(PAPER, final_every=250)
HACK_SMOKE = dict(SMOKE, final_every=1)
"""L4 scores the fixed set at the start, the middle and the end of training."""
HACK_LOOP = dict(reward_kl=0.0)
"""L4 optimises the proxy without a KL penalty in the reward (each method keeps its own regulariser), as over-optimisation
studies sweep the KL budget down to 0."""
REWARD_KLS = (0.0, 0.01, 0.05)
"""L4's knob: β of the reward's KL penalty (0 in the runs; 0.05 in the other L questions)."""
HACK_METHODS = (("PPO", "ppo", PPO, dataclasses.replace(PPO_LOOP, **HACK_LOOP)),
                ("V-MPO", "vmpo", VMPO, dataclasses.replace(VALUE_LOOP, **HACK_LOOP)),
                ("DAR", "dar", DAR, BASE_LOOP))


class LMRewardHacking(LMQuestion):
    name = "lm-hacking"
    title = "Reward hacking: optimising a learned proxy reward model, the gold reward rises then falls"
    description = (f"PPO, V-MPO and DAR optimise the Bradley–Terry proxy ({PROXY}: a reward model trained on {PROXY_PAIRS} gold-labelled "
                   "comparisons of SFT samples) for longer than the other questions; the gold reward of the same samples is "
                   "logged beside (`[PMPO] §5.4`, App. D; Gao et al. 2023).")
    tasks = (PROXY,)
    budgets = _budgets(quick=HACK_QUICK, paper=HACK_PAPER, smoke=HACK_SMOKE)
    claims = (Claim(
        "L4", "Optimising a learned proxy reward, a method reaches a good gold reward and then, in the middle of training, "
        "does worse on the gold reward (per method: PPO, V-MPO, DAR).",
        "[PMPO] App. D 'Additional Large Language Model Experiments' (also §5.4)",
        "Per method (one group each; the headline is the verdict across methods), on the fixed score set at the start, the "
        "middle and the end of training, over the runs that did not diverge: (i) “reaches a good performance”: the CI of "
        "IQM(gold_mid − gold_start) lies wholly above 0 (wholly below: not supported); (ii) “performs worse on the "
        f"independent benchmark”: the CI of IQM(gold_mid − gold_end) lies wholly above {FALL_MARGIN:g} (wholly below, i.e. "
        "gold still rising: not supported). A run that diverged (KL to the reference above the loop's limit) feeds no "
        "number; a method with fewer than 2 runs left is inconclusive. Observations: the proxy from the middle to the end "
        "(the paper does not state it), and which method over-optimises first — the method showing (i) and (ii) whose IQM "
        "gold curve (the cheap evaluation plotted in the figure, runs that did not diverge) peaks earliest; the paper's "
        "comparison (PMPO-AR quickest among PMPO-A, -R, -AR) is not run here.",
        COMMON_DEVIATIONS + (Deviation("proxy", "a reward model from human preferences", "GPT-2 with a scalar head trained on "
                                       f"{PROXY_PAIRS} gold-labelled pairs", "small enough to be hackable at laptop scale"),
                             Deviation("reward KL", "method-specific", "0 in the reward (L4 only)",
                                       "over-optimisation shows at low KL budgets"),
                             Deviation("methods", "PMPO-A, PMPO-R, PMPO-AR (Fig. 6)", "PPO, V-MPO, DAR",
                                       "the question asks which family over-optimises first; PMPO as the paper runs it "
                                       "needs the reference refresh, which L3 runs"),
                             Deviation("gold measure", "GPT-4 win-rate against the initial checkpoint on 500 Arena-Hard prompts",
                                       f"gold reward on {FINAL_PROMPTS} × {FINAL_SAMPLES} fixed held-out samples",
                                       "the gold reward is the independent judge here")),
        quote="In Fig. 6, we can see that PMPO-AR is the quickest to \"hack the reward\", it reaches a good performance but "
              "then in the middle of training its start hacking the reward and learns a pathological behaviour that makes "
              "it performs worse on the independent benchmark.",
        knob=Knob("KL coefficient β of the reward", REWARD_KLS, "not given (method-specific regularisers)"),
        decides="paper"),)

    def variants(self):
        return [Variant(label, algo, cfg, train_config=loop) for label, algo, cfg, loop in HACK_METHODS]

    def analyse(self, runs, rows, rng):
        task, labels = PROXY, [m[0] for m in HACK_METHODS]
        ok = runs[runs.status != "diverged"]
        fin = rows[rows.metric.isin(["final/gold", "final/proxy"]) & rows.run_id.isin(set(ok.run_id))]
        steps = sorted(fin[fin.metric == "final/gold"].step.unique())
        mid, end = (steps[len(steps) // 2], steps[-1]) if steps else (0, 0)

        def at(metric, step):
            return fin[(fin.metric == metric) & (fin.step == step)].set_index("run_id").value

        g0, gm, ge = at("final/gold", 0), at("final/gold", mid), at("final/gold", end)
        pm, pe = at("final/proxy", mid), at("final/proxy", end)
        palette = plotting.colors(labels)
        c_gold = curve(rows, ok, "eval/gold", rng) if len(ok) else pd.DataFrame(columns=["variant", "step", "iqm", "lo", "hi"])
        checks, shows, peaks, div_text = [], {}, {}, []
        for m in labels:
            n, n_div = int((runs.variant == m).sum()), n_diverged(runs, task, m)
            rise, fall = cell(ok, (gm - g0).dropna(), task, m), cell(ok, (gm - ge).dropna(), task, m)
            if len(rise) >= 2:
                ci = check(f"{m}: gold mid − start", "reaches a good performance", rise, rng, test="above", threshold=0.0, group=m)
                cf = check(f"{m}: gold mid − end", "performs worse on the independent benchmark", fall, rng, test="above",
                           threshold=FALL_MARGIN, group=m)
            else:
                why = (f"{n_div} of {n} runs diverged (KL blow-up) and feed no number")
                dec = "runs that do not diverge: a KL penalty in the reward (the knob's β > 0) keeps them; planned at `paper`"
                n_err = int(((runs.variant == m) & (runs.status == "failed")).sum())
                if n_err and not n_div:
                    why, dec = f"{NO_DATA} ({n_err} of {n} runs failed)", NO_DATA_DECIDE
                elif n_err:
                    why += f"; {n_err} more failed"
                ci = Check(f"{m}: gold mid − start", "verdict", "inconclusive", why, words="reaches a good performance",
                           group=m, decide=dec)
                cf = Check(f"{m}: gold mid − end", "verdict", "inconclusive", why,
                           words="performs worse on the independent benchmark", group=m, decide=dec)
            if n_div and len(rise) >= 2:
                ci.statistic += f" ({n_div} of {n} runs diverged and are left out)"
            checks += [ci, cf]
            prox = iqm_or_nan(cell(ok, (pe - pm).dropna(), task, m), rng)
            checks.append(observation(f"{m}: proxy end − mid", _trend(prox), fmt_ci(prox), m))
            cv = c_gold[c_gold.variant == m] if len(c_gold) else c_gold
            peaks[m] = int(cv.loc[cv.iqm.idxmax(), "step"]) if len(cv) else None
            shows[m] = ci.outcome == "supported" and cf.outcome == "supported"
            if n_div:
                steps_div = runs[(runs.variant == m) & (runs.status == "diverged")]
                div_text.append(f"{m} {n_div}/{n} diverged")
        over = [m for m in labels if shows[m] and peaks[m] is not None]
        first = min(over, key=lambda m: peaks[m]) if over else None
        checks.append(observation("who over-optimises first (the plotted IQM gold curve's peak, runs that did not diverge)",
                                  f"{first} (peak at update {peaks[first]})" if first else "no method shows a rise then a fall",
                                  "; ".join(f"{m} peaks at update {peaks[m]}" for m in labels if peaks[m] is not None),
                                  "every method"))
        summary = ((f"{len(over)} of {len(labels)} methods reach a higher gold reward at mid-training (update {mid}) and then "
                    f"do worse by the end: {', '.join(over)}" if over else
                    f"no method shows a gold rise to mid-training (update {mid}) then a fall")
                   + (f"; {first} over-optimises first (its plotted IQM gold peaks at update {peaks[first]})" if first else "")
                   + (f"; {', '.join(div_text)} (KL blow-up): those runs feed no number" if div_text else "") + ".")
        verdict = Verdict(self.claims[0], None, summary, checks=checks, decide=grouped_decide(checks), by="method",
                          sensitivity="not run at this profile: every run has no KL penalty in the reward (β = 0); β ∈ "
                                      f"{{{', '.join(f'{b:g}' for b in REWARD_KLS[1:])}}} planned at `paper`.")
        fig = self._figure(runs, rows, rng, ok, c_gold, labels, palette, peaks, first, (0, mid, end), (g0, gm, ge))
        return Analysis([verdict], {"gold_vs_proxy.png": fig},
                        tables=[("Every variant (fixed score set; diverged runs in no number)",
                                 summary_table(runs, rows, rng, task, labels, diverged_scored=False))],
                        notes=[f"Fixed-set evaluations at updates 0, {mid} (mid-training) and {end}."])

    def _figure(self, runs, rows, rng, ok, c_gold, labels, palette, peaks, first, steps, golds):
        fig, axes = plotting.figure(ncols=2, nrows=2, width=3.6)
        ax = axes[0]
        for m in labels:
            cv = c_gold[c_gold.variant == m].sort_values("step") if len(c_gold) else c_gold
            if len(cv):
                ax.plot(cv.step, cv.iqm, color=palette[m], label=m)
                ax.fill_between(cv.step, cv.lo, cv.hi, color=palette[m], alpha=0.15, linewidth=0)
            pts = [_iqm(cell(ok, g.dropna(), PROXY, m)) for g in golds]
            if any(np.isfinite(pts)):
                ax.plot(steps, pts, linestyle="none", marker="o", markersize=5, markerfacecolor="white", color=palette[m])
            if peaks.get(m) is not None and m == first:
                ax.plot([peaks[m]], [float(cv.loc[cv.step == peaks[m], "iqm"].iloc[0])], marker="*", markersize=12,
                        color=palette[m], linestyle="none")
        ax.set_title("Gold: — curve, ○ fixed set, ★ peak")
        ax.set_xlabel("RLHF updates")
        ax.set_ylabel("gold reward")
        for ax, (metric, ylabel, title) in zip(axes[1:3], (("eval/proxy", "proxy reward", "Held-out proxy (curve)"),
                                                          ("eval/kl_ref", "KL (nats)", "KL to π_ref (curve)"))):
            panel_curves(ax, ok, rows, rng, metric, labels, palette)
            ax.set_ylabel(ylabel)
            ax.set_title(title)
        ax = axes[3]
        div = runs[runs.status == "diverged"]
        for _, r in div.iterrows():
            g = rows[(rows.run_id == r.run_id) & (rows.metric == "eval/gold")].sort_values("step")
            ax.plot(g.step, g.value, color=palette[r.variant], linestyle="--", alpha=0.7, label=r.variant)
        ax.set_title("Diverged runs (no statistic)" if len(div) else "No run diverged")
        if not len(div):
            ax.text(0.5, 0.5, "every run finished:\nnothing left out", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
        ax.set_xlabel("RLHF updates")
        ax.set_ylabel("gold reward")
        plotting.legend_below(fig, axes)
        return fig


# ---------------------------------------------------------------------------------------------------------------- L5
DAR_SMALL_ALPHA = DARConfig(alpha=1e-4, beta=0.05 - 1e-4)
DAR_UNCLIPPED = dataclasses.replace(DAR_SMALL_ALPHA, weight_clip=None)
"""The α → 0 arm without DAR's weight clip: its weights exp(A/η)/N differ from fixed-η V-MPO's self-normalised ones by
one factor per batch, which the loop's gradient-norm clip largely removes; with the clip of 20 most weights sit at the
clip instead (the first round's finding), so the clipped arm measures the clip more than the limit."""
VMPO_FIXED_DAR = GEMPIConfig(anchors=("pi_t",), coefficients=(0.05,), coefficient_names=("eta",), temperature="fixed",
                             normalize="batch", weight_clip=None, baseline="context_mean", advantage_norm="batch")
"""V-MPO's fixed-η E-step (self-normalised exp(A/η) over the batch, η = α + β = 0.05) on DAR's advantages (K-sample
baseline, batch-normalised), no top-k and no trust region, so the only difference to DAR with α → 0 is DAR's clipped
unnormalised weights and the vanishing reference factor (`[EM-SFT] §7`, RQ4; T2 checks the weights exactly)."""
DAR_QUICK = dict(QUICK, final_every=20)
DAR_PAPER = dict(PAPER, final_every=50)
DAR_SMOKE = dict(SMOKE, final_every=1)
"""L5 scores the fixed set along training (its (KL, gold) path): at quick at updates 0, 20 and 40."""
KAPPA_FRACTIONS = (0.5, 0.75, 1.0)
"""L5's knob: the matched KL κ as a fraction of κ_0, the lowest of DAR's, PPO's and DPO's median final KL to the reference."""


class LMDAR(LMQuestion):
    name = "lm-dar"
    title = "DAR against PPO and online DPO at matched KL; DAR with α → 0 against fixed-η V-MPO"
    description = ("DAR (docs/reference-settings.md), token-level PPO and online DPO on the LM task, compared at a matched KL to the reference; "
                   "and DAR with α = 1e-4 against V-MPO's fixed-η E-step at η = α + β (`[EM-LLM] §7`, `[EM-SFT] §7`).")
    budgets = _budgets(quick=DAR_QUICK, paper=DAR_PAPER, smoke=DAR_SMOKE)
    claims = (Claim(
        "L5", "DAR reaches a higher gold reward than online RLHF (PPO) and online DPO (OAIF) at a matched KL to the reference.",
        "[EM-SFT] §7 'Direct Advantage Regression' (summarising [DAR]); the method in [EM-LLM] §7",
        "Matched KL: κ = f × κ_0, κ_0 the lowest of DAR's, PPO's and DPO's median final KL to the reference (fixed score "
        f"set), f ∈ {{{', '.join(f'{f:g}' for f in KAPPA_FRACTIONS)}}} (the knob); each run's gold at κ is read off its "
        "(KL, gold) path on the fixed score set by linear interpolation (a run that never reaches κ contributes its final "
        f"gold; a run that diverged before its path reached κ scores {FLOOR:g}, one that diverged later keeps its gold at "
        "κ: at matched KL what happened beyond κ does not count — corrected after the English runs, in which 3 of 5 DAR "
        "runs passed κ and crossed the divergence limit of 50 nats near the end). Per f: “DAR outperforms both OAIF and "
        "online RLHF baselines”: the "
        "CI of IQM(DAR) − IQM(PPO) and of IQM(DAR) − IQM(DPO) at κ each lie wholly above 0 (wholly below for either: not "
        "supported). The headline is the verdict across f. Observations: DAR with α → 0 against fixed-η V-MPO (the paper's "
        "link is exact for the E-step target only, `[EM-SFT] §7`), with the share of DAR's weights at its clip.",
        COMMON_DEVIATIONS + (Deviation("α → 0", "a limit", "α = 1e-4 with α + β = 0.05, with DAR's weight clip of 20 and "
                                       "without it", "a run needs a number; the clip is DAR's practical rule, not the "
                                       "limit's"),
                             Deviation("baselines", "OAIF and online RLHF at LLM scale, judged by GPT-4-Turbo and MT-bench "
                                       "(He et al. 2025, at second hand)", "online DPO (β = 0.1) and token-level PPO on the "
                                       "gold reward at a matched KL", "the paper gives no numbers; the KL match is the "
                                       "suite's protocol")),
        quote="As an RL-free approach, DAR maintains theoretical consistency with online RLHF pipelines while significantly "
              "reducing implementation complexity and improving learning efficiency. … Additionally, evaluations using "
              "GPT-4-Turbo and MT-bench show that DAR outperforms both OAIF and online RLHF baselines.",
        knob=Knob("matched KL κ (fraction of κ_0)", KAPPA_FRACTIONS, "not given (the suite's protocol)",
                  run_at=("quick", "paper")),
        decides="paper"),)

    def variants(self):
        return [Variant("DAR", "dar", DAR, train_config=BASE_LOOP), Variant("PPO", "ppo", PPO, train_config=PPO_LOOP),
                Variant("DPO", "dpo", DPO, train_config=BASE_LOOP),
                Variant("DAR α=1e-4", "dar", DAR_SMALL_ALPHA, train_config=BASE_LOOP),
                Variant("DAR α=1e-4 unclipped", "dar", DAR_UNCLIPPED, train_config=BASE_LOOP),
                Variant("fixed-η V-MPO (η=0.05)", "gempi", VMPO_FIXED_DAR, train_config=BASE_LOOP)]

    def analyse(self, runs, rows, rng):
        task = LM
        kl_end = end_value(runs, rows, "final/kl_ref")
        kappa0 = min((float(np.median(cell(runs, kl_end, task, v))) if len(cell(runs, kl_end, task, v)) else np.inf)
                     for v in ("DAR", "PPO", "DPO"))
        diverged = set(runs[runs.status == "diverged"].run_id)
        checks, matched = [], {}
        for f in KAPPA_FRACTIONS:
            g, kappa = f"κ={f:g}×κ_0", f * kappa0
            m = gold_at_kl(rows, kappa)
            short = reached_kl(rows) < kappa  # a run that diverged before its path reached κ scores the floor there
            m[m.index.isin(diverged) & m.index.isin(short[short].index)] = FLOOR
            matched[f] = m
            for other, name in (("PPO", "online RLHF"), ("DPO", "OAIF")):
                at = f"{kappa:.2f}" if np.isfinite(kappa) else "κ (no run completed, so no κ_0)"
                checks.append(check(f"DAR − {other} ({name}), gold at KL {at}", "DAR outperforms both OAIF and online "
                                    "RLHF baselines", cell(runs, m, task, "DAR"), rng, test="above", threshold=0.0,
                                    y=cell(runs, m, task, other), group=g))
        s = scores(runs, rows)
        if np.isfinite(kappa0):  # the same comparison on the cheap curve's finer path (every eval_every updates)
            fine = gold_at_kl(rows, kappa0, kl="eval/kl_ref", gold="eval/gold")
            short = reached_kl(rows, "eval/kl_ref") < kappa0
            fine[fine.index.isin(diverged) & fine.index.isin(short[short].index)] = FLOOR
            for other in ("PPO", "DPO"):
                d = _diff(runs, fine, task, "DAR", other, rng)
                checks.append(observation(f"DAR − {other} at KL {kappa0:.2f} on the cheap curve (5 points per run, 64 "
                                          "prompts × 1 sample)", _trend(d), fmt_ci(d), "κ=1×κ_0"))
        d_eq = _diff(runs, s, task, "DAR α=1e-4", "fixed-η V-MPO (η=0.05)", rng)
        clip = per_run_mean(rows, "weights/clipfrac")
        checks.append(observation("DAR α=1e-4 − fixed-η V-MPO (gold improvement)", _trend(d_eq), fmt_ci(d_eq), "every κ"))
        d_raw = _diff(runs, s, task, "DAR α=1e-4 unclipped", "fixed-η V-MPO (η=0.05)", rng)
        n_raw = int(((runs.task == task) & (runs.variant == "DAR α=1e-4 unclipped")).sum())
        checks.append(observation("DAR α=1e-4 unclipped − fixed-η V-MPO (gold improvement): the limit without the clip",
                                  _trend(d_raw), f"{fmt_ci(d_raw)}; {n_diverged(runs, task, 'DAR α=1e-4 unclipped')} of "
                                  f"{n_raw} unclipped runs diverged", "every κ"))
        checks.append(observation("share of DAR α=1e-4's weights at its clip (20), mean over updates",
                                  "the α → 0 arm mostly measures DAR's weight clip" if _iqm(cell(runs, clip, task, "DAR α=1e-4")) > 0.2
                                  else "few weights at the clip",
                                  f"{_iqm(cell(runs, clip, task, 'DAR α=1e-4')):.0%} (DAR at α = 0.005: "
                                  f"{_iqm(cell(runs, clip, task, 'DAR')):.0%})", "every κ"))
        summary = (f"κ_0 = {kappa0:.2f} nats; DAR − PPO / DAR − DPO (gold at κ): " + "; ".join(
            f"f = {f:g}: {_diff(runs, matched[f], task, 'DAR', 'PPO', rng)[0]:+.2f} / "
            f"{_diff(runs, matched[f], task, 'DAR', 'DPO', rng)[0]:+.2f}" for f in KAPPA_FRACTIONS) + ".")
        verdict = Verdict(self.claims[0], None, summary, checks=checks, decide=grouped_decide(checks), by="matched KL κ",
                          sensitivity=f"run at every value (the fractions {', '.join(f'{f:g}' for f in KAPPA_FRACTIONS)} of κ_0 "
                                      "read off the same runs).")
        labels = [v.label for v in self.variants()]
        table = summary_table(runs, rows, rng, task, labels)
        for f in KAPPA_FRACTIONS:
            table[f"gold at KL {f * kappa0:.2f}"] = [fmt_ci(iqm_or_nan(cell(runs, matched[f], task, v), rng)) for v in labels]
        table["weights at the clip"] = [fmt_ci(iqm_or_nan(cell(runs, clip, task, v), rng)) if v.startswith("DAR") else "—"
                                        for v in labels]
        return Analysis([verdict], {"reward_vs_kl.png": self._frontier(runs, rows, rng, labels, kappa0)},
                        tables=[("Every variant (fixed score set)", table)])

    def _frontier(self, runs, rows, rng, labels, kappa0):
        fig, axes = plotting.figure(ncols=2, width=3.8)
        ok = runs[runs.status != "diverged"]
        kl, gold = curve(rows, ok, "final/kl_ref", rng), curve(rows, ok, "final/gold", rng)
        palette = plotting.colors(labels)
        for v in labels:
            k, g = kl[kl.variant == v], gold[gold.variant == v]
            merged = k.merge(g, on=["variant", "step"], suffixes=("_kl", "_gold"))
            axes[0].plot(merged.iqm_kl, merged.iqm_gold, marker="o", color=palette[v], label=v)
        for f in KAPPA_FRACTIONS:
            axes[0].axvline(f * kappa0, color="grey", linestyle=":", linewidth=1)
        axes[0].set_xlabel("KL to the reference (nats)")
        axes[0].set_ylabel("gold reward")
        axes[0].set_title("Gold vs KL (fixed set; ⋮ κ)")
        panel_curves(axes[1], ok, rows, rng, "eval/gold", labels, palette)
        axes[1].set_ylabel("gold reward")
        axes[1].set_title("Held-out gold (curve)")
        plotting.legend_below(fig, axes)
        return fig


def reached_kl(rows: pd.DataFrame, kl: str = "final/kl_ref") -> pd.Series:
    """Per run: the largest KL its evaluation path reached (its last point before a divergence)."""
    return rows[rows.metric == kl].groupby("run_id").value.max()


def gold_at_kl(rows: pd.DataFrame, kappa: float, kl: str = "final/kl_ref", gold: str = "final/gold") -> pd.Series:
    """Per run: gold at KL κ, linearly interpolated along its fixed-set evaluation path (first crossing); its final gold if
    it never reaches κ."""
    ev = rows[rows.metric.isin([gold, kl])].pivot_table(index=["run_id", "step"], columns="metric", values="value").reset_index()
    out = {}
    for run_id, g in ev.sort_values("step").groupby("run_id"):
        k, y = g[kl].to_numpy(), g[gold].to_numpy()
        out[run_id] = y[-1]
        for i in range(1, len(k)):
            if k[i] >= kappa > k[i - 1] or (i == 1 and k[0] >= kappa):
                lo = max(k[i - 1], 0.0)
                w = 1.0 if k[i] == lo else (kappa - lo) / (k[i] - lo)
                out[run_id] = y[i - 1] + min(max(w, 0.0), 1.0) * (y[i] - y[i - 1])
                break
    return pd.Series(out, dtype=float)


# ---------------------------------------------------------------------------------------------------------------- L8
L8_DROPOUTS = (0.0, 0.1, 0.2)


class LMSFT(LMQuestion):
    name = "lm-sft"
    title = "SFT as the generic EM M-step with a delta target equals cross-entropy training, step for step"
    description = ("Two copies of the pretrained GPT-2 fine-tuned on the same demonstrations, batches and dropout masks: one "
                   "with `transformers`' own causal-LM cross-entropy (`labels=`), one with the suite's SFT method (the GEMPI "
                   "M-step with a delta target, per-token weights, `[EM-SFT] §6`); before every step the second copy is set to the "
                   "first's parameters, and the gradient and parameter differences of the two updates are recorded.")
    budgets = {"smoke": Budget(seeds=2, train=dict(steps=3)), "quick": Budget(seeds=5, train=dict(steps=50)),
               "paper": Budget(seeds=10, train=dict(steps=500))}
    claims = (Claim(
        "L8", "SFT written as the generic M-step with a delta target equals the standard cross-entropy training step for "
        "step.", "[EM-SFT] §6 'E-step / M-step for SFT' (eq. 2–3, RQ1); also [EM-LLM] §10",
        "“The M-step is then maximum likelihood under q”, checked three ways over every step of every seed: the gradients "
        f"differ by at most {L8_GRAD_TOLERANCE:g} relative to their norm; the largest absolute parameter difference between "
        f"the two models stays ≤ {L8_TOLERANCE:g}; the two losses agree to 1e-5. Each check is supported within its "
        "tolerance and not supported beyond it.",
        (Deviation("model", "an LLM", "the suite's pretrained GPT-2 (dropout 0.1, identical masks in both copies)",
                   "laptop scale"),
         Deviation("optimiser", "any", "SGD (lr 0.02) for both copies", "Adam turns float rounding in gradients that are 0 in "
                   "exact arithmetic into full-size steps; the claim is about the loss")),
        quote="An EM view is obtained by defining an auxiliary distribution q(τ | x) that places all mass on the demonstrated "
              "response: … The M-step is then maximum likelihood under q",
        knob=Knob("dropout p of both copies (identical masks)", L8_DROPOUTS, "not given"),
        decides="paper"),)

    def variants(self):
        from algorithms.sft import SFTConfig
        return [Variant("SFT as M-step vs cross-entropy", "sft", SFTConfig(), train_config=LMSFTCheckConfig())]

    def analyse(self, runs, rows, rng):
        words = "The M-step is then maximum likelihood under q"
        checks = []
        for name, metric, tol in (("max ‖g_M-step − g_CE‖ / ‖g_CE‖", "check/grad_rel_diff", L8_GRAD_TOLERANCE),
                                  ("max |θ_M-step − θ_CE| over steps and seeds", "check/max_param_diff", L8_TOLERANCE),
                                  ("max |loss_M-step − loss_CE|", "check/loss_diff", 1e-5)):
            v = rows[rows.metric == metric].groupby("run_id").value.max()
            worst = float(v.max()) if len(v) else float("nan")
            out = "inconclusive" if not len(v) else ("supported" if worst <= tol else "not supported")
            text = f"{worst:.2e} (≤ {tol:g}) over {len(v)} runs" if len(v) else f"{NO_DATA} ({len(runs)} runs, none logged it)"
            checks.append(Check(name, "verdict", out, text, words=words, decide=NO_DATA_DECIDE if out == "inconclusive" else ""))
        dp = rows[rows.metric == "check/max_param_diff"].groupby("run_id").value.max()
        verdict = Verdict(self.claims[0], None, f"largest parameter difference {float(dp.max()) if len(dp) else float('nan'):.2e} "
                          f"over {len(dp)} runs.", checks=checks,
                          sensitivity="not run at this profile: both copies use dropout 0.1 with identical masks; 0 and "
                                      "0.2 are planned at `paper`.")
        fig, axes = plotting.figure(ncols=1, width=4.0)
        for i, (run_id, g) in enumerate(rows[rows.metric == "check/max_param_diff"].groupby("run_id")):
            axes[0].plot(g.step, g.value.clip(lower=1e-12), color=plotting.PALETTE[0], alpha=0.6, label="seeds" if i == 0 else None)
        axes[0].axhline(L8_TOLERANCE, color="grey", linestyle=":", label="tolerance")
        axes[0].set_yscale("log")
        axes[0].set_xlabel("SFT step")
        axes[0].set_ylabel("max |Δθ|")
        axes[0].set_title("Largest |Δθ| per step")
        plotting.legend_below(fig, axes)
        return Analysis([verdict], {"param_diff.png": fig})
