"""VIREL: actor-critic as variational EM, with a temperature set by the critic's Bellman residual.

Source: `[EM-LLM] §9` (VIREL, Fellows et al., NeurIPS 2019), eqs. 13–21. With h = (s, a),
a critic Q_ω(h) and the residual temperature

    ε_ω = c ‖T_ω Q_ω − Q_ω‖_p^p,       T_ω Q(h) = r(h) + γ E_{s', a' ~ π}[Q(s', a')]          (eq. 13)

VIREL maximises the ELBO L(ω, θ) = E_{d(s) π_θ(a|s)}[Q_ω(h)/ε_ω] + H(π_θ(·|s))             (eq. 15)
  = ℓ(ω) − KL(q_θ ‖ p_ω) − H(d), with p_ω(a|s) ∝ exp(Q_ω(s, a)/ε_ω) the Boltzmann policy (eqs. 14, 16–17).

  E-step (actor, eqs. 18–19): ascend ε_ω ∇_θ L = E[Q ∇_θ log π_θ] + ε_ω ∇_θ H(π_θ). The loss here is
      L_actor(θ) = E_s[ E_{a~π_θ}[ε_ω log π_θ(a|s) − Q(s, a)] ] = E_s[ ε_ω KL(π_θ ‖ p_ω) ] − E_s[ε_ω log Z_ω(s)],
  with Q and ε_ω constants, so its minimiser is π_θ = p_ω = softmax(Q/ε_ω) wherever the policy class
  contains it (tests check both the categorical and the Gaussian case).
  M-step (critic, eqs. 20–21): policy evaluation. "residual": minimise mean |T Q − Q|^p, i.e. drive ε_ω
  towards its floor; "elbo": the surrogate whose gradient is exactly eq. 21,
      ε² ∇_ω L = ε E_q[∇_ω Q] − E_q[Q] ∇_ω ε.
  As the critic's residual → 0, ε_ω → its floor and the Boltzmann target becomes greedy: VIREL learns
  a (near-)deterministic policy without a hand-set entropy weight.

Shapes (STYLE): `B` states, `K` actions per state (sampled from π_θ, or all actions of a finite set),
`A` action dimensions.

Deviations (all from eq. 13 and the M-step):
  * ε_ω uses the *mean* of |δ|^p over the batch (an estimate of E_{d π}|δ|^p), not the sum, so that it
    does not grow with the batch size; and it is floored, ε_ω = max(c · mean|δ|^p, ε_min) (the floor is
    a suite choice that keeps the Boltzmann target defined when the residual vanishes).
  * T_ω is the Bellman operator of the actor π_θ, supplied by the caller's target (r + γ E_{π_θ} Q),
    not of the Boltzmann policy π_ω; ∇_ω ε does not differentiate through π_ω.
  * The default critic objective is the residual (policy evaluation as practical actor-critics run it);
    the exact eq. 21 gradient is the "elbo" option.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from algorithms.base import Batch, Method, Metrics, Needs, register
from algorithms.common import masked_mean
from algorithms.config import ConfigError, check_choices, check_positive, field

ActorEstimator = Literal["exact", "score_function", "reparameterised"]
CriticObjective = Literal["residual", "elbo"]
ResidualGradient = Literal["semi", "full"]


@dataclass(frozen=True)
class VIRELConfig:
    c: float = field(1.0, "proportionality c in ε_ω = c·mean|TQ − Q|^p ([EM-LLM] §9 eq. 13); the paper leaves c free")
    residual_power: float = field(2.0, "p of the residual norm ‖TQ − Q‖_p^p; 2 = mean squared Bellman residual")
    epsilon_floor: float = field(1e-3, "floor ε_min of ε_ω = max(c·mean|δ|^p, ε_min); a suite choice (the paper has none)")
    actor_estimator: Literal["exact", "score_function"] = field(
        "score_function", "'exact': K enumerates a finite action set (categorical); 'score_function': K samples of π_θ (eq. 19)")
    critic_objective: CriticObjective = field(
        "residual", "'residual': minimise mean|δ|^p (policy evaluation); 'elbo': the exact eq. 21 gradient")
    residual_gradient: ResidualGradient = field("semi", "'semi': the TD target is a constant; 'full': residual gradient through the target")
    critic_coef: float = field(1.0, "weight of the critic loss in the summed loss the method returns")

    def __post_init__(self):
        check_choices(self)
        check_positive(self, "c", "epsilon_floor", "critic_coef")
        if not self.residual_power >= 1:
            raise ConfigError(f"VIRELConfig.residual_power = {self.residual_power!r} is invalid: must be >= 1.")


def _context_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over valid samples within each context, then over contexts that have any ([B, K] -> scalar)."""
    per_ctx = masked_mean(x, mask, dim=-1)
    has = (mask.sum(-1) > 0).to(x.dtype)
    return (per_ctx * has).sum() / has.sum().clamp_min(1.0)


