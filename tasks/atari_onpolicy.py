"""The on-policy loop of the Atari and memory family: PPO, V-MPO (and any K = 1 method) with a memory core.

One run: `num_envs` environments of one task (`tasks.atari`) stepped in lockstep; an agent made of a torso
(`tasks.atari.make_torso`: MinAtar's conv, the Nature CNN or an MLP), a core (`tasks.cores`: feed-forward,
LSTM, TrXL, TrXL-I, GTrXL) and linear policy (categorical) and value heads. Each iteration collects `unrolls`
unrolls of `unroll` steps per environment, carrying the core's state across unrolls and storing it at each
unroll's start; the learner replays every unroll from its stored state (truncated backprop through time, the
memory detached as in TrXL), in minibatches of whole unrolls, for `epochs` passes. Advantages: GAE, or n-step
returns bootstrapped at the end of each unroll (V-MPO, `[EM-SFT] §8`, docs/reference-settings.md).

The core runs with `span="sliding"` by default: every step attends to at most its last M steps, so replaying an
unroll from its stored state reproduces the actor's outputs exactly and PPO's ratio is 1 before the first
update (TrXL's segment recurrence would let step t of a replayed unroll see M + t steps; see `tasks/cores.py`).

The seeds of a grid cell train in lockstep (`_train_group`): their environments in one vector env, their agents
stacked on a seed dim and run with `torch.func.vmap` (the cores keep batch-first states, and the LSTM writes its cell
out, since vmap has no rule for aten::lstm_cell), the algorithm's loss vmapped with each seed's own duals, as in
the control family. A seed's numbers equal its numbers alone up to float rounding in batched matrix products
(tested); a group of one runs without vmap, whose per-op overhead about doubles a lone seed's time.

A run that produces a non-finite loss, gradient or parameter, a minibatch KL(π_old‖π_θ) above `kl_limit`, or (where
`collapse_learned` is set) a collapse of its training return after it learned (`CollapseWatch`), stops and is recorded
`diverged` with the step and reason; the other seeds go on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from algorithms import REGISTRY as ALGORITHMS
from algorithms.base import Batch, Needs
from algorithms.common import kl_categorical
from algorithms.config import ConfigError, check_choices, check_positive, field
from tasks.atari import AtariTaskConfig, AtariVecEnv, all_tasks, make_torso, random_policy_return
from tasks.base import Device, Family, RunResult, RunSpec, register_task
from tasks.control_onpolicy import advantages_and_targets, next_values
from tasks.cores import CoreConfig, make_core
from tasks.dmc import SeedStatus, Stacked, clip_grad_norm_per_seed, seed_generators
from tasks.seeding import generator, stream_seed


@dataclass(frozen=True)
class AtariOnPolicyConfig:
    """The on-policy loop with a memory core. Defaults: CleanRL `ppo_atari` (docs/reference-settings.md) unless noted."""

    total_steps: int = field(10_000_000, "agent steps of training summed over envs; CleanRL Atari: 10M")
    num_envs: int = field(8, "environments stepped in lockstep; CleanRL Atari: 8")
    unroll: int = field(32, "T: steps per unroll (the learner's backprop-through-time window); V-MPO Atari: 63")
    unrolls: int = field(4, "unrolls per environment per iteration (CleanRL's 128 steps per env = 4 × 32)")
    minibatches: int = field(4, "minibatches of whole unrolls per epoch; CleanRL Atari: 4")
    epochs: int = field(4, "passes over each iteration's unrolls; CleanRL Atari: 4")
    gamma: float = field(0.99, "discount γ; CleanRL 0.99")
    gae_lambda: float = field(0.95, "GAE λ (returns='gae'); CleanRL 0.95")
    returns: Literal["gae", "nstep"] = field(
        "gae", "'gae', or 'nstep': V-MPO's n-step returns bootstrapped at the end of each unroll, A = G − V")
    lr: float = field(2.5e-4, "Adam learning rate; CleanRL Atari 2.5e-4, V-MPO 1e-4")
    anneal_lr: bool = field(True, "anneal the learning rate linearly to 0; CleanRL: True")
    adam_eps: float = field(1e-5, "Adam ε; CleanRL 1e-5")
    max_grad_norm: float | None = field(0.5, "clip of the global gradient norm; CleanRL 0.5; None: no clip (V-MPO)")
    dual_lr: float = field(1e-2, "Adam learning rate of the algorithm's duals (η, α), never annealed")
    vf_coef: float = field(0.5, "weight of the loop's critic loss ½(V − G)² for methods without a value term (PPO has its own)")
    clip_reward: bool = field(True, "train on sign(reward) (the Atari convention; returns are logged unclipped)")
    torso_dim: int = field(128, "torso output width; MinAtar network: 128, Nature CNN: 512")
    core: Literal["ff", "lstm", "trxl", "trxl_i", "gtrxl"] = field("ff", "the memory core (tasks/cores.py)")
    core_hidden: int = field(64, "core width H; V-MPO's Atari TrXL: 256")
    core_layers: int = field(2, "transformer blocks (or Linear+ReLU layers of 'ff'); V-MPO Atari: 8")
    core_heads: int = field(2, "attention heads; V-MPO Atari: 4")
    core_memory: int = field(32, "M: steps each transformer layer remembers")
    gate_bias: float = field(2.0, "GTrXL gate bias b_g; Parisotto et al. 2020: 2")
    eval_every: int = field(500_000, "agent steps between evaluations (and one at the end)")
    eval_episodes: int = field(8, "evaluation episodes (stochastic policy, separate seeds) per evaluation")
    eval_max_steps: int = field(10_000, "cap on the agent steps of one evaluation")
    kl_limit: float = field(100.0, "a minibatch mean KL(π_old‖π_θ) above this marks the run diverged")
    collapse_learned: float | None = field(
        None, "a run has learned once its windowed training-episode return reaches this; None: no collapse check")
    collapse_to: float = field(0.0, "after learning, a windowed return at or below this marks the run diverged (collapse)")
    collapse_window: int = field(5, "iterations whose mean training-episode returns are averaged by the collapse check")
    random_baseline: bool = field(False, "no training: the return of a uniform-random policy (a baseline run, step 0)")
    device: Device = field("cpu", "where the loop keeps networks, rollout tensors and losses: 'cpu' or 'cuda' (the "
                                  "runner picks which GPU)")

    def __post_init__(self):
        check_choices(self)
        check_positive(self, "total_steps", "num_envs", "unroll", "unrolls", "minibatches", "epochs", "lr", "adam_eps",
                       "max_grad_norm", "dual_lr", "torso_dim", "core_hidden", "core_layers", "core_heads", "core_memory",
                       "eval_every", "eval_episodes", "eval_max_steps", "kl_limit", "collapse_window")
        check_positive(self, "vf_coef", strict=False)
        for name in ("gamma", "gae_lambda"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"AtariOnPolicyConfig.{name} = {getattr(self, name)!r} is invalid: must lie in [0, 1].")
        if self.num_envs * self.unrolls < self.minibatches:
            raise ConfigError(f"AtariOnPolicyConfig.minibatches = {self.minibatches} is invalid: at most num_envs × unrolls "
                              f"= {self.num_envs * self.unrolls} (a minibatch holds whole unrolls).")
        if self.collapse_learned is not None and not self.collapse_to < self.collapse_learned:
            raise ConfigError(f"AtariOnPolicyConfig.collapse_to = {self.collapse_to!r} is invalid: must lie below "
                              f"collapse_learned = {self.collapse_learned!r} (a collapse falls from the learned level).")
        if self.total_steps < self.rollout and not self.random_baseline:
            raise ConfigError(f"AtariOnPolicyConfig.total_steps = {self.total_steps} is invalid: must be >= one iteration's "
                              f"{self.rollout} steps (num_envs × unroll × unrolls).")
        self.core_config()  # validates the core's fields

    @property
    def rollout(self) -> int:
        """Agent steps per iteration, summed over environments."""
        return self.num_envs * self.unroll * self.unrolls

    @property
    def steps(self) -> int:
        """Training length, read by the runner to start the longest groups first."""
        return self.total_steps

    def core_config(self) -> CoreConfig:
        return CoreConfig(kind=self.core, hidden=self.core_hidden, layers=self.core_layers, heads=self.core_heads,
                          memory=self.core_memory, gate_bias=self.gate_bias, span="sliding")


PROVIDES = Needs(min_samples=1, labels=False, logp_old=True, logp_ref=True, kl_ref=True, kl_old=True, values=True, baseline=False)
"""What the loop's batches carry (K = 1: one sampled action per state; π_ref is the behaviour policy)."""


