"""The actor-critic (replay) training loop for DeepMind Control: MPO, PMPO, DPO and VIREL on a learned Q.

Source: `[PMPO] §5.2` (PMPO on the Control Suite: "at each iteration, the reference
policy proposes four actions for each state in the batch. The top two actions with the highest Q-values are
considered preferred samples, while the two actions with the lowest Q-values are treated as dis-preferred");
MPO (Abdolmaleki et al. 2018; Acme's `mpo` agent; docs/reference-settings.md); VIREL (`[EM-LLM] §9`).

Each seed acts in `num_envs` dm_control environments with its current policy π_θ (stochastic), stores every
transition in its own replay buffer, and after `learning_starts` env steps takes `updates_per_step` learner
steps per env step. A learner step, for a minibatch of `batch_size` replayed states:

1. **Critic** (a single Q network, as Acme's MPO; no twin/min trick): regress Q(s, a) on the n-step target
   y = Σ_{k<m} γ^k r_{t+k} + γ^m (1 − terminated) · mean_j Q_tgt(s', a'_j), a'_j ~ π_tgt(·|s') (`n_step` = 5 as
   Acme's MPO, uncorrected; `critic_samples` draws; VIREL draws them from π_θ, the actor whose Bellman operator
   `[EM-LLM] §9` eq. 13 names). The sum stops at the end of an episode; s' is then the *final* observation of an
   episode cut by the time limit (`VecEnv.step`'s `final_obs`), which keeps its discount γ^m: a truncation is
   bootstrapped, only a termination (discount 0) is not (`Replay.nstep`, `critic_target`, tested).
2. **Policy**: K = `samples` actions per state are sampled from the target (reference) policy π_tgt and scored
   by the target critic Q_tgt (Acme's MPO scores with its target critic). The algorithm sees a `Batch` [B, K]:
   `score` = Q, `label` = +1 for the `accept` best actions by Q and −1 for the rest (`labels = "top"`; or +1
   best / −1 worst / 0 others with `labels = "best_worst"`, the paper's fair-to-DPO variant), `logp` = log π_θ
   (differentiable), `logp_ref` = `logp_old` = log π_tgt, `kl_ref` = `kl_old` = the closed-form
   KL(π_tgt(·|s) ‖ π_θ(·|s)) (differentiable), `mask` = 1. MPO, PMPO (accept / reject / both), DPO (best vs
   worst by Q) and any other [B, K] method of the registry run on it unchanged.
   **VIREL** is the exception: its actor and critic are the pure functions of `algorithms/virel.py`. The
   critic minimises `virel_critic_loss` on the replayed (s, a) with the same bootstrapped target; ε_ω is the
   minibatch's Bellman residual (`virel_epsilon`); the actor takes K actions from π_θ itself (eq. 19 is an
   expectation under π_θ), scores them with Q_tgt minus their per-state mean (a baseline: the expected
   gradient is unchanged, `virel_actor_loss`'s docstring) and uses the closed-form entropy.
3. Target actor and critic are hard copies refreshed every `target_period` learner steps (Acme: 100).

Policies, critics and duals of the S seeds of a grid cell are stacked on a leading seed dimension and run as
batched matrix products (`tasks.dmc.Stacked`); each seed has its own Adam state (Adam is
elementwise), its own duals and its own random streams, so a seed's numbers do not depend on which seeds share
its group (up to floating-point reassociation). Observations are normalised by each seed's running mean/std
(`norm_obs`; Acme's MPO does not normalise — a suite choice that keeps tanh torsos out of saturation). With
`device = "cuda"` networks, replay buffers, generators and losses live on the GPU; only observations (up) and actions
(down) cross per env step, and the logged means once per logging window.

Logged rows (step = env steps taken by the seed, summed over its envs): `eval/return` every `eval_every` steps
and at the end (deterministic policy, `eval_episodes` episodes on the "eval" stream: `evaluate_seeds`, the
episodes of `tasks.dmc.evaluate` played for all seeds in one batch); `train/episode_return`
(mean of the episodes that ended in each logging window); every `log_every` steps the means over the window's
learner steps of the algorithm's metrics and of the loop's `loss/critic`, `value/q`, `value/target`,
`update/kl_target` (KL(π_tgt‖π_θ)), `update/grad_norm`, `policy/entropy` and (Gaussian) `policy/std`.

A seed whose losses or parameters become non-finite, or whose mean KL(π_tgt‖π_θ) exceeds `kl_limit`, stops
with status "diverged" and the step and reason; the other seeds go on. Seeds: "run" (action sampling, replay
minibatches, K-samples), "run/init" (network initialisation), "instance/i" (training environments), "eval".

Deviations from Acme's MPO: a single non-distributional Q critic (Acme: distributional); one KL trust region on the
whole distribution (`algorithms/mpo.py`); no action-penalty objective; observation normalisation on by default;
synchronous acting and learning at a fixed ratio (`updates_per_step`) instead of Reverb's rate limiter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from algorithms import REGISTRY as ALGORITHMS
from algorithms.base import Batch, Needs
from algorithms.common import top_k_mask
from algorithms.config import ConfigError, check_choices, check_positive, field
from algorithms.virel import VIRELConfig, virel_actor_loss, virel_critic_loss, virel_epsilon
from tasks.base import Device, RunResult, RunSpec
from tasks.dmc import (GaussianPolicy, PolicyConfig, SeedStatus, Stacked, StackedNorm, VecEnv, clip_grad_norm_per_seed, evaluate_seeds,
                       make_policy, mlp, random_policy_return, register_loop, seed_generators)
from tasks.seeding import stream_seed


@dataclass(frozen=True)
class ActorCriticConfig:
    """The actor-critic control loop. Defaults: Acme's MPO (docs/reference-settings.md) unless noted; PMPO/DPO use K = 4 ([PMPO] §5.2)."""

    total_steps: int = field(1_000_000, "env steps of training per seed, summed over its envs")
    num_envs: int = field(1, "environments per seed stepped in lockstep (each step adds num_envs transitions)")
    eval_every: int = field(50_000, "env steps between evaluations (and one at the end)")
    eval_episodes: int = field(10, "deterministic evaluation episodes per evaluation; 004 Figure 2: 100")
    policy: Literal["gaussian", "binned"] = field("gaussian", "action distribution: diagonal Gaussian or per-dimension bins ([PMPO] §5.2)")
    hidden: tuple[int, ...] = field((256, 256, 256), "hidden sizes of the policy and critic MLPs; Acme MPO policy (256, 256, 256)")
    bins: int = field(11, "bins per action dimension for policy='binned', evenly spaced in [-1, 1]")
    init_log_std: float = field(math.log(0.7), "initial log-std of the Gaussian (state-dependent std); Acme init_scale 0.7")
    samples: int = field(20, "K actions per state sampled from the target policy and scored by Q; MPO/Acme 20, PMPO/DPO 4")
    accept: int = field(2, "the top `accept` actions by Q are labelled accepted (+1), the rest rejected (−1); PMPO: 2 of 4")
    labels: Literal["top", "best_worst"] = field(
        "top", "'top': top `accept` +1, the rest −1; 'best_worst': best +1, worst −1, others 0 ([PMPO] §5.2's DPO-matched PMPO)")
    critic_samples: int = field(4, "actions a' ~ π_tgt(·|s') averaged in the critic's bootstrap E_π Q_tgt(s', a')")
    batch_size: int = field(256, "replayed states per learner step; Acme 256")
    replay_size: int = field(1_000_000, "replay capacity per seed (transitions); Acme 1e6")
    learning_starts: int = field(1_000, "env steps per seed before the first learner step; Acme's min replay size 1000")
    updates_per_step: float = field(0.125, "learner steps per env step of a seed; Acme MPO: samples_per_insert 32 / batch 256")
    n_step: int = field(5, "n of the critic's n-step return (uncorrected, stops at episode ends); Acme MPO 5")
    gamma: float = field(0.99, "discount γ; Acme 0.99")
    lr: float = field(1e-4, "Adam learning rate of the policy; Acme MPO 1e-4")
    critic_lr: float = field(1e-4, "Adam learning rate of the critic; Acme MPO 1e-4")
    dual_lr: float = field(1e-2, "Adam learning rate of the algorithm's duals (η, α); Acme MPO 1e-2")
    target_period: int = field(100, "learner steps between hard refreshes of the target actor and critic; Acme 100")
    max_grad_norm: float = field(40.0, "per-seed clip of the global gradient norm of actor and of critic (a safety net)")
    norm_obs: bool = field(True, "normalise observations by each seed's running mean/std (clip ±10); Acme: no")
    log_every: int = field(10_000, "env steps between logged means of the learner metrics")
    kl_limit: float = field(100.0, "a minibatch mean KL(π_tgt‖π_θ) above this marks the run diverged")
    random_baseline: bool = field(False, "no training: evaluate a uniform-random policy once (a baseline run, step 0)")
    device: Device = field(
        "cpu", "where the loop keeps networks, the replay buffer, rollout tensors and losses ('cpu' or 'cuda'); the runner picks which GPU")

    def __post_init__(self):
        check_choices(self)
        check_positive(self, "total_steps", "num_envs", "eval_every", "eval_episodes", "bins", "samples", "accept",
                       "critic_samples", "batch_size", "replay_size", "updates_per_step", "n_step", "lr", "critic_lr", "dual_lr",
                       "target_period", "max_grad_norm", "log_every", "kl_limit")
        check_positive(self, "learning_starts", strict=False)
        if not 0.0 <= self.gamma <= 1.0:
            raise ConfigError(f"ActorCriticConfig.gamma = {self.gamma!r} is invalid: must lie in [0, 1].")
        if self.accept >= self.samples:
            raise ConfigError(f"ActorCriticConfig.accept = {self.accept} must be < samples = {self.samples} (some must be rejected).")
        if self.bins < 2:
            raise ConfigError(f"ActorCriticConfig.bins = {self.bins} is invalid: must be >= 2.")
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ConfigError(f"ActorCriticConfig.hidden = {self.hidden!r} is invalid: must be non-empty positive sizes.")
        if self.total_steps % self.num_envs:
            raise ConfigError(f"ActorCriticConfig.total_steps = {self.total_steps} must be a multiple of num_envs = {self.num_envs}.")

    @property
    def steps(self) -> int:
        """Training length, read by the runner to start the longest groups first."""
        return self.total_steps

    def policy_config(self) -> PolicyConfig:
        return PolicyConfig(kind=self.policy, hidden=tuple(self.hidden), bins=self.bins, state_dependent_std=True,
                            init_log_std=self.init_log_std)


