"""DeepMind Control: environments by `domain-task` name, batched stepping, normalisation and policies.

The control loops (`tasks/control_*.py`) build on these pieces:

- `VecEnv` steps N dm_control environments in one process so policy inference is batched. Observations
  are flattened to float32 `[N, O]`. An episode that ends on the time limit is *truncated* (its
  discount stays 1) and must be bootstrapped from the value of its final observation; one that ends
  with discount 0 is *terminated*. `step` returns both flags and the final observation, then resets.
- `RunningNorm` keeps a running mean/variance (parallel Welford) and normalises with a clip at ±10.
- `GaussianPolicy` (diagonal, state-independent log-std as in CleanRL's PPO, or state-dependent) and
  `BinnedPolicy` (a categorical over evenly spaced bins per action dimension, as in `[PMPO] §5.2`), each
  with sampling, log-probs, the deterministic action, entropy and the closed-form KL — computed by the
  kernels of `algorithms/common.py`.
- `evaluate` runs deterministic-policy episodes on the "eval" seed stream.

Source: Tunyasuvunakool et al. 2020 (dm_control); `[PMPO] §5.2`; docs/reference-settings.md.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "disable")

import copy  # noqa: E402
import math  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from torch.func import functional_call, vmap  # noqa: E402

from algorithms.common import diag_gaussian_logp, kl_categorical, kl_diag_gaussian  # noqa: E402
from algorithms.config import ConfigError, check_positive, field, unknown  # noqa: E402
from tasks.base import RunResult  # noqa: E402
from tasks.seeding import generator, stream_seed  # noqa: E402

LISTED = ("cartpole-swingup", "walker-walk", "cheetah-run", "reacher-hard", "humanoid-stand", "humanoid-walk",
          "humanoid-run", "manipulator-bring_ball")
"""The tasks the papers name; any other dm_control `domain-task` pair works through `make_env` too."""


def all_tasks() -> list[str]:
    """Every `domain-task` name in dm_control's suite."""
    from dm_control import suite

    return [f"{d}-{t}" for d, t in suite.ALL_TASKS]


IDLE_LIMIT = 512
"""The most idle environments `release` keeps per (task, time limit) in one process."""
_IDLE: dict[tuple[str, float | None], list] = {}
_REUSABLE: dict[tuple[str, float | None], bool] = {}


def make_env(name: str, seed: int, time_limit: float | None = None):
    """A dm_control environment by `domain-task` name, seeded (task randomness only).

    Building one compiles its MJCF model (≈ 85 ms for cartpole, measured): a deterministic evaluation of 8 seeds × 10
    episodes spent ≈ 7 s building environments against ≈ 15 s stepping them. So an environment handed back by `release`
    is reused: its task gets the fresh `RandomState(seed)` that `suite.load` would have given it, and its next `reset`
    restores the physics (`mj_resetData`) and draws the episode's initial state from that stream, so it plays exactly
    the episodes a new one would (tested bit for bit). Reuse is allowed only for a task whose construction draws
    nothing from its random stream (checked on the first one built; LQR, for one, draws its model from it).
    """
    from dm_control import suite

    domain, _, task = name.partition("-")
    if (domain, task) not in suite.ALL_TASKS:
        raise unknown("dm_control task", name, all_tasks())
    seed = int(seed) % (2**31)
    idle = _IDLE.get((name, time_limit))
    if idle:
        env = idle.pop()
        env.task._random = np.random.RandomState(seed)
        return env
    kwargs = {"random": seed}
    if time_limit is not None:
        kwargs["time_limit"] = time_limit
    env = suite.load(domain, task, task_kwargs=kwargs)
    if (name, time_limit) not in _REUSABLE:
        drawn, fresh = env.task.random.get_state(), np.random.RandomState(seed).get_state()
        _REUSABLE[(name, time_limit)] = drawn[2] == fresh[2] and np.array_equal(drawn[1], fresh[1])
    return env


def release(name: str, time_limit: float | None, envs: list) -> None:
    """Hand environments of task `name` back for `make_env` to reuse in this process (see there)."""
    key = (name, time_limit)
    if _REUSABLE.get(key):
        idle = _IDLE.setdefault(key, [])
        idle.extend(envs[: max(0, IDLE_LIMIT - len(idle))])


def flatten_obs(obs: dict) -> np.ndarray:
    return np.concatenate([np.asarray(v, dtype=np.float32).ravel() for v in obs.values()])


