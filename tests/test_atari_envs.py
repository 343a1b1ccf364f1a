"""The Atari family's environments (`tasks/atari.py`): MinAtar and ALE construct offline and step, seeding,
the autoreset contract, the frame cap, the T-maze's known optimum and cue visibility, config validation and
the torsos' shapes. No network: the ALE ROMs ship inside ale-py."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from algorithms.config import ConfigError
from tasks.atari import (MINATAR_GAMES, AtariTaskConfig, AtariVecEnv, ConvTorso, all_tasks, ale_tasks, make_torso,
                         random_policy_return)

CHANNELS = {"asterix": 4, "breakout": 4, "freeway": 7, "seaquest": 10, "space_invaders": 6}
MINIMAL_ACTIONS = {"asterix": 5, "breakout": 3, "freeway": 3, "seaquest": 6, "space_invaders": 4}
ALE_ACTIONS = {"pong": 6, "breakout": 4}  # the v5 minimal action sets
L = AtariTaskConfig().tmaze_length


def rollout(env: AtariVecEnv, steps: int, seed: int = 0) -> list[tuple]:
    """Step `env` with uniform actions from a fixed generator; every step's outputs (copied)."""
    rng = np.random.default_rng(seed)
    return [tuple(np.copy(x) for x in env.step(rng.integers(env.num_actions, size=env.n))) for _ in range(steps)]


def same(a: list[tuple], b: list[tuple]) -> bool:
    return all(np.array_equal(x, y, equal_nan=True) for s, t in zip(a, b) for x, y in zip(s, t))


# ------------------------------------------------------------------------------------------------ construct and step


def test_task_lists():
    assert all_tasks() == [*(f"minatar-{g}" for g in MINATAR_GAMES), "ale-pong", "ale-breakout",
                           "tmaze-memory", "tmaze-reactive"]
    assert {"ale-pong", "ale-breakout", "ale-montezuma_revenge", "ale-space_invaders"} <= set(ale_tasks())
    assert "ale-combat" not in ale_tasks()  # two-player only: ale-py registers no v5 id


@pytest.mark.parametrize("game", MINATAR_GAMES)
def test_minatar_constructs_and_steps(game):
    env = AtariVecEnv(f"minatar-{game}", [1, 2])
    assert env.obs_shape == (CHANNELS[game], 10, 10) and env.num_actions == MINIMAL_ACTIONS[game]
    assert env.obs.shape == (2, *env.obs_shape) and env.obs.dtype == np.float32
    for next_obs, reward, term, trunc, final_obs, ended_return in rollout(env, 60):
        for o in (next_obs, final_obs):
            assert o.dtype == np.float32 and o.shape == (2, *env.obs_shape) and set(np.unique(o)) <= {0.0, 1.0}
        assert reward.dtype == np.float32 and np.isfinite(reward).all() and term.dtype == bool and trunc.dtype == bool


@pytest.mark.parametrize("game", ["pong", "breakout"])
def test_ale_constructs_offline_and_steps(game):
    env = AtariVecEnv(f"ale-{game}", [1, 2])
    assert env.obs_shape == (4, 84, 84) and env.num_actions == ALE_ACTIONS[game]
    assert env.obs.dtype == np.float32 and 0.0 <= env.obs.min() and env.obs.max() <= 1.0 and env.obs.max() > 0.0
    for next_obs, reward, term, trunc, final_obs, _ in rollout(env, 30):
        assert next_obs.shape == (2, 4, 84, 84) and next_obs.dtype == np.float32
        assert 0.0 <= next_obs.min() and next_obs.max() <= 1.0 and np.isfinite(reward).all()
    # the stack holds the last four frames, oldest first: after a step, frame k is the previous frame k + 1
    prev = env.obs.copy()
    obs = env.step(np.zeros(2, dtype=np.int64))[0]
    assert np.array_equal(obs[:, :3], prev[:, 1:])


# ------------------------------------------------------------------------------------------------ seeding


@pytest.mark.parametrize("task,steps", [("minatar-seaquest", 80), ("minatar-breakout", 80), ("ale-pong", 15),
                                        ("tmaze-memory", 40)])
def test_seeding(task, steps):
    a = rollout(AtariVecEnv(task, [3, 4]), steps)
    assert same(a, rollout(AtariVecEnv(task, [3, 4]), steps))  # same seeds, same actions -> identical
    assert not same(a, rollout(AtariVecEnv(task, [5, 6]), steps))  # other seeds -> a different trajectory
    # env i depends on seeds[i] alone: env 0 of [3, 4] is env 0 of [3, 9]
    b = rollout(AtariVecEnv(task, [3, 9]), steps)
    assert all(np.array_equal(x[0], y[0], equal_nan=True) for s, t in zip(a, b) for x, y in zip(s, t))


