"""DeepMind Control with the on-policy loop (`tasks/control_onpolicy.py`): claims C4, C5 and C8.

Every run is scored by its **final evaluation return**: the mean return of the deterministic policy
over the loop's evaluation episodes at the end of training (DMC returns lie in [0, 1000]). A run that
diverged scores 0, the lowest return an episode can have: its policy is no longer usable. Per-update
KL is the loop's `update/kl` (closed-form KL(π_behaviour ‖ π_θ) over a rollout's states after its
update phase), averaged over a run's updates. Aggregates are IQMs over seeds with stratified-bootstrap
95% CIs; comparisons use the CI of the IQM difference (`suite.stats.difference_ci`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from algorithms.dar import ATDARConfig, DARConfig, DARTRConfig, TopKDARConfig
from algorithms.gempi import GEMPIConfig
from algorithms.ppo import PPOConfig
from algorithms.vmpo import VMPOConfig
from suite import plotting, stats
from suite.analysis import at_least, cell, curve, fmt_ci, iqm_ci, iqm_or_nan, last_value, n_diverged, per_run_mean
from suite.claims import Claim, Deviation, Outcome, Verdict, combine
from suite.questions.bandits import eta_label
from suite.questions.base import Analysis, Budget, Question, Variant
from tasks.control_onpolicy import OnPolicyConfig

CARTPOLE, WALKER = "cartpole-swingup", "walker-walk"

# ---------------------------------------------------------------------------------------------------- rules (constants)
LEARN_FACTOR = 3.0
"""A method *learns* a task when the lower end of its final-return IQM CI exceeds 3 × the random policy's IQM."""
MATCH_FRACTION = 0.2
"""Two methods *match* when the CI of their IQM difference lies above −20% of the reference method's IQM."""
SPREAD_FRACTION = 0.2
"""C4: V-MPO's across-seed spread is *no larger* when the CI of sd(V-MPO) − sd(PPO) lies below +20% of PPO's IQM."""
EQUIVALENCE_FRACTION = 0.1
"""C8: *no difference* when the CI of IQM(variant) − IQM(DAR) lies within ±10% of DAR's IQM."""

EPISODE_STEPS = 1000
"""Steps of a dm_control suite episode at its default time limit and action repeat 1."""
CLEANRL_PPO = {"walker-walk": (392.5, 56.3), "cheetah-run": (432.6, 82.5)}
"""CleanRL `ppo_continuous_action` on DMC at 8M steps, 10 seeds: mean ± std of the return (SPEC §5)."""

# ---------------------------------------------------------------------------------------------------- budgets
SMOKE = dict(total_steps=512, num_envs=2, rollout=256, minibatches=4, epochs=2, eval_every=512, eval_episodes=1)
"""A few seconds per question: two rollouts of 1-second episodes (the smoke task config), one evaluation episode."""
QUICK = dict(rollout=1024, minibatches=16, lr=3e-4, eval_episodes=3)
"""Every quick run: rollouts of 1024 steps in 16 minibatches of 64 (CleanRL: 2048 in 32; same minibatch size, epochs and
gradient steps per sample, twice as many policy iterations in a short budget), and Adam 3e-4 for every method."""
QUICK_CARTPOLE = dict(total_steps=24_576, num_envs=4, eval_every=24_576)
"""About 25 training episodes per seed."""
QUICK_WALKER = dict(total_steps=81_920, num_envs=8, eval_every=81_920)
TASK_CONFIGS = {"smoke": {CARTPOLE: dict(time_limit=1.0), WALKER: dict(time_limit=1.0)}}
"""Task-config changes per profile and task. smoke: 1-second episodes, so an evaluation takes milliseconds. Every other
profile runs the suite's tasks as dm_control defines them (action repeat 1, 1000-step episodes). An action repeat of 4
on cartpole-swingup was tried and dropped: it halves the wall time per physics step, but a uniform-random policy holding
its actions for 4 steps scores 79 instead of 32, so the trained policies' margin over random shrank (reports at 10d7007)."""
PAPER = dict(total_steps=8_000_000, num_envs=8, eval_every=400_000, eval_episodes=10, compile=True)
"""CleanRL's DMC benchmark budget (8M steps, SPEC §5), 10 seeds, CleanRL's 2048-step rollouts; learner steps compiled
(`OnPolicyConfig.compile`): 3 s (inductor's disk cache warm) to 30 s (cold) of compiling per run group against ~4,000
rollouts, whose learner forward then takes ~0.5 ms per minibatch instead of 1.6-2 ms (`make bench`: the README's ratios)."""