class VecEnv:
    """N copies of one task stepped in lockstep in this process, with automatic reset.

    Actions are given in [-1, 1] (every dm_control suite action spec is [-1, 1]) and clipped.
    """

    def __init__(self, name: str, seeds: list[int], action_repeat: int = 1, time_limit: float | None = None):
        self.name, self.action_repeat, self.time_limit = name, action_repeat, time_limit
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

    def close(self) -> None:
        """Hand the environments back for reuse (`release`); this VecEnv must not be stepped again."""
        release(self.name, self.time_limit, self.envs)
        self.envs = []

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
        noise = torch.randn(shape, generator=generator, dtype=mean.dtype, device=mean.device)
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
    env = VecEnv(name, [stream_seed(seed, f"eval/{i}") for i in range(episodes)], action_repeat, time_limit)
    returns: list[float] = []
    done = np.zeros(env.n, dtype=bool)
    while not done.all():
        obs = obs_norm(torch.as_tensor(env.obs, device=obs_norm.mean.device))
        action = policy.mode(policy(obs)).cpu().numpy()
        _, _, term, trunc, _, ended_return = env.step(action)
        ended = (term | trunc) & ~done  # the env auto-resets: count each env's first episode only
        returns.extend(float(r) for r in ended_return[ended])
        done |= ended
    env.close()
    return float(np.mean(returns))


# ------------------------------------------------------------------------------------------------ seeds in lockstep
# The control loops train the S seeds of one grid cell together: their environments share one VecEnv, their
# networks are stacked on a leading seed dimension (`Stacked`) and run by batched matrix products, and each seed
# keeps its own normaliser statistics, gradient-norm clip, random streams and Adam state (Adam is elementwise),
# so a seed's run is the one it would have alone (up to floating-point reassociation; tested).


def seed_generators(seeds: list[int], stream: str, device: torch.device | str) -> list[torch.Generator]:
    """Each seed's generator of the named stream on `device` (`tasks.seeding.generator`)."""
    return [generator(sd, stream, device) for sd in seeds]


class StackedNorm:
    """`tasks.dmc.RunningNorm` for S seeds at once: the same parallel-Welford update and ±clip, on [S, O] stats.

    `update(x)` takes x [S, B, O] (each seed's batch); `__call__(x)` normalises x [S, ..., O] with each
    seed's own statistics; `to_running_norm(s)` returns seed s's statistics as a RunningNorm (for
    `evaluate`). Equal to S separate RunningNorms (tested).
    """

    def __init__(self, n_seeds: int, dim: int, clip: float, eps: float = 1e-8, device: torch.device | str = "cpu"):
        self.clip, self.eps = clip, eps
        self.mean = torch.zeros(n_seeds, dim, dtype=torch.float64, device=device)
        self.var = torch.ones(n_seeds, dim, dtype=torch.float64, device=device)
        self.count = torch.full((n_seeds, 1), 1e-4, dtype=torch.float64, device=device)

    def update(self, x: Tensor) -> None:
        x = x.to(torch.float64)
        b_mean, b_var, b_n = x.mean(1), x.var(1, unbiased=False), x.shape[1]
        delta, total = b_mean - self.mean, self.count + b_n
        self.mean += delta * b_n / total
        self.var = (self.var * self.count + b_var * b_n + delta**2 * self.count * b_n / total) / total
        self.count = total

    def __call__(self, x: Tensor) -> Tensor:
        shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)
        mean, std = self.mean.to(x.dtype).reshape(shape), torch.sqrt(self.var.to(x.dtype) + self.eps).reshape(shape)
        return ((x - mean) / std).clamp(-self.clip, self.clip)

    def one(self, s: int, x: Tensor) -> Tensor:
        """x [..., O] normalised with seed s's statistics."""
        mean, std = self.mean[s].to(x.dtype), torch.sqrt(self.var[s].to(x.dtype) + self.eps)
        return ((x - mean) / std).clamp(-self.clip, self.clip)

    def to_running_norm(self, s: int) -> RunningNorm:
        """Seed s's statistics as a RunningNorm, on the device of this one."""
        norm = RunningNorm(self.mean.shape[1], clip=self.clip, eps=self.eps).to(self.mean.device)
        norm.mean.copy_(self.mean[s])
        norm.var.copy_(self.var[s])
        norm.count.copy_(self.count[s, 0])
        return norm