# ------------------------------------------------------------------------------------------------ autoreset contract


@pytest.mark.parametrize("task,cfg", [("minatar-breakout", AtariTaskConfig()),
                                      ("minatar-asterix", AtariTaskConfig(max_frames=30)),
                                      ("tmaze-memory", AtariTaskConfig(tmaze_length=3))])
def test_autoreset_contract(task, cfg):
    env = AtariVecEnv(task, [0, 1, 2, 3], cfg)
    running, ended_any, rng = np.zeros(env.n), 0, np.random.default_rng(0)
    for _ in range(300):
        next_obs, reward, term, trunc, final_obs, ended_return = env.step(rng.integers(env.num_actions, size=env.n))
        ended = term | trunc
        assert not (term & trunc).any() and np.array_equal(next_obs, env.obs)
        assert np.array_equal(np.isnan(ended_return), ~ended)  # NaN exactly where no episode ended
        assert np.array_equal(final_obs[~ended], next_obs[~ended])
        running += reward
        np.testing.assert_allclose(ended_return[ended], running[ended], rtol=1e-6)  # the whole episode's return
        running[ended] = 0.0
        ended_any += ended.sum()
    assert ended_any > 0


def test_truncation_at_the_frame_cap():
    # MinAtar: one frame per step, so a cap of 5 frames truncates at step 5; the ball needs >= 6 steps to fall
    env = AtariVecEnv("minatar-breakout", [0, 1], AtariTaskConfig(max_frames=5))
    for k in range(1, 6):
        _, reward, term, trunc, final_obs, ended_return = env.step(np.zeros(2, dtype=np.int64))
        assert not term.any() and trunc.all() == (k == 5) and np.isnan(ended_return).all() == (k < 5)
    # ALE: no no-ops at reset, 4 frames a step: a 100-frame cap truncates at step 25
    env = AtariVecEnv("ale-pong", [0], AtariTaskConfig(max_frames=100, noop_max=0))
    for k in range(1, 26):
        next_obs, _, term, trunc, final_obs, ended_return = env.step(np.zeros(1, dtype=np.int64))
        assert not term.any() and trunc[0] == (k == 25)
    assert ended_return[0] == 0.0  # no point is scored in 100 frames
    # next_obs is the new episode's first observation (its stack padded with the reset frame); final_obs is not
    assert all(np.array_equal(next_obs[0, i], next_obs[0, 0]) for i in range(4))
    assert not np.array_equal(final_obs, next_obs)


# ------------------------------------------------------------------------------------------------ T-maze


def run_tmaze(task: str, policy, n: int = 64, steps: int = 600, seed: int = 0, cfg: AtariTaskConfig | None = None):
    """Run `policy(obs, memory) -> actions` where `memory` [n] is a cue the policy may keep (it is handed the
    cue bits only where the current observation shows them); returns the ended episodes' returns and lengths."""
    env = AtariVecEnv(task, [seed * 1000 + i for i in range(n)], cfg)
    remembered = np.full(n, -1)
    returns, lengths, t = [], [], np.zeros(n, dtype=np.int64)
    obs = env.obs
    for _ in range(steps):
        shown = obs[:, :2].sum(1) > 0
        remembered = np.where(shown, obs[:, :2].argmax(1), remembered)
        obs, _, term, trunc, _, ended_return = env.step(policy(obs, remembered))
        t += 1
        ended = term | trunc
        returns += ended_return[ended].tolist()
        lengths += t[ended].tolist()
        t[ended] = 0
    return np.array(returns), np.array(lengths)


def junction_then(choose):
    return lambda obs, memory: np.where(obs[:, 3] == 1, choose(obs, memory), 0)


def test_tmaze_optimal_policy_with_memory_gets_one_every_episode():
    returns, lengths = run_tmaze("tmaze-memory", junction_then(lambda obs, mem: mem + 1))
    assert len(returns) >= 64 * 50 and (returns == 1.0).all() and (lengths == L + 1).all()


