"""The Atari and memory family (`tasks/atari_onpolicy.py`): claims A1–A4.

Every run is scored by its **final evaluation return**: the mean return of the stochastic policy over the
loop's evaluation episodes (separate seeds) at the end of training; a diverged run scores its task's floor
(`FLOOR`, the lowest return an episode can have), since its policy is no longer usable. The T-maze pays +1 for the side the cue showed and −1 otherwise (a guess earns 0 in expectation).
Aggregates are IQMs over seeds with stratified-bootstrap 95% CIs; comparisons use the CI of the IQM difference.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from algorithms.ppo import PPOConfig
from algorithms.vmpo import VMPOConfig
from suite import plotting, stats
from suite.analysis import at_least, cell, fmt_ci, iqm_or_nan, last_value, n_diverged
from suite.claims import Claim, Deviation, Verdict, combine
from suite.questions.base import Analysis, Budget, Question, Variant
from suite.questions.control_onpolicy import LEARN_FACTOR, MATCH_FRACTION, learning_curves, learns
from tasks.atari_onpolicy import AtariOnPolicyConfig

BREAKOUT, MEMORY, REACTIVE = "minatar-breakout", "tmaze-memory", "tmaze-reactive"
FLOOR = {BREAKOUT: 0.0, MEMORY: -1.0, REACTIVE: -1.0}
"""The lowest score an episode can have on each task; a diverged run scores it."""

# ---------------------------------------------------------------------------------------------------- rules (constants)
TMAZE_LEARNED = 0.5
"""A core *learns* the T-maze when the lower end of its final-return IQM CI exceeds 0.5 (≥ 75% correct turns); it
*fails* when the upper end lies below 0.5."""
RATE_CONFIDENCE = 0.95
"""Divergence rates: Wilson score intervals at this level; two rates differ when the bootstrap CI of their difference
excludes 0."""
PAPER_DIVERGENCE = {"gtrxl": 0.0, "trxl_i": 0.16}
"""GTrXL paper (via `papers/001_8b44b9ea6e2e604b.txt §8`, `papers/000_18d00f82fad2bd94.txt App. B`): divergence rate
across a hyperparameter sweep."""

# ---------------------------------------------------------------------------------------------------- configurations
PPO = PPOConfig(ent_coef=0.01)
"""CleanRL `ppo_atari`: clip 0.2, value clip, entropy 0.01, per-minibatch advantage normalisation."""
VMPO = VMPOConfig(epsilon_eta=0.02)
"""V-MPO for categorical policies (SPEC §5): η = 1, α = 5, ε_η = 0.02 (Atari), ε_α = 0.01, top half of advantages."""
VMPO_LOOP = dict(returns="nstep", lr=3e-4, anneal_lr=False, max_grad_norm=None)
"""V-MPO's loop: n-step returns bootstrapped at each unroll's end, Adam without annealing or clipping (quick: 3e-4)."""
TMAZE_LOOP = dict(num_envs=16, unroll=16, unrolls=2, minibatches=4, epochs=4, torso_dim=64, eval_episodes=32,
                  eval_every=10**9)
"""The T-maze loop: unrolls of 16 steps (longer than a corridor of 10), 512 steps per iteration."""
LRS = (3e-4, 3e-3)
"""A2's learning-rate sweep (× seeds), as the GTrXL paper sweeps hyperparameters."""

SMOKE = dict(total_steps=256, num_envs=2, unroll=8, unrolls=2, minibatches=2, epochs=1, eval_episodes=2, eval_max_steps=50,
             core_memory=8)
