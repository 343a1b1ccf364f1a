"""DeepMind Control: environments by `domain-task` name, batched stepping, normalisation and policies.

The control loops (`tasks/control_*.py`) build on these pieces:

- `VecEnv` steps N dm_control environments in one process so policy inference is batched. Observations
  are flattened to float32 `[N, O]`. An episode that ends on the time limit is *truncated* (its
  discount stays 1) and must be bootstrapped from the value of its final observation; one that ends
  with discount 0 is *terminated*. `step` returns both flags and the final observation, then resets.
- `RunningNorm` keeps a running mean/variance (parallel Welford) and normalises with a clip at ±10.
- `GaussianPolicy` (diagonal, state-independent log-std as in CleanRL's PPO, or state-dependent) and
  `BinnedPolicy` (a categorical over evenly spaced bins per action dimension, as in `004 §5.2`), each
  with sampling, log-probs, the deterministic action, entropy and the closed-form KL — computed by the
  kernels of `algorithms/common.py`.
- `evaluate` runs deterministic-policy episodes on the "eval" seed stream.

Source: Tunyasuvunakool et al. 2020 (dm_control); `papers/004_71574c67b927da2f.txt §5.2`; SPEC §5.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "disable")

import math  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from algorithms.common import diag_gaussian_logp, kl_categorical, kl_diag_gaussian  # noqa: E402
from algorithms.config import ConfigError, check_positive, field, unknown  # noqa: E402

LISTED = ("cartpole-swingup", "walker-walk", "cheetah-run", "reacher-hard", "humanoid-stand", "humanoid-walk",
          "humanoid-run", "manipulator-bring_ball")
"""The tasks the papers name; any other dm_control `domain-task` pair works through `make_env` too."""


def all_tasks() -> list[str]:
    """Every `domain-task` name in dm_control's suite."""
    from dm_control import suite

    return [f"{d}-{t}" for d, t in suite.ALL_TASKS]


def make_env(name: str, seed: int, time_limit: float | None = None):
    """A dm_control environment by `domain-task` name, seeded (task randomness only)."""
    from dm_control import suite

    domain, _, task = name.partition("-")
    if (domain, task) not in suite.ALL_TASKS:
        raise unknown("dm_control task", name, all_tasks())
    kwargs = {"random": int(seed) % (2**31)}
    if time_limit is not None:
        kwargs["time_limit"] = time_limit
    return suite.load(domain, task, task_kwargs=kwargs)


def flatten_obs(obs: dict) -> np.ndarray:
    return np.concatenate([np.asarray(v, dtype=np.float32).ravel() for v in obs.values()])


class VecEnv:
    """N copies of one task stepped in lockstep in this process, with automatic reset.

    Actions are given in [-1, 1] (every dm_control suite action spec is [-1, 1]) and clipped.
    """

    def __init__(self, name: str, seeds: list[int], action_repeat: int = 1, time_limit: float | None = None):
        self.name, self.action_repeat = name, action_repeat
        self.envs = [make_env(name, s, time_limit) for s in seeds]
        spec = self.envs[0].action_spec()
        self.action_dim = int(np.prod(spec.shape))
        self.low, self.high = spec.minimum.astype(np.float32), spec.maximum.astype(np.float32)
        self.obs = np.stack([flatten_obs(e.reset().observation) for e in self.envs])
        self.obs_dim = self.obs.shape[1]
        self.episode_return = np.zeros(len(self.envs))
        self.episode_length = np.zeros(len(self.envs), dtype=np.int64)

    @property
    def n(self) -> int:
        return len(self.envs)

    def step(self, actions: np.ndarray):
        """Step every env. Returns (next_obs, reward, terminated, truncated, final_obs, ended_return).

        `next_obs` is the first observation of the new episode where one ended; `final_obs` is the last
        observation of the ended episode (for bootstrapping a truncation) and equals `next_obs` elsewhere.
        `ended_return` [N] holds the return of each episode that ended on this step, NaN elsewhere.
        """
        actions = np.clip(actions, self.low, self.high)
        n = self.n
        reward = np.zeros(n, dtype=np.float32)
        terminated, truncated = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
        next_obs, final_obs = np.empty_like(self.obs), np.empty_like(self.obs)
        ended_return = np.full(n, np.nan)
        for i, env in enumerate(self.envs):
            for _ in range(self.action_repeat):
                ts = env.step(actions[i])
                reward[i] += ts.reward or 0.0
                if ts.last():
                    break
            obs = flatten_obs(ts.observation)
            final_obs[i] = obs
            if ts.last():
                terminated[i] = ts.discount == 0.0
                truncated[i] = not terminated[i]
                ended_return[i] = self.episode_return[i] + reward[i]
                self.episode_return[i], self.episode_length[i] = 0.0, 0
                obs = flatten_obs(env.reset().observation)
            else:
                self.episode_return[i] += reward[i]
                self.episode_length[i] += 1
            next_obs[i] = obs
        self.obs = next_obs
        return next_obs, reward, terminated, truncated, final_obs, ended_return