PROVIDES = Needs(min_samples=2, labels=True, logp_old=True, logp_ref=True, kl_ref=True, kl_old=True, values=True, baseline=False)
"""What the actor-critic loop's batches carry. `values` means VIREL's critic (Q on replayed actions with Bellman
targets); methods that need a state-value critic V (PPO's clipped value term) are refused in `train`."""


# ------------------------------------------------------------------------------------------------ pure pieces


def critic_target(reward: Tensor, discount: Tensor, next_q: Tensor) -> Tensor:
    """y = R + D · mean_j Q_tgt(s', a'_j)   (with 1-step transitions: R = r, D = γ (1 − terminated)).

    Args: reward [...] the (n-step) discounted reward sum R; discount [...] D = γ^m (1 − terminated), which is
    γ^m > 0 after a truncation (the time limit bootstraps) and 0 after a termination; next_q [..., M] Q_tgt at
    M actions a'_j ~ π(·|s') of the bootstrap observation s'. Returns y [...].
    """
    return reward + discount * next_q.mean(-1)


def accept_reject_labels(score: Tensor, accept: int, mode: str = "top") -> Tensor:
    """Labels [..., K] from Q-values [..., K]: "top": +1 for the `accept` highest, −1 for the rest; "best_worst":
    +1 for the highest, −1 for the lowest, 0 otherwise. Ties: the lower index ranks higher (deterministic)."""
    flat = score.reshape(-1, score.shape[-1])
    ones = torch.ones_like(flat)
    if mode == "top":
        lab = 2.0 * top_k_mask(flat, ones, k=accept) - 1.0
    elif mode == "best_worst":
        best = top_k_mask(flat, ones, k=1)
        worst = top_k_mask(-flat.flip(-1), ones, k=1).flip(-1)  # flipped so that the *higher* index is worst on ties
        lab = best - worst
    else:
        raise ValueError(f"labels must be 'top' or 'best_worst', got {mode!r}")
    return lab.reshape(score.shape)