PPO = PPOConfig()
VMPO_LOOP = OnPolicyConfig(returns="nstep", unroll=32, target_period=100, lr=1e-4, anneal_lr=False, max_grad_norm=None)
"""V-MPO's loop (SPEC §5): n-step returns bootstrapped at the end of each 32-step unroll, target/behaviour network refreshed
every 100 learner steps, Adam 1e-4 without annealing (quick: 3e-4), no gradient clipping; initial σ = 1 as PPO's."""
VMPO = VMPOConfig(kl_split="decoupled", epsilon_alpha_sigma=5e-5)
"""V-MPO for Gaussian policies: decoupled mean / covariance trust regions, α_μ = α_Σ = 1, ε_αμ = 0.01, ε_αΣ = 5e-5 (the top
of the paper's ranges [0.005, 0.01], [5e-6, 5e-5])."""


def scores(runs: pd.DataFrame, rows: pd.DataFrame) -> pd.Series:
    """Final evaluation return per run (indexed by run_id); a diverged run scores 0."""
    s = last_value(rows, "eval/return").reindex(runs.run_id)
    diverged = runs.set_index("run_id").status.eq("diverged")
    s[diverged.reindex(s.index).fillna(False).to_numpy()] = 0.0
    return s.fillna(0.0)


def learns(ci: tuple[float, float, float], random_iqm: float) -> Outcome:
    """`supported` if the CI lies wholly above LEARN_FACTOR × the random return, `not supported` if wholly below."""
    bar = LEARN_FACTOR * random_iqm
    return "supported" if ci[1] > bar else ("not supported" if ci[2] < bar else "inconclusive")


def _sd(x: np.ndarray) -> float:
    return float(np.std(np.asarray(x, dtype=float).ravel(), ddof=1)) if np.size(x) > 1 else 0.0


class ControlQuestion(Question):
    """A control question whose budget may differ per task: `task_budgets[profile][task]` is merged over
    `budgets[profile].train` (Budget.train stays the keys every task shares); `task_configs[profile][task]` replaces
    fields of the task's config (`TASK_CONFIGS`)."""

    task_budgets: dict[str, dict[str, dict]] = {}
    task_configs: dict[str, dict[str, dict]] = TASK_CONFIGS

    def train_changes(self, profile, task, train_config):
        return {**self.budgets[profile].train, **self.task_budgets.get(profile, {}).get(task, {})}

    def task_changes(self, profile, task, train_config):
        return self.task_configs.get(profile, {}).get(task, {})


def _budgets(cartpole_only: bool) -> tuple[dict[str, Budget], dict[str, dict[str, dict]]]:
    budgets = {"smoke": Budget(seeds=2, train=SMOKE), "quick": Budget(seeds=5, train=QUICK), "paper": Budget(seeds=10, train=PAPER)}
    per_task = {"quick": {CARTPOLE: QUICK_CARTPOLE} if cartpole_only else {CARTPOLE: QUICK_CARTPOLE, WALKER: QUICK_WALKER}}
    return budgets, per_task


def learning_curves(runs, rows, rng, order, tasks, random_iqm: dict[str, tuple] | None = None):
    """Per task: the return of the training episodes (behaviour policy) against environment steps, IQM over seeds with
    95% CIs; the final evaluation return (deterministic policy, the score) as a point with its CI at the last step; and
    the random policy's return (dashed, its CI shaded)."""
    train = curve(rows, runs, "train/episode_return", rng)
    final = scores(runs, rows)
    fig, axes = plotting.figure(ncols=len(tasks))
    palette = plotting.colors(order)
    for ax, task in zip(axes, tasks):
        if len(train):
            plotting.ci_lines(ax, train[train.task == task], order, palette=palette)
        last = runs[runs.task == task]["train_config.total_steps"].max() if "train_config.total_steps" in runs else None
        for i, v in enumerate(order):
            x = cell(runs, final, task, v)
            if len(x) and last is not None:
                p, lo, hi = iqm_ci(x, rng)
                ax.errorbar([last * (1.0 + 0.012 * i)], [p], yerr=[[p - lo], [hi - p]], fmt="s", color=palette[v], capsize=3,
                            markersize=4)
        if random_iqm and task in random_iqm:
            point, lo, hi = random_iqm[task]
            ax.axhline(point, color="grey", linestyle="--", linewidth=1, label="random policy")
            ax.axhspan(lo, hi, color="grey", alpha=0.15, linewidth=0)
        ax.set_title(task)
        ax.set_xlabel("environment steps")
        ax.set_ylabel("episode return (IQM, 95% CI)")
    axes[-1].legend(loc="best", title="lines: training episodes; squares: final evaluation", title_fontsize=7)
    return fig