class Agent(nn.Module):
    """torso → core → (policy logits, value). Orthogonal heads as CleanRL: policy gain 0.01, value gain 1."""

    def __init__(self, obs_shape: tuple[int, ...], num_actions: int, cfg: AtariOnPolicyConfig):
        super().__init__()
        self.torso = make_torso(obs_shape, cfg.torso_dim)
        self.core = make_core(self.torso.out_dim, cfg.core_config())
        self.pi, self.v = nn.Linear(self.core.out_dim, num_actions), nn.Linear(self.core.out_dim, 1)
        for head, gain in ((self.pi, 0.01), (self.v, 1.0)):
            nn.init.orthogonal_(head.weight, gain)
            nn.init.zeros_(head.bias)

    def forward(self, obs: Tensor, state: tuple, first: Tensor) -> tuple[Tensor, Tensor, tuple]:
        """obs [T, B, *obs_shape], first [T, B] bool -> logits [T, B, A], value [T, B], the state after step T."""
        T, B = obs.shape[:2]
        feat = self.torso(obs.reshape(T * B, *obs.shape[2:])).reshape(T, B, -1)
        y, state = self.core(feat, state, first)
        return self.pi(y), self.v(y).squeeze(-1), state


class CollapseWatch:
    """A collapse of return after learning, read from the per-iteration mean training-episode returns.

    The windowed return is the mean of the last `window` iterations' returns (defined once `window` iterations have
    logged one). A run has *learned* at the first iteration whose windowed return reaches `learned`; after that, an
    iteration whose windowed return is at or below `to` is a collapse. `update` returns the reason (a string naming
    both steps) at the collapse, else None. The documents do not define divergence; this counts a run that learns and
    then loses it as diverged too, not only one whose numbers blow up (a rule fixed before the data).
    """

    def __init__(self, learned: float, to: float, window: int):
        self.learned, self.to, self.window = learned, to, window
        self.recent: list[float] = []
        self.learned_at: int | None = None
        self.peak = float("-inf")

    def update(self, step: int, ret: float) -> str | None:
        self.recent = (self.recent + [ret])[-self.window:]
        if len(self.recent) < self.window:
            return None
        windowed = float(np.mean(self.recent))
        self.peak = max(self.peak, windowed)
        if self.learned_at is None:
            if windowed >= self.learned:
                self.learned_at = step
            return None
        if windowed <= self.to:
            return (f"return collapse: windowed training return {windowed:.3g} <= {self.to:g} after learning "
                    f"(reached {self.learned:g} at step {self.learned_at}, peak {self.peak:.3g})")
        return None