def diag_gaussian_entropy(log_std: Tensor) -> Tensor:
    """H(N(μ, diag σ²)) = Σ_a (log σ_a + ½ log 2πe), [..., A] -> [...] (for the closed-form entropy of eq. 19)."""
    return (log_std + 0.5 * math.log(2 * math.pi * math.e)).sum(-1)


def virel_epsilon(q: Tensor, q_target: Tensor, mask: Tensor, *, c: float, p: float, floor: float,
                  residual_gradient: ResidualGradient) -> tuple[Tensor, Tensor]:
    """ε_ω = max(c · mean_valid |T Q − Q|^p, floor) (`[EM-LLM] §9` eq. 13) and the residual mean |δ|^p itself.

    Args:
        q: [B, K] Q_ω(s, a) of the current critic, differentiable in ω.
        q_target: [B, K] T Q(s, a) = r + γ E_{a'~π}[Q(s', a')] (bootstrapped with a target network or not).
        mask: [B, K] float {0, 1} valid entries; padding contributes nothing, whatever it holds.
        c, p, floor: see `VIRELConfig` (c, residual_power, epsilon_floor).
        residual_gradient: "semi": δ = sg[T Q] − Q; "full": δ = T Q − Q with the target's gradient kept.

    Returns: (epsilon, residual), scalars, differentiable in ω (zero gradient for ε while it sits at the floor).
    """
    tgt = q_target.detach() if residual_gradient == "semi" else q_target
    valid = mask > 0
    delta = torch.where(valid, tgt - q, torch.zeros_like(q))
    residual = masked_mean(delta.abs() ** p, valid.to(q.dtype))
    epsilon = torch.clamp_min(c * residual, floor)
    return epsilon, residual


def virel_actor_loss(logp: Tensor, q: Tensor, mask: Tensor, epsilon: Tensor, *, estimator: ActorEstimator,
                     entropy: Tensor | None = None) -> tuple[Tensor, Metrics]:
    """E-step (actor) of `[EM-LLM] §9` eqs. 18–19: L = E_s E_{a~π_θ}[ε log π_θ(a|s) − Q(s, a)] = ε KL(π_θ‖p_ω) + const.

    Args:
        logp: [B, K] log π_θ(a_k|s), differentiable and finite on valid entries.
        q: [B, K] Q_ω(s, a_k). A constant (detached) for "exact" and "score_function"; for
            "reparameterised" it must carry the pathwise gradient through a_k = f_θ(ξ_k).
            Any per-state shift (an advantage Q − V) leaves the minimiser and the expected gradient unchanged.
        mask: [B, K] float {0, 1} valid actions/samples.
        epsilon: scalar ε_ω (`virel_epsilon`); detached inside, so no gradient reaches the critic.
        estimator:
            "exact": the K entries enumerate a finite action set and exp(logp) sums to 1 over the valid ones
                (categorical actor): L = mean_s Σ_a π(a|s)(ε log π(a|s) − Q(s, a)), exact in value and gradient.
            "score_function": K samples a_k ~ π_θ (any distribution; Gaussian for control), eq. 19:
                with `entropy` [B] (closed form, differentiable), the surrogate −mean[sg(Q) log π] − ε H;
                without it, −mean[sg(Q − ε log π) log π], whose gradient E[(Q − ε log π)∇log π] is the same in
                expectation (∇H = −E[log π ∇log π] since E[∇log π] = 0). Its value is not L; its gradient is.
            "reparameterised": K reparameterised samples: mean[ε log π_θ(a_k) − Q(a_k)] (SAC-style pathwise).
        entropy: [B] closed-form H(π_θ(·|s)) for "score_function"; ignored otherwise.

    Returns: loss, metrics `policy/q` (mean Q under π_θ), `policy/entropy`, `dual/epsilon`, and for "exact"
    `policy/kl_boltzmann` = mean_s KL(π_θ ‖ softmax(Q/ε)).
    Deviations: the loss is ε_ω times the (negated) ELBO of eq. 15 up to constants, as eq. 18 scales the
    actor's gradient by ε_ω.
    """
    eps = epsilon.detach()
    valid = mask > 0
    fmask = valid.to(logp.dtype)
    lp = torch.where(valid, logp, torch.zeros_like(logp))
    metrics: Metrics = {"dual/epsilon": eps}
    if estimator == "exact":
        qc = torch.where(valid, q.detach(), torch.zeros_like(logp))
        pi = torch.where(valid, lp.exp(), torch.zeros_like(lp))
        per_ctx = (pi * (eps * lp - qc)).sum(-1)
        has = (fmask.sum(-1) > 0).to(logp.dtype)
        loss = (per_ctx * has).sum() / has.sum().clamp_min(1.0)
        with torch.no_grad():
            log_boltz = torch.log_softmax(torch.where(valid, qc / eps, torch.full_like(qc, float("-inf"))), -1)
            kl = torch.where(pi > 0, pi * (lp - log_boltz), torch.zeros_like(pi)).sum(-1)
            metrics["policy/kl_boltzmann"] = (kl * has).sum() / has.sum().clamp_min(1.0)
            metrics["policy/q"] = ((pi * qc).sum(-1) * has).sum() / has.sum().clamp_min(1.0)
            metrics["policy/entropy"] = (-(pi * lp).sum(-1) * has).sum() / has.sum().clamp_min(1.0)
        return loss, metrics
    if estimator == "score_function":
        qc = torch.where(valid, q.detach(), torch.zeros_like(logp))
        if entropy is not None:
            loss = -_context_mean(qc * lp, fmask) - eps * entropy.mean()
            metrics["policy/entropy"] = entropy.detach().mean()
        else:
            loss = -_context_mean((qc - eps * lp.detach()) * lp, fmask)
            metrics["policy/entropy"] = -_context_mean(lp.detach(), fmask)
        metrics["policy/q"] = _context_mean(qc, fmask)
        return loss, metrics
    if estimator == "reparameterised":
        qv = torch.where(valid, q, torch.zeros_like(logp))
        loss = _context_mean(eps * lp - qv, fmask)
        metrics["policy/entropy"] = -_context_mean(lp.detach(), fmask)
        metrics["policy/q"] = _context_mean(qv.detach(), fmask)
        return loss, metrics
    raise ValueError(f"estimator must be 'exact', 'score_function' or 'reparameterised', got {estimator!r}")