QUICK_BREAKOUT = dict(total_steps=163_840, num_envs=8, unroll=32, unrolls=4, eval_episodes=8, eval_every=10**9)
QUICK_TMAZE = dict(total_steps=40_960, **TMAZE_LOOP)
PAPER_BREAKOUT = dict(total_steps=5_000_000, eval_every=500_000, eval_episodes=30)
PAPER_TMAZE = dict(total_steps=1_000_000, eval_every=100_000, **{k: v for k, v in TMAZE_LOOP.items() if k != "eval_every"})
TMAZE_LENGTH = 4
"""Corridor length of the T-maze at quick and paper: the cue must be held for 5 steps (a pilot at 10 left V-MPO with every
core near chance after 40k steps; at 4 GTrXL solved it by 30k)."""
TASK_CONFIGS = {"smoke": {BREAKOUT: dict(max_frames=200), MEMORY: dict(tmaze_length=3), REACTIVE: dict(tmaze_length=3)},
                "quick": {MEMORY: dict(tmaze_length=TMAZE_LENGTH), REACTIVE: dict(tmaze_length=TMAZE_LENGTH)},
                "paper": {MEMORY: dict(tmaze_length=TMAZE_LENGTH), REACTIVE: dict(tmaze_length=TMAZE_LENGTH)}}

COMMON_DEVIATIONS = (
    Deviation("evaluation", "not specified (Atari: training episodes)", "stochastic policy, separate seeds, at the end",
              "a greedy Atari policy can stall"),
    Deviation("learner", "distributed actors (V-MPO: IMPALA-style)", "synchronous rollouts of unrolls, minibatch epochs",
              "one loop for PPO and V-MPO: both see the same data per update"),
    Deviation("transformer span", "TrXL segment recurrence", "each step attends to its last M steps (`span='sliding'`)",
              "replaying an unroll from its stored state then reproduces the actor exactly"),
)


def scores(runs: pd.DataFrame, rows: pd.DataFrame) -> pd.Series:
    """Final evaluation return per run (indexed by run_id); a diverged run scores its task's floor."""
    s = last_value(rows, "eval/return").reindex(runs.run_id)
    for i, (run_id, task, status) in enumerate(zip(runs.run_id, runs.task, runs.status)):
        if status == "diverged" or not np.isfinite(s.iloc[i]):
            s.iloc[i] = FLOOR.get(task, 0.0)
    return s


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float, float]:
    """Rate k/n with its Wilson score interval."""
    if n == 0:
        return (float("nan"),) * 3
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return p, max(0.0, centre - half), min(1.0, centre + half)


def _budgets(quick: dict, paper: dict) -> dict[str, Budget]:
    return {"smoke": Budget(seeds=2, train=SMOKE), "quick": Budget(seeds=5, train=quick), "paper": Budget(seeds=10, train=paper)}


class AtariQuestion(Question):
    def task_changes(self, profile, task, train_config):
        return TASK_CONFIGS.get(profile, {}).get(task, {})