def kl_curves(runs, rows, rng, order, tasks):
    c = curve(rows, runs, "update/kl", rng)
    fig, axes = plotting.figure(ncols=len(tasks))
    palette = plotting.colors(order)
    for ax, task in zip(axes, tasks):
        if len(c):
            plotting.ci_lines(ax, c[c.task == task], order, palette=palette)
        ax.set_yscale("log")
        ax.set_title(task)
        ax.set_xlabel("environment steps")
        ax.set_ylabel("per-update KL(π_b‖π_θ) (IQM, 95% CI)")
    axes[-1].legend(loc="best")
    return fig


COMMON_DEVIATIONS = (
    Deviation("training budget (quick)", "8M steps, 10 seeds (CleanRL DMC); 10^9+ steps (V-MPO)",
              f"{QUICK_CARTPOLE['total_steps']:,} steps (cartpole-swingup), {QUICK_WALKER['total_steps']:,} (walker-walk), 5 seeds",
              "the whole control family fits 25 minutes on a 2-core laptop; `paper` uses 8M steps and 10 seeds"),
    Deviation("rollout (quick)", "2048 steps in 32 minibatches (CleanRL)",
              f"{QUICK['rollout']} steps in {QUICK['minibatches']} minibatches of {QUICK['rollout'] // QUICK['minibatches']}",
              "same minibatch size, epochs and gradient steps per sample; twice as many policy iterations in a short run"),
    Deviation("time-limit truncation", "CleanRL treats it as termination", "bootstrapped from V(final observation)", "SPEC §5"),
    Deviation("environments", "CleanRL: 1",
              f"{QUICK_WALKER['num_envs']} per seed in lockstep ({QUICK_CARTPOLE['num_envs']} for cartpole-swingup at quick)",
              "batched inference; same samples per update"),
    Deviation("evaluation", "not specified", f"deterministic policy (Gaussian mean), {QUICK['eval_episodes']} episodes on the eval "
              "seed stream at the end of training (quick)",
              f"each evaluation costs {QUICK['eval_episodes'] * EPISODE_STEPS} environment steps per seed"),
)
VMPO_DEVIATIONS = (
    Deviation("V-MPO learner", "distributed actors, one gradient step per batch of unrolls",
              "synchronous rollouts, 10 epochs of minibatches of 64, target/behaviour net refreshed every 100 learner steps",
              "the on-policy loop shared with PPO: both see the same data per update"),
    Deviation("V-MPO ε_αμ, ε_αΣ", "sampled log-uniformly per run in [0.005, 0.01], [5e-6, 5e-5]", "fixed 0.01, 5e-5 (the tops)",
              "one setting per variant; σ may shrink within a short run"),
    Deviation("V-MPO learning rate (quick)", "Adam 1e-4", "3e-4 (paper profile: 1e-4), not annealed",
              "PPO's rate: 1e-4 barely moves the policy in 10^4–10^5 steps"),
    Deviation("V-MPO initial σ", "not given", "1, as PPO (CleanRL)",
              "the covariance trust region moves σ slowly; a pilot with σ = 0.61 explored too little to swing the pole up"),
    Deviation("V-MPO gradient clipping", "none", "none (PPO: CleanRL's 0.5)", "SPEC §5 gives a clip for PPO only"),
    Deviation("dual learning rate", "same Adam as the networks", "separate Adam, lr 1e-2", "duals must adapt within a short run"),
    Deviation("n-step unroll", "the actors' unroll length", "32 steps", "every unroll bootstraps from V at its end"),
)


