"""The Atari family's on-policy loop (`tasks/atari_onpolicy.py`): replay equals acting, divergence is recorded,
runs are deterministic, and every core trains end to end with PPO and V-MPO at a tiny budget."""

import dataclasses

import numpy as np
import pytest
import torch

import tasks
from algorithms.config import ConfigError
from algorithms.ppo import PPOConfig
from algorithms.vmpo import VMPOConfig
from tasks import RunSpec
from tasks.atari import AtariTaskConfig, AtariVecEnv
from tasks.atari_onpolicy import Agent, AtariOnPolicyConfig, _sample

TINY = AtariOnPolicyConfig(total_steps=64, num_envs=2, unroll=8, unrolls=2, minibatches=2, epochs=1, eval_episodes=2,
                           eval_max_steps=30, core_memory=4, core_hidden=16, torso_dim=16, eval_every=10**9)
TMAZE = AtariTaskConfig(tmaze_length=3)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run(algo, cfg, train, task="tmaze-memory", task_cfg=TMAZE, seed=0):
    return tasks.TASKS[task].family.train([RunSpec(task, task_cfg, algo, cfg, train, seed)])[0]


@pytest.mark.parametrize("core", ["ff", "lstm", "trxl", "trxl_i", "gtrxl"])
def test_replaying_an_unroll_from_its_stored_state_reproduces_the_actor(core):
    """What makes PPO's ratio exactly 1 before the first update: the learner's logits equal the actor's."""
    cfg = dataclasses.replace(TINY, core=core)
    env = AtariVecEnv("tmaze-memory", [1, 2, 3], TMAZE)
    torch.manual_seed(0)
    agent = Agent(env.obs_shape, env.num_actions, cfg)
    gen = torch.Generator().manual_seed(0)
    state, first, obs = agent.core.initial_state(env.n), torch.ones(env.n, dtype=torch.bool), env.obs
    T = 6
    acted, seen, firsts, starts = [], [], [], []
    with torch.no_grad():
        for t in range(3 * T):  # three unrolls; the middle one is replayed
            if t == T:
                starts = tuple(s.clone() for s in state)
            o = torch.from_numpy(obs)
            logits, _, state = agent(o[None], state, first[None])
            acted.append(logits[0]), seen.append(o), firsts.append(first)
            obs, _, terminated, truncated, _, _ = env.step(_sample(logits[0], gen).numpy())
            first = torch.from_numpy(terminated | truncated)
        replay, _, _ = agent(torch.stack(seen[T:2 * T]), starts, torch.stack(firsts[T:2 * T]))
    torch.testing.assert_close(replay, torch.stack(acted[T:2 * T]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("core", ["ff", "lstm", "trxl", "trxl_i", "gtrxl"])
@pytest.mark.parametrize("algo,cfg,loop", [("ppo", PPOConfig(ent_coef=0.01), {}),
                                           ("vmpo", VMPOConfig(epsilon_eta=0.02), dict(returns="nstep", max_grad_norm=None))])
def test_every_core_trains_end_to_end(core, algo, cfg, loop):
    r = run(algo, cfg, dataclasses.replace(TINY, core=core, **loop))
    assert r.status == "ok", r.error or r.diverged
    metrics = {m for _, m, _ in r.rows}
    assert {"eval/return", "update/kl", "update/grad_norm"} <= metrics
    assert all(np.isfinite(v) for _, _, v in r.rows)


def test_minatar_trains_end_to_end():
    r = run("ppo", PPOConfig(), TINY, task="minatar-breakout", task_cfg=AtariTaskConfig(max_frames=100))
    assert r.status == "ok"
    assert any(m == "eval/return" for _, m, _ in r.rows)


def test_same_seed_same_numbers_and_seeds_differ():
    a, b = run("ppo", PPOConfig(), TINY), run("ppo", PPOConfig(), TINY)
    c = run("ppo", PPOConfig(), TINY, seed=1)
    assert a.rows == b.rows
    assert a.rows != c.rows


def test_a_kl_blow_up_is_recorded_as_diverged_with_step_and_reason():
    r = run("ppo", PPOConfig(), dataclasses.replace(TINY, kl_limit=1e-30, total_steps=128))
    assert r.status == "diverged"
    assert r.diverged["step"] == 32 and "KL" in r.diverged["reason"]


def test_random_baseline_is_one_evaluation_at_step_zero():
    r = run("ppo", PPOConfig(), dataclasses.replace(TINY, random_baseline=True))
    assert r.status == "ok" and [(s, m) for s, m, _ in r.rows] == [(0, "eval/return")]


@pytest.mark.parametrize("field,value,allowed", [("core", "gru", "Allowed"), ("unroll", 0, "must be"),
                                                 ("minibatches", 100, "at most"), ("gamma", 1.5, "[0, 1]")])
def test_bad_config_names_the_field(field, value, allowed):
    with pytest.raises(ConfigError, match=field) as e:
        dataclasses.replace(TINY, **{field: value})
    assert allowed in str(e.value)


def test_decoupled_kl_is_refused_for_categorical_policies():
    with pytest.raises(ConfigError, match="decoupled"):
        run("vmpo", VMPOConfig(kl_split="decoupled"), TINY)