def _detach(state: tuple) -> tuple:
    return tuple(s.detach() for s in state)


def _sample(logits: Tensor, gen: torch.Generator) -> Tensor:
    """One action per row of logits [N, A], from `gen` (inverse CDF of a uniform draw)."""
    u = torch.rand(logits.shape[0], 1, generator=gen, device=logits.device)
    cdf = logits.softmax(-1).cumsum(-1)
    return torch.searchsorted(cdf, u * cdf[:, -1:]).squeeze(-1).clamp_max(logits.shape[-1] - 1)


def evaluate(agent: Agent, task: str, task_cfg: AtariTaskConfig, episodes: int, seed: int, max_steps: int) -> float:
    """Mean return of the first episode of `episodes` environments on the "eval" seed stream, actions sampled from
    the policy on its own device (Atari evaluations sample: a greedy policy can stall, e.g. never pressing FIRE)."""
    dev = agent.pi.weight.device
    env = AtariVecEnv(task, [stream_seed(seed, f"eval/{i}") for i in range(episodes)], task_cfg)
    gen = generator(seed, "eval/actions", dev)
    state = agent.core.initial_state(env.n)
    first = torch.ones(env.n, dtype=torch.bool, device=dev)
    returns, so_far = np.full(env.n, np.nan), np.zeros(env.n)
    obs = env.obs
    with torch.no_grad():
        for _ in range(max_steps):
            logits, _, state = agent(torch.from_numpy(obs).to(dev)[None], state, first[None])
            obs, reward, terminated, truncated, _, _ = env.step(_sample(logits[0], gen).cpu().numpy())
            so_far += np.where(np.isnan(returns), reward, 0.0)
            ended = terminated | truncated
            returns = np.where(np.isnan(returns) & ended, so_far, returns)
            first = torch.from_numpy(ended).to(dev)
            if not np.isnan(returns).any():
                break
    returns = np.where(np.isnan(returns), so_far, returns)  # cut by the step cap: the return so far
    return float(np.mean(returns))