# ---------------------------------------------------------------------------------------------------------------- C4
class ControlVMPOvsPPO(ControlQuestion):
    name = "control-vmpo-ppo"
    title = "V-MPO (EM policy iteration) against PPO (policy gradient) on DeepMind Control"
    description = (
        "V-MPO and PPO with Gaussian MLP policies trained by the same on-policy loop on cartpole-swingup and walker-walk, "
        "with a uniform-random policy measured on the same evaluation episodes "
        "(`papers/000_18d00f82fad2bd94.txt §1` RQ2, §2 'Key distinction', §3, §4, App. A)."
    )
    tasks = (CARTPOLE, WALKER)
    budgets, task_budgets = _budgets(cartpole_only=False)
    claims = (
        Claim(
            "C4", "V-MPO (EM policy iteration with a KL trust region) matches PPO (policy gradient) in return, with no larger "
            "across-seed spread and a smaller per-update KL, on the same tasks and budgets.",
            "papers/000_18d00f82fad2bd94.txt §1 (RQ2), §2 ('Key distinction'), §3, §4, App. A",
            f"Per task, on final evaluation returns (diverged runs score 0): (a) both methods learn — the lower end of each "
            f"IQM CI exceeds {LEARN_FACTOR:g}× the random policy's IQM (otherwise (b) and (c) cannot be supported: matching a "
            "method that has not learned proves nothing; their contradictions and (d) still count); (b) return: the "
            f"CI of IQM(V-MPO) − IQM(PPO) lies above −{MATCH_FRACTION:g}×IQM(PPO) (wholly below: not supported); (c) spread: "
            f"the CI of sd(V-MPO) − sd(PPO) over seeds lies below +{SPREAD_FRACTION:g}×IQM(PPO) (wholly above: not "
            "supported); (d) KL: the CI of IQM(V-MPO) − IQM(PPO) of each run's mean per-update KL(π_behaviour‖π_θ) lies "
            "below 0 (wholly above: not supported). Supported if every check holds on every task; not supported if any is "
            "contradicted; otherwise inconclusive.",
            COMMON_DEVIATIONS + VMPO_DEVIATIONS + (
                Deviation("PPO", "CleanRL `ppo_continuous_action`", "the same settings (SPEC §5)", "—"),),
        ),
    )

    def variants(self):
        return [
            Variant("PPO", "ppo", PPO),
            Variant("V-MPO", "vmpo", VMPO, train_config=VMPO_LOOP),
            Variant("random policy", "ppo", PPO, train_config=OnPolicyConfig(random_baseline=True)),
        ]

    def analyse(self, runs, rows, rng):
        s = scores(runs, rows)
        kl = per_run_mean(rows, "update/kl")
        kl_max = rows[rows.metric == "update/kl"].groupby("run_id").value.max()
        order = ["PPO", "V-MPO"]
        table, parts, checks = [], [], []
        random_iqm = {}
        for task in self.tasks:
            random_iqm[task] = rand = iqm_or_nan(cell(runs, s, task, "random policy"), rng)
            cis = {}
            for v in order:
                x = cell(runs, s, task, v)
                cis[v] = ci = iqm_or_nan(x, rng)
                table.append({"task": task, "method": v, "final return IQM [95% CI]": fmt_ci(ci, 1),
                              "× random (IQM ratio)": round(ci[0] / rand[0], 1) if rand[0] > 0 else "—", "sd over seeds": round(_sd(x), 1),
                              "mean per-update KL IQM [95% CI]": fmt_ci(iqm_or_nan(cell(runs, kl, task, v), rng), 4),
                              "max per-update KL": round(float(np.max(cell(runs, kl_max, task, v), initial=0.0)), 4),
                              "diverged": n_diverged(runs, task, v), "n": len(x),
                              f"learns (> {LEARN_FACTOR:g}× random)": learns(ci, rand[0])})
            table.append({"task": task, "method": "random policy", "final return IQM [95% CI]": fmt_ci(rand, 1), "× random (IQM ratio)": 1.0,
                          "sd over seeds": round(_sd(cell(runs, s, task, "random policy")), 1), "mean per-update KL IQM [95% CI]": "—",
                          "max per-update KL": "—", "diverged": 0, "n": len(cell(runs, s, task, "random policy")),
                          f"learns (> {LEARN_FACTOR:g}× random)": "—"})
            x, y = cell(runs, s, task, "V-MPO"), cell(runs, s, task, "PPO")
            learned = [learns(cis[v], rand[0]) for v in order]
            a = combine(learned)
            ppo_iqm = cis["PPO"][0]
            ret = stats.difference_ci(x, y, stats.iqm, rng)
            b = at_least(ret, MATCH_FRACTION * ppo_iqm)
            spread = stats.difference_ci(x, y, _sd, rng, n_boot=1000)
            c = "supported" if spread[2] < SPREAD_FRACTION * ppo_iqm else (
                "not supported" if spread[1] > SPREAD_FRACTION * ppo_iqm else "inconclusive")
            dkl = stats.difference_ci(cell(runs, kl, task, "V-MPO"), cell(runs, kl, task, "PPO"), stats.iqm, rng)
            d = "supported" if dkl[2] < 0 else ("not supported" if dkl[1] > 0 else "inconclusive")
            if a != "supported":  # matching a method that has not learned proves nothing: (b), (c) cannot be supported
                b = "inconclusive" if b == "supported" else b
                c = "inconclusive" if c == "supported" else c
            parts += [b, c, d]
            checks += [
                {"task": task, "check": "(a) both learn", "statistic [95% CI]": ", ".join(f"{v} {fmt_ci(cis[v], 1)}" for v in order)
                 + f" vs {LEARN_FACTOR:g}× random = {LEARN_FACTOR * rand[0]:.1f}", "outcome": a},
                {"task": task, "check": "(b) return", "statistic [95% CI]": f"IQM(V-MPO) − IQM(PPO) = {fmt_ci(ret, 1)}; "
                 f"margin −{MATCH_FRACTION * ppo_iqm:.1f}", "outcome": b},
                {"task": task, "check": "(c) spread", "statistic [95% CI]": f"sd(V-MPO) − sd(PPO) = {fmt_ci(spread, 1)}; "
                 f"margin +{SPREAD_FRACTION * ppo_iqm:.1f}", "outcome": c},
                {"task": task, "check": "(d) per-update KL", "statistic [95% CI]": f"IQM(V-MPO) − IQM(PPO) = {fmt_ci(dkl, 4)}",
                 "outcome": d},
            ]
        outcome = combine(parts)
        paper = "; ".join(f"CleanRL PPO on {t} at 8M steps, 10 seeds: {m} ± {sd} (ours, PPO at this profile: "
                          f"{next(r['final return IQM [95% CI]'] for r in table if r['task'] == t and r['method'] == 'PPO')})"
                          for t, (m, sd) in CLEANRL_PPO.items() if t in self.tasks)
        verdict = Verdict(self.claims[0], outcome, f"{parts.count('supported')} of {len(parts)} checks hold, "
                          f"{parts.count('not supported')} are contradicted (per task: both learn, return, spread, KL).", checks,
                          paper=paper or None)
        figures = {
            "learning_curves.png": learning_curves(runs, rows, rng, order, self.tasks, random_iqm),
            "per_update_kl.png": kl_curves(runs, rows, rng, order, self.tasks),
            "final_returns.png": _strip(runs, s, self.tasks, order, random_iqm),
        }
        return Analysis([verdict], figures, tables=[("Final returns, spread and per-update KL", pd.DataFrame(table))],
                        notes=["C5's adaptive-η runs are the V-MPO cartpole-swingup runs of this question (same configuration, "
                               "trained once by `emrl reproduce`)."])


