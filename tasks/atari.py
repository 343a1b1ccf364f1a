"""Atari and memory: MinAtar, ALE and a T-maze pair as lockstep vector environments, and their torsos.

- `AtariVecEnv(name, seeds, cfg)` steps N environments of one task in this process with automatic reset and
  the step contract of `tasks.dmc.VecEnv` (next_obs / final_obs / ended_return). Observations are float32
  `[N, *obs_shape]`; actions are integer indices `[N]` into the task's `num_actions` discrete actions.
- Tasks, by name (`all_tasks()` lists the fixed ones, `ale_tasks()` every ALE game):
  * `minatar-<game>`, the five MinAtar games (Young & Tian 2019, arXiv:1903.03176): obs [C, 10, 10] in {0, 1}
    (C = the game's channels: asterix 4, breakout 4, freeway 7, seaquest 10, space_invaders 6), the game's
    minimal action set (what `minatar.gym`'s `-v1` ids use), sticky actions and difficulty ramping as configured.
  * `ale-<rom>`, any single-player ALE game as `ALE/<Rom>-v5` (Machado et al. 2018: sticky actions 0.25, the
    minimal action set, a 108k-frame cap), created with frameskip 1 and wrapped in gymnasium's
    `AtariPreprocessing` (noop reset of 1..30 frames, frame skip 4 max-pooling the last two frames, 84×84 grey
    by INTER_AREA, no terminal on life loss, scaled to [0, 1]) and `FrameStackObservation(4)` (padded with
    the reset frame): obs [4, 84, 84] in [0, 1] (Mnih et al. 2015). Rewards are the game's own, unclipped.
  * `tmaze-memory` / `tmaze-reactive`, a T-maze (below) in numpy, vectorised over N.
- `make_torso(obs_shape, out_dim)`: the MinAtar CNN, the Nature-DQN CNN or an MLP, by observation shape.
- `random_policy_return`: the uniform-random baseline of the reports.

T-maze (after Bakker 2001, "Reinforcement learning with long short-term memory", NeurIPS; the memory-length
idea of bsuite's `memory_len`, Osband et al. 2020). Cells 0..L of a corridor (L = `tmaze_length`), the
junction at cell L, the agent starting at cell 0. Each episode draws a side c ∈ {left, right} uniformly from
the env's own generator. Actions: 0 forward (one cell; a no-op at the junction), 1 left, 2 right (no-ops in
the corridor; at the junction they end the episode with reward +1 if the side is c, −1 otherwise). With
`tmaze_walk=False` every action moves one cell down the corridor (bsuite's `memory_len`: each episode lasts
exactly L + 1 steps and only the choice at the junction matters, so the task tests memory and not exploration:
with ±1 at the junction a walk there and a guess earn no more than wandering, so nothing but the cue rewards
learning to walk a long corridor). Every other step gives `tmaze_step_reward`; an episode is truncated after
`tmaze_max_steps` steps. Observation [4]:
(cue_left, cue_right, in_corridor, at_junction). In `tmaze-memory` the cue bits are set in the first
observation of an episode only; in `tmaze-reactive` in every observation: the two tasks differ only in that.
The optimal return is +1 + L·step_reward in L + 1 steps; walking to the junction and guessing gets 0 in
expectation. Deviations from Bakker: three actions (no step back, so the start cell is never revisited), the
cue hidden from step 1 on wherever the agent is, rewards ±1 at the junction and no bump penalty by default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Callable

import numpy as np
from torch import Tensor, nn

from algorithms.config import ConfigError, check_positive, check_range, field, unknown
from tasks.seeding import stream_seed

MINATAR_GAMES = ("asterix", "breakout", "freeway", "seaquest", "space_invaders")
ALE_LISTED = ("ale-pong", "ale-breakout")
"""ALE games in `all_tasks()`; every other `ale-<rom>` of `ale_tasks()` works by name too."""
_ALE_MULTIPLAYER = {"combat", "joust", "maze_craze", "warlords"}  # ale-py registers no v5 id for these


@dataclass(frozen=True)
class AtariTaskConfig:
    """An Atari-family task instance: ALE preprocessing, MinAtar options and the T-maze's size."""

    sticky: float = field(0.25, "ALE repeat_action_probability (sticky actions); v5 and Machado et al. 2018: 0.25")
    frame_skip: int = field(4, "ALE frames per agent step (action repeat), max-pooled over the last two; Mnih et al. 2015: 4")
    frame_stack: int = field(4, "ALE frames stacked as channels; Mnih et al. 2015: 4")
    screen: int = field(84, "side of the square grey ALE frame after resizing; Mnih et al. 2015: 84")
    noop_max: int = field(30, "an ALE reset takes 1..noop_max no-op frames (uniform), 0 none; Mnih et al. 2015: 30")
    max_frames: int = field(108_000, "episode cap in emulator frames (truncation): 108k = 30 min (Machado et al. "
                                     "2018); a MinAtar step is one frame (MinAtar itself has no cap)")
    minatar_sticky: float = field(0.1, "MinAtar sticky-action probability; Young & Tian 2019: 0.1")
    minatar_ramping: bool = field(True, "MinAtar difficulty ramping; Young & Tian 2019: on")
    tmaze_length: int = field(10, "T-maze corridor length L: forward steps from the start cell to the junction")
    tmaze_max_steps: int | None = field(None, "T-maze episode cap in steps (truncation); None: 4(L + 1), four "
                                              "times the shortest episode")
    tmaze_step_reward: float = field(0.0, "reward of every T-maze step that is not the choice at the junction")
    tmaze_walk: bool = field(True, "True: only action 0 moves down the corridor (the agent must learn to walk); False: "
                                   "every action does (bsuite's memory_len: only the choice at the junction matters)")

    def __post_init__(self):
        for name in ("frame_skip", "frame_stack", "screen", "noop_max", "max_frames", "tmaze_length", "tmaze_max_steps"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer))):
                raise ConfigError(f"AtariTaskConfig.{name} = {v!r} is invalid: must be an integer.")
        check_range(self, "sticky", 0.0, 1.0)
        check_range(self, "minatar_sticky", 0.0, 1.0)
        check_positive(self, "frame_skip", "frame_stack", "screen", "max_frames", "tmaze_length", "tmaze_max_steps")
        check_positive(self, "noop_max", strict=False)
        for name in ("minatar_ramping", "tmaze_walk"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"AtariTaskConfig.{name} = {getattr(self, name)!r} is invalid: must be a bool.")
        if self.tmaze_max_steps is not None and self.tmaze_max_steps < self.tmaze_length + 1:
            raise ConfigError(f"AtariTaskConfig.tmaze_max_steps = {self.tmaze_max_steps!r} is invalid: must be >= "
                              f"tmaze_length + 1 = {self.tmaze_length + 1} (the shortest episode).")
        if not math.isfinite(self.tmaze_step_reward):
            raise ConfigError(f"AtariTaskConfig.tmaze_step_reward = {self.tmaze_step_reward!r} is invalid: must be finite.")

    @property
    def tmaze_cap(self) -> int:
        """The T-maze episode cap in steps, `tmaze_max_steps` resolved."""
        return self.tmaze_max_steps if self.tmaze_max_steps is not None else 4 * (self.tmaze_length + 1)