class SeedStatus:
    """Which seeds of a lockstep group still train, and for each one that stopped, when and why.

    A stopped seed's run ends with status "diverged" and {step, reason}; its gradients are zeroed by the loops from
    that step on, and the other seeds go on.
    """

    def __init__(self, n_seeds: int, device: torch.device | str = "cpu"):
        self.alive = torch.ones(n_seeds, dtype=torch.bool, device=device)
        self.diverged: list[dict | None] = [None] * n_seeds

    def kill(self, bad: Tensor, reasons: str | list[str], step: int) -> None:
        """Stop every live seed where `bad` [S], with its reason (one for all, or one per seed) at `step`."""
        for s in torch.nonzero(bad & self.alive).flatten().tolist():
            self.diverged[s] = {"step": int(step), "reason": reasons if isinstance(reasons, str) else reasons[s]}
        self.alive.logical_and_(~bad)

    def results(self, rows: list[list[tuple[int, str, float]]]) -> list[RunResult]:
        return [RunResult(status="diverged", rows=r, diverged=d) if d else RunResult(status="ok", rows=r)
                for r, d in zip(rows, self.diverged)]


def batched_forward(module: nn.Module, params: dict[str, Tensor], x: Tensor):
    """`module(x)` for S stacked copies at once: params [S, ...] (named as in `module`), x [S, B, in].

    Written out for the loop's three module types (an `mlp` Sequential, `GaussianPolicy`, `BinnedPolicy`)
    with batched matrix products, which is several times cheaper than `vmap(functional_call(...))`;
    equal to each copy's own forward (tested). Any other module goes through vmap.
    """
    if isinstance(module, nn.Sequential):
        return _batched_mlp(module, params, x, "")
    if isinstance(module, GaussianPolicy):
        out = _batched_mlp(module.net, params, x, "net.")
        log_std = params["log_std"][:, None, :]
        if module.state_dependent:
            mean, raw = out.chunk(2, -1)
            return mean, raw.clamp(-5.0, 2.0) + log_std
        return out, log_std.expand_as(out)
    if isinstance(module, BinnedPolicy):
        return _batched_mlp(module.net, params, x, "net.").unflatten(-1, (module.action_dim, module.bins))
    return vmap(lambda p, y: functional_call(module, p, (y,)))(params, x)


def _batched_mlp(seq: nn.Sequential, params: dict[str, Tensor], x: Tensor, prefix: str) -> Tensor:
    for i, layer in enumerate(seq):
        if isinstance(layer, nn.Linear):
            w, b = params[f"{prefix}{i}.weight"], params[f"{prefix}{i}.bias"]
            x = torch.baddbmm(b[:, None, :], x, w.transpose(1, 2))
        else:
            x = layer(x)  # the activation, elementwise
    return x


class Stacked:
    """S independent copies of a module, their parameters stacked on a leading seed dim [S, ...], on `device`.

    `forward(params, x)` runs every seed's copy on its own slice of x ([S, B, ...]) at once. Each copy
    is initialised from its seed's "run/init" stream, so a seed starts the same whichever seeds share
    its group. The copies are built on the CPU and then moved, so a seed starts from the same weights on
    every device.
    """

    def __init__(self, build, seeds: list[int], device: torch.device | str = "cpu"):
        mods = []
        for sd in seeds:
            with torch.random.fork_rng(devices=[]):
                # the CPU generator only: torch.manual_seed would also reseed every CUDA device's default generator,
                # which fork_rng(devices=[]) does not restore
                torch.default_generator.manual_seed(stream_seed(sd, "run/init"))
                mods.append(build())
        self.device = torch.device(device)
        self.params = {k: torch.stack([dict(m.named_parameters())[k].detach() for m in mods]).to(self.device).requires_grad_()
                       for k, _ in mods[0].named_parameters()}
        # moved after stacking, since `.to` moves a module's parameters in place; its buffers (BinnedPolicy's bin values)
        # serve every seed
        self.template = mods[0].to(self.device)

    def forward(self, params: dict[str, Tensor], x: Tensor):
        return batched_forward(self.template, params, x)

    def copy_params(self) -> dict[str, Tensor]:
        return {k: v.detach().clone() for k, v in self.params.items()}

    def module_of(self, s: int) -> nn.Module:
        """A plain module holding seed s's parameters (for `evaluate`)."""
        m = copy.deepcopy(self.template)
        with torch.no_grad():
            for k, p in m.named_parameters():
                p.copy_(self.params[k][s])
        return m

