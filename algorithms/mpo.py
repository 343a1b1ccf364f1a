"""MPO-style policy improvement: softmax of scores over K sampled actions, dual temperature, KL trust region.

Source: Abdolmaleki et al. 2018 (MPO) eq. 7–9 and the Acme implementation; the E-step/M-step split of
`[EM-LLM] §10`. For each context, K actions are sampled from the target
(reference) policy and scored (by Q in control, by the objective in bandits):

    E-step:  w_k = softmax_k(score_k / η),   L(η) = η ε_η + η log mean_k exp(score_k / η)
    M-step:  min_θ −Σ_k w_k log π_θ(y_k|x)   s.t.  KL(π_ref ‖ π_θ) ≤ ε_kl   (Lagrangian, dual α)

The temperature is dual-adaptive (the default, as in MPO: gradient steps on L(η) with the learner), fixed (the
B4 / C5 sweeps), or solved: L(η) is convex in η, and its minimiser on each batch (`estep.solve_eta`) is the
temperature the gradient steps chase, reached at once; the B4 bandits show the chase can last longer than a run.
Deviations: one KL constraint on the whole distribution (Acme decouples mean and covariance, with
ε_μ = 0.0025, ε_σ = 1e-6); the task chooses ε_kl.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from algorithms.base import Batch, Method, Metrics, Needs, dual_parameter, register
from algorithms.estep import estep, solve_eta, weights_kl
from algorithms.mstep import kl_trust_region, weighted_nll
from algorithms.config import check_choices, check_positive, field

DUAL_FLOOR = 1e-8


@dataclass(frozen=True)
class MPOConfig:
    temperature: Literal["dual", "fixed", "solved"] = field(
        "dual", "η adapted by gradient steps on its dual (MPO), held fixed (a sweep), or solved: the dual's minimiser on each "
                "batch, where the weights' KL to the samples is exactly ε_η")
    eta: float = field(1.0, "initial (dual) or constant (fixed) temperature η; V-MPO initialises η = 1; unused when solved")
    epsilon_eta: float = field(0.1, "E-step KL bound ε_η; Acme MPO: 0.1")
    epsilon_kl: float = field(0.1, "M-step trust region ε on KL(π_ref‖π_θ); Acme decouples ε_μ=0.0025, ε_σ=1e-6")
    alpha: float = field(1.0, "initial Lagrange multiplier α of the trust region")

    def __post_init__(self):
        check_choices(self)
        check_positive(self, "eta", "epsilon_eta", "epsilon_kl", "alpha")


def mpo_loss(score: Tensor, mask: Tensor, logp: Tensor, kl_ref: Tensor, eta: Tensor, alpha: Tensor, *,
             epsilon_eta: float | None, epsilon_kl: float) -> tuple[Tensor, Metrics]:
    """Total MPO loss = weighted NLL + temperature dual (if adaptive) + Lagrangian trust region.

    Args:
        score: [B, K] scores of actions sampled from π_ref (higher is better).
        mask: [B, K] valid samples.
        logp: [B, K] log π_θ of those actions, differentiable.
        kl_ref: [B] closed-form KL(π_ref ‖ π_θ), differentiable.
        eta: scalar temperature (a softplus'd dual, or a constant).
        alpha: scalar Lagrange multiplier (softplus'd dual).
        epsilon_eta: ε_η for the temperature dual; None for a fixed temperature.
        epsilon_kl: trust-region bound.

    Returns: loss, metrics `policy/nll`, `weights/ess`, `weights/ess_frac`, `weights/max`, `weights/kl` (the E-step's
    KL to the samples, which ε_η bounds), `dual/eta`, `dual/alpha`, `kl/trust_region`, `dual/eta_loss`.
    """
    log_w, eta_loss, metrics = estep(score, mask, eta, over="context", epsilon=epsilon_eta)
    metrics["weights/kl"] = weights_kl(log_w, mask).detach()
    nll = weighted_nll(logp, log_w, reduction="mean_contexts")
    tr_loss, tr_metrics = kl_trust_region(kl_ref, alpha, epsilon_kl)
    loss = nll + tr_loss + (eta_loss if eta_loss is not None else 0.0)
    metrics.update(tr_metrics)
    metrics["policy/nll"] = nll.detach()
    if eta_loss is not None:
        metrics["dual/eta_loss"] = eta_loss.detach()
    return loss, metrics


@register
class MPO(Method):
    name = "mpo"
    Config = MPOConfig
    needs = Needs(min_samples=2, kl_ref=True)

    def __init__(self, cfg: MPOConfig):
        super().__init__(cfg)
        if cfg.temperature == "dual":
            self.eta_raw = dual_parameter(cfg.eta, DUAL_FLOOR)
        self.alpha_raw = dual_parameter(cfg.alpha, DUAL_FLOOR)

    def loss(self, batch: Batch) -> tuple[Tensor, Metrics]:
        cfg = self.cfg
        if cfg.temperature == "dual":
            eta, eps_eta = F.softplus(self.eta_raw) + DUAL_FLOOR, cfg.epsilon_eta
        elif cfg.temperature == "solved":
            eta, eps_eta = solve_eta(batch.score, batch.mask, cfg.epsilon_eta), None
        else:
            eta, eps_eta = torch.tensor(cfg.eta, dtype=batch.logp.dtype, device=batch.logp.device), None
        alpha = F.softplus(self.alpha_raw) + DUAL_FLOOR
        return mpo_loss(batch.score, batch.mask, batch.logp, batch.kl_ref, eta, alpha, epsilon_eta=eps_eta, epsilon_kl=cfg.epsilon_kl)
