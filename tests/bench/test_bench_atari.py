"""`make bench`: emrl's Atari-family training against raw MinAtar stepping, and where one iteration's time goes.

1. On MinAtar Breakout, interleaved rounds time:
  raw   — uniform-random actions stepped through an `AtariVecEnv` of N environments (no learning);
  PPO   — the Atari on-policy loop (MinAtar network, feed-forward core, A1's quick configuration: 8 envs, 4 unrolls of
          32 steps, 4 epochs × 4 minibatches);
  GTrXL — the same loop with V-MPO and a GTrXL core as the T-maze questions configure it (on Breakout here).
Training throughput is taken at steady state: the wall time of a run of 1 + R iterations minus that of a 1-iteration run,
divided into the R extra iterations' environment steps (frames = steps: MinAtar has no frame skip). The machine is
noisy, so each throughput is the best of the rounds. MinAtar steps cost microseconds, so the ratio to raw is small by
nature; it is reported, not asserted.
2. For A1's PPO and A3's GTrXL (the dearest cell of `quick`), the loop's seconds per iteration against the network work
the iteration cannot avoid, timed bare on the same shapes: acting (one batched forward per rollout step) and learning
(epochs × minibatches of forward, backward and an Adam step). The target, asserted: the bare network work is ≥ 0.5 of the
loop's time, i.e. environments, sampling, advantages, losses, divergence checks and logging add at most as much again.
What remains is the network itself on small batches (dispatch-bound at width 64): hence
3. a grid cell's 5 seeds trained in lockstep (stacked agents under vmap, one call per step) against the same 5 seeds one
after another; the speed-up is reported, and lockstep must not be slower.
"""

import dataclasses
import time

import numpy as np
import pytest
import torch

import tasks
import suite.questions.atari as A
from suite.questions.atari import PPO, VMPO, VMPO_LOOP
from tasks import RunSpec
from tasks.atari import AtariTaskConfig, AtariVecEnv
from tasks.atari_onpolicy import Agent, AtariOnPolicyConfig

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


# ------------------------------------------------------------------------------------------------ where an iteration goes
A3_LOOP = AtariOnPolicyConfig(**{**A.MEMORY_BUDGETS["quick"].train, **VMPO_LOOP, "core": "gtrxl", "eval_episodes": 1,
                                 "eval_max_steps": 1})
A3_TASK = AtariTaskConfig(**A.MEMORY_TMAZE["quick"])
CASES = {  # name: (task, task config, algorithm, its config, loop)
    "A1 PPO, MinAtar network": (TASK, AtariTaskConfig(), "ppo", PPO, LOOP),
    "A3 V-MPO, GTrXL on the 16-cell T-maze": ("tmaze-memory", A3_TASK, "vmpo", VMPO, A3_LOOP),
}


def loop_seconds_per_iteration(task, task_cfg, algo, cfg, loop, extra=EXTRA) -> float:
    def run(iterations):
        spec = RunSpec(task, task_cfg, algo, cfg, dataclasses.replace(loop, total_steps=iterations * loop.rollout), 0)
        t0 = time.perf_counter()
        assert tasks.TASKS[task].family.train([spec])[0].status == "ok"
        return time.perf_counter() - t0
    return (run(1 + extra) - run(1)) / extra


def network_seconds_per_iteration(task, task_cfg, loop, iterations=EXTRA) -> dict[str, float]:
    """The network work one iteration cannot avoid, timed bare: acting (one batched forward per step of the rollout) and
    learning (epochs × minibatches of forward, a scalar loss, backward and an Adam step on whole unrolls)."""
    env = AtariVecEnv(task, list(range(loop.num_envs)), task_cfg)
    torch.manual_seed(0)
    agent = Agent(env.obs_shape, env.num_actions, loop)
    opt = torch.optim.Adam(agent.parameters(), lr=1e-4)
    n, T = loop.num_envs, loop.unroll
    obs = torch.zeros(1, n, *env.obs_shape)
    first = torch.zeros(1, n, dtype=torch.bool)
    b = n * loop.unrolls // loop.minibatches
    mb_obs, mb_first = torch.zeros(T, b, *env.obs_shape), torch.zeros(T, b, dtype=torch.bool)
    t0 = time.perf_counter()
    with torch.no_grad():
        for _ in range(iterations):
            state = agent.core.initial_state(n)
            for _ in range(loop.unroll * loop.unrolls):
                _, _, state = agent(obs, state, first)
    acting = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(iterations * loop.epochs * loop.minibatches):
        logits, value, _ = agent(mb_obs, agent.core.initial_state(b), mb_first)
        loss = logits.logsumexp(-1).mean() + value.pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    learning = time.perf_counter() - t0
    return {"acting": acting / iterations, "learning": learning / iterations}


def test_bench_where_an_iteration_goes(benchmark):
    """Interleaved rounds; per case, the loop's seconds per iteration against the bare network work of that iteration
    (acting + learning). Target: network / loop ≥ 0.5 — the loop (environments, sampling, advantages, bookkeeping, the
    per-minibatch loss and divergence checks) adds at most the network compute it must do once more."""
    best: dict[str, dict[str, float]] = {}
    for _ in range(ROUNDS):
        for name, (task, task_cfg, algo, cfg, loop) in CASES.items():
            net = network_seconds_per_iteration(task, task_cfg, loop)
            whole = loop_seconds_per_iteration(task, task_cfg, algo, cfg, loop)
            ratio = (net["acting"] + net["learning"]) / whole
            if name not in best or ratio > best[name]["ratio"]:
                best[name] = {"loop_s": whole, **{f"{k}_s": v for k, v in net.items()}, "ratio": ratio}
    benchmark.extra_info.update({name: b for name, b in best.items()})
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    for name, b in best.items():
        print(f"\n{name}: loop {b['loop_s']:.3f} s per iteration; bare network {b['acting_s']:.3f} s acting + "
              f"{b['learning_s']:.3f} s learning = {b['ratio']:.2f} of it")
    assert all(b["ratio"] >= 0.5 for b in best.values()), best


def test_bench_seeds_in_lockstep_against_one_after_another(benchmark):
    """A grid cell's 5 seeds trained in lockstep (one `train` call) against the same 5 trained one after another, per
    case, at steady state (1 + R iterations minus 1). Reports the speed-up; asserts lockstep is not slower."""
    seeds = range(5)
    best: dict[str, float] = {}
    for _ in range(ROUNDS):
        for name, (task, task_cfg, algo, cfg, loop) in CASES.items():
            def run(iterations, group):
                train = dataclasses.replace(loop, total_steps=iterations * loop.rollout)
                specs = [RunSpec(task, task_cfg, algo, cfg, train, s) for s in seeds]
                t0 = time.perf_counter()
                for batch in ([specs] if group else [[s] for s in specs]):
                    assert all(r.status == "ok" for r in tasks.TASKS[task].family.train(batch))
                return time.perf_counter() - t0
            lockstep = (run(1 + EXTRA, True) - run(1, True)) / EXTRA
            alone = (run(1 + EXTRA, False) - run(1, False)) / EXTRA
            best[name] = max(best.get(name, 0.0), alone / lockstep)
    benchmark.extra_info.update({f"{name} speed-up": v for name, v in best.items()})
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    for name, v in best.items():
        print(f"\n{name}: 5 seeds in lockstep {v:.2f}x faster than one after another")
    assert all(v >= 1.0 for v in best.values()), best