# ---------------------------------------------------------------------------------------------------------------- A1
class AtariVMPOvsPPO(AtariQuestion):
    name = "atari-vmpo-ppo"
    title = "V-MPO against PPO on Atari-style games (MinAtar at laptop scale)"
    description = ("V-MPO and PPO with the MinAtar network (feed-forward core) trained by the same loop on MinAtar Breakout, "
                   "beside a uniform-random policy (`papers/000_18d00f82fad2bd94.txt §1` RQ2, App. B; "
                   "`papers/001_8b44b9ea6e2e604b.txt §8`). The `paper` profile adds ALE games.")
    tasks = (BREAKOUT,)
    budgets = _budgets(QUICK_BREAKOUT, PAPER_BREAKOUT)
    claims = (
        Claim("A1", "V-MPO (EM policy iteration) matches PPO (policy gradient) on Atari-style games.",
              "papers/000_18d00f82fad2bd94.txt §1 (RQ2), App. B; papers/001_8b44b9ea6e2e604b.txt §8",
              f"On final evaluation returns (diverged runs score 0): (a) both learn — the lower end of each IQM CI exceeds "
              f"{LEARN_FACTOR:g}× the random policy's IQM; (b) the CI of IQM(V-MPO) − IQM(PPO) lies above "
              f"−{MATCH_FRACTION:g}×IQM(PPO) (wholly below: not supported). Supported if both hold; not supported if either "
              "is contradicted; otherwise inconclusive. (b) cannot be supported unless (a) is.",
              COMMON_DEVIATIONS + (
                  Deviation("games (quick)", "57 ALE games at 10^9–10^10 frames", f"MinAtar Breakout, {QUICK_BREAKOUT['total_steps']:,} steps, 5 seeds",
                            "the family fits 20 minutes on 2 cores; `paper` runs 5M steps"),
                  Deviation("V-MPO learning rate (quick)", "Adam 1e-4", "3e-4, not annealed", "a short run"),)),
    )

    def variants(self):
        return [Variant("PPO", "ppo", PPO),
                Variant("V-MPO", "vmpo", VMPO, train_config=AtariOnPolicyConfig(**VMPO_LOOP)),
                Variant("random policy", "ppo", PPO, train_config=AtariOnPolicyConfig(random_baseline=True))]

    def analyse(self, runs, rows, rng):
        s = scores(runs, rows)
        rand = iqm_or_nan(cell(runs, s, BREAKOUT, "random policy"), rng)
        cis = {v: iqm_or_nan(cell(runs, s, BREAKOUT, v), rng) for v in ("PPO", "V-MPO")}
        a = combine([learns(cis[v], rand[0]) for v in cis])
        diff = stats.difference_ci(cell(runs, s, BREAKOUT, "V-MPO"), cell(runs, s, BREAKOUT, "PPO"), stats.iqm, rng) \
            if all(len(cell(runs, s, BREAKOUT, v)) for v in cis) else (float("nan"),) * 3
        b = at_least(diff, MATCH_FRACTION * cis["PPO"][0]) if np.isfinite(diff[0]) else "inconclusive"
        if a != "supported" and b == "supported":
            b = "inconclusive"
        table = [{"method": v, "final return IQM [95% CI]": fmt_ci(ci, 2), "n": len(cell(runs, s, BREAKOUT, v)),
                  "diverged": n_diverged(runs, BREAKOUT, v), f"learns (> {LEARN_FACTOR:g}× random)": learns(ci, rand[0])}
                 for v, ci in cis.items()]
        table.append({"method": "random policy", "final return IQM [95% CI]": fmt_ci(rand, 2),
                      "n": len(cell(runs, s, BREAKOUT, "random policy")), "diverged": 0, f"learns (> {LEARN_FACTOR:g}× random)": "—"})
        checks = [{"check": "(a) both learn", "statistic [95% CI]": f"PPO {fmt_ci(cis['PPO'], 2)}, V-MPO {fmt_ci(cis['V-MPO'], 2)} "
                   f"vs {LEARN_FACTOR:g}× random = {LEARN_FACTOR * rand[0]:.2f}", "outcome": a},
                  {"check": "(b) return", "statistic [95% CI]": f"IQM(V-MPO) − IQM(PPO) = {fmt_ci(diff, 2)}; margin "
                   f"−{MATCH_FRACTION * cis['PPO'][0]:.2f}", "outcome": b}]
        verdict = Verdict(self.claims[0], combine([a, b]), f"both learn: {a}; V-MPO at least matches PPO: {b}.", checks)
        figures = {"learning_curves.png": learning_curves(runs, rows, rng, ["PPO", "V-MPO"], self.tasks, {BREAKOUT: rand})}
        return Analysis([verdict], figures, tables=[("Final returns", pd.DataFrame(table))])


# ---------------------------------------------------------------------------------------------------------------- A2, A4
CORE_LABELS = {"trxl": "TrXL", "trxl_i": "TrXL-I", "gtrxl": "GTrXL", "lstm": "LSTM", "ff": "feed-forward"}


def _core_variant(core: str, lr: float | None = None, label: str | None = None) -> Variant:
    changes = dict(VMPO_LOOP, core=core)
    if lr is not None:
        changes["lr"] = lr
    return Variant(label or CORE_LABELS[core], "vmpo", VMPO, train_config=AtariOnPolicyConfig(**changes))