def virel_critic_loss(q: Tensor, q_target: Tensor, mask: Tensor, *, objective: CriticObjective, c: float, p: float,
                      floor: float, residual_gradient: ResidualGradient) -> tuple[Tensor, Metrics]:
    """M-step (critic) of `[EM-LLM] §9` eqs. 20–21.

        "residual": loss = mean_valid |T Q − Q|^p   (policy evaluation; minimising it drives ε_ω to its floor)
        "elbo":     loss = −( sg[ε_ω] · E_q[Q_ω] − sg[E_q Q_ω] · ε_ω ),  so −∇loss = eq. 21 = ε² ∇_ω L(ω, θ)

    Args:
        q: [B, K] Q_ω(s, a) on actions of the current actor (E_q is the mean over valid entries), differentiable.
        q_target: [B, K] T Q (see `virel_epsilon`). mask: [B, K] valid entries.
        objective, c, p, floor, residual_gradient: see `VIRELConfig`.

    Returns: loss, metrics `value/residual` (mean |δ|^p), `value/q` (mean Q), `dual/epsilon`, `value/loss`.
    Deviations: "elbo" pushes E_q[Q] up at rate ε and pulls ε down at rate E_q[Q]; while ε sits at its
        floor ∇ε = 0 and only the first term acts. Use it to test eq. 21; "residual" is the stable default.
    """
    epsilon, residual = virel_epsilon(q, q_target, mask, c=c, p=p, floor=floor, residual_gradient=residual_gradient)
    fmask = (mask > 0).to(q.dtype)
    mean_q = masked_mean(torch.where(mask > 0, q, torch.zeros_like(q)), fmask)
    if objective == "residual":
        loss = residual
    elif objective == "elbo":
        loss = -(epsilon.detach() * mean_q - mean_q.detach() * epsilon)
    else:
        raise ValueError(f"objective must be 'residual' or 'elbo', got {objective!r}")
    metrics = {"value/residual": residual.detach(), "value/q": mean_q.detach(), "dual/epsilon": epsilon.detach(),
               "value/loss": loss.detach()}
    return loss, metrics


@register
class VIREL(Method):
    """VIREL on a `Batch`: actor on (`logp`, `score` = Q of each sample), critic on (`value`, `value_target`).

    The same [B, K] layout serves both: each context is a state, its K entries the actions of π_θ
    (sampled, or the whole finite action set for `actor_estimator = "exact"`), `score` their Q-values
    (detached), `value` the same Q-values with the critic's gradient and `value_target` their Bellman
    targets r + γ E_{π_θ} Q(s', ·). loss = actor + critic_coef · critic; ε_ω is recomputed from the
    batch's residual at every call and logged as `dual/epsilon` (it is not a learned dual).
    """

    name = "virel"
    Config = VIRELConfig
    needs = Needs(values=True)

    def loss(self, batch: Batch) -> tuple[Tensor, Metrics]:
        cfg = self.cfg
        opts = dict(c=cfg.c, p=cfg.residual_power, floor=cfg.epsilon_floor, residual_gradient=cfg.residual_gradient)
        epsilon, _ = virel_epsilon(batch.value, batch.value_target, batch.mask, **opts)
        actor, metrics = virel_actor_loss(batch.logp, batch.score, batch.mask, epsilon, estimator=cfg.actor_estimator)
        critic, critic_metrics = virel_critic_loss(batch.value, batch.value_target, batch.mask, objective=cfg.critic_objective, **opts)
        metrics.update(critic_metrics)
        metrics["policy/loss"] = actor.detach()
        return actor + cfg.critic_coef * critic, metrics
