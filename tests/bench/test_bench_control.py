"""`make bench`: emrl's on-policy control training against raw dm_control stepping, same task and machine.

On cartpole-swingup (the cheapest listed task per step, so the hardest case for the loop's overhead),
interleaved rounds time:
  raw   — uniform-random actions stepped through a `VecEnv` of S × N environments (no learning);
  PPO   — the on-policy loop training S seeds (S × N environments, MLP policies, CleanRL's 2048-step
          rollouts, 10 epochs × 32 minibatches);
  V-MPO — the same with V-MPO (n-step returns over 32-step unrolls, decoupled KL trust regions, target network
          refreshed once per rollout), as the control questions configure it;
each method twice: eagerly (as quick runs train) and with its learner step compiled (`OnPolicyConfig.compile`, as the
paper profile trains). S = 5 seeds is the quick profile's group (the runner trains one grid cell's seeds together), N = 8.

Training throughput is taken at steady state: the wall time of a run of 1 + R rollouts minus that of a 1-rollout run
(this cancels environment construction, the final evaluation and start-up) divided into the R × S × 2048 extra
environment steps. A compiled run's one-off compile (the first learner call: tracing, inductor, one step; timed) is
taken out of its wall time first: it is paid once per run group, and its few seconds of noise would otherwise swamp
the difference. The machine's speed drifts within minutes, so each training measurement is paired with raw stepping
timed just before and just after it, its ratio is training env-steps/s ÷ the mean of those two raw rates, and a
variant's ratio is the median over rounds. The target (≥ 0.5) is asserted for the compiled learner, the
configuration that trains at scale (the paper profile); the eager ratios are reported beside it.
"""

import dataclasses
import statistics
import time
from unittest import mock

import numpy as np
import pytest

import tasks
from suite.questions.control_onpolicy import PPO, VMPO, VMPO_LOOP
from tasks import RunSpec, control_onpolicy
from tasks.control_onpolicy import CompiledStep, OnPolicyConfig
from tasks.dmc import VecEnv

pytestmark = [pytest.mark.bench, pytest.mark.usefixtures("one_torch_thread")]
TASK, SEEDS, ENVS, ROLLOUT, EXTRA, ROUNDS = "cartpole-swingup", 5, 8, 2048, 2, 3
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


class TimedCompiledStep(CompiledStep):
    """`CompiledStep` that adds the wall time of its first call (tracing, compiling and one learner step) to `seconds`."""

    seconds = 0.0

    def __call__(self, mb):
        if not self.first:
            return super().__call__(mb)
        t0 = time.perf_counter()
        out = super().__call__(mb)
        TimedCompiledStep.seconds += time.perf_counter() - t0
        return out


def train_seconds(algo: str, rollouts: int, compiled: bool = False) -> float:
    """Wall time of training SEEDS seeds for `rollouts` rollouts, less the one-off compile of a compiled learner."""
    cfg, loop = METHODS[algo]
    train = dataclasses.replace(loop, total_steps=rollouts * ROLLOUT, num_envs=ENVS, rollout=ROLLOUT, eval_every=10**9,
                                eval_episodes=1, compile=compiled)
    specs = [RunSpec(TASK, tasks.TASKS[TASK].config, algo, cfg, train, s) for s in range(SEEDS)]
    TimedCompiledStep.seconds = 0.0
    with mock.patch.object(control_onpolicy, "CompiledStep", TimedCompiledStep):
        t0 = time.perf_counter()
        results = tasks.TASKS[TASK].family.train(specs)
        seconds = time.perf_counter() - t0 - TimedCompiledStep.seconds
    assert all(r.status == "ok" for r in results), [r.error for r in results]
    if compiled:
        assert all(r.rows[0] == (0, "loop/compiled", 1.0) for r in results)
    return seconds


def steady_state_steps_per_s(algo: str, compiled: bool) -> float:
    short, long = train_seconds(algo, 1, compiled), train_seconds(algo, 1 + EXTRA, compiled)
    return EXTRA * ROLLOUT * SEEDS / (long - short)


def test_bench_raw_stepping(benchmark):
    benchmark.pedantic(raw_steps_per_s, rounds=3, iterations=1, warmup_rounds=1)


def test_bench_ppo_training(benchmark):
    benchmark.pedantic(train_seconds, args=("ppo", 2), rounds=2, iterations=1)


def test_bench_ratio_training_vs_raw_stepping(benchmark):
    """Interleaved rounds; each training throughput over the raw stepping timed around it; median over rounds."""
    for algo, compiled in VARIANTS:
        train_seconds(algo, 1, compiled)  # warm-up: imports, first optimiser, inductor's on-disk cache
    raw = [raw_steps_per_s()]
    rates: dict[tuple[str, bool], list[float]] = {v: [] for v in VARIANTS}
    ratios: dict[tuple[str, bool], list[float]] = {v: [] for v in VARIANTS}
    for _ in range(ROUNDS):
        for variant in VARIANTS:
            rate = steady_state_steps_per_s(*variant)
            raw.append(raw_steps_per_s())
            rates[variant].append(rate)
            ratios[variant].append(rate / statistics.mean(raw[-2:]))
    name = {v: f"{v[0]}{' compiled' if v[1] else ''}" for v in VARIANTS}
    ratio = {v: statistics.median(r) for v, r in ratios.items()}
    benchmark.extra_info.update(task=TASK, seeds=SEEDS, envs_per_seed=ENVS, raw_steps_per_s=statistics.median(raw),
                                **{f"{name[v]}_steps_per_s": statistics.median(r) for v, r in rates.items()},
                                **{f"{name[v]}_ratio": x for v, x in ratio.items()})
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    print(f"\n{TASK}, {SEEDS} seeds x {ENVS} envs, median of {ROUNDS} interleaved rounds: raw stepping "
          f"{statistics.median(raw):.0f} env-steps/s ({min(raw):.0f}-{max(raw):.0f} over {len(raw)} samples); "
          + "; ".join(f"{name[v]} training {statistics.median(rates[v]):.0f} env-steps/s = {ratio[v]:.2f}x raw "
                      f"(rounds {', '.join(f'{x:.2f}' for x in ratios[v])})" for v in VARIANTS))
    assert min(x for (_, compiled), x in ratio.items() if compiled) >= 0.5