class _TMazeQuestion(AtariQuestion):
    """A T-maze question: the budgets of `QUICK_TMAZE` / `PAPER_TMAZE`."""

    budgets = _budgets(QUICK_TMAZE, PAPER_TMAZE)


class AtariDivergence(_TMazeQuestion):
    name = "atari-divergence"
    title = "Divergence of TrXL-I and GTrXL (and TrXL) across a learning-rate sweep"
    description = ("V-MPO with each transformer core on the T-maze memory task, over a learning-rate sweep × seeds, counting "
                   "runs recorded `diverged` (non-finite loss, gradient or parameters, or a minibatch KL above the loop's "
                   "limit) (`papers/001_8b44b9ea6e2e604b.txt §8`, `papers/000_18d00f82fad2bd94.txt App. B`).")
    tasks = (MEMORY,)
    claims = (
        Claim("A2", "Across a hyperparameter sweep, GTrXL (GRU gates, gate bias 2) diverges in ~0% of runs vs ~16% for TrXL-I.",
              "papers/001_8b44b9ea6e2e604b.txt §8; papers/000_18d00f82fad2bd94.txt App. B",
              "Divergence rate per core over every run of the sweep (Wilson 95% intervals). Supported if the bootstrap 95% CI of "
              "rate(TrXL-I) − rate(GTrXL) lies wholly above 0; not supported if it lies wholly below 0 (GTrXL diverges more); "
              "otherwise inconclusive.",
              COMMON_DEVIATIONS + (
                  Deviation("sweep", "DMLab-30 levels; lr, ε, memory sizes by PBT", f"learning rates {', '.join(map(str, LRS))} × 5 "
                            "seeds on the T-maze (quick)", "laptop scale"),
                  Deviation("divergence", "not defined in the text we have", "the run is recorded `diverged` by the loop",
                            "a rule fixed before the data"),)),
    )

    def variants(self):
        return [_core_variant(core, lr, f"{CORE_LABELS[core]} lr={lr:g}") for core in ("trxl", "trxl_i", "gtrxl") for lr in LRS]

    def analyse(self, runs, rows, rng):
        counts, table = {}, []
        for core in ("trxl", "trxl_i", "gtrxl"):
            sel = runs[runs.variant.str.startswith(CORE_LABELS[core] + " ")]
            div = sel.status.eq("diverged").to_numpy(dtype=float)
            counts[core] = div
            rate = wilson(int(div.sum()), len(div))
            table.append({"core": CORE_LABELS[core], "diverged / runs": f"{int(div.sum())}/{len(div)}",
                          "rate [Wilson 95%]": fmt_ci(rate, 2), "paper": PAPER_DIVERGENCE.get(core, "—")})
            for lr in LRS:
                v = f"{CORE_LABELS[core]} lr={lr:g}"
                table[-1][f"lr={lr:g}"] = f"{n_diverged(runs, MEMORY, v)}/{int((runs.variant == v).sum())}"
        if len(counts["trxl_i"]) and len(counts["gtrxl"]):
            diff = stats.difference_ci(counts["trxl_i"], counts["gtrxl"], np.mean, rng)
            outcome = "supported" if diff[1] > 0 else ("not supported" if diff[2] < 0 else "inconclusive")
        else:
            diff, outcome = (float("nan"),) * 3, "inconclusive"
        verdict = Verdict(self.claims[0], outcome, f"rate(TrXL-I) − rate(GTrXL) = {fmt_ci(diff, 2)}.",
                          [{"check": "rate(TrXL-I) − rate(GTrXL) > 0", "statistic [95% CI]": fmt_ci(diff, 2), "outcome": outcome}],
                          paper="GTrXL 0%, TrXL-I 16% of runs diverged")
        return Analysis([verdict], {"divergence.png": _rate_figure(counts)}, tables=[("Divergence per core", pd.DataFrame(table))])


