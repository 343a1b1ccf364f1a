"""The on-policy training loop for DeepMind Control: PPO, V-MPO, AWR, DAR (and its variants), GEMPI.

Each iteration collects a rollout of `rollout` agent steps from `num_envs` dm_control environments
stepped in lockstep (`tasks.dmc.VecEnv`, batched policy inference), computes advantages and value
targets, then takes `epochs` × `minibatches` learner steps of the algorithm's loss plus a critic loss.
Every state carries the one action sampled there, so the algorithm sees `Batch` tensors of shape
[B, 1] (K = 1; `score` holds the advantage). Source of the defaults: CleanRL's
`ppo_continuous_action` (docs/reference-settings.md) and V-MPO (Song et al. 2019; docs/reference-settings.md; `[EM-LLM] §3`).

What the loop provides (`Needs` below):
- `logp`, `logp_old`: the log-prob of the stored action under π_θ and under the behaviour policy that
  sampled it (recorded at sampling time).
- `kl_old`: the closed-form KL(π_old(·|s) ‖ π_θ(·|s)), differentiable, where π_old is the *target
  network*: a copy of the policy refreshed at the start of every rollout (`target_period = None`, the
  PPO convention: π_old is the behaviour policy) or every `target_period` learner steps ([V-MPO]'s 100, with one
  learner step per batch; the suite's V-MPO questions refresh it per rollout, since a rollout here makes many
  learner steps: `suite/questions/control_onpolicy.py`, `VMPO_LOOP`).
  The rollouts act with the target network, so for V-MPO it is the "target/behaviour network" of docs/reference-settings.md.
- `logp_ref`, `kl_ref`: the reference policy for DAR-style anchors. `reference = "behaviour"` (default):
  π_ref is the behaviour policy, so DAR's w_reg = 1 and DAR reduces to its π_ref = π_t limit
  (`[EM-LLM] §10`, "DAR→V-MPO as corollary"); `"lagged"`: a copy refreshed every `ref_period` rollouts
  (a slow anchor, like the time-lagged reference of `[PMPO] §5.1`), so α and β weigh different policies.
- The decoupled Gaussian KL of V-MPO (α_μ on the mean part, α_Σ on the covariance part; docs/reference-settings.md) for
  `vmpo` with kl_split="decoupled" and for `gempi` tuples with a 2-part M-step (`loss_decoupled`).
- `value`, `value_old`, `value_target`: a separate critic MLP; PPO's loss holds its own (clipped) value
  term; for every other method the loop adds `vf_coef · ½ (V − target)²`.

Returns. `returns = "gae"`: GAE(γ, λ) advantages and λ-returns (PPO, AWR, DAR, GEMPI). `"nstep"`: V-MPO's
n-step targets bootstrapped at the end of each unroll (`unroll` steps, or the whole per-env rollout),
advantage A = G − V(s). In both, an episode cut by the time limit is *truncated*, not terminated: its
last step bootstraps from V(final observation) (`next_values`), while a termination (discount 0)
bootstraps from nothing. CleanRL treats time-limit truncation as termination; docs/reference-settings.md asks for the
bootstrap (every dm_control suite episode ends on its time limit, so this matters on every episode).

Duals (V-MPO's η, α; AT-DAR's α, β; DAR-TR's γ) are the method's parameters, optimised by their own
Adam (`dual_lr`, no annealing, no gradient clipping). Observation and reward normalisation follow
CleanRL's gym wrappers (running mean/variance of observations; rewards divided by the running std of
a discounted return; both clipped at ±10).

Logged rows (step = agent steps taken so far): `eval/return` every `eval_every` steps and at the end
(deterministic policy, `eval_episodes` episodes on the "eval" seed stream); `train/episode_return`
per rollout in which episodes ended; per update phase the mean over its learner steps of every metric
of the algorithm (`kl/old`, `dual/eta`, `weights/ess`, `ratio/clipfrac`, ...) and of the loop's
`loss/value`, `update/grad_norm`, `update/lr`; and `update/kl`: the closed-form KL(π_behaviour ‖ π_θ)
averaged over the rollout's states after its update phase — the per-update KL, comparable across methods.

A run whose loss, gradient norm or parameters become non-finite, or whose minibatch KL(π_old‖π_θ)
exceeds `kl_limit`, stops with status "diverged" and the step and reason; the other seeds go on.
Seeds: the "run" stream (network initialisation, action sampling, minibatch order), the "instance"
stream (one seed per training environment), the "eval" stream (`tasks.dmc.evaluate`).

Speed. dm_control costs ≈ 0.2 ms per environment step in Python, so the loop's own overhead must stay
small beside it. The seeds of one grid cell train in lockstep (`_train_group`): their environments
share one VecEnv, their networks are stacked and run by batched matrix products (`batched_forward`),
and the algorithm's loss is `torch.func.vmap`-ed over seeds, so one learner step updates every seed
and Python's per-operation overhead is paid once per group rather than once per seed. Each seed keeps
its own streams, duals, Adam state and gradient-norm clip, so its run is the one it would have alone.
`tests/bench/test_bench_control.py` measures the loop against raw environment stepping.

Device. With `device = "cuda"` the networks, normalisers, rollout buffers, Adam state and losses live on the GPU and the
"run" generators are CUDA generators (`tasks.dmc.seed_generators`: other draws than the CPU's, so a CUDA run is another
run); the simulator stays on the CPU, so each agent step sends observations up and actions down once, and the logged
numbers come down once per update phase. Networks are initialised on the CPU either way.
"""