class RunningNorm(nn.Module):
    """Running mean and variance of a stream (parallel Welford update), normalising with a clip.

    Kept as buffers so it is saved with the policy and copied with it to target networks.
    """

    def __init__(self, shape: int | tuple, clip: float = 10.0, eps: float = 1e-8):
        super().__init__()
        shape = (shape,) if isinstance(shape, int) else shape
        self.clip, self.eps = clip, eps
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(1e-4, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        x = x.reshape(-1, *self.mean.shape).to(torch.float64)
        b_mean, b_var, b_n = x.mean(0), x.var(0, unbiased=False), x.shape[0]
        delta, total = b_mean - self.mean, self.count + b_n
        self.mean += delta * b_n / total
        self.var.copy_((self.var * self.count + b_var * b_n + delta**2 * self.count * b_n / total) / total)
        self.count.copy_(total)

    def forward(self, x: Tensor) -> Tensor:
        z = (x - self.mean.to(x.dtype)) / torch.sqrt(self.var.to(x.dtype) + self.eps)
        return z.clamp(-self.clip, self.clip)


def mlp(sizes: list[int], activation=nn.Tanh, out_gain: float = 1.0) -> nn.Sequential:
    """An MLP with orthogonal init (CleanRL): hidden gain √2, output gain `out_gain`, zero biases."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        lin = nn.Linear(sizes[i], sizes[i + 1])
        last = i == len(sizes) - 2
        nn.init.orthogonal_(lin.weight, out_gain if last else math.sqrt(2))
        nn.init.zeros_(lin.bias)
        layers.append(lin)
        if not last:
            layers.append(activation())
    return nn.Sequential(*layers)


@dataclass(frozen=True)
class PolicyConfig:
    """The policy network and its action distribution."""

    kind: str = field("gaussian", "action distribution: 'gaussian' (diagonal) or 'binned' (categorical per dimension, 004 §5.2)")
    hidden: tuple[int, ...] = field((64, 64), "hidden layer sizes of the MLP torso; CleanRL PPO: (64, 64)")
    bins: int = field(11, "bins per action dimension for 'binned', evenly spaced in [-1, 1]")
    state_dependent_std: bool = field(False, "Gaussian log-std from the network (MPO) rather than a free parameter (PPO)")
    init_log_std: float = field(0.0, "initial log standard deviation of the Gaussian")

    def __post_init__(self):
        if self.kind not in ("gaussian", "binned"):
            raise unknown("value for PolicyConfig.kind", self.kind, ["gaussian", "binned"])
        check_positive(self, "bins")
        if self.bins < 2:
            raise ConfigError(f"PolicyConfig.bins = {self.bins} is invalid: must be >= 2.")
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ConfigError(f"PolicyConfig.hidden = {self.hidden!r} is invalid: must be non-empty positive sizes.")


class GaussianPolicy(nn.Module):
    """π(a|s) = N(μ(s), diag σ²); params are (mean, log_std) tensors of shape [..., A]."""

    def __init__(self, obs_dim: int, action_dim: int, cfg: PolicyConfig):
        super().__init__()
        self.state_dependent = cfg.state_dependent_std
        out = 2 * action_dim if self.state_dependent else action_dim
        self.net = mlp([obs_dim, *cfg.hidden, out], out_gain=0.01)
        self.log_std = nn.Parameter(torch.full((action_dim,), cfg.init_log_std))

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        out = self.net(obs)
        if self.state_dependent:
            mean, raw = out.chunk(2, -1)
            return mean, raw.clamp(-5.0, 2.0) + self.log_std
        return out, self.log_std.expand_as(out)

    @staticmethod
    def sample(params, generator: torch.Generator | None = None, n: int | None = None) -> Tensor:
        mean, log_std = params
        shape = mean.shape if n is None else (n, *mean.shape)
        noise = torch.randn(shape, generator=generator, dtype=mean.dtype)
        return mean + log_std.exp() * noise

    @staticmethod
    def log_prob(params, action: Tensor) -> Tensor:
        mean, log_std = params
        return diag_gaussian_logp(action, mean, log_std)

    @staticmethod
    def mode(params) -> Tensor:
        return params[0]

    @staticmethod
    def entropy(params) -> Tensor:
        return (params[1] + 0.5 * math.log(2 * math.pi * math.e)).sum(-1)

    @staticmethod
    def kl(p, q) -> Tensor:
        """Closed-form KL(p ‖ q) summed over action dimensions."""
        return kl_diag_gaussian(p[0], p[1], q[0], q[1])

    @staticmethod
    def detach(params):
        return tuple(x.detach() for x in params)


class BinnedPolicy(nn.Module):
    """π(a|s) = Π_d Cat(a_d | logits_d(s)) over `bins` evenly spaced values in [-1, 1]; params: logits [..., A, bins].

    Actions are represented by their bin values; `log_prob` maps each value back to its bin index.
    """

    def __init__(self, obs_dim: int, action_dim: int, cfg: PolicyConfig):
        super().__init__()
        self.action_dim, self.bins = action_dim, cfg.bins
        self.net = mlp([obs_dim, *cfg.hidden, action_dim * cfg.bins], out_gain=0.01)
        self.register_buffer("values", torch.linspace(-1.0, 1.0, cfg.bins))

    def forward(self, obs: Tensor) -> Tensor:
        return self.net(obs).unflatten(-1, (self.action_dim, self.bins))

    def index(self, action: Tensor) -> Tensor:
        return torch.round((action.clamp(-1, 1) + 1.0) * (self.bins - 1) / 2.0).long()

    def sample(self, logits: Tensor, generator: torch.Generator | None = None, n: int | None = None) -> Tensor:
        probs = torch.softmax(logits, -1)
        flat = probs.reshape(-1, self.bins)
        draws = torch.multinomial(flat, 1 if n is None else n, replacement=True, generator=generator)
        if n is None:
            return self.values[draws.reshape(probs.shape[:-1])]
        return self.values[draws.T.reshape(n, *probs.shape[:-1])]

    def log_prob(self, logits: Tensor, action: Tensor) -> Tensor:
        logp = torch.log_softmax(logits, -1)
        idx = self.index(action)
        logp = logp.expand(*idx.shape, self.bins) if logp.dim() < idx.dim() + 1 else logp
        return logp.gather(-1, idx[..., None])[..., 0].sum(-1)

    def mode(self, logits: Tensor) -> Tensor:
        return self.values[logits.argmax(-1)]

    @staticmethod
    def entropy(logits: Tensor) -> Tensor:
        logp = torch.log_softmax(logits, -1)
        return -(logp.exp() * logp).sum((-1, -2))

    @staticmethod
    def kl(p: Tensor, q: Tensor) -> Tensor:
        """Closed-form KL(p ‖ q) summed over action dimensions."""
        return kl_categorical(p, q).sum(-1)

    @staticmethod
    def detach(params: Tensor) -> Tensor:
        return params.detach()


def make_policy(obs_dim: int, action_dim: int, cfg: PolicyConfig) -> nn.Module:
    return (GaussianPolicy if cfg.kind == "gaussian" else BinnedPolicy)(obs_dim, action_dim, cfg)


@torch.no_grad()
def evaluate(policy: nn.Module, obs_norm: RunningNorm, name: str, episodes: int, seed: int,
             action_repeat: int = 1, time_limit: float | None = None) -> float:
    """Mean return of `episodes` deterministic-policy episodes on the "eval" seed stream of `seed`."""
    from tasks.seeding import stream_seed

    env = VecEnv(name, [stream_seed(seed, f"eval/{i}") for i in range(episodes)], action_repeat, time_limit)
    returns: list[float] = []
    done = np.zeros(env.n, dtype=bool)
    while not done.all():
        obs = obs_norm(torch.as_tensor(env.obs))
        action = policy.mode(policy(obs)).numpy()
        _, _, term, trunc, _, ended_return = env.step(action)
        ended = (term | trunc) & ~done  # the env auto-resets: count each env's first episode only
        returns.extend(float(r) for r in ended_return[ended])
        done |= ended
    return float(np.mean(returns))


# ------------------------------------------------------------------------------------------------ task family
# One family, "control", serves every dm_control task. It runs several training loops (on-policy,
# actor-critic, ...); each loop module registers itself with `register_loop`, and a run's loop is
# chosen by the type of its training-loop config (a question's `Variant.train_config`).


@dataclass(frozen=True)
class ControlConfig:
    """A dm_control task instance."""

    action_repeat: int = field(1, "physics steps per agent step; 1 as in CleanRL's DMC PPO")
    time_limit: float | None = field(None, "episode length in seconds; None keeps the suite's default (1000 steps)")

    def __post_init__(self):
        check_positive(self, "action_repeat", "time_limit")


LOOPS: dict[type, tuple] = {}
_DEFAULT_LOOP: list[type] = []


def register_loop(config_cls: type, provides, train, default: bool = False) -> None:
    """Make a training loop available to the control family: its config type, what its batches carry, its trainer."""
    LOOPS[config_cls] = (provides, train)
    if default:
        _DEFAULT_LOOP.insert(0, config_cls)
    elif not _DEFAULT_LOOP:
        _DEFAULT_LOOP.append(config_cls)


def _loop(cfg) -> tuple:
    if type(cfg) not in LOOPS:
        raise ConfigError(f"{type(cfg).__name__} is not a control training loop; loops: {', '.join(c.__name__ for c in LOOPS)}.")
    return LOOPS[type(cfg)]


def default_loop():
    """An instance of the family's default training-loop config."""
    if not _DEFAULT_LOOP:
        raise ConfigError("no control training loop is registered (tasks/control_*.py register them).")
    return _DEFAULT_LOOP[0]()


def train(specs):
    """Train runs that differ only in seed with the loop their training-loop config names."""
    return _loop(specs[0].train_config)[1](specs)


def _register_tasks() -> None:
    from dm_control import suite

    from tasks.base import Family, register_task

    family = Family(name="control", train_config=default_loop, provides=lambda cfg: _loop(cfg)[0], train=train,
                    description="DeepMind Control Suite through dm_control (real MuJoCo physics)")
    for domain, task in suite.ALL_TASKS:
        name = f"{domain}-{task}"
        note = " (named by the papers)" if name in LISTED else ""
        register_task(name, family, ControlConfig(), f"dm_control {domain} {task}{note}")


_register_tasks()