def train(specs: list[RunSpec]) -> list[RunResult]:
    """Train runs that differ only in seed: the learning ones in lockstep (`_train_group`), a random baseline alone."""
    results: list[RunResult | None] = [None] * len(specs)
    learners = [i for i, s in enumerate(specs) if not s.train_config.random_baseline]
    for i, spec in enumerate(specs):
        if spec.train_config.random_baseline:
            cfg = spec.train_config
            results[i] = RunResult("ok", [(0, "eval/return", random_policy_return(spec.task, spec.task_config,
                                                                                    cfg.eval_episodes, spec.seed))])
    if learners:
        for i, r in zip(learners, _train_group([specs[i] for i in learners])):
            results[i] = r
    return results


def _first(x):
    """Seed 0's slice of a dict, tuple or tensor stacked on a leading seed dim."""
    if isinstance(x, dict):
        return {k: v[0] for k, v in x.items()}
    return tuple(v[0] for v in x) if isinstance(x, tuple) else x[0]


def _lead(x):
    """`x` (tensors, or tuples and dicts of them) with a leading seed dim of 1: the inverse of `_first`."""
    if isinstance(x, dict):
        return {k: v[None] for k, v in x.items()}
    return tuple(_lead(v) for v in x) if isinstance(x, tuple) else x[None]