from __future__ import annotations

import math
import os
import shutil
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from algorithms import REGISTRY as ALGORITHMS
from algorithms.advantages import gae, unroll_returns
from algorithms.base import Batch, Needs
from algorithms.config import ConfigError, check_choices, check_positive, field
from algorithms.gempi import GEMPIMethod
from algorithms.vmpo import VMPO, decoupled_gaussian_kl
from tasks.base import Device, RunResult, RunSpec
from tasks.dmc import (PolicyConfig, SeedStatus, Stacked, StackedNorm, VecEnv, clip_grad_norm_per_seed, evaluate_seeds, make_policy, mlp,
                       random_policy_return, register_loop, seed_generators)
from tasks.seeding import stream_seed


@dataclass(frozen=True)
class OnPolicyConfig:
    """The on-policy control loop. Defaults: CleanRL `ppo_continuous_action` (docs/reference-settings.md) unless noted."""

    total_steps: int = field(1_000_000, "agent steps of training summed over envs; CleanRL default 1M, its DMC benchmark 8M")
    num_envs: int = field(8, "environments stepped in lockstep; CleanRL 1 (more envs batch inference; the rollout size is unchanged)")
    rollout: int = field(2048, "agent steps per rollout summed over envs (num_steps × num_envs); CleanRL 2048")
    minibatches: int = field(32, "minibatches per epoch over the rollout; CleanRL 32")
    epochs: int = field(10, "passes over each rollout; CleanRL 10")
    gamma: float = field(0.99, "discount γ; CleanRL 0.99")
    gae_lambda: float = field(0.95, "GAE λ (returns='gae'); CleanRL 0.95")
    returns: Literal["gae", "nstep"] = field(
        "gae", "advantages: 'gae' (GAE λ-returns) or 'nstep' (V-MPO: n-step returns bootstrapped at the unroll's end, A = G − V)")
    unroll: int | None = field(None, "unroll length n for returns='nstep' (divides rollout/num_envs); None: the whole per-env rollout")
    lr: float = field(3e-4, "Adam learning rate of policy and critic; CleanRL 3e-4, V-MPO 1e-4")
    anneal_lr: bool = field(True, "anneal the learning rate linearly to 0 over training; CleanRL: True")
    adam_eps: float = field(1e-5, "Adam ε of policy and critic; CleanRL 1e-5")
    max_grad_norm: float | None = field(
        0.5, "clip of the global gradient norm of policy + critic; CleanRL 0.5; None: no clip (V-MPO's paper clips nothing)")
    dual_lr: float = field(1e-2, "Adam learning rate of the algorithm's duals (η, α, ...), never annealed")
    vf_coef: float = field(0.5, "weight of the loop's critic loss ½(V − G)² for methods without a value term (PPO uses its own)")
    norm_obs: bool = field(True, "normalise observations by a running mean/std; CleanRL: True")
    norm_reward: bool = field(True, "divide rewards by the running std of a discounted return; CleanRL: True")
    clip_obs: float = field(10.0, "clip of normalised observations; CleanRL 10")
    clip_reward: float = field(10.0, "clip of normalised rewards; CleanRL 10")
    policy: Literal["gaussian", "binned"] = field("gaussian", "action distribution: diagonal Gaussian or per-dimension bins ([PMPO] §5.2)")
    hidden: tuple[int, ...] = field((64, 64), "hidden sizes of the policy MLP and of the separate critic MLP (tanh); CleanRL (64, 64)")
    bins: int = field(11, "bins per action dimension for policy='binned'")
    init_log_std: float = field(0.0, "initial log-std of the Gaussian policy (state-independent, CleanRL)")
    target_period: int | None = field(
        None, "learner steps between refreshes of the target/behaviour network π_old; None: every rollout (PPO); V-MPO 100")
    reference: Literal["behaviour", "lagged"] = field(
        "behaviour", "π_ref for DAR-style anchors: the behaviour policy, or a copy refreshed every ref_period rollouts")
    ref_period: int = field(10, "rollouts between refreshes of a 'lagged' reference")
    eval_every: int = field(100_000, "agent steps between evaluations (and one at the end)")
    eval_episodes: int = field(5, "deterministic evaluation episodes per evaluation")
    kl_limit: float = field(100.0, "a minibatch mean KL(π_old‖π_θ) above this marks the run diverged")
    random_baseline: bool = field(False, "no training: evaluate a uniform-random policy once (a baseline run, step 0)")
    compile: bool = field(
        False, "run each learner step's forward (networks, KLs, log-probs, the algorithm's loss) and backward as one "
        "torch.compile graph: a learner forward ~3x faster (PPO 1.6 -> 0.5 ms, V-MPO 2.0 -> 0.6 ms per minibatch) for 3-30 s "
        "of compiling per run group, so the paper profile turns it on and quick runs stay eager; needs a C++ compiler; a "
        "loss that does not trace into one graph runs eagerly (row loop/compiled = 0)")
    device: Device = field("cpu", "where the loop keeps networks, rollout tensors and losses ('cpu' or 'cuda'); the runner picks which GPU")

    def __post_init__(self):
        check_choices(self)
        check_positive(self, "total_steps", "num_envs", "rollout", "minibatches", "epochs", "lr", "adam_eps", "max_grad_norm",
                       "dual_lr", "clip_obs", "clip_reward", "bins", "target_period", "ref_period", "eval_every",
                       "eval_episodes", "kl_limit", "unroll")
        check_positive(self, "vf_coef", strict=False)
        for name in ("gamma", "gae_lambda"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"OnPolicyConfig.{name} = {getattr(self, name)!r} is invalid: must lie in [0, 1].")
        if self.rollout % self.num_envs:
            raise ConfigError(f"OnPolicyConfig.rollout = {self.rollout} is invalid: must be a multiple of num_envs = {self.num_envs}.")
        if self.rollout // self.minibatches < 2:
            raise ConfigError(f"OnPolicyConfig.minibatches = {self.minibatches} is invalid: minibatches must hold >= 2 "
                              f"samples (rollout = {self.rollout}).")
        if self.total_steps < self.rollout and not self.random_baseline:
            raise ConfigError(f"OnPolicyConfig.total_steps = {self.total_steps} is invalid: must be >= rollout = {self.rollout}.")
        if self.unroll is not None and (self.rollout // self.num_envs) % self.unroll:
            raise ConfigError(f"OnPolicyConfig.unroll = {self.unroll} is invalid: must divide the per-env rollout "
                              f"{self.rollout // self.num_envs} (rollout / num_envs).")
        if self.bins < 2:
            raise ConfigError(f"OnPolicyConfig.bins = {self.bins} is invalid: must be >= 2.")
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ConfigError(f"OnPolicyConfig.hidden = {self.hidden!r} is invalid: must be non-empty positive sizes.")
        # on CUDA inductor emits Triton kernels instead of C++, and a step that fails to compile runs eagerly (CompiledStep)
        if self.compile and self.device == "cpu" and cxx_compiler() is None:
            raise ConfigError("OnPolicyConfig.compile = True is invalid on this machine: torch.compile's CPU backend needs a "
                              "C++ compiler (g++, c++ or clang++, or $CXX) on PATH and none is there; allowed here: False.")

    @property
    def steps(self) -> int:
        """Training length, read by the runner to start the longest groups first."""
        return self.total_steps

    def policy_config(self) -> PolicyConfig:
        return PolicyConfig(kind=self.policy, hidden=tuple(self.hidden), bins=self.bins, init_log_std=self.init_log_std)


PROVIDES = Needs(min_samples=1, labels=False, logp_old=True, logp_ref=True, kl_ref=True, kl_old=True, values=True, baseline=False)
"""What the on-policy loop's batches carry (K = 1: one sampled action per state)."""


# ------------------------------------------------------------------------------------------------ returns


def next_values(value: Tensor, last_value: Tensor, truncated: Tensor, final_value: Tensor) -> Tensor:
    """V(s'_t) for every step of a rollout, time first ([T, N]).

    Args:
        value: [T, N] V(s_t) of the observations the policy acted on.
        last_value: [N] V(s_T) of the observation after the rollout's last step (the unroll's bootstrap).
        truncated: [T, N] bool/float: the episode was cut by the time limit after step t (the env reset).
        final_value: [T, N] V(final observation of the cut episode), read only where `truncated`.
    Returns: [T, N]: V(s_{t+1}) inside an episode, V(final observation) after a truncation, V(s_T) at the
    end; after a termination the entry is V(first observation of the next episode), which the
    estimators multiply by 0.
    """
    nxt = torch.cat([value[1:], last_value[None]], 0)
    return torch.where(truncated.bool(), final_value, nxt)


def advantages_and_targets(reward: Tensor, value: Tensor, next_value: Tensor, terminated: Tensor, truncated: Tensor, *,
                           returns: str, gamma: float, gae_lambda: float, unroll: int | None) -> tuple[Tensor, Tensor]:
    """Advantages and critic targets of a rollout, time first ([T, N] each in and out).

    "gae": `algorithms.advantages.gae` (A = GAE(γ, λ), target = A + V). "nstep": `unroll_returns` on
    unrolls of `unroll` steps (target G = n-step return bootstrapped at the unroll's end, A = G − V).
    Truncations bootstrap from `next_value` (V of the final observation), terminations from nothing.
    """
    r, v, nv, term, trunc = (x.T.contiguous().float() for x in (reward, value, next_value, terminated, truncated))
    if returns == "gae":
        adv, target = gae(r, v, nv, term, trunc, gamma=gamma, lam=gae_lambda)
    elif returns == "nstep":
        n, t = r.shape
        length = t if unroll is None else unroll
        shape = (n * (t // length), length)
        g = unroll_returns(r.reshape(shape), nv.reshape(shape), term.reshape(shape), trunc.reshape(shape), gamma=gamma)
        target = g.reshape(n, t)
        adv = target - v
    else:
        raise ConfigError(f"unknown returns {returns!r}; allowed: gae, nstep")
    return adv.T, target.T


# ------------------------------------------------------------------------------------------------ helpers


class RewardScaler:
    """CleanRL's reward normalisation: r / sqrt(Var[discounted return] + ε), clipped; the return restarts each episode."""

    def __init__(self, n: int, gamma: float, clip: float, eps: float = 1e-8):
        self.ret = np.zeros(n)
        self.gamma, self.clip, self.eps = gamma, clip, eps
        self.mean, self.var, self.count = 0.0, 1.0, 1e-4

    def __call__(self, reward: np.ndarray, ended: np.ndarray) -> np.ndarray:
        self.ret = self.ret * self.gamma + reward
        b_mean, b_var, b_n = float(self.ret.mean()), float(self.ret.var()), self.ret.size
        delta, total = b_mean - self.mean, self.count + b_n
        self.mean += delta * b_n / total
        self.var = (self.var * self.count + b_var * b_n + delta**2 * self.count * b_n / total) / total
        self.count = total
        self.ret[ended] = 0.0
        return np.clip(reward / math.sqrt(self.var + self.eps), -self.clip, self.clip)


def _parts(params) -> tuple[Tensor, ...]:
    """Distribution params as a tuple of tensors (Gaussian: (mean, log_std); binned: (logits,))."""
    return tuple(params) if isinstance(params, tuple) else (params,)


def _join(parts: tuple[Tensor, ...]):
    return parts if len(parts) == 2 else parts[0]


def _decoupled_kl(method: nn.Module) -> str | None:
    """Which policy a method's decoupled Gaussian KL (V-MPO's α_μ / α_Σ) is taken to: "old", "ref", or None
    when the method uses one joint KL (`Batch.kl_old`)."""
    if isinstance(method, VMPO) and method.cfg.kl_split == "decoupled":
        return "old"
    if isinstance(method, GEMPIMethod) and method.cfg.m_step != "none" and len(method.cfg.m_coef) == 2:
        return method.cfg.m_kl
    return None


class _Decoupled(nn.Module):
    """Calls the method's `loss_decoupled` (V-MPO, GEMPI) through `forward`, so `functional_call` can swap in a seed's duals."""

    def __init__(self, method: nn.Module):
        super().__init__()
        self.method = method

    def forward(self, batch: Batch, kl_mean: Tensor, kl_cov: Tensor):
        return self.method.loss_decoupled(batch, kl_mean, kl_cov)


# ------------------------------------------------------------------------------------------------ the loop


def train(specs: list[RunSpec]) -> list[RunResult]:
    """Train runs that differ only in seed, vectorised over seeds (see `_train_group`)."""
    cfg: OnPolicyConfig = specs[0].train_config
    if cfg.random_baseline:
        return [RunResult(status="ok", rows=[(0, "eval/return", random_policy_return(s.task, s.task_config, cfg.eval_episodes,
                                                                                     s.seed))]) for s in specs]
    return _train_group(specs)


def _train_group(specs: list[RunSpec]) -> list[RunResult]:
    """The seeds of one grid cell trained in lockstep.

    The S seeds' environments live in one VecEnv (S × num_envs, each seeded from its own seed's
    "instance" stream); their networks are stacked and run with `torch.func.vmap`; the algorithm's loss
    is vmapped over seeds with each seed's own duals; Adam is elementwise, so stacked parameters give each
    seed its own optimiser state; the gradient norm is clipped per seed. Each seed draws its actions and
    minibatch orders from its own "run" generator, so its numbers do not depend on which seeds share
    its group (up to floating-point reassociation in batched matrix products). A seed that diverges
    stops learning (its gradients are zeroed from that step) and its rows end there; the others go on.
    """
    spec0 = specs[0]
    cfg: OnPolicyConfig = spec0.train_config
    task_cfg = spec0.task_config
    seeds = [s.seed for s in specs]
    S, n_env = len(seeds), cfg.num_envs
    dev = torch.device(cfg.device)
    env = VecEnv(spec0.task, [stream_seed(sd, f"instance/{i}") for sd in seeds for i in range(n_env)], task_cfg.action_repeat,
                 task_cfg.time_limit)
    obs_dim, act_dim = env.obs_dim, env.action_dim
    pcfg = cfg.policy_config()
    gens = seed_generators(seeds, "run", dev)
    actor = Stacked(lambda: make_policy(obs_dim, act_dim, pcfg), seeds, dev)
    critic = Stacked(lambda: mlp([obs_dim, *cfg.hidden, 1], out_gain=1.0), seeds, dev)
    pol = actor.template  # its log_prob / sample / kl / mode / entropy act on distribution params of any batch shape
    target_p = actor.copy_params()
    ref_p = actor.copy_params() if cfg.reference == "lagged" else None
    norm = StackedNorm(S, obs_dim, cfg.clip_obs, device=dev)
    scalers = [RewardScaler(n_env, cfg.gamma, cfg.clip_reward) for _ in seeds]

    method = ALGORITHMS[spec0.algo](spec0.algo_config)
    needs = type(method).needs_for(spec0.algo_config)
    missing = needs.missing(PROVIDES)
    if missing:
        raise ConfigError(f"algorithm {spec0.algo!r} needs {', '.join(missing)}, which the on-policy control loop does not provide.")
    decoupled = _decoupled_kl(method)
    if decoupled and cfg.policy != "gaussian":
        raise ConfigError(f"{spec0.algo!r} with a decoupled (mean / covariance) KL needs policy='gaussian' "
                          "(a binned policy has one joint KL).")
    loss_module = (_Decoupled(method) if decoupled else method).to(dev)
    duals = {k: v.detach()[None].repeat(S, *([1] * v.dim())).requires_grad_() for k, v in loss_module.named_parameters()}
    wants_ref = needs.logp_ref or needs.kl_ref or decoupled == "ref"
    ent_coef = float(getattr(spec0.algo_config, "ent_coef", 0.0) or 0.0)
    net_params = [*actor.params.values(), *critic.params.values()]
    opt = torch.optim.Adam(net_params, lr=cfg.lr, eps=cfg.adam_eps, fused=True)
    dual_opt = torch.optim.Adam(list(duals.values()), lr=cfg.dual_lr, fused=True) if duals else None

    per_env = cfg.rollout // n_env
    batch_n = per_env * n_env
    iterations = cfg.total_steps // cfg.rollout
    obs_buf = torch.zeros(per_env, S, n_env, obs_dim, device=dev)
    act_buf = torch.zeros(per_env, S, n_env, act_dim, device=dev)
    logp_buf = torch.zeros(per_env, S, n_env, device=dev)
    rew_buf = torch.zeros(per_env, S * n_env, device=dev)
    term_buf = torch.zeros(per_env, S * n_env, device=dev)
    trunc_buf = torch.zeros(per_env, S * n_env, dtype=torch.bool, device=dev)
    final_buf = torch.zeros(per_env, S * n_env, obs_dim, device=dev)

    def method_loss(dp, t):
        """One seed's algorithm loss on its minibatch tensors `t` (vmapped over seeds)."""
        batch = Batch(logp=t["logp"][:, None], score=t["adv"][:, None], mask=torch.ones(t["logp"].shape[0], 1, device=dev),
                      logp_old=t["logp_old"][:, None], kl_old=t["kl_old"], value=t["value"], value_old=t["value_old"][:, None],
                      value_target=t["target"][:, None])
        if wants_ref:
            batch.logp_ref = t["logp_ref"][:, None]
            if needs.kl_ref:
                batch.kl_ref = t["kl_ref"]
        if ent_coef > 0:
            batch.entropy = t["entropy"][:, None]
        args = (batch, t["kl_mean"], t["kl_cov"]) if decoupled else (batch,)
        loss, metrics = functional_call(loss_module, dp, args) if dp else loss_module(*args)
        return loss, metrics  # detached scalar diagnostics (the algorithms' contract)

    vmapped_loss = vmap(method_loss)

    def learner_step(mb: dict[str, Tensor]):
        """Every seed's loss on its minibatch: networks batched by hand, the algorithm's loss vmapped."""
        p = actor.forward(actor.params, mb["obs"])
        v = critic.forward(critic.params, mb["obs"])  # [S, b, 1]
        old = _join(tuple(mb[f"old{j}"] for j in range(n_parts)))
        kl_old = pol.kl(old, p)  # [S, b]
        t = {"logp": pol.log_prob(p, mb["act"]), "adv": mb["adv"], "logp_old": mb["logp_old"], "kl_old": kl_old, "value": v,
             "value_old": mb["value"], "target": mb["target"]}
        if wants_ref:
            t["logp_ref"] = mb["logp_ref"]
            if needs.kl_ref:
                t["kl_ref"] = pol.kl(_join(tuple(mb[f"ref{j}"] for j in range(n_parts))), p)
        if ent_coef > 0:
            t["entropy"] = pol.entropy(p)
        if decoupled:
            anchor = old if decoupled == "old" else _join(tuple(mb[f"ref{j}"] for j in range(n_parts)))
            t["kl_mean"], t["kl_cov"] = decoupled_gaussian_kl(anchor[0], anchor[1].exp(), p[0], p[1].exp())
        loss, metrics = vmapped_loss(duals, t)
        if not needs.values:
            v_loss = 0.5 * (v.squeeze(-1) - mb["target"]).pow(2).mean(1)
            loss = loss + cfg.vf_coef * v_loss
            metrics = {**metrics, "loss/value": v_loss.detach()}
        return loss, kl_old.detach().mean(1), metrics

    n_parts = 2 if cfg.policy == "gaussian" else 1
    step_fn = CompiledStep(learner_step) if cfg.compile else learner_step
    rows: list[list[tuple[int, str, float]]] = [[] for _ in seeds]
    status = SeedStatus(S, dev)
    alive = status.alive  # updated in place by status.kill
    seed_idx = torch.arange(S, device=dev)[:, None]
    env_steps, learner_steps = 0, 0
    next_eval = cfg.eval_every
    obs_np = env.obs

    for it in range(iterations):
        if cfg.target_period is None:
            target_p = actor.copy_params()
        if ref_p is not None and it % cfg.ref_period == 0:
            ref_p = actor.copy_params()
        if cfg.anneal_lr:
            for g in opt.param_groups:
                g["lr"] = cfg.lr * (1.0 - it / iterations)
        # -------------------------------------------------------------------- rollout, acting with the target network
        ended_returns: list[list[float]] = [[] for _ in seeds]
        trunc_buf.zero_()
        with torch.no_grad():
            for t in range(per_env):
                o = torch.from_numpy(obs_np).to(dev).view(S, n_env, obs_dim)
                if cfg.norm_obs:
                    norm.update(o)
                    o = norm(o)
                p = actor.forward(target_p, o)
                a = torch.stack([pol.sample(_join(tuple(x[s] for x in _parts(p))), generator=gens[s]) for s in range(S)])
                logp_buf[t] = pol.log_prob(p, a)
                obs_buf[t], act_buf[t] = o, a
                obs_np, reward, terminated, truncated, final_obs, ended_return = env.step(a.reshape(S * n_env, act_dim).cpu().numpy())
                ended = terminated | truncated
                if cfg.norm_reward:
                    reward = np.concatenate([scalers[s](reward[s * n_env:(s + 1) * n_env], ended[s * n_env:(s + 1) * n_env])
                                             for s in range(S)])
                rew_buf[t] = torch.from_numpy(np.asarray(reward, dtype=np.float32)).to(dev)
                term_buf[t] = torch.from_numpy(terminated.astype(np.float32)).to(dev)
                if ended.any():
                    for i in np.nonzero(ended)[0]:
                        ended_returns[i // n_env].append(float(ended_return[i]))
                    for i in np.nonzero(truncated)[0]:
                        trunc_buf[t, i] = True
                        fo = torch.from_numpy(final_obs[i]).to(dev)
                        final_buf[t, i] = norm.one(i // n_env, fo) if cfg.norm_obs else fo
            env_steps += batch_n
            if not np.isfinite(obs_np).all():
                bad = torch.from_numpy(~np.isfinite(obs_np).reshape(S, -1).all(1)).to(dev)
                status.kill(bad, "non-finite observation", env_steps)
            # ---------------------------------------------------------------- advantages and targets
            last = torch.from_numpy(obs_np).to(dev).view(S, n_env, obs_dim)
            if cfg.norm_obs:
                last = norm(last)
            flat_obs = obs_buf.permute(1, 0, 2, 3).reshape(S, batch_n, obs_dim)
            v_all = critic.forward(critic.params, torch.cat([flat_obs, last], 1)).squeeze(-1)  # [S, batch_n + n_env]
            value = v_all[:, :batch_n].reshape(S, per_env, n_env).permute(1, 0, 2).reshape(per_env, S * n_env)
            last_value = v_all[:, batch_n:].reshape(S * n_env)
            final_value = torch.zeros(per_env, S * n_env, device=dev)
            if trunc_buf.any():
                final_value[trunc_buf] = vmap_rows(critic, final_buf, trunc_buf, n_env)
            nv = next_values(value, last_value, trunc_buf, final_value)
            adv, target_v = advantages_and_targets(rew_buf, value, nv, term_buf, trunc_buf.float(), returns=cfg.returns,
                                                   gamma=cfg.gamma, gae_lambda=cfg.gae_lambda, unroll=cfg.unroll)

            def per_seed(x: Tensor) -> Tensor:  # [T, S·N, ...] -> [S, T·N, ...], each seed's samples time-major
                return x.reshape(per_env, S, n_env, *x.shape[2:]).permute(1, 0, 2, *range(3, x.dim() + 1)).reshape(
                    S, batch_n, *x.shape[2:])

            data = {"obs": flat_obs, "act": act_buf.permute(1, 0, 2, 3).reshape(S, batch_n, act_dim),
                    "logp_old": logp_buf.permute(1, 0, 2).reshape(S, batch_n), "adv": per_seed(adv),
                    "target": per_seed(target_v), "value": per_seed(value)}
            behaviour = _parts(actor.forward(target_p, flat_obs))
            data.update({f"old{j}": x for j, x in enumerate(behaviour)})
            if wants_ref:
                if ref_p is None:
                    data["logp_ref"] = data["logp_old"]
                    data.update({f"ref{j}": x for j, x in enumerate(behaviour)})
                else:
                    ref = actor.forward(ref_p, flat_obs)
                    data["logp_ref"] = pol.log_prob(ref, data["act"])
                    data.update({f"ref{j}": x for j, x in enumerate(_parts(ref))})
        for s in range(S):
            if ended_returns[s] and alive[s]:
                rows[s].append((env_steps, "train/episode_return", float(np.mean(ended_returns[s]))))

        # -------------------------------------------------------------------- update phase
        logged: list[Tensor] = []
        keys: list[str] = []
        was_alive = alive.clone()
        for _epoch in range(cfg.epochs):
            if not alive.any():
                break
            perm = torch.stack([torch.randperm(batch_n, generator=g, device=dev) for g in gens])
            chunks = {k: v[seed_idx, perm].tensor_split(cfg.minibatches, dim=1) for k, v in data.items()}
            for j in range(cfg.minibatches):
                mb = {k: c[j] for k, c in chunks.items()}
                loss, kl_now, metrics = step_fn(mb)
                bad = ~torch.isfinite(loss) | (kl_now.detach() > cfg.kl_limit)
                if bool((bad & alive).any()):
                    status.kill(bad, ["non-finite loss" if not torch.isfinite(loss[s]) else
                                      f"KL(π_old‖π_θ) = {kl_now[s].item():.3g} > {cfg.kl_limit:g}" for s in range(S)], env_steps)
                    if not alive.any():
                        break
                opt.zero_grad(set_to_none=True)
                if dual_opt:
                    dual_opt.zero_grad(set_to_none=True)
                torch.where(alive, loss, torch.zeros_like(loss)).sum().backward()
                grad_norm = clip_grad_norm_per_seed(net_params, cfg.max_grad_norm, alive)
                bad = ~torch.isfinite(grad_norm)
                if bool((bad & alive).any()):
                    status.kill(bad, "non-finite gradient", env_steps)  # its gradient was zeroed by the clip
                for d in duals.values():
                    if d.grad is not None:
                        d.grad.mul_(alive.reshape(-1, *([1] * (d.dim() - 1)))).nan_to_num_(0.0)
                opt.step()
                if dual_opt:
                    dual_opt.step()
                learner_steps += 1
                if not keys:
                    keys = [*metrics, "update/grad_norm"]
                logged.append(torch.stack([*(m.detach() for m in metrics.values()), grad_norm]))
                if cfg.target_period is not None and learner_steps % cfg.target_period == 0:
                    target_p = actor.copy_params()
                    with torch.no_grad():
                        data.update({f"old{j}": x for j, x in enumerate(_parts(actor.forward(target_p, flat_obs)))})
                        chunks.update({f"old{i}": data[f"old{i}"][seed_idx, perm].tensor_split(cfg.minibatches, dim=1)
                                       for i in range(n_parts)})
        # -------------------------------------------------------------------- per-update logging, evaluation
        with torch.no_grad():
            new = _parts(actor.forward(actor.params, flat_obs))
            update_kl = pol.kl(_join(behaviour), _join(new)).mean(-1)  # [S]
            finite = torch.stack([torch.isfinite(p.reshape(S, -1)).all(1) for p in net_params]).all(0) & torch.isfinite(update_kl)
        if bool((~finite & alive).any()):
            status.kill(~finite, "non-finite parameters", env_steps)
        if not alive.any():
            break
        # what is logged comes to the CPU once per update phase
        means = torch.stack(logged).mean(0).cpu() if logged else None  # [M, S]
        update_kl = update_kl.cpu()
        std = torch.stack([new[1][s].detach().exp().mean() for s in range(S)]).cpu() if cfg.policy == "gaussian" else None
        logging = alive & was_alive
        evaluate_now = env_steps >= next_eval or it == iterations - 1
        while next_eval <= env_steps:
            next_eval += cfg.eval_every
        if evaluate_now:
            returns = evaluate_seeds(actor, norm, spec0.task, cfg.eval_episodes, seeds, logging, task_cfg.action_repeat,
                                     task_cfg.time_limit)
        for s, live in enumerate(logging.tolist()):
            if not live:
                continue
            out = rows[s]
            if means is not None:
                out.extend((env_steps, k, float(m)) for k, m in zip(keys, means[:, s].tolist()))
            out.append((env_steps, "update/kl", float(update_kl[s])))
            out.append((env_steps, "update/lr", float(opt.param_groups[0]["lr"])))
            if std is not None:
                out.append((env_steps, "policy/std", float(std[s])))
            if evaluate_now:
                out.append((env_steps, "eval/return", returns[s]))

    if isinstance(step_fn, CompiledStep):
        for out in rows:
            out.insert(0, (0, "loop/compiled", float(step_fn.compiled)))
    return status.results(rows)


def cxx_compiler() -> str | None:
    """The C++ compiler torch.compile's CPU backend would call ($CXX, else g++, c++ or clang++ on PATH), or None."""
    return next((path for c in (os.environ.get("CXX"), "g++", "c++", "clang++") if c and (path := shutil.which(c))), None)


class CompiledStep:
    """A learner step run as one `torch.compile` graph (inductor: C++ kernels on the CPU, Triton on CUDA; `OnPolicyConfig.compile`).

    One graph (`fullgraph=True`) of fixed shapes: the forward is fused into a few kernels and AOTAutograd compiles the
    backward, which removes most of the per-operation overhead that dominates a step on minibatches of 64. A loss with
    data-dependent Python control flow (`bool(tensor)`, boolean indexing) cannot be one graph: the first call, which
    traces before anything runs, says why (a warning) and the step runs eagerly from then on, with the numbers it would
    have had with compile=False. Compiled and eager steps agree to float rounding, not bitwise (fused kernels sum in
    another order); a compiled run is deterministic on one CPU (tested in tests/test_control_onpolicy.py).
    """

    def __init__(self, fn):
        torch.compiler.reset()  # each run group builds new closures: start from an empty cache, not a pile of recompiles
        self.eager, self.fn, self.compiled, self.first = fn, torch.compile(fn, fullgraph=True, dynamic=False), True, True

    def __call__(self, mb: dict[str, Tensor]):
        if not self.first:
            return self.fn(mb)
        self.first = False
        try:
            return self.fn(mb)
        except torch._dynamo.exc.TorchDynamoException as exc:  # tracing or compiling failed: nothing of the step has run
            warnings.warn(f"OnPolicyConfig.compile: the learner step does not compile into one graph, so it runs eagerly: "
                          f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}", stacklevel=2)
            self.fn, self.compiled = self.eager, False
            return self.fn(mb)


def vmap_rows(critic: Stacked, final_buf: Tensor, trunc: Tensor, n_env: int) -> Tensor:
    """V(final observation) at every truncated (t, env) entry, each with its own seed's critic ([n_truncated])."""
    t_idx, e_idx = torch.nonzero(trunc, as_tuple=True)
    s_idx = e_idx // n_env
    out = torch.empty(len(t_idx), device=final_buf.device)
    for s in s_idx.unique().tolist():
        sel = s_idx == s
        p = {k: v[s] for k, v in critic.params.items()}
        out[sel] = functional_call(critic.template, p, (final_buf[t_idx[sel], e_idx[sel]],)).squeeze(-1)
    return out


register_loop(OnPolicyConfig, provides=PROVIDES, train=train, default=True)