def test_tmaze_guessing_and_memoryless_policies_get_zero_in_expectation():
    rng = np.random.default_rng(1)
    guess = junction_then(lambda obs, mem: rng.integers(1, 3, size=len(obs)))
    # a memoryless policy: the side shown in the *current* observation, left when none is shown
    memoryless = junction_then(lambda obs, mem: 1 + obs[:, 1].astype(np.int64))
    for policy, task in [(guess, "tmaze-memory"), (guess, "tmaze-reactive"), (memoryless, "tmaze-memory")]:
        returns, _ = run_tmaze(task, policy, n=256)
        assert len(returns) > 10_000 and abs(returns.mean()) < 0.04  # sd of the mean <= 1/sqrt(10^4) = 0.01
    returns, _ = run_tmaze("tmaze-reactive", memoryless)
    assert (returns == 1.0).all()  # the same memoryless policy is optimal when the cue stays visible


@pytest.mark.parametrize("task", ["tmaze-memory", "tmaze-reactive"])
def test_tmaze_cue_visibility(task):
    env = AtariVecEnv(task, list(range(16)), AtariTaskConfig(tmaze_length=4))
    t, obs = np.zeros(16, dtype=np.int64), env.obs
    cue = obs[:, :2].argmax(1)  # each episode's cue, read from its first observation
    assert (obs[:, :2].sum(1) == 1).all() and (obs[:, 2] == 1).all() and (obs[:, 3] == 0).all()
    rng = np.random.default_rng(0)
    for _ in range(200):
        obs, _, term, trunc, final_obs, _ = env.step(rng.integers(3, size=16))
        ended = term | trunc
        t = np.where(ended, 0, t + 1)
        # the cue bits of a step's observation: only at t = 0 (memory) or always (reactive)
        assert np.array_equal(obs[:, :2].sum(1), (t == 0) if task == "tmaze-memory" else np.ones(16))
        assert np.array_equal(final_obs[:, :2].sum(1), np.zeros(16) if task == "tmaze-memory" else np.ones(16))
        if task == "tmaze-reactive":  # the cue shown is the episode's own cue, to its last observation
            assert np.array_equal(final_obs[:, :2].argmax(1), cue)
        assert np.array_equal(obs[:, 2] + obs[:, 3], np.ones(16))  # exactly one of corridor / junction
        cue = np.where(ended, obs[:, :2].argmax(1), cue)


def test_tmaze_rewards_and_cap():
    # always "left": a no-op in the corridor, so the walker never moves and is truncated at the cap with
    # return cap * step_reward = 12 * -0.01
    cfg = AtariTaskConfig(tmaze_length=2, tmaze_step_reward=-0.01)
    assert cfg.tmaze_cap == 4 * (2 + 1)
    env = AtariVecEnv("tmaze-memory", [0, 1], cfg)
    for k in range(1, 13):
        _, reward, term, trunc, final_obs, ended_return = env.step(np.ones(2, dtype=np.int64))
        np.testing.assert_allclose(reward, -0.01)
        assert not term.any() and trunc.all() == (k == 12)
    np.testing.assert_allclose(ended_return, -0.12, rtol=1e-5)
    assert (final_obs[:, 2] == 1).all()
    # the wrong side at the junction: -1
    env = AtariVecEnv("tmaze-reactive", [7], AtariTaskConfig(tmaze_length=1))
    wrong = 2 - int(env.obs[0, :2].argmax())  # cue 0 (left) -> action 2 (right), cue 1 -> action 1 (left)
    env.step(np.zeros(1, dtype=np.int64))
    _, reward, term, _, _, ended_return = env.step(np.array([wrong]))
    assert reward[0] == -1.0 and term[0] and ended_return[0] == -1.0


def test_random_policy_return():
    r = random_policy_return("tmaze-memory", AtariTaskConfig(), 200, seed=3)
    assert r == random_policy_return("tmaze-memory", AtariTaskConfig(), 200, seed=3) and -0.2 < r < 0.2
    assert random_policy_return("minatar-breakout", AtariTaskConfig(), 4, seed=0) >= 0.0


# ------------------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize("changes,field", [
    ({"sticky": 1.5}, "sticky"), ({"minatar_sticky": -0.1}, "minatar_sticky"), ({"frame_skip": 0}, "frame_skip"),
    ({"frame_stack": 2.5}, "frame_stack"), ({"noop_max": -1}, "noop_max"), ({"max_frames": 0}, "max_frames"),
    ({"tmaze_length": 0}, "tmaze_length"), ({"tmaze_max_steps": 10}, "tmaze_max_steps"),
    ({"tmaze_step_reward": float("nan")}, "tmaze_step_reward"), ({"minatar_ramping": 1}, "minatar_ramping"),
])
def test_config_validation_names_the_field(changes, field):
    with pytest.raises(ConfigError, match=f"AtariTaskConfig.{field} = "):
        AtariTaskConfig(**changes)


