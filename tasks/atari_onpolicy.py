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

Seeds are trained one after another (a transformer core's memory makes lockstep stacking of seeds unwieldy);
the runner's workers run grid cells in parallel. A run that produces a non-finite loss, gradient or parameter,
a minibatch KL(π_old‖π_θ) above `kl_limit`, or (where `collapse_learned` is set) a collapse of its training return
after it learned (`CollapseWatch`), stops and is recorded `diverged` with the step and reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from algorithms import REGISTRY as ALGORITHMS
from algorithms.base import Batch, Needs
from algorithms.common import kl_categorical
from algorithms.config import ConfigError, check_choices, check_positive, field
from tasks.atari import AtariTaskConfig, AtariVecEnv, all_tasks, make_torso, random_policy_return
from tasks.base import Device, Family, RunResult, RunSpec, register_task
from tasks.control_onpolicy import advantages_and_targets, next_values
from tasks.cores import CoreConfig, make_core
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
    """Train runs that differ only in seed, one after another."""
    return [train_one(s) for s in specs]


def train_one(spec: RunSpec) -> RunResult:
    cfg: AtariOnPolicyConfig = spec.train_config
    task_cfg: AtariTaskConfig = spec.task_config
    if cfg.random_baseline:
        return RunResult("ok", [(0, "eval/return", random_policy_return(spec.task, task_cfg, cfg.eval_episodes, spec.seed))])
    method = ALGORITHMS[spec.algo](spec.algo_config)
    needs = type(method).needs_for(spec.algo_config)
    missing = needs.missing(PROVIDES)
    if missing:
        raise ConfigError(f"algorithm {spec.algo!r} needs {', '.join(missing)}, which the Atari on-policy loop does not provide.")
    if getattr(spec.algo_config, "kl_split", "joint") == "decoupled":
        raise ConfigError(f"{spec.algo!r} with kl_split='decoupled' needs a Gaussian policy; Atari policies are categorical.")

    N, T, U = cfg.num_envs, cfg.unroll, cfg.unrolls
    dev = torch.device(cfg.device)
    method.to(dev)
    env = AtariVecEnv(spec.task, [stream_seed(spec.seed, f"instance/{i}") for i in range(N)], task_cfg)
    gen = generator(spec.seed, "run", dev)
    with torch.random.fork_rng(devices=[]):  # initialised on the CPU, then moved: the same weights on every device
        torch.manual_seed(stream_seed(spec.seed, "run/init"))
        agent = Agent(env.obs_shape, env.num_actions, cfg).to(dev)
    opt = torch.optim.Adam(agent.parameters(), lr=cfg.lr, eps=cfg.adam_eps)
    duals = list(method.parameters())
    dual_opt = torch.optim.Adam(duals, lr=cfg.dual_lr) if duals else None
    ent_coef = float(getattr(spec.algo_config, "ent_coef", 0.0) or 0.0)
    wants_ref = needs.logp_ref or needs.kl_ref

    R = T * U
    obs_buf = torch.zeros(R, N, *env.obs_shape, device=dev)
    act_buf = torch.zeros(R, N, dtype=torch.long, device=dev)
    logits_buf = torch.zeros(R, N, env.num_actions, device=dev)
    value_buf, rew_buf, term_buf, trunc_buf, final_v = (torch.zeros(R, N, device=dev) for _ in range(5))
    first_buf = torch.zeros(R, N, dtype=torch.bool, device=dev)

    rows: list[tuple[int, str, float]] = []
    state = agent.core.initial_state(N)
    first = torch.ones(N, dtype=torch.bool, device=dev)
    obs = env.obs
    iterations = cfg.total_steps // cfg.rollout
    env_steps, learner_steps, next_eval = 0, 0, cfg.eval_every
    watch = CollapseWatch(cfg.collapse_learned, cfg.collapse_to, cfg.collapse_window) \
        if cfg.collapse_learned is not None else None

    def diverged(reason: str) -> RunResult:
        return RunResult("diverged", rows, diverged={"step": env_steps, "reason": reason})

    for it in range(iterations):
        if cfg.anneal_lr:
            for g in opt.param_groups:
                g["lr"] = cfg.lr * (1.0 - it / iterations)
        # ------------------------------------------------------------------------ rollout: U unrolls of T steps
        starts, ended_returns = [], []
        with torch.no_grad():
            for t in range(R):
                if t % T == 0:
                    starts.append(_detach(state))
                o = torch.from_numpy(obs).to(dev)
                logits, value, state = agent(o[None], state, first[None])
                a = _sample(logits[0], gen)
                obs_buf[t], act_buf[t], logits_buf[t], value_buf[t], first_buf[t] = o, a, logits[0], value[0], first
                obs, reward, terminated, truncated, final_obs, ended_return = env.step(a.cpu().numpy())
                rew_buf[t] = torch.from_numpy(np.sign(reward) if cfg.clip_reward else reward).to(dev).float()
                term_buf[t] = torch.from_numpy(terminated).to(dev).float()
                trunc_buf[t] = torch.from_numpy(truncated).to(dev).float()
                if truncated.any():  # bootstrap a time-limit cut from V(final observation) under the episode's own state
                    _, v_final, _ = agent(torch.from_numpy(final_obs).to(dev)[None], state,
                                          torch.zeros(1, N, dtype=torch.bool, device=dev))
                    final_v[t] = v_final[0]
                first = torch.from_numpy(terminated | truncated).to(dev)
                ended_returns.extend(ended_return[~np.isnan(ended_return)].tolist())
            env_steps += cfg.rollout
            _, last_value, _ = agent(torch.from_numpy(obs).to(dev)[None], state, first[None])
            nv = next_values(value_buf, last_value[0], trunc_buf, final_v)
            adv, target = advantages_and_targets(rew_buf, value_buf, nv, term_buf, trunc_buf, returns=cfg.returns,
                                                 gamma=cfg.gamma, gae_lambda=cfg.gae_lambda, unroll=T)
        if ended_returns:
            rows.append((env_steps, "train/episode_return", float(np.mean(ended_returns))))
            collapse = watch.update(env_steps, rows[-1][2]) if watch else None
            if collapse:
                return diverged(collapse)

        # ------------------------------------------------------------------------ learner: minibatches of whole unrolls
        def unrolls_of(x: Tensor) -> Tensor:  # [R, N, ...] -> [U·N, T, ...] (unroll-major)
            return x.reshape(U, T, N, *x.shape[2:]).transpose(1, 2).reshape(U * N, T, *x.shape[2:])

        data = {k: unrolls_of(v) for k, v in (("obs", obs_buf), ("act", act_buf), ("logits", logits_buf), ("value", value_buf),
                                               ("first", first_buf), ("adv", adv), ("target", target))}
        start_state = tuple(torch.cat([s[i] for s in starts]) for i in range(len(starts[0])))  # each [U·N, ...]
        logged: list[Tensor] = []
        keys: list[str] = []
        for _epoch in range(cfg.epochs):
            perm = torch.randperm(U * N, generator=gen, device=dev)
            for idx in perm.tensor_split(cfg.minibatches):
                mb = {k: v[idx].transpose(0, 1) for k, v in data.items()}  # [T, b, ...]
                logits, value, _ = agent(mb["obs"], tuple(s[idx] for s in start_state), mb["first"])
                logp_all = logits.log_softmax(-1)
                logp_old_all = mb["logits"].log_softmax(-1)
                logp = logp_all.gather(-1, mb["act"][..., None]).reshape(-1, 1)
                logp_old = logp_old_all.gather(-1, mb["act"][..., None]).reshape(-1, 1)
                kl_old = kl_categorical(mb["logits"], logits).reshape(-1)
                batch = Batch(logp=logp, score=mb["adv"].reshape(-1, 1), mask=torch.ones_like(logp), logp_old=logp_old,
                              kl_old=kl_old, value=value.reshape(-1, 1), value_old=mb["value"].reshape(-1, 1),
                              value_target=mb["target"].reshape(-1, 1))
                if wants_ref:
                    batch.logp_ref, batch.kl_ref = logp_old, kl_old
                if ent_coef > 0:
                    batch.entropy = -(logp_all.exp() * logp_all).sum(-1).reshape(-1, 1)
                loss, metrics = method(batch)
                if not needs.values:
                    v_loss = 0.5 * (value - mb["target"]).pow(2).mean()
                    loss = loss + cfg.vf_coef * v_loss
                    metrics = {**metrics, "loss/value": v_loss.detach()}
                kl_now = float(kl_old.detach().mean())
                if not torch.isfinite(loss):
                    return diverged("non-finite loss")
                if kl_now > cfg.kl_limit:
                    return diverged(f"KL(π_old‖π_θ) = {kl_now:.3g} > {cfg.kl_limit:g}")
                opt.zero_grad(set_to_none=True)
                if dual_opt:
                    dual_opt.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = nn.utils.clip_grad_norm_(agent.parameters(), cfg.max_grad_norm or float("inf"))
                if not torch.isfinite(grad_norm):
                    return diverged("non-finite gradient")
                opt.step()
                if dual_opt:
                    dual_opt.step()
                learner_steps += 1
                if not keys:
                    keys = [*metrics, "update/grad_norm"]
                logged.append(torch.stack([*(m.detach().float().reshape(()) for m in metrics.values()), grad_norm]))
        # ------------------------------------------------------------------------ per-iteration logging, evaluation
        with torch.no_grad():
            if not all(torch.isfinite(p).all() for p in agent.parameters()):
                return diverged("non-finite parameters")
            update_kl = float(kl_categorical(data["logits"].reshape(-1, env.num_actions),
                                             agent(data["obs"].transpose(0, 1), start_state, data["first"].transpose(0, 1))[0]
                                             .transpose(0, 1).reshape(-1, env.num_actions)).mean())
        rows.extend((env_steps, k, float(m)) for k, m in zip(keys, torch.stack(logged).mean(0).tolist()))
        rows.append((env_steps, "update/kl", update_kl))
        rows.append((env_steps, "update/lr", float(opt.param_groups[0]["lr"])))
        if env_steps >= next_eval or it == iterations - 1:
            while next_eval <= env_steps:
                next_eval += cfg.eval_every
            agent.eval()
            rows.append((env_steps, "eval/return", evaluate(agent, spec.task, task_cfg, cfg.eval_episodes, spec.seed,
                                                            cfg.eval_max_steps)))
            agent.train()
    return RunResult("ok", rows)


def _register() -> None:
    family = Family(name="atari", train_config=AtariOnPolicyConfig, provides=PROVIDES, train=train,
                    description="MinAtar and ALE games (gymnasium / ale-py) and a T-maze memory task, with memory cores")
    for name in all_tasks():
        register_task(name, family, AtariTaskConfig(), f"Atari family: {name}")


_register()