class _Learner:
    """The S seeds' agents, duals and optimisers of one lockstep group, and the learner step on a minibatch.

    Parameters are stacked on a leading seed dim (`tasks.dmc.Stacked`: each seed initialised from its own "run/init"
    stream); `forward` runs every seed's agent on its own slice with `torch.func.vmap`; the algorithm's loss is vmapped
    over seeds with each seed's own duals; Adam is elementwise, so stacked parameters give each seed its own optimiser
    state; the gradient norm is clipped per seed and a stopped seed's gradients are zeroed.
    """

    def __init__(self, specs: list[RunSpec], obs_shape: tuple[int, ...], num_actions: int, dev: torch.device):
        spec0 = specs[0]
        self.cfg: AtariOnPolicyConfig = spec0.train_config
        cfg = self.cfg
        method = ALGORITHMS[spec0.algo](spec0.algo_config)
        self.needs = needs = type(method).needs_for(spec0.algo_config)
        missing = needs.missing(PROVIDES)
        if missing:
            raise ConfigError(f"algorithm {spec0.algo!r} needs {', '.join(missing)}, which the Atari on-policy loop does "
                              "not provide.")
        if getattr(spec0.algo_config, "kl_split", "joint") == "decoupled":
            raise ConfigError(f"{spec0.algo!r} with kl_split='decoupled' needs a Gaussian policy; Atari policies are "
                              "categorical.")
        self.S = S = len(specs)
        self.method = method.to(dev)
        self.nets = Stacked(lambda: Agent(obs_shape, num_actions, cfg), [s.seed for s in specs], dev)
        self.duals = {k: v.detach()[None].repeat(S, *([1] * v.dim())).requires_grad_() for k, v in method.named_parameters()}
        self.opt = torch.optim.Adam(list(self.nets.params.values()), lr=cfg.lr, eps=cfg.adam_eps)
        self.dual_opt = torch.optim.Adam(list(self.duals.values()), lr=cfg.dual_lr) if self.duals else None
        self.ent_coef = float(getattr(spec0.algo_config, "ent_coef", 0.0) or 0.0)
        self.wants_ref = needs.logp_ref or needs.kl_ref
        template = self.nets.template
        if S == 1:  # one seed: the same calls on its slice, without vmap's per-op overhead (about 2× at this size)
            self._forward = lambda p, o, st, fi: _lead(functional_call(template, _first(p), (o[0], _first(st), fi[0])))
            self._loss = lambda duals, t: _lead(self._seed_loss(_first(duals), _first(t)))
        else:
            self._forward = vmap(lambda p, o, st, fi: functional_call(template, p, (o, st, fi)))
            self._loss = vmap(self._seed_loss)

    def forward(self, obs: Tensor, state: tuple, first: Tensor) -> tuple[Tensor, Tensor, tuple]:
        """obs [S, T, B, *obs_shape], state (each [S, B, ...]), first [S, T, B] -> logits [S, T, B, A], value [S, T, B],
        the state after step T."""
        return self._forward(self.nets.params, obs, state, first)

    def initial_state(self, batch: int) -> tuple:
        one = self.nets.template.core.initial_state(batch)
        return tuple(x[None].repeat(self.S, *([1] * x.dim())) for x in one)

    def _seed_loss(self, duals: dict[str, Tensor], t: dict[str, Tensor]):
        """One seed's algorithm loss on its minibatch tensors (vmapped over seeds)."""
        logp = t["logp"]
        batch = Batch(logp=logp, score=t["adv"], mask=torch.ones_like(logp), logp_old=t["logp_old"], kl_old=t["kl_old"],
                      value=t["value"], value_old=t["value_old"], value_target=t["target"])
        if self.wants_ref:
            batch.logp_ref, batch.kl_ref = t["logp_old"], t["kl_old"]
        if self.ent_coef > 0:
            batch.entropy = t["entropy"]
        return functional_call(self.method, duals, (batch,)) if duals else self.method(batch)

    def step(self, mb: dict[str, Tensor], start: tuple, alive: Tensor):
        """One learner step of every seed on its minibatch `mb` (each [S, T, b, ...]) from its stored states `start`.

        Returns (loss [S], KL(π_old‖π_θ) [S], gradient norm [S], metrics {name: [S]}); the caller stops seeds whose loss
        or KL is bad before this step's update counts (their gradients are zeroed here)."""
        S = alive.shape[0]
        logits, value, _ = self.forward(mb["obs"], start, mb["first"])
        logp_all = logits.log_softmax(-1)
        act = mb["act"][..., None]
        kl_old = kl_categorical(mb["logits"], logits).reshape(S, -1)
        t = {"logp": logp_all.gather(-1, act).reshape(S, -1, 1),
             "logp_old": mb["logits"].log_softmax(-1).gather(-1, act).reshape(S, -1, 1),
             "adv": mb["adv"].reshape(S, -1, 1), "kl_old": kl_old, "value": value.reshape(S, -1, 1),
             "value_old": mb["value"].reshape(S, -1, 1), "target": mb["target"].reshape(S, -1, 1)}
        if self.ent_coef > 0:
            t["entropy"] = -(logp_all.exp() * logp_all).sum(-1).reshape(S, -1, 1)
        loss, metrics = self._loss(self.duals, t)
        if not self.needs.values:
            v_loss = 0.5 * (value - mb["target"]).pow(2).mean((1, 2))
            loss = loss + self.cfg.vf_coef * v_loss
            metrics = {**metrics, "loss/value": v_loss.detach()}
        kl_now = kl_old.detach().mean(1)
        ok = torch.isfinite(loss) & (kl_now <= self.cfg.kl_limit) & alive
        self.opt.zero_grad(set_to_none=True)
        if self.dual_opt:
            self.dual_opt.zero_grad(set_to_none=True)
        torch.where(ok, loss, torch.zeros_like(loss)).sum().backward()
        grad_norm = clip_grad_norm_per_seed(list(self.nets.params.values()), self.cfg.max_grad_norm, ok)
        if self.duals:
            clip_grad_norm_per_seed(list(self.duals.values()), None, ok & torch.isfinite(grad_norm))
        return loss.detach(), kl_now, grad_norm, metrics

    def update(self) -> None:
        self.opt.step()
        if self.dual_opt:
            self.dual_opt.step()