def _rate_figure(counts: dict[str, np.ndarray]):
    """Each core's divergence rate with its Wilson interval, the paper's rate beside it where it gives one."""
    fig, axes = plotting.figure(ncols=1)
    ax = axes[0]
    for i, (core, div) in enumerate(counts.items()):
        p, lo, hi = wilson(int(div.sum()), len(div))
        ax.errorbar([i], [p], yerr=[[p - lo], [hi - p]], fmt="o", capsize=4, color="C0", label="ours" if i == 0 else None)
        if core in PAPER_DIVERGENCE:
            ax.scatter([i + 0.1], [PAPER_DIVERGENCE[core]], marker="x", color="C3",
                       label="paper" if core == next(iter(PAPER_DIVERGENCE)) else None)
    ax.set_xticks(range(len(counts)), [CORE_LABELS[c] for c in counts])
    ax.set_ylabel("divergence rate (Wilson 95% CI)")
    ax.set_ylim(-0.05, 1.05)
    ax.legend(loc="best")
    return fig


class AtariTrXLFails(_TMazeQuestion):
    name = "atari-trxl"
    title = "Plain TrXL against TrXL-I and GTrXL on the T-maze"
    description = ("V-MPO with each transformer core at the sweep's first learning rate on the T-maze memory task "
                   "(the same runs as A2's at that rate) (`papers/001_8b44b9ea6e2e604b.txt §8`).")
    tasks = (MEMORY,)
    claims = (
        Claim("A4", "Plain TrXL (post-norm, no gating) fails to learn where TrXL-I and GTrXL learn.",
              "papers/001_8b44b9ea6e2e604b.txt §8 ('standard TrXL fails in RL'); papers/000_18d00f82fad2bd94.txt App. B",
              f"On final T-maze returns (diverged runs score −1): TrXL-I and GTrXL learn (IQM CI lower end > {TMAZE_LEARNED:g}) "
              f"and TrXL fails (IQM CI upper end < {TMAZE_LEARNED:g}). Supported if all three hold; not supported if TrXL "
              "learns or either other core fails; otherwise inconclusive.",
              COMMON_DEVIATIONS),
    )

    def variants(self):
        return [_core_variant(core, LRS[0], f"{CORE_LABELS[core]} lr={LRS[0]:g}") for core in ("trxl", "trxl_i", "gtrxl")]

    def analyse(self, runs, rows, rng):
        s = scores(runs, rows)
        cis = {core: iqm_or_nan(cell(runs, s, MEMORY, f"{CORE_LABELS[core]} lr={LRS[0]:g}"), rng) for core in ("trxl", "trxl_i", "gtrxl")}
        parts = {core: tmaze_learns(ci) for core, ci in cis.items()}
        trxl = {"supported": "not supported", "not supported": "supported"}.get(parts["trxl"], "inconclusive")
        outcome = combine([parts["trxl_i"], parts["gtrxl"], trxl])
        table = [{"core": CORE_LABELS[c], "final return IQM [95% CI]": fmt_ci(ci, 2), "learns": parts[c],
                  "n": len(cell(runs, s, MEMORY, f"{CORE_LABELS[c]} lr={LRS[0]:g}"))} for c, ci in cis.items()]
        verdict = Verdict(self.claims[0], outcome, "; ".join(f"{CORE_LABELS[c]} {fmt_ci(ci, 2)}" for c, ci in cis.items()) + ".",
                          [{"check": f"{CORE_LABELS[c]} {'fails' if c == 'trxl' else 'learns'}", "statistic [95% CI]": fmt_ci(ci, 2),
                            "outcome": trxl if c == "trxl" else parts[c]} for c, ci in cis.items()])
        order = [f"{CORE_LABELS[c]} lr={LRS[0]:g}" for c in cis]
        return Analysis([verdict], {"learning_curves.png": learning_curves(runs, rows, rng, order, self.tasks)},
                        tables=[("Final returns", pd.DataFrame(table))])


def tmaze_learns(ci: tuple[float, float, float]) -> str:
    """`supported` if the CI lies above TMAZE_LEARNED, `not supported` if wholly below, else inconclusive."""
    return "supported" if ci[1] > TMAZE_LEARNED else ("not supported" if ci[2] < TMAZE_LEARNED else "inconclusive")


