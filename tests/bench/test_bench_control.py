"""`make bench`: emrl's on-policy control training against raw dm_control stepping, same task and machine.

On cartpole-swingup (the cheapest listed task per step, so the hardest case for the loop's overhead),
interleaved rounds time:
  raw   — uniform-random actions stepped through a `VecEnv` of S × N environments (no learning);
  PPO   — the on-policy loop training S seeds (S × N environments, MLP policies, CleanRL's 2048-step
          rollouts, 10 epochs × 32 minibatches);
  V-MPO — the same with V-MPO (n-step returns over 32-step unrolls, decoupled KL trust regions, target network
          refreshed every 100 learner steps), as the control questions configure it;
each method twice: eagerly (as quick runs train) and with its learner step compiled (`OnPolicyConfig.compile`, as the
paper profile trains; the one-off compile falls in the warm-up and in both runs of the difference below, so it cancels).
S = 5 seeds is the quick profile's group (the runner trains one grid cell's seeds together), N = 8.
Training throughput is taken at steady state: the wall time of a run of 1 + R rollouts minus that of a
1-rollout run (this cancels environment construction, the final evaluation and start-up) divided into
the R × S × 2048 extra environment steps. The machine is noisy, so each throughput is the best of the
rounds, and raw stepping is sampled before every training measurement and once after the last (a raw sample
taken in a slow moment would otherwise flatter the ratio). Reported: training env-steps/s ÷ raw env-steps/s
The target (≥ 0.5) is asserted for the paper profile's compiled learner, the configuration that trains at scale; the
eager ratios are reported beside it.
"""

import dataclasses
import time

import numpy as np
import pytest

import tasks
from suite.questions.control_onpolicy import PPO, VMPO, VMPO_LOOP
from tasks import RunSpec
from tasks.control_onpolicy import OnPolicyConfig
from tasks.dmc import VecEnv

pytestmark = [pytest.mark.bench, pytest.mark.usefixtures("one_torch_thread")]
TASK, SEEDS, ENVS, ROLLOUT, EXTRA, ROUNDS = "cartpole-swingup", 5, 8, 2048, 2, 2
METHODS = {"ppo": (PPO, OnPolicyConfig()), "vmpo": (VMPO, VMPO_LOOP)}
"""The configurations the control questions use (`suite/questions/control_onpolicy.py`), at CleanRL's rollout size."""
VARIANTS = [(algo, compiled) for algo in METHODS for compiled in (False, True)]


def raw_steps_per_s(steps_per_env: int = ROLLOUT // ENVS) -> float:
    env = VecEnv(TASK, list(range(SEEDS * ENVS)))
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (steps_per_env, env.n, env.action_dim)).astype(np.float32)
    t0 = time.perf_counter()
    for a in actions:
        env.step(a)
    return env.n * steps_per_env / (time.perf_counter() - t0)


def train_seconds(algo: str, rollouts: int, compiled: bool = False) -> float:
    cfg, loop = METHODS[algo]
    train = dataclasses.replace(loop, total_steps=rollouts * ROLLOUT, num_envs=ENVS, rollout=ROLLOUT, eval_every=10**9,
                                eval_episodes=1, compile=compiled)
    specs = [RunSpec(TASK, tasks.TASKS[TASK].config, algo, cfg, train, s) for s in range(SEEDS)]
    t0 = time.perf_counter()
    results = tasks.TASKS[TASK].family.train(specs)
    assert all(r.status == "ok" for r in results), [r.error for r in results]
    return time.perf_counter() - t0


def steady_state_steps_per_s(algo: str, compiled: bool) -> float:
    short, long = train_seconds(algo, 1, compiled), train_seconds(algo, 1 + EXTRA, compiled)
    return EXTRA * ROLLOUT * SEEDS / (long - short)


def test_bench_raw_stepping(benchmark):
    benchmark.pedantic(raw_steps_per_s, rounds=3, iterations=1, warmup_rounds=1)


def test_bench_ppo_training(benchmark):
    benchmark.pedantic(train_seconds, args=("ppo", 2), rounds=2, iterations=1)


def test_bench_ratio_training_vs_raw_stepping(benchmark):
    """Interleaved rounds; reports best(training env-steps/s) / best(raw env-steps/s) for PPO and V-MPO, eager and compiled."""
    for algo, compiled in VARIANTS:
        train_seconds(algo, 1, compiled)  # warm-up: imports, first optimiser, the compile (cached for later runs)
    raw, rates = [], {v: [] for v in VARIANTS}
    for _ in range(ROUNDS):
        for variant in VARIANTS:
            raw.append(raw_steps_per_s())  # raw stepping sampled beside every training measurement
            rates[variant].append(steady_state_steps_per_s(*variant))
    raw.append(raw_steps_per_s())
    best_raw = max(raw)
    name = {v: f"{v[0]}{' compiled' if v[1] else ''}" for v in VARIANTS}
    ratios = {v: max(r) / best_raw for v, r in rates.items()}
    benchmark.extra_info.update(task=TASK, seeds=SEEDS, envs_per_seed=ENVS, raw_steps_per_s=best_raw,
                                **{f"{name[v]}_steps_per_s": max(r) for v, r in rates.items()},
                                **{f"{name[v]}_ratio": x for v, x in ratios.items()})
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    print(f"\n{TASK}, {SEEDS} seeds x {ENVS} envs: raw stepping {best_raw:.0f} env-steps/s; "
          + "; ".join(f"{name[v]} training {max(rates[v]):.0f} env-steps/s = {ratios[v]:.2f}x raw" for v in VARIANTS)
          + f" (steady state, best of {ROUNDS} interleaved rounds, raw best of {len(raw)})")
    assert min(x for (_, compiled), x in ratios.items() if compiled) >= 0.5