def test_unknown_names_and_bad_actions():
    with pytest.raises(ConfigError, match="Did you mean 'minatar-breakout'"):
        AtariVecEnv("minatar-breakuot", [0])
    with pytest.raises(ConfigError, match="ale-pong"):
        AtariVecEnv("ale-pongg", [0])
    for seeds in ([], [0, -1]):
        with pytest.raises(ConfigError, match="AtariVecEnv seeds = "):
            AtariVecEnv("tmaze-memory", seeds)
    env = AtariVecEnv("tmaze-memory", [0, 1])
    for bad in (np.zeros(3, dtype=np.int64), np.zeros(2), np.array([0, 3])):
        with pytest.raises(ValueError):
            env.step(bad)


# ------------------------------------------------------------------------------------------------ torsos


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_torso_shapes_and_sizes():
    x = torch.rand(5, 3, 4, 10, 10)  # [T, B, C, H, W]
    minatar = make_torso((4, 10, 10))
    assert isinstance(minatar, ConvTorso) and minatar.out_dim == 128 and minatar(x).shape == (5, 3, 128)
    # conv 4->16 3x3: 4*16*9 + 16 = 592; 8*8*16 = 1024 -> 128: 1024*128 + 128 = 131_200
    assert n_params(minatar) == 592 + 131_200
    nature = make_torso((4, 84, 84))
    assert nature.out_dim == 512 and nature(torch.rand(2, 4, 84, 84)).shape == (2, 512)
    # 84 -8/4-> 20 -4/2-> 9 -3/1-> 7: 4*32*64+32 + 32*64*16+64 + 64*64*9+64 + 7*7*64*512+512 = 1_684_128
    assert n_params(nature) == 8_224 + 32_832 + 36_928 + 1_606_144
    mlp = make_torso((4,))
    assert mlp.out_dim == 64 and mlp(torch.rand(7, 4)).shape == (7, 64)
    assert make_torso((7, 10, 10), out_dim=32)(torch.rand(2, 7, 10, 10)).shape == (2, 32)
    w = nature.net[0].weight.reshape(32, -1)  # orthogonal rows with gain sqrt(2): W W^T = 2 I
    torch.testing.assert_close(w @ w.T, 2 * torch.eye(32), atol=1e-4, rtol=0)
    with pytest.raises(ConfigError):
        make_torso((4, 84))


@pytest.mark.parametrize("length", [16, 64])
def test_long_tmaze_no_memoryless_policy_beats_chance_and_memory_solves_it(length):
    """At the corridor lengths A3 runs (16 at `quick`, 64 at `standard`): every deterministic memoryless policy (a
    table from the four distinct observations to the three actions, 81 in all) scores chance or less, the best of them
    included, while the policy that remembers the first observation's cue scores +1 in every episode."""
    cfg = AtariTaskConfig(tmaze_length=length)

    def observation_index(obs):  # 0: cue left at the start, 1: cue right at the start, 2: corridor, 3: junction
        return np.where(obs[:, 0] == 1, 0, np.where(obs[:, 1] == 1, 1, np.where(obs[:, 3] == 1, 3, 2)))

    best = -np.inf
    for table in itertools.product(range(3), repeat=4):
        policy = lambda obs, mem, table=np.array(table): table[observation_index(obs)]
        returns, _ = run_tmaze("tmaze-memory", policy, n=64, steps=10 * (length + 1), cfg=cfg)
        best = max(best, returns.mean() if len(returns) else 0.0)
    assert best < 0.15  # chance is 0; sd of one policy's mean <= 1/sqrt(64·9) ≈ 0.04
    returns, lengths = run_tmaze("tmaze-memory", junction_then(lambda obs, mem: mem + 1), n=32, steps=5 * (length + 1),
                                 cfg=cfg)
    assert len(returns) >= 32 * 4 and (returns == 1.0).all() and (lengths == length + 1).all()
    returns, _ = run_tmaze("tmaze-reactive", junction_then(lambda obs, mem: 1 + obs[:, 1].astype(np.int64)), n=32,
                           steps=5 * (length + 1), cfg=cfg)
    assert (returns == 1.0).all()  # the reactive twin at the same length needs no memory