def _strip(runs, s, tasks, order, random_iqm):
    """Final return of every seed (the across-seed spread), per method and task."""
    fig, axes = plotting.figure(ncols=len(tasks))
    palette = plotting.colors(order)
    for ax, task in zip(axes, tasks):
        for i, v in enumerate(order):
            x = cell(runs, s, task, v)
            ax.scatter(np.full(len(x), i) + np.linspace(-0.12, 0.12, len(x)), x, color=palette[v], s=18, label=v)
        ax.axhline(random_iqm[task][0], color="grey", linestyle="--", linewidth=1, label="random policy")
        ax.set_xticks(range(len(order)), order)
        ax.set_xlim(-0.6, len(order) - 0.4)
        ax.set_ylim(bottom=0)
        ax.set_title(task)
        ax.set_ylabel("final evaluation return (one dot per seed)")
    axes[-1].legend(loc="best")
    return fig


# ---------------------------------------------------------------------------------------------------------------- C5
ETAS = (0.01, 0.1, 1.0, 10.0)
"""The fixed temperatures: three orders of magnitude around the values the dual settles at (≈ 1–5 here)."""


def fixed_eta(eta: float) -> GEMPIConfig:
    """V-MPO with its temperature held at η: the GEMPI tuple of `VMPO` with temperature 'fixed' (T8 checks GEMPI ≡ V-MPO)."""
    g = VMPO.to_gempi()
    return dataclasses.replace(g, coefficients=(eta,), temperature="fixed", epsilons=())