# ---------------------------------------------------------------------------------------------------------------- A3
class AtariMemory(_TMazeQuestion):
    name = "atari-memory"
    title = "GTrXL against LSTM (and a feed-forward core) on a memory task and its reactive twin"
    description = ("V-MPO with a GTrXL, an LSTM and a feed-forward core on the T-maze (the cue shown only at the start) and its "
                   "reactive twin (the cue shown at every step) (`papers/001_8b44b9ea6e2e604b.txt §8`, "
                   "`papers/000_18d00f82fad2bd94.txt App. B`).")
    tasks = (MEMORY, REACTIVE)
    claims = (
        Claim("A3", "GTrXL beats LSTM on a memory-dependent task without regressing on a reactive one.",
              "papers/001_8b44b9ea6e2e604b.txt §8 (DMLab-30: GTrXL 117.6 ± 0.3 vs LSTM 99.3 ± 1.0)",
              f"On final returns (diverged runs score −1): (a) memory task: the CI of IQM(GTrXL) − IQM(LSTM) lies above 0 (wholly "
              f"below: not supported); (b) reactive task: the CI of IQM(GTrXL) − IQM(LSTM) lies above −{MATCH_FRACTION:g}×|IQM(LSTM)| "
              "(wholly below: not supported). Supported if both hold; not supported if either is contradicted; otherwise "
              "inconclusive. Reported beside: whether the memory task separates the memory cores from the feed-forward one.",
              COMMON_DEVIATIONS + (
                  Deviation("tasks", "DMLab-30 memory and reactive levels", "a T-maze with the cue shown once / at every step",
                            "the two differ only in whether memory is needed"),)),
    )

    def variants(self):
        return [_core_variant(core) for core in ("gtrxl", "lstm", "ff")]

    def analyse(self, runs, rows, rng):
        s = scores(runs, rows)
        table, checks, parts = [], [], []
        for task in self.tasks:
            cis = {v: iqm_or_nan(cell(runs, s, task, v), rng) for v in ("GTrXL", "LSTM", "feed-forward")}
            for v, ci in cis.items():
                table.append({"task": task, "core": v, "final return IQM [95% CI]": fmt_ci(ci, 2), "n": len(cell(runs, s, task, v)),
                              "diverged": n_diverged(runs, task, v)})
            x, y = cell(runs, s, task, "GTrXL"), cell(runs, s, task, "LSTM")
            diff = stats.difference_ci(x, y, stats.iqm, rng) if len(x) and len(y) else (float("nan"),) * 3
            margin = 0.0 if task == MEMORY else MATCH_FRACTION * abs(cis["LSTM"][0])
            o = at_least(diff, margin) if np.isfinite(diff[0]) else "inconclusive"
            if task == MEMORY:  # strictly above 0, not merely non-inferior
                o = "supported" if diff[1] > 0 else ("not supported" if diff[2] < 0 else "inconclusive")
            parts.append(o)
            checks.append({"task": task, "check": "(a) GTrXL > LSTM" if task == MEMORY else "(b) GTrXL no worse than LSTM",
                           "statistic [95% CI]": f"IQM(GTrXL) − IQM(LSTM) = {fmt_ci(diff, 2)}", "outcome": o})
        verdict = Verdict(self.claims[0], combine(parts), f"memory task: {parts[0]}; reactive task: {parts[1]}.", checks,
                          paper="DMLab-30 human-normalised: GTrXL 117.6 ± 0.3, LSTM 99.3 ± 1.0")
        return Analysis([verdict], {"learning_curves.png": learning_curves(runs, rows, rng, ["GTrXL", "LSTM", "feed-forward"],
                                                                           self.tasks)},
                        tables=[("Final returns", pd.DataFrame(table))])


__all__ = ["AtariVMPOvsPPO", "AtariDivergence", "AtariMemory", "AtariTrXLFails"]