# ------------------------------------------------------------------------------------------------ environments
# A backend holds N environments and provides `obs`, `obs_shape`, `num_actions` and
# `step(actions) -> (next_obs, reward, terminated, truncated, final_obs, ended_return)`.


class _MinAtar:
    """One MinAtar game: `reset() -> obs`, `step(a) -> (obs, reward, terminated, truncated)`, obs [C, 10, 10] bool."""

    def __init__(self, game: str, seed: int, cfg: AtariTaskConfig):
        from minatar import Environment

        self.game = Environment(game, sticky_action_prob=cfg.minatar_sticky, difficulty_ramping=cfg.minatar_ramping)
        # Environment.seed takes < 2**32 only; MT19937 seeds from any int through a SeedSequence.
        self.game.random = self.game.env.random = np.random.RandomState(np.random.MT19937(int(seed)))
        self.actions = list(self.game.minimal_action_set())
        self.cap, self.t = cfg.max_frames, 0

    def reset(self) -> np.ndarray:
        self.game.reset()
        self.t = 0
        return self.game.state().transpose(2, 0, 1)

    def step(self, a: int):
        reward, done = self.game.act(self.actions[a])
        self.t += 1
        return self.game.state().transpose(2, 0, 1), reward, done, self.t >= self.cap


class _Ale:
    """One ALE v5 game under gymnasium's AtariPreprocessing and FrameStackObservation; obs [stack, screen, screen]."""

    def __init__(self, game: str, seed: int, cfg: AtariTaskConfig):
        import ale_py
        import gymnasium as gym
        from ale_py.registration import rom_id_to_name
        from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation

        gym.register_envs(ale_py)
        env = gym.make(f"ALE/{rom_id_to_name(game)}-v5", frameskip=1, repeat_action_probability=cfg.sticky,
                       full_action_space=False, max_num_frames_per_episode=cfg.max_frames, disable_env_checker=True)
        env = AtariPreprocessing(env, noop_max=cfg.noop_max, frame_skip=cfg.frame_skip, screen_size=cfg.screen,
                                 terminal_on_life_loss=False, grayscale_obs=True, scale_obs=True)
        self.env = FrameStackObservation(env, cfg.frame_stack)
        self.num_actions = int(self.env.action_space.n)
        self._seed: int | None = int(seed)

    def reset(self) -> np.ndarray:
        obs, _ = self.env.reset(seed=self._seed)  # the first reset seeds the emulator and the no-op draws
        self._seed = None
        return obs

    def step(self, a: int):
        obs, reward, terminated, truncated, _ = self.env.step(a)
        return obs, reward, terminated, truncated


