"""`make bench`: emrl's Atari-family training against raw MinAtar stepping, same game and machine, one run.

On MinAtar Breakout, interleaved rounds time:
  raw   — uniform-random actions stepped through an `AtariVecEnv` of N environments (no learning);
  PPO   — the Atari on-policy loop (MinAtar network, feed-forward core, A1's quick configuration: 8 envs, 4 unrolls of
          32 steps, 4 epochs × 4 minibatches);
  GTrXL — the same loop with V-MPO and a GTrXL core as the T-maze questions configure it (on Breakout here).
Training throughput is taken at steady state: the wall time of a run of 1 + R iterations minus that of a 1-iteration run,
divided into the R extra iterations' environment steps (frames = steps: MinAtar has no frame skip). The machine is
noisy, so each throughput is the best of the rounds. No target is set by the issue; the ratio is reported.
"""

import dataclasses
import time

import numpy as np
import pytest

import tasks
from suite.questions.atari import PPO, VMPO, VMPO_LOOP
from tasks import RunSpec
from tasks.atari import AtariTaskConfig, AtariVecEnv
from tasks.atari_onpolicy import AtariOnPolicyConfig

pytestmark = [pytest.mark.bench, pytest.mark.usefixtures("one_torch_thread")]
TASK, ENVS, EXTRA, ROUNDS = "minatar-breakout", 8, 4, 2
LOOP = AtariOnPolicyConfig(num_envs=ENVS, unroll=32, unrolls=4, eval_every=10**9, eval_episodes=1, eval_max_steps=1)
METHODS = {"ppo": ("ppo", PPO, LOOP), "vmpo_gtrxl": ("vmpo", VMPO, dataclasses.replace(LOOP, core="gtrxl", **VMPO_LOOP))}


def raw_steps_per_s(steps_per_env: int = 2048) -> float:
    env = AtariVecEnv(TASK, list(range(ENVS)), AtariTaskConfig())
    actions = np.random.default_rng(0).integers(0, env.num_actions, (steps_per_env, env.n))
    t0 = time.perf_counter()
    for a in actions:
        env.step(a)
    return env.n * steps_per_env / (time.perf_counter() - t0)


def train_seconds(name: str, iterations: int) -> float:
    algo, cfg, loop = METHODS[name]
    train = dataclasses.replace(loop, total_steps=iterations * loop.rollout)
    t0 = time.perf_counter()
    result = tasks.TASKS[TASK].family.train([RunSpec(TASK, AtariTaskConfig(), algo, cfg, train, 0)])[0]
    assert result.status == "ok", result.error or result.diverged
    return time.perf_counter() - t0


def test_bench_ratio_training_vs_raw_minatar(benchmark):
    """Interleaved rounds; reports best(training steps/s) / best(raw steps/s) for PPO and V-MPO + GTrXL."""
    train_seconds("ppo", 1)  # warm-up
    raw, rates = [], {name: [] for name in METHODS}
    for _ in range(ROUNDS):
        raw.append(raw_steps_per_s())
        for name in METHODS:
            short, long = train_seconds(name, 1), train_seconds(name, 1 + EXTRA)
            rates[name].append(EXTRA * LOOP.rollout / (long - short))
    best_raw = max(raw)
    benchmark.extra_info.update(task=TASK, envs=ENVS, raw_steps_per_s=best_raw,
                                **{f"{n}_steps_per_s": max(r) for n, r in rates.items()},
                                **{f"{n}_ratio": max(r) / best_raw for n, r in rates.items()})
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    print(f"\n{TASK}, {ENVS} envs: raw stepping {best_raw:.0f} steps/s; "
          + "; ".join(f"{n} training {max(r):.0f} steps/s = {max(r) / best_raw:.3f}x raw" for n, r in rates.items()))
    assert all(max(r) > 0 for r in rates.values())