class ControlTemperature(ControlQuestion):
    name = "control-temperature"
    title = "V-MPO's dual-adaptive temperature against a fixed-temperature sweep (RQ3) on DeepMind Control"
    description = (
        "V-MPO on cartpole-swingup with its E-step temperature η adapted by the dual (ε_η = 0.01) or held fixed across "
        "three orders of magnitude; everything else identical (`papers/000_18d00f82fad2bd94.txt §1` RQ3, "
        "`papers/001_8b44b9ea6e2e604b.txt §6`)."
    )
    tasks = (CARTPOLE,)
    budgets, task_budgets = _budgets(cartpole_only=True)
    claims = (
        Claim(
            "C5", "A dual-adaptive temperature gives V-MPO a practical stability advantage over fixed temperatures: without "
            "tuning it matches the best η of a sweep spanning ≥ 3 orders of magnitude, diverges no more often, and some fixed "
            "η in the sweep do worse.",
            "papers/000_18d00f82fad2bd94.txt §1 (RQ3), §3; papers/001_8b44b9ea6e2e604b.txt §6",
            f"On final evaluation returns (diverged runs score 0): (a) the CI of IQM(adaptive) − IQM(best fixed η) lies above "
            f"−{MATCH_FRACTION:g}×IQM(best fixed η) (wholly below: not supported); (b) the adaptive variant's divergence rate "
            "is at most the fixed sweep's pooled rate (above it: not supported); (c) some fixed η is worse than adaptive: the CI "
            f"of IQM(adaptive) − IQM(fixed η) lies wholly above +{MATCH_FRACTION:g}×IQM(best fixed η) for at least one η, or it "
            "diverges more often (no such η and every difference CI within that margin: not supported). Supported if (a), (b) "
            "and (c) hold; not supported if any is contradicted; otherwise inconclusive. The best fixed η is picked on the same "
            "runs, which favours the sweep. ESS and per-update KL are reported beside.",
            COMMON_DEVIATIONS + VMPO_DEVIATIONS + (
                Deviation("setting", "LLM scale (RQ3)", "state-based control", "SPEC C5"),
                Deviation("fixed-η V-MPO", "—", "GEMPI tuple of V-MPO with temperature 'fixed'",
                          "V-MPO has no fixed-η option; T8 checks GEMPI equals V-MPO"),),
        ),
    )

    def variants(self):
        fixed = [Variant(eta_label(e), "gempi", fixed_eta(e), train_config=VMPO_LOOP) for e in ETAS]
        return [*fixed, Variant("adaptive η", "vmpo", VMPO, train_config=VMPO_LOOP)]

    def analyse(self, runs, rows, rng):
        task = CARTPOLE
        s = scores(runs, rows)
        ess = per_run_mean(rows, "weights/ess")
        kl = per_run_mean(rows, "update/kl")
        eta_used = pd.concat([per_run_mean(rows, "dual/eta"), per_run_mean(rows, "dual/Lambda")])
        labels = [eta_label(e) for e in ETAS] + ["adaptive η"]
        cis = {v: iqm_or_nan(cell(runs, s, task, v), rng) for v in labels}
        table = []
        for v in labels:
            table.append({"variant": v, "final return IQM [95% CI]": fmt_ci(cis[v], 1),
                          "diverged": f"{n_diverged(runs, task, v)}/{len(cell(runs, s, task, v))}",
                          "ESS (top-k of 32) IQM": fmt_ci(iqm_or_nan(cell(runs, ess, task, v), rng), 1),
                          "per-update KL IQM": fmt_ci(iqm_or_nan(cell(runs, kl, task, v), rng), 4),
                          "η (mean over updates)": fmt_ci(iqm_or_nan(cell(runs, eta_used, task, v), rng), 3)})
        fixed = [eta_label(e) for e in ETAS]
        best = max(fixed, key=lambda v: cis[v][0])
        ref = cis[best][0]
        ad = cell(runs, s, task, "adaptive η")
        diff_best = stats.difference_ci(ad, cell(runs, s, task, best), stats.iqm, rng)
        a = at_least(diff_best, MATCH_FRACTION * ref)
        n_ad, n_ad_div = len(ad), n_diverged(runs, task, "adaptive η")
        n_fx = sum(len(cell(runs, s, task, v)) for v in fixed)
        n_fx_div = sum(n_diverged(runs, task, v) for v in fixed)
        rate_ad, rate_fx = n_ad_div / max(n_ad, 1), n_fx_div / max(n_fx, 1)
        b = "supported" if rate_ad <= rate_fx else "not supported"
        worse, within_all, checks = [], True, []
        for v in fixed:
            d = stats.difference_ci(ad, cell(runs, s, task, v), stats.iqm, rng)
            more_div = n_diverged(runs, task, v) / max(len(cell(runs, s, task, v)), 1) > rate_ad
            is_worse = d[1] > MATCH_FRACTION * ref or more_div
            worse.append(is_worse)
            within_all &= -MATCH_FRACTION * ref < d[1] and d[2] < MATCH_FRACTION * ref and not more_div
            checks.append({"check": f"(c) adaptive − {v}", "statistic [95% CI]": fmt_ci(d, 1),
                           "outcome": "fixed η worse" if is_worse else "not shown worse"})
        c = "supported" if any(worse) else ("not supported" if within_all else "inconclusive")
        checks = [
            {"check": f"(a) adaptive − best fixed ({best})", "statistic [95% CI]": f"{fmt_ci(diff_best, 1)}; margin "
             f"−{MATCH_FRACTION * ref:.1f}", "outcome": a},
            {"check": "(b) divergence rate", "statistic [95% CI]": f"adaptive {n_ad_div}/{n_ad} vs fixed sweep {n_fx_div}/{n_fx}",
             "outcome": b},
            *checks,
            {"check": "(c) some fixed η worse", "statistic [95% CI]": f"{sum(worse)} of {len(fixed)} fixed η", "outcome": c},
        ]
        outcome = combine([a, b, c])
        verdict = Verdict(self.claims[0], outcome, f"(a) {a}, (b) {b}, (c) {c}: adaptive {fmt_ci(cis['adaptive η'], 1)} vs best "
                          f"fixed {best} {fmt_ci(cis[best], 1)}; divergences adaptive {n_ad_div}/{n_ad}, fixed {n_fx_div}/{n_fx}.",
                          checks)
        figures = {"temperature_sweep.png": self._sweep_figure(runs, s, ess, kl, rng),
                   "learning_curves.png": learning_curves(runs, rows, rng, labels, self.tasks)}
        return Analysis([verdict], figures, tables=[("Every variant", pd.DataFrame(table))])

    def _sweep_figure(self, runs, s, ess, kl, rng):
        task = CARTPOLE
        fig, axes = plotting.figure(ncols=3)
        for ax, values, ylabel in zip(axes, (s, ess, kl), ("final return", "ESS of the E-step weights", "per-update KL")):
            cis = [iqm_or_nan(cell(runs, values, task, eta_label(e)), rng) for e in ETAS]
            ax.plot(ETAS, [c[0] for c in cis], marker="o", color=plotting.PALETTE[0], label="fixed η")
            ax.fill_between(ETAS, [c[1] for c in cis], [c[2] for c in cis], color=plotting.PALETTE[0], alpha=0.2, linewidth=0)
            d = iqm_or_nan(cell(runs, values, task, "adaptive η"), rng)
            ax.axhline(d[0], color=plotting.PALETTE[1], label="adaptive η")
            ax.axhspan(d[1], d[2], color=plotting.PALETTE[1], alpha=0.15, linewidth=0)
            if values is s:
                for e in ETAS:
                    k, n = n_diverged(runs, task, eta_label(e)), len(cell(runs, s, task, eta_label(e)))
                    ax.annotate(f"{k}/{n} div.", (e, ax.get_ylim()[0]), textcoords="offset points", xytext=(0, 4),
                                ha="center", fontsize=7)
                ax.set_title(f"adaptive η: {n_diverged(runs, task, 'adaptive η')}/"
                             f"{len(cell(runs, s, task, 'adaptive η'))} diverged")
            ax.set_xscale("log")
            ax.set_xlabel("fixed temperature η")
            ax.set_ylabel(f"{ylabel} (IQM, 95% CI)")
        axes[0].legend(loc="best")
        return fig