class _Loop:
    """N single environments (`_MinAtar`, `_Ale`) stepped one after another, with automatic reset."""

    def __init__(self, envs: list, num_actions: int):
        self.envs, self.num_actions = envs, num_actions
        self.obs = np.stack([e.reset() for e in envs]).astype(np.float32)
        self.obs_shape = tuple(self.obs.shape[1:])
        self.ret = [0.0] * len(envs)

    def step(self, actions: np.ndarray):
        n = len(self.envs)
        reward = np.zeros(n, dtype=np.float32)
        terminated, truncated = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
        next_obs, final_obs = np.empty_like(self.obs), np.empty_like(self.obs)
        ended_return = np.full(n, np.nan)
        for i, (env, a) in enumerate(zip(self.envs, actions.tolist())):
            obs, r, term, trunc = env.step(a)
            reward[i] = r
            final_obs[i] = obs
            if term or trunc:
                terminated[i], truncated[i] = term, not term  # a terminal on the cap's frame is a terminal
                ended_return[i] = self.ret[i] + r
                self.ret[i] = 0.0
                obs = env.reset()
            else:
                self.ret[i] += r
            next_obs[i] = obs
        self.obs = next_obs
        return next_obs, reward, terminated, truncated, final_obs, ended_return


def _minatar(game: str, seeds: list[int], cfg: AtariTaskConfig) -> _Loop:
    envs = [_MinAtar(game, s, cfg) for s in seeds]
    return _Loop(envs, len(envs[0].actions))


def _ale(game: str, seeds: list[int], cfg: AtariTaskConfig) -> _Loop:
    envs = [_Ale(game, s, cfg) for s in seeds]
    return _Loop(envs, envs[0].num_actions)


class _TMaze:
    """N T-mazes (module docstring) as arrays over N. Each env draws its cues from its own generator, in blocks."""

    FORWARD, LEFT, RIGHT = 0, 1, 2
    BLOCK = 256

    def __init__(self, seeds: list[int], cfg: AtariTaskConfig, memory: bool):
        n = len(seeds)
        self.memory, self.num_actions, self.obs_shape = memory, 3, (4,)
        self.length, self.cap, self.step_reward = cfg.tmaze_length, cfg.tmaze_cap, np.float32(cfg.tmaze_step_reward)
        self.walk = cfg.tmaze_walk
        self.gens = [np.random.default_rng(int(s)) for s in seeds]
        self.bits = np.stack([g.integers(0, 2, self.BLOCK) for g in self.gens])
        self.ptr = np.zeros(n, dtype=np.int64)
        self.pos, self.t = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
        self.cue, self.ret = np.zeros(n, dtype=np.int64), np.zeros(n)
        self.rows = np.arange(n)
        self._new_episodes(self.rows)
        self.obs = self._observe()

    def _new_episodes(self, idx: np.ndarray) -> None:
        self.cue[idx] = self.bits[idx, self.ptr[idx]]
        self.ptr[idx] += 1
        for i in idx[self.ptr[idx] == self.BLOCK]:
            self.bits[i], self.ptr[i] = self.gens[i].integers(0, 2, self.BLOCK), 0
        self.pos[idx], self.t[idx], self.ret[idx] = 0, 0, 0.0

    def _observe(self) -> np.ndarray:
        obs = np.zeros((len(self.rows), 4), dtype=np.float32)
        obs[self.rows, self.cue] = (self.t == 0) if self.memory else 1.0
        obs[:, 2] = self.pos < self.length
        obs[:, 3] = self.pos == self.length
        return obs

    def step(self, actions: np.ndarray):
        at_junction = self.pos == self.length
        terminated = at_junction & (actions != self.FORWARD)
        self.pos += ((actions == self.FORWARD) | (not self.walk)) & ~at_junction
        self.t += 1
        correct = actions - 1 == self.cue
        reward = np.where(terminated, np.where(correct, np.float32(1), np.float32(-1)), self.step_reward)
        truncated = ~terminated & (self.t >= self.cap)
        self.ret += reward
        final_obs = self._observe()
        ended = terminated | truncated
        ended_return = np.where(ended, self.ret, np.nan)
        if ended.any():
            self._new_episodes(np.flatnonzero(ended))
            self.obs = self._observe()
        else:
            self.obs = final_obs.copy()
        return self.obs, reward, terminated, truncated, final_obs, ended_return