def clip_grad_norm_per_seed(params: list[Tensor], max_norm: float | None, alive: Tensor) -> Tensor:
    """Zero dead seeds' gradients, then clip each seed's global gradient norm to `max_norm` (as
    `torch.nn.utils.clip_grad_norm_` does for one model: coef = min(1, max_norm / (norm + 1e-6)); None: no
    clip). Returns each seed's norm before clipping [S] (non-finite where its gradient is)."""
    grads = [p.grad for p in params if p.grad is not None]
    S = alive.shape[0]
    norm = torch.stack([torch.linalg.vector_norm(g.reshape(S, -1), dim=1) for g in grads]).norm(dim=0)
    coef = torch.ones_like(norm) if max_norm is None else (max_norm / (norm + 1e-6)).clamp(max=1.0)
    clean = bool(alive.all()) and bool(torch.isfinite(norm).all())
    if not clean:
        coef = torch.where(torch.isfinite(coef) & alive, coef, torch.zeros_like(coef))
    torch._foreach_mul_(grads, [coef.reshape(-1, *([1] * (g.dim() - 1))) for g in grads])
    if not clean:
        for g in grads:
            g.nan_to_num_(0.0)
    return norm

class _UniformRandom(nn.Module):
    """A stand-in policy for `evaluate`: `mode` returns uniform actions in [-1, 1] from its own generator."""

    def __init__(self, action_dim: int, seed: int):
        super().__init__()
        self.action_dim, self.gen = action_dim, generator(seed, "eval/random_actions")

    def forward(self, obs: Tensor) -> Tensor:
        return obs

    def mode(self, obs: Tensor) -> Tensor:
        return torch.rand(obs.shape[0], self.action_dim, generator=self.gen, device=self.gen.device) * 2.0 - 1.0


def random_policy_return(task: str, task_config, episodes: int, seed: int) -> float:
    """Mean return of a uniform-random policy over `episodes` episodes of the "eval" seed stream of `seed`."""
    probe = VecEnv(task, [0], task_config.action_repeat, task_config.time_limit)
    probe.close()
    ident = RunningNorm(probe.obs_dim, clip=float("inf"))
    ident.count.fill_(1.0)
    return evaluate(_UniformRandom(probe.action_dim, seed), ident, task, episodes, seed, task_config.action_repeat,
                    task_config.time_limit)

@torch.no_grad()
def evaluate_seeds(actor: Stacked, obs_norm, task: str, episodes: int, seeds: list[int], alive: Tensor | None = None,
                   action_repeat: int = 1, time_limit: float | None = None) -> list[float]:
    """`tasks.dmc.evaluate` for S stacked policies at once: each seed's mean return over `episodes` deterministic-policy
    episodes on its own "eval" seed stream, the same episodes `evaluate` plays (equal up to floating-point reassociation
    in the batched forward; tested). All S × episodes environments step in one VecEnv with one batched forward per step.

    `obs_norm(x [S, E, O]) -> [S, E, O]` normalises with each seed's statistics; a seed with `alive` False acts with
    zeros and gets NaN.
    """
    S = len(seeds)
    env = VecEnv(task, [stream_seed(sd, f"eval/{i}") for sd in seeds for i in range(episodes)], action_repeat, time_limit)
    pol = actor.template
    live = torch.ones(S, dtype=torch.bool, device=actor.device) if alive is None else alive
    returns = np.full(S * episodes, np.nan)
    done = np.zeros(S * episodes, dtype=bool)
    while not done.all():
        obs = obs_norm(torch.as_tensor(env.obs, device=actor.device).view(S, episodes, -1))
        action = pol.mode(actor.forward(actor.params, obs))
        action = torch.where(live[:, None, None], action, torch.zeros_like(action))
        _, _, term, trunc, _, ended_return = env.step(action.reshape(S * episodes, -1).cpu().numpy())
        ended = (term | trunc) & ~done  # the env auto-resets: count each env's first episode only
        returns[ended] = ended_return[ended]
        done |= ended
    env.close()
    means = returns.reshape(S, episodes).mean(1)
    return [float(m) if ok else float("nan") for m, ok in zip(means, live.tolist())]


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