def with_sample_dim(params, binned: bool, k: int):
    """Distribution params with a K axis before the action dims, to score K actions per state.

    Gaussian (mean, log_std) [S, B, A] -> [S, B, 1, A] (broadcasts); binned logits [S, B, A, bins] ->
    [S, B, K, A, bins] (`BinnedPolicy.log_prob` gathers, which does not broadcast).
    """
    if binned:
        x = params.unsqueeze(-3)
        return x.expand(*x.shape[:-3], k, *x.shape[-2:])
    return tuple(x.unsqueeze(-2) for x in params)


def sample_k(pol: nn.Module, params, gens: list[torch.Generator], k: int) -> Tensor:
    """K actions per state for every seed, each seed from its own generator: params [S, B, ...] -> [S, B, K, A]."""
    if isinstance(pol, GaussianPolicy):
        mean, log_std = params
        s, b, a = mean.shape
        noise = torch.stack([torch.randn(b, k, a, generator=g, device=mean.device) for g in gens])
        return mean.unsqueeze(-2) + log_std.exp().unsqueeze(-2) * noise
    return torch.stack([pol.sample(params[i], generator=g, n=k).transpose(0, 1) for i, g in enumerate(gens)])


class Replay:
    """One ring buffer per seed, stacked: [S, capacity, ...] on `device`. Every seed inserts N = `stride` transitions per env
    step, always in the same env order, so env e's next transition after index i sits at i + N.

    `next_obs` is the observation to bootstrap from: the next state, or the final observation of an episode cut
    by the time limit; `terminated` is 1 only for a true termination (discount 0); `ended` marks the last
    transition of an episode (terminated or truncated), where an n-step return stops.
    """

    def __init__(self, n_seeds: int, capacity: int, obs_dim: int, act_dim: int, stride: int = 1, device: torch.device | str = "cpu"):
        self.stride = stride
        self.capacity = max(stride, capacity // stride * stride)
        self.ptr, self.size = 0, 0
        self.obs = torch.zeros(n_seeds, self.capacity, obs_dim, device=device)
        self.action = torch.zeros(n_seeds, self.capacity, act_dim, device=device)
        self.reward = torch.zeros(n_seeds, self.capacity, device=device)
        self.terminated = torch.zeros(n_seeds, self.capacity, device=device)
        self.ended = torch.zeros(n_seeds, self.capacity, device=device)
        self.next_obs = torch.zeros(n_seeds, self.capacity, obs_dim, device=device)

    def add(self, obs: Tensor, action: Tensor, reward: Tensor, terminated: Tensor, truncated: Tensor, next_obs: Tensor) -> None:
        """Insert [S, N, ...] transitions (N = stride per seed)."""
        n = obs.shape[1]
        if n != self.stride:
            raise ValueError(f"Replay.add got {n} transitions per seed; the buffer's stride is {self.stride}")
        idx = self.ptr + torch.arange(n, device=self.obs.device)
        self.obs[:, idx], self.action[:, idx], self.next_obs[:, idx] = obs, action, next_obs
        self.reward[:, idx], self.terminated[:, idx] = reward, terminated.float()
        self.ended[:, idx] = (terminated | truncated).float()
        self.ptr = (self.ptr + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, gens: list[torch.Generator], batch: int, n_step: int = 1, gamma: float = 0.99) -> dict[str, Tensor]:
        """`batch` transitions per seed, uniformly with replacement from its own buffer, as n-step transitions (`nstep`)."""
        idx = torch.stack([torch.randint(self.size, (batch,), generator=g, device=self.obs.device) for g in gens])
        return self.nstep(idx, n_step, gamma)

    def nstep(self, idx: Tensor, n_step: int, gamma: float) -> dict[str, Tensor]:
        """The n-step transitions that start at buffer indices `idx` [S, B] (one row of indices per seed).

        Returns {name: [S, B, ...]}: `obs`, `action` of the step t; `reward` R = Σ_{k<m} γ^k r_{t+k};
        `discount` D = γ^m (1 − terminated_{t+m−1}); `next_obs` = the bootstrap observation after step t+m−1; where
        m ≤ n_step stops early at the end of an episode (a termination, D = 0, or a truncation, D = γ^m > 0: the
        time limit bootstraps) or at the newest stored step of that env. The critic's target is R + D · E Q_tgt(next_obs, ·)
        (`critic_target`).
        """
        rows = torch.arange(idx.shape[0], device=idx.device)[:, None]
        k = torch.arange(n_step, device=idx.device)
        j = (idx[..., None] + k * self.stride) % self.capacity  # [S, B, n]: the same env's steps t, t+1, ...
        avail = (self.ptr - 1 - idx) % self.capacity // self.stride + 1  # steps of that env from t to the newest one
        ended = self.ended[rows[..., None], j]
        ends_before = torch.cumsum(torch.cat([torch.zeros_like(ended[..., :1]), ended[..., :-1]], -1), -1)
        use = (k < avail[..., None]) & (ends_before == 0)  # a prefix of the n steps: m = use.sum(-1) >= 1
        ret = (use * gamma ** k.to(self.reward.dtype) * self.reward[rows[..., None], j]).sum(-1)
        m = use.sum(-1)
        last = j.gather(-1, (m - 1)[..., None]).squeeze(-1)
        discount = gamma ** m.to(ret.dtype) * (1.0 - self.terminated[rows, last])
        return {"obs": self.obs[rows, idx], "action": self.action[rows, idx], "reward": ret, "discount": discount,
                "next_obs": self.next_obs[rows, last]}


def policy_tensors(pol: nn.Module, tgt_params, params, q_fn, gens: list[torch.Generator], k: int, accept: int,
                   labels: str) -> dict[str, Tensor]:
    """The tensors of one policy step for every seed (the [B, K] `Batch` of `[PMPO] §5.2`), stacked on a seed dim.

    K actions per state are drawn from the target (reference) policy `tgt_params` ([S, B, ...]) with each seed's
    generator and scored by `q_fn(actions [S, B, K, A]) -> [S, B, K]`. Returns `actions` [S, B, K, A] (unclipped
    samples), `score` = Q [S, B, K], `label` (`accept_reject_labels`) [S, B, K], `logp` = log π_θ of the samples
    [S, B, K] (differentiable in `params`), `logp_ref` = log π_tgt [S, B, K], and `kl` = the closed-form
    KL(π_tgt(·|s) ‖ π_θ(·|s)) [S, B] (differentiable).
    """
    binned = not isinstance(pol, GaussianPolicy)
    with torch.no_grad():
        a_k = sample_k(pol, tgt_params, gens, k)
        q_k = q_fn(a_k)
        logp_ref = pol.log_prob(with_sample_dim(tgt_params, binned, k), a_k)
        label = accept_reject_labels(q_k, accept, labels)
    return {"actions": a_k, "score": q_k, "label": label, "logp": pol.log_prob(with_sample_dim(params, binned, k), a_k),
            "logp_ref": logp_ref, "kl": pol.kl(tgt_params, params)}


def _split(params, n: int):
    """Distribution params over [S, B1 + B2, ...] states -> the params of the first B1 and of the last B2 states."""
    if isinstance(params, tuple):
        return tuple(x[:, :n] for x in params), tuple(x[:, n:] for x in params)
    return params[:, :n], params[:, n:]


# ------------------------------------------------------------------------------------------------ the loop


def train(specs: list[RunSpec]) -> list[RunResult]:
    """Train runs that differ only in seed, vectorised over seeds (see `_train_group`)."""
    cfg: ActorCriticConfig = specs[0].train_config
    if cfg.random_baseline:
        return [RunResult(status="ok", rows=[(0, "eval/return", random_policy_return(s.task, s.task_config, cfg.eval_episodes,
                                                                                     s.seed))]) for s in specs]
    return _train_group(specs)


def _check_algorithm(spec: RunSpec, cfg: ActorCriticConfig):
    cls = ALGORITHMS[spec.algo]
    needs = cls.needs_for(spec.algo_config)
    missing = needs.missing(PROVIDES)
    if missing:
        raise ConfigError(f"algorithm {spec.algo!r} needs {', '.join(missing)}, which the actor-critic control loop does not provide.")
    if needs.values and spec.algo != "virel":
        raise ConfigError(f"algorithm {spec.algo!r} needs a state-value critic V (value, value_old, value_target per sample); "
                          "the actor-critic loop learns Q and serves that only to VIREL: use the on-policy loop (OnPolicyConfig).")
    if cfg.samples < needs.min_samples:
        raise ConfigError(f"algorithm {spec.algo!r} needs K >= {needs.min_samples} samples per state; ActorCriticConfig.samples = {cfg.samples}.")
    if spec.algo == "virel" and spec.algo_config.actor_estimator != "score_function":
        raise ConfigError("VIREL in the actor-critic loop needs VIRELConfig.actor_estimator='score_function' (continuous or "
                          "multi-dimensional binned actions cannot be enumerated).")
    return cls, needs


def _train_group(specs: list[RunSpec], keep: dict | None = None) -> list[RunResult]:
    """The seeds of one grid cell trained in lockstep. With `keep` (a dict), the final replay buffer, actor, critic
    and observation normaliser are left in it (the offline dataset builder, `tasks.control_offline`, uses them)."""
    spec0 = specs[0]
    cfg: ActorCriticConfig = spec0.train_config
    task_cfg = spec0.task_config
    cls, needs = _check_algorithm(spec0, cfg)
    is_virel = spec0.algo == "virel"
    seeds = [s.seed for s in specs]
    S, n_env = len(seeds), cfg.num_envs
    dev = torch.device(cfg.device)
    env = VecEnv(spec0.task, [stream_seed(sd, f"instance/{i}") for sd in seeds for i in range(n_env)], task_cfg.action_repeat,
                 task_cfg.time_limit)
    obs_dim, act_dim = env.obs_dim, env.action_dim
    binned = cfg.policy == "binned"
    gens = seed_generators(seeds, "run", dev)
    actor = Stacked(lambda: make_policy(obs_dim, act_dim, cfg.policy_config()), seeds, dev)
    critic = Stacked(lambda: mlp([obs_dim + act_dim, *cfg.hidden, 1], activation=nn.ReLU), seeds, dev)
    pol = actor.template
    target_actor, target_critic = actor.copy_params(), critic.copy_params()
    norm = StackedNorm(S, obs_dim, 10.0, device=dev) if cfg.norm_obs else None
    replay = Replay(S, min(cfg.replay_size, cfg.total_steps), obs_dim, act_dim, stride=n_env, device=dev)

    method = None if is_virel else cls(spec0.algo_config).to(dev)
    duals = {} if method is None else {k: v.detach()[None].repeat(S, *([1] * v.dim())).requires_grad_()
                                       for k, v in method.named_parameters()}
    actor_params, critic_params = list(actor.params.values()), list(critic.params.values())
    actor_opt = torch.optim.Adam(actor_params, lr=cfg.lr, fused=True)
    critic_opt = torch.optim.Adam(critic_params, lr=cfg.critic_lr, fused=True)
    dual_opt = torch.optim.Adam(list(duals.values()), lr=cfg.dual_lr, fused=True) if duals else None
    vcfg: VIRELConfig | None = spec0.algo_config if is_virel else None
    K = cfg.samples
    mask_k = torch.ones(cfg.batch_size, K, device=dev)
    mask_1 = torch.ones(cfg.batch_size, 1, device=dev)

    def normed(x: Tensor) -> Tensor:
        return norm(x) if norm is not None else x

    def q_of(params: dict[str, Tensor], obs: Tensor, action: Tensor) -> Tensor:
        """Q(s, a) for obs [S, B, O] and actions [S, B, M, A] (clipped to the action box) -> [S, B, M]."""
        s, b, m, _ = action.shape
        x = torch.cat([obs.unsqueeze(2).expand(s, b, m, obs_dim), action.clamp(-1.0, 1.0)], -1)
        return critic.forward(params, x.reshape(s, b * m, -1)).reshape(s, b, m)

    def method_loss(dp: dict[str, Tensor], t: dict[str, Tensor]):
        batch = Batch(logp=t["logp"], score=t["score"], mask=mask_k, logp_old=t["logp_ref"], logp_ref=t["logp_ref"],
                      label=t["label"], kl_ref=t["kl"], kl_old=t["kl"])
        loss, metrics = functional_call(method, dp, (batch,)) if dp else method(batch)
        return loss, {k: m.detach().float().reshape(()) for k, m in metrics.items()}

    def virel_losses(q: Tensor, y: Tensor, logp: Tensor, score: Tensor, entropy: Tensor):
        opts = dict(c=vcfg.c, p=vcfg.residual_power, floor=vcfg.epsilon_floor, residual_gradient=vcfg.residual_gradient)
        eps, _ = virel_epsilon(q[:, None], y[:, None], mask_1, **opts)
        c_loss, c_metrics = virel_critic_loss(q[:, None], y[:, None], mask_1, objective=vcfg.critic_objective, **opts)
        a_loss, a_metrics = virel_actor_loss(logp, score, mask_k, eps, estimator="score_function", entropy=entropy)
        metrics = {**{k: m.detach().float().reshape(()) for k, m in {**a_metrics, **c_metrics}.items()}}
        return a_loss, vcfg.critic_coef * c_loss, metrics

    vmapped_method = vmap(method_loss) if method is not None else None
    vmapped_virel = vmap(virel_losses) if is_virel else None

    def learner_step(mb: dict[str, Tensor]):
        """One critic step and one policy step for every seed. Returns the actor loss [S], critic loss [S] and metrics {name: [S]}."""
        obs, next_obs = normed(mb["obs"]), normed(mb["next_obs"])
        with torch.no_grad():
            if is_virel:
                nxt_params, tgt_params = actor.forward(actor.params, next_obs), actor.forward(target_actor, obs)
            else:  # one batched forward of the target actor over both sets of states
                both = actor.forward(target_actor, torch.cat([next_obs, obs], 1))
                nxt_params, tgt_params = _split(both, next_obs.shape[1])
            a_next = sample_k(pol, nxt_params, gens, cfg.critic_samples)
            y = critic_target(mb["reward"], mb["discount"], q_of(target_critic, next_obs, a_next))
        q = critic.forward(critic.params, torch.cat([obs, mb["action"]], -1)).squeeze(-1)  # [S, B]
        p = actor.forward(actor.params, obs)
        if is_virel:
            kl = pol.kl(tgt_params, p)  # [S, B]: KL(π_tgt ‖ π_θ), logged
            with torch.no_grad():
                a_k = sample_k(pol, pol.detach(p), gens, K)
                q_k = q_of(target_critic, obs, a_k)
            score = q_k - q_k.mean(-1, keepdim=True)
            logp = pol.log_prob(with_sample_dim(p, binned, K), a_k)
            a_loss, c_loss, metrics = vmapped_virel(q, y, logp, score, pol.entropy(p))
        else:
            t = policy_tensors(pol, tgt_params, p, lambda a: q_of(target_critic, obs, a), gens, K, cfg.accept, cfg.labels)
            kl = t["kl"]
            a_loss, metrics = vmapped_method(duals, {k: t[k] for k in ("logp", "score", "logp_ref", "label", "kl")})
            c_loss = (q - y).pow(2).mean(1)
        metrics = {**metrics, "loss/critic": c_loss.detach(), "value/q": q.detach().mean(1), "value/target": y.mean(1),
                   "update/kl_target": kl.detach().mean(1), "policy/entropy": pol.entropy(p).detach().mean(1)}
        if not binned:
            metrics["policy/std"] = p[1].detach().exp().mean((1, 2))
        return a_loss, c_loss, metrics

    rows: list[list[tuple[int, str, float]]] = [[] for _ in seeds]
    status = SeedStatus(S, dev)
    alive = status.alive  # updated in place by status.kill
    env_steps, learner_steps, credit = 0, 0, 0.0
    next_eval, next_log = cfg.eval_every, cfg.log_every
    window: list[Tensor] = []
    keys: list[str] = []
    ended_returns: list[list[float]] = [[] for _ in seeds]
    obs_np = env.obs

    def flush(evaluate_now: bool) -> None:
        """Write the window's metric means, the episode returns and (optionally) an evaluation for every live seed."""
        means = torch.stack(window).mean(0).cpu() if window else None  # [M, S], to the CPU once per window
        if evaluate_now:
            returns = evaluate_seeds(actor, normed, spec0.task, cfg.eval_episodes, seeds, alive.clone(), task_cfg.action_repeat,
                                     task_cfg.time_limit)
        for s, live in enumerate(alive.tolist()):
            if not live:
                continue
            out = rows[s]
            if ended_returns[s]:
                out.append((env_steps, "train/episode_return", float(np.mean(ended_returns[s]))))
            if means is not None:
                out.extend((env_steps, k, float(v)) for k, v in zip(keys, means[:, s].tolist()))
            if evaluate_now:
                out.append((env_steps, "eval/return", returns[s]))
        window.clear()
        for r in ended_returns:
            r.clear()

    iterations = cfg.total_steps // n_env
    for it in range(iterations):
        # ------------------------------------------------------------------------ act with π_θ, store the transitions
        with torch.no_grad():
            o_raw = torch.from_numpy(obs_np).to(dev).view(S, n_env, obs_dim)
            if norm is not None:
                norm.update(o_raw)
            params = actor.forward(actor.params, normed(o_raw))
            a = sample_k(pol, params, gens, 1).squeeze(2)  # [S, N, A]
            a = torch.where(alive[:, None, None], a, torch.zeros_like(a))  # a diverged seed's env idles
        obs_np, reward, terminated, truncated, final_obs, ended_return = env.step(a.reshape(S * n_env, act_dim).cpu().numpy())
        replay.add(o_raw, a.clamp(-1.0, 1.0), *(torch.from_numpy(x).to(dev).view(S, n_env, *x.shape[1:])
                                                for x in (reward, terminated, truncated, final_obs)))
        for i in np.nonzero(terminated | truncated)[0]:
            ended_returns[i // n_env].append(float(ended_return[i]))
        env_steps += n_env
        if not np.isfinite(obs_np).all():
            status.kill(torch.from_numpy(~np.isfinite(obs_np).reshape(S, -1).all(1)).to(dev), "non-finite observation", env_steps)
        # ------------------------------------------------------------------------ learner steps
        if env_steps >= cfg.learning_starts:
            credit += n_env * cfg.updates_per_step
        while credit >= 1.0 and alive.any():
            credit -= 1.0
            mb = replay.sample(gens, cfg.batch_size, cfg.n_step, cfg.gamma)
            a_loss, c_loss, metrics = learner_step(mb)
            kl_now = metrics["update/kl_target"]
            bad = ~torch.isfinite(a_loss) | ~torch.isfinite(c_loss) | (kl_now > cfg.kl_limit)
            if bool((bad & alive).any()):
                status.kill(bad, ["non-finite loss" if not (torch.isfinite(a_loss[s]) and torch.isfinite(c_loss[s])) else
                                  f"KL(π_tgt‖π_θ) = {kl_now[s].item():.3g} > {cfg.kl_limit:g}" for s in range(S)], env_steps)
                if not alive.any():
                    break
            actor_opt.zero_grad(set_to_none=True)
            critic_opt.zero_grad(set_to_none=True)
            if dual_opt:
                dual_opt.zero_grad(set_to_none=True)
            live = alive.to(a_loss.dtype)
            (torch.where(alive, a_loss, torch.zeros_like(a_loss)).sum() + torch.where(alive, c_loss, torch.zeros_like(c_loss)).sum()).backward()
            a_norm = clip_grad_norm_per_seed(actor_params, cfg.max_grad_norm, alive)
            c_norm = clip_grad_norm_per_seed(critic_params, cfg.max_grad_norm, alive)
            bad = ~torch.isfinite(a_norm) | ~torch.isfinite(c_norm)
            if bool((bad & alive).any()):
                status.kill(bad, "non-finite gradient", env_steps)
            for d in duals.values():
                if d.grad is not None:
                    d.grad.mul_(live.reshape(-1, *([1] * (d.dim() - 1)))).nan_to_num_(0.0)
            actor_opt.step()
            critic_opt.step()
            if dual_opt:
                dual_opt.step()
            learner_steps += 1
            if learner_steps % cfg.target_period == 0:
                target_actor, target_critic = actor.copy_params(), critic.copy_params()
            metrics["update/grad_norm"] = a_norm
            if not keys:
                keys = list(metrics)
            window.append(torch.stack([metrics[k].float() for k in keys]))
        # ------------------------------------------------------------------------ logging and evaluation
        last = it == iterations - 1
        evaluate_now = env_steps >= next_eval or last
        if env_steps >= next_log or evaluate_now:
            with torch.no_grad():
                finite = torch.stack([torch.isfinite(p.reshape(S, -1)).all(1) for p in actor_params + critic_params]).all(0)
            if bool((~finite & alive).any()):
                status.kill(~finite, "non-finite parameters", env_steps)
            flush(evaluate_now)
            while next_log <= env_steps:
                next_log += cfg.log_every
            while next_eval <= env_steps:
                next_eval += cfg.eval_every
        if not alive.any():
            break

    if keep is not None:
        keep.update(replay=replay, actor=actor, critic=critic, norm=norm, env=env)
    return status.results(rows)


register_loop(ActorCriticConfig, provides=PROVIDES, train=train)