# ---------------------------------------------------------------------------------------------------------------- C8
DAR_BASE = dict(baseline="none")
"""The loop's score is already an advantage (GAE), so DAR's K-sample baseline is off; everything else is SPEC §5's DAR."""
C8_LOOP = OnPolicyConfig(reference="lagged", ref_period=5)
"""π_ref for the DAR family: the policy as it was up to 5 rollouts ago (5,120 steps at quick, 10,240 at paper)."""
C8_VARIANTS = (
    ("DAR", "dar", DARConfig(**DAR_BASE)),
    ("AT-DAR", "at_dar", ATDARConfig(**DAR_BASE, dual_over="batch")),
    ("DAR-TR", "dar_tr", DARTRConfig(**DAR_BASE)),
    ("Top-k DAR", "topk_dar", TopKDARConfig(**DAR_BASE)),
)


class ControlGEMPIVariants(ControlQuestion):
    name = "control-gempi-variants"
    title = "GEMPI's novel DAR variants (AT-DAR, DAR-TR, Top-k DAR) against DAR on DeepMind Control"
    description = (
        "DAR and the three instantiations GEMPI proposes, trained by the same on-policy loop on cartpole-swingup with a "
        "time-lagged reference policy (`papers/000_18d00f82fad2bd94.txt §7, §10` 'Novel Instantiations')."
    )
    tasks = (CARTPOLE,)
    budgets, task_budgets = _budgets(cartpole_only=True)
    claims = (
        Claim(
            "C8", "The GEMPI novel instantiations AT-DAR (adaptive α, β), DAR-TR (M-step trust region) and Top-k DAR improve "
            "on DAR.",
            "papers/000_18d00f82fad2bd94.txt §10 ('Novel Instantiations'), §7",
            "Per variant, on final evaluation returns (diverged runs score 0), the CI of IQM(variant) − IQM(DAR): *improves* if "
            f"it lies wholly above 0; *worse* if wholly below 0; *no difference* if it lies within ±{EQUIVALENCE_FRACTION:g}×"
            "IQM(DAR); otherwise (the CI overlaps 0 but is wider than the margin) *unclear*. Supported if all three improve; "
            "not supported if any is worse or shows no difference; otherwise inconclusive.",
            COMMON_DEVIATIONS + (
                Deviation("setting", "LLM fine-tuning (K = 4 samples per prompt)", "state-based control, K = 1 action per state",
                          "SPEC C8 asks it of the control suite"),
                Deviation("π_ref", "the SFT model (fixed)", "the policy as it was up to 5 rollouts ago (refreshed every 5,120 "
                          "steps)", "control has no SFT model; a fixed random init would anchor the policy to noise"),
                Deviation("advantage", "r − V^{π_t}(x), V from K samples", "GAE(0.99, 0.95) with a learned critic, batch-normalised",
                          "one sample per state"),
                Deviation("AT-DAR budgets ε_α, ε_β", "not given", "0.1, 0.1; Ẑ over the minibatch", "suite's choice; K = 1 "
                          "makes a per-context Ẑ meaningless"),
                Deviation("DAR-TR ε_M", "not given", "0.01 (KL(π_old‖π_θ), γ dual)", "V-MPO's ε_α scale"),
                Deviation("Top-k DAR", "top-k by advantage", "top half of each minibatch by advantage", "V-MPO's ρ = 0.5"),
            ),
        ),
    )

    def variants(self):
        return [Variant(label, algo, cfg, train_config=C8_LOOP) for label, algo, cfg in C8_VARIANTS]

    def analyse(self, runs, rows, rng):
        task = CARTPOLE
        s = scores(runs, rows)
        ess = per_run_mean(rows, "weights/ess")
        kl = per_run_mean(rows, "update/kl")
        labels = [label for label, _, _ in C8_VARIANTS]
        cis = {v: iqm_or_nan(cell(runs, s, task, v), rng) for v in labels}
        table = [{"variant": v, "final return IQM [95% CI]": fmt_ci(cis[v], 1),
                  "diverged": f"{n_diverged(runs, task, v)}/{len(cell(runs, s, task, v))}",
                  "ESS per minibatch IQM": fmt_ci(iqm_or_nan(cell(runs, ess, task, v), rng), 1),
                  "per-update KL IQM": fmt_ci(iqm_or_nan(cell(runs, kl, task, v), rng), 4)} for v in labels]
        dar = cell(runs, s, task, "DAR")
        margin = EQUIVALENCE_FRACTION * cis["DAR"][0]
        checks, parts, diffs = [], [], {}
        for v in labels[1:]:
            x = cell(runs, s, task, v)
            diffs[v] = d = stats.difference_ci(x, dar, stats.iqm, rng)
            poi = stats.probability_of_improvement(x, dar, rng)
            if d[1] > 0:
                found, part = "improves", "supported"
            elif d[2] < 0:
                found, part = "worse", "not supported"
            elif -margin < d[1] and d[2] < margin:
                found, part = "no difference", "not supported"
            else:
                found, part = "unclear", "inconclusive"
            parts.append(part)
            checks.append({"variant": v, "IQM(variant) − IQM(DAR) [95% CI]": fmt_ci(d, 1), "P(variant > DAR) [95% CI]": fmt_ci(poi),
                           "finding": found})
        outcome = combine(parts)
        verdict = Verdict(self.claims[0], outcome, "; ".join(f"{c['variant']}: {c['finding']}" for c in checks) + ".", checks)
        figs = {"learning_curves.png": learning_curves(runs, rows, rng, labels, self.tasks),
                "differences.png": _difference_figure(diffs, margin)}
        return Analysis([verdict], figs, tables=[("Every variant", pd.DataFrame(table))])


def _difference_figure(diffs: dict[str, tuple], margin: float):
    fig, axes = plotting.figure(ncols=1, width=4.2)
    ax = axes[0]
    names = list(diffs)
    for i, v in enumerate(names):
        p, lo, hi = diffs[v]
        ax.errorbar([p], [i], xerr=[[p - lo], [hi - p]], fmt="o", color=plotting.PALETTE[i % len(plotting.PALETTE)], capsize=3)
    ax.axvline(0.0, color="grey", linewidth=1)
    ax.axvspan(-margin, margin, color="grey", alpha=0.12, linewidth=0, label=f"±{EQUIVALENCE_FRACTION:g}×IQM(DAR)")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("IQM(variant) − IQM(DAR), final return (95% CI)")
    ax.set_title(CARTPOLE)
    ax.legend(loc="best")
    return fig