REGISTRY: dict[str, Callable[[list[int], AtariTaskConfig], object]] = {
    **{f"minatar-{g}": partial(_minatar, g) for g in MINATAR_GAMES},
    **{name: partial(_ale, name.removeprefix("ale-")) for name in ALE_LISTED},
    "tmaze-memory": partial(_TMaze, memory=True),
    "tmaze-reactive": partial(_TMaze, memory=False),
}
"""Fixed task name -> backend constructor `(seeds, cfg)`; `constructor` resolves any other `ale-<rom>` too."""


def all_tasks() -> list[str]:
    """The fixed task names: the five MinAtar games, the listed ALE games and the two T-mazes."""
    return list(REGISTRY)


def ale_tasks() -> list[str]:
    """`ale-<rom>` for every single-player game whose ROM ships with ale-py (the games with a v5 id)."""
    from ale_py.roms import get_all_rom_ids

    return [f"ale-{rom}" for rom in sorted(get_all_rom_ids()) if rom not in _ALE_MULTIPLAYER]


def constructor(name: str) -> Callable[[list[int], AtariTaskConfig], object]:
    """The backend constructor `(seeds, cfg)` of a task name; ConfigError for an unknown one."""
    if name in REGISTRY:
        return REGISTRY[name]
    if name.startswith("ale-") and name in ale_tasks():
        return partial(_ale, name.removeprefix("ale-"))
    raise unknown("Atari-family task", name, all_tasks() + (ale_tasks() if name.startswith("ale-") else []))


class AtariVecEnv:
    """N environments of one Atari-family task stepped in lockstep in this process, with automatic reset.

    Env i is seeded with `seeds[i]` alone, so its trajectory under given actions does not depend on the
    others. Attributes: `n`, `obs_shape` ((C, H, W) for images, (D,) for the T-maze), `num_actions`, `obs`
    (the current observations, float32 [N, *obs_shape]).
    """

    def __init__(self, name: str, seeds: list[int], cfg: AtariTaskConfig | None = None):
        if len(seeds) == 0 or min(seeds) < 0:
            raise ConfigError(f"AtariVecEnv seeds = {list(seeds)!r} are invalid: need at least one, each >= 0.")
        self.name, self.cfg = name, cfg if cfg is not None else AtariTaskConfig()
        self._impl = constructor(name)([int(s) for s in seeds], self.cfg)
        self.n, self.obs_shape, self.num_actions = len(seeds), self._impl.obs_shape, self._impl.num_actions

    @property
    def obs(self) -> np.ndarray:
        return self._impl.obs

    def step(self, actions: np.ndarray):
        """Step every env with integer `actions` [N] in [0, num_actions).

        Returns (next_obs, reward, terminated, truncated, final_obs, ended_return): `next_obs` [N, *obs_shape]
        is the first observation of the new episode where one ended; `final_obs` is the last observation of
        the ended episode (for bootstrapping a truncation) and equals `next_obs` elsewhere; `reward` float32
        [N] in the game's own scale (unclipped); `terminated` / `truncated` bool [N] (a cap is a truncation);
        `ended_return` [N] the undiscounted return of each episode that ended on this step, NaN elsewhere.
        """
        actions = np.asarray(actions)
        if actions.shape != (self.n,) or not np.issubdtype(actions.dtype, np.integer):
            raise ValueError(f"actions must be integers of shape ({self.n},), got {actions.dtype} {actions.shape}.")
        if actions.min() < 0 or actions.max() >= self.num_actions:
            raise ValueError(f"actions must lie in [0, {self.num_actions}), got {actions.min()}..{actions.max()}.")
        return self._impl.step(actions)