def _train_group(specs: list[RunSpec]) -> list[RunResult]:
    """The seeds of one grid cell trained in lockstep.

    The S seeds' environments live in one `AtariVecEnv` (S × num_envs, each seeded from its own seed's "instance"
    stream), their agents in one `_Learner`. Each seed draws its actions and minibatch orders from its own "run"
    generator, so its numbers do not depend on which seeds share its group (up to floating-point reassociation in
    batched matrix products). A seed that diverges stops learning from that step and its rows end there; the others
    go on.
    """
    spec0 = specs[0]
    cfg: AtariOnPolicyConfig = spec0.train_config
    task_cfg: AtariTaskConfig = spec0.task_config
    seeds = [s.seed for s in specs]
    S, N, T, U = len(seeds), cfg.num_envs, cfg.unroll, cfg.unrolls
    dev = torch.device(cfg.device)
    env = AtariVecEnv(spec0.task, [stream_seed(sd, f"instance/{i}") for sd in seeds for i in range(N)], task_cfg)
    learner = _Learner(specs, env.obs_shape, env.num_actions, dev)
    gens = seed_generators(seeds, "run", dev)
    status = SeedStatus(S, dev)
    watches = [CollapseWatch(cfg.collapse_learned, cfg.collapse_to, cfg.collapse_window)
               if cfg.collapse_learned is not None else None for _ in seeds]
    rows: list[list[tuple[int, str, float]]] = [[] for _ in seeds]
    seed_rows = torch.arange(S, device=dev)[:, None]

    R = T * U
    obs_buf = torch.zeros(R, S, N, *env.obs_shape, device=dev)
    act_buf = torch.zeros(R, S, N, dtype=torch.long, device=dev)
    logits_buf = torch.zeros(R, S, N, env.num_actions, device=dev)
    first_buf = torch.zeros(R, S, N, dtype=torch.bool, device=dev)
    value_buf, rew_buf, term_buf, trunc_buf, final_v = (torch.zeros(R, S * N, device=dev) for _ in range(5))

    state = learner.initial_state(N)
    first = torch.ones(S, N, dtype=torch.bool, device=dev)
    obs = env.obs
    iterations = cfg.total_steps // cfg.rollout
    env_steps, next_eval = 0, cfg.eval_every

    def view(x: np.ndarray) -> Tensor:  # [S·N, ...] from the env -> [S, N, ...] on the device
        return torch.from_numpy(x).to(dev).view(S, N, *x.shape[1:])

    for it in range(iterations):
        if not status.alive.any():
            break
        if cfg.anneal_lr:
            for g in learner.opt.param_groups:
                g["lr"] = cfg.lr * (1.0 - it / iterations)
        # ------------------------------------------------------------------------ rollout: U unrolls of T steps
        starts, ended_returns = [], [[] for _ in seeds]
        with torch.no_grad():
            for t in range(R):
                if t % T == 0:
                    starts.append(_detach(state))
                o = view(obs)
                logits, value, state = learner.forward(o[:, None], state, first[:, None])
                a = torch.stack([_sample(logits[s, 0], gens[s]) for s in range(S)])
                obs_buf[t], act_buf[t], logits_buf[t], first_buf[t] = o, a, logits[:, 0], first
                value_buf[t] = value[:, 0].reshape(S * N)
                obs, reward, terminated, truncated, final_obs, ended_return = env.step(a.reshape(S * N).cpu().numpy())
                rew_buf[t] = torch.from_numpy(np.sign(reward) if cfg.clip_reward else reward).to(dev).float()
                term_buf[t] = torch.from_numpy(terminated).to(dev).float()
                trunc_buf[t] = torch.from_numpy(truncated).to(dev).float()
                if truncated.any():  # bootstrap a time-limit cut from V(final observation) under the episode's own state
                    _, v_final, _ = learner.forward(view(final_obs)[:, None], state,
                                                    torch.zeros(S, 1, N, dtype=torch.bool, device=dev))
                    final_v[t] = v_final[:, 0].reshape(S * N)
                first = view(terminated | truncated)
                for i in np.flatnonzero(~np.isnan(ended_return)):
                    ended_returns[i // N].append(float(ended_return[i]))
            env_steps += cfg.rollout
            _, last_value, _ = learner.forward(view(obs)[:, None], state, first[:, None])
            nv = next_values(value_buf, last_value[:, 0].reshape(S * N), trunc_buf, final_v)
            adv, target = advantages_and_targets(rew_buf, value_buf, nv, term_buf, trunc_buf, returns=cfg.returns,
                                                 gamma=cfg.gamma, gae_lambda=cfg.gae_lambda, unroll=T)
        for s in range(S):
            if ended_returns[s] and status.alive[s]:
                rows[s].append((env_steps, "train/episode_return", float(np.mean(ended_returns[s]))))
                collapse = watches[s].update(env_steps, rows[s][-1][2]) if watches[s] else None
                if collapse:
                    status.kill(torch.arange(S, device=dev) == s, collapse, env_steps)
        if not status.alive.any():
            break

        # ------------------------------------------------------------------------ learner: minibatches of whole unrolls
        def unrolls_of(x: Tensor) -> Tensor:  # [R, S, N, ...] -> [S, U·N, T, ...] (each seed's unrolls, unroll-major)
            x = x.reshape(U, T, S, N, *x.shape[3:])
            return x.permute(2, 0, 3, 1, *range(4, x.dim())).reshape(S, U * N, T, *x.shape[4:])

        per_seed = {"obs": obs_buf, "act": act_buf, "logits": logits_buf, "first": first_buf}
        per_seed.update({k: v.view(R, S, N) for k, v in (("value", value_buf), ("adv", adv), ("target", target))})
        data = {k: unrolls_of(v) for k, v in per_seed.items()}
        start_state = tuple(torch.cat([st[i] for st in starts], 1) for i in range(len(starts[0])))  # each [S, U·N, ...]
        logged: list[Tensor] = []
        keys: list[str] = []
        for _epoch in range(cfg.epochs):
            perms = torch.stack([torch.randperm(U * N, generator=g, device=dev) for g in gens])  # [S, U·N]
            for idx in perms.tensor_split(cfg.minibatches, dim=1):
                mb = {k: v[seed_rows, idx].transpose(1, 2) for k, v in data.items()}  # [S, T, b, ...]
                loss, kl_now, grad_norm, metrics = learner.step(mb, tuple(x[seed_rows, idx] for x in start_state),
                                                                status.alive)
                bad_loss, bad_kl = ~torch.isfinite(loss), kl_now > cfg.kl_limit
                status.kill(bad_loss, "non-finite loss", env_steps)
                status.kill(bad_kl, [f"KL(π_old‖π_θ) = {k:.3g} > {cfg.kl_limit:g}" for k in kl_now.tolist()], env_steps)
                status.kill(~torch.isfinite(grad_norm), "non-finite gradient", env_steps)
                if not status.alive.any():
                    return status.results(rows)
                learner.update()
                if not keys:
                    keys = [*metrics, "update/grad_norm"]
                logged.append(torch.stack([*(m.detach().float().reshape(S) for m in metrics.values()), grad_norm]))
        # ------------------------------------------------------------------------ per-iteration logging, evaluation
        with torch.no_grad():
            finite = torch.stack([torch.isfinite(p.reshape(S, -1)).all(1) for p in learner.nets.params.values()]).all(0)
            status.kill(~finite, "non-finite parameters", env_steps)
            new_logits = learner.forward(data["obs"].transpose(1, 2), start_state, data["first"].transpose(1, 2))[0]
            update_kl = kl_categorical(data["logits"].transpose(1, 2), new_logits).reshape(S, -1).mean(1)
        means = torch.stack(logged).mean(0)  # [K, S]
        evaluating = env_steps >= next_eval or it == iterations - 1
        if evaluating:
            while next_eval <= env_steps:
                next_eval += cfg.eval_every
        for s in range(S):
            if not status.alive[s]:
                continue
            rows[s].extend((env_steps, k, float(m)) for k, m in zip(keys, means[:, s].tolist()))
            rows[s].append((env_steps, "update/kl", float(update_kl[s])))
            rows[s].append((env_steps, "update/lr", float(learner.opt.param_groups[0]["lr"])))
            if evaluating:
                agent = learner.nets.module_of(s).eval()
                rows[s].append((env_steps, "eval/return", evaluate(agent, spec0.task, task_cfg, cfg.eval_episodes,
                                                                   seeds[s], cfg.eval_max_steps)))
    return status.results(rows)


def _register() -> None:
    family = Family(name="atari", train_config=AtariOnPolicyConfig, provides=PROVIDES, train=train,
                    description="MinAtar and ALE games (gymnasium / ale-py) and a T-maze memory task, with memory cores")
    for name in all_tasks():
        register_task(name, family, AtariTaskConfig(), f"Atari family: {name}")


_register()