def random_policy_return(name: str, cfg: AtariTaskConfig, episodes: int, seed: int) -> float:
    """Mean return of a uniform-random policy over `episodes` episodes of the "eval" seed stream of `seed`.

    Episode i runs on seed `stream_seed(seed, f"eval/{i}")` (its first episode counts), the actions come from
    the "eval/random_actions" stream.
    """
    env = AtariVecEnv(name, [stream_seed(seed, f"eval/{i}") for i in range(episodes)], cfg)
    rng = np.random.default_rng(stream_seed(seed, "eval/random_actions"))
    returns, done = np.full(env.n, np.nan), np.zeros(env.n, dtype=bool)
    while not done.all():
        _, _, term, trunc, _, ended_return = env.step(rng.integers(env.num_actions, size=env.n))
        ended = (term | trunc) & ~done  # the env auto-resets: count each env's first episode only
        returns[ended] = ended_return[ended]
        done |= ended
    return float(returns.mean())


# ------------------------------------------------------------------------------------------------ torsos


def _init(layer: nn.Module) -> nn.Module:
    """Orthogonal weights with gain √2 and zero biases (CleanRL's `layer_init`)."""
    nn.init.orthogonal_(layer.weight, math.sqrt(2))
    nn.init.zeros_(layer.bias)
    return layer


class ConvTorso(nn.Module):
    """Image features: x [..., C, H, W] in [0, 1] -> [..., out_dim], ReLU throughout.

    H, W < 36 (MinAtar): Conv(16, 3×3, stride 1) -> Linear(out_dim=128), the network of Young & Tian 2019.
    H, W >= 36 (ALE): Conv(32, 8×8, /4) -> Conv(64, 4×4, /2) -> Conv(64, 3×3, /1) -> Linear(out_dim=512),
    the Nature DQN (Mnih et al. 2015), as in CleanRL's Atari PPO. Convolutions are unpadded.
    """

    def __init__(self, obs_shape: tuple[int, int, int], out_dim: int | None = None):
        super().__init__()
        c, h, w = obs_shape
        nature = min(h, w) >= 36
        convs = [(32, 8, 4), (64, 4, 2), (64, 3, 1)] if nature else [(16, 3, 1)]
        self.out_dim = out_dim or (512 if nature else 128)
        layers: list[nn.Module] = []
        for ch, k, s in convs:
            layers += [_init(nn.Conv2d(c, ch, k, s)), nn.ReLU()]
            c, h, w = ch, (h - k) // s + 1, (w - k) // s + 1
        self.net = nn.Sequential(*layers, nn.Flatten(), _init(nn.Linear(c * h * w, self.out_dim)), nn.ReLU())
        self.obs_shape = tuple(obs_shape)

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-3]
        return self.net(x.reshape(-1, *self.obs_shape)).reshape(*lead, self.out_dim)


class MlpTorso(nn.Module):
    """Vector features: x [..., D] -> [..., out_dim]: Linear(hidden) -> tanh -> Linear(out_dim) -> tanh (CleanRL)."""

    def __init__(self, obs_dim: int, out_dim: int | None = None, hidden: int = 64):
        super().__init__()
        self.out_dim = out_dim or 64
        self.net = nn.Sequential(_init(nn.Linear(obs_dim, hidden)), nn.Tanh(),
                                 _init(nn.Linear(hidden, self.out_dim)), nn.Tanh())

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def make_torso(obs_shape: tuple[int, ...], out_dim: int | None = None) -> nn.Module:
    """The torso for an observation shape: (C, H, W) -> `ConvTorso` (MinAtar or Nature CNN by size),
    (D,) -> `MlpTorso`. `out_dim` None keeps the architecture's own width (128, 512, 64); `.out_dim` says it."""
    if len(obs_shape) == 3:
        return ConvTorso(tuple(obs_shape), out_dim)
    if len(obs_shape) == 1:
        return MlpTorso(obs_shape[0], out_dim)
    raise ConfigError(f"no torso for observation shape {tuple(obs_shape)}: expected (C, H, W) or (D,).")

