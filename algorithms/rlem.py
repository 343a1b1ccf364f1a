"""RL-EM: KL-regularised RL fine-tuning as EM, target q ∝ π_ref exp(A/β), optional KL in the M-step.

Source: `[EM-SFT] §6` ("E-step / M-step for RL Fine-Tuning (KL-Regularised)")
and `[EM-LLM] §10` ("Recovering existing methods": m = 1, π_1 = π_ref, λ_1 = β
fixed, optional KL M-step, no filter):

    E-step:  q(y|x) ∝ π_ref(y|x) exp(A(x,y)/β)
    M-step:  max_θ E_x E_{y~q} log π_θ(y|x)  [− γ KL  or  s.t. KL ≤ ε]

On samples y ~ π_t (`Batch.logp_old`) the target is represented by self-normalised importance weights
w ∝ (π_ref/π_t) exp(A/β) (the "importance-weighted practical form" of `[EM-LLM] §10`), normalised per
prompt or over the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from algorithms.base import Batch, Method, Metrics, Needs, dual_parameter, register
from algorithms.common import Over, masked_mean
from algorithms.config import check_choices, check_positive, field
from algorithms.estep import estep
from algorithms.gempi import DUAL_FLOOR, AdvNorm, Baseline, GEMPIConfig, advantages, context_mask, masked_trust_region
from algorithms.mstep import kl_penalty, weighted_nll

MStep = Literal["none", "penalty", "constraint"]


@dataclass(frozen=True)
class RLEMConfig:
    beta: float = field(1.0, "KL coefficient β to π_ref (the E-step temperature); papers give no value (suite: 1 on normalised A)")
    normalize: Over = field("context", "self-normalise the weights per prompt ('context') or over the 'batch'")
    baseline: Baseline = field("none", "per-context baseline subtracted from the reward (irrelevant with per-context weights)")
    advantage_norm: AdvNorm = field("batch", "advantage normalisation over the batch ('none' or 'batch')")
    m_step: MStep = field("none", "optional M-step KL(π_ref‖π_θ): none, fixed penalty, or Lagrangian constraint")
    kl_coef: float = field(0.1, "penalty γ, or initial multiplier α of the constraint (unused with m_step='none')")
    epsilon_kl: float = field(0.01, "bound of the constraint (unused otherwise)")

    def __post_init__(self):
        check_choices(self)
        check_positive(self, "beta", "epsilon_kl")
        check_positive(self, "kl_coef", strict=self.m_step == "constraint")

    def to_gempi(self) -> GEMPIConfig:
        m = {} if self.m_step == "none" else dict(m_kl="ref", m_coef=(self.kl_coef,),
                                                   m_epsilon=(self.epsilon_kl,) if self.m_step == "constraint" else ())
        return GEMPIConfig(anchors=("pi_ref",), coefficients=(self.beta,), coefficient_names=("beta",), temperature="fixed",
                           normalize=self.normalize, weight_clip=None, baseline=self.baseline, advantage_norm=self.advantage_norm,
                           dual_over=self.normalize, m_step=self.m_step, **m)


def rlem_loss(logp: Tensor, score: Tensor, mask: Tensor, logp_old: Tensor, logp_ref: Tensor, *, beta: float, normalize: Over,
              baseline: Baseline, advantage_norm: AdvNorm, m_step: MStep, kl_ref: Tensor | None = None,
              kl_coef: float | Tensor | None = None, epsilon_kl: float | None = None) -> tuple[Tensor, Metrics]:
    """−Σ_i w_i log π_θ(y_i|x_i), w ∝ (π_ref/π_t) exp(Â/β) self-normalised, [+ M-step KL term].

    Args:
        logp: [B, K] log π_θ(y|x), differentiable. score: [B, K] rewards. mask: [B, K] valid samples.
        logp_old: [B, K] log π_t of the sampling policy; logp_ref: [B, K] log π_ref (both detached).
        beta: β > 0. normalize: "context" (weights sum to 1 per prompt; loss averaged over prompts) or
            "batch" (sum to 1 over the batch). baseline, advantage_norm: see `gempi.advantages`.
        m_step: "none" | "penalty" (kl_coef · mean KL) | "constraint" (Lagrangian, kl_coef the multiplier tensor,
            epsilon_kl the bound). kl_ref: [B] closed-form KL(π_ref‖π_θ), differentiable (needed unless "none").

    Returns: loss, metrics `policy/nll`, `weights/ess`, `weights/ess_frac`, `weights/max`, and `kl/ref`
        (+ `dual/alpha` for the constraint) with an M-step KL.
    Deviations: `[EM-SFT] §6` writes the optional M-step term on KL(π_θ‖π_ref); the suite uses the closed-form
        KL(π_ref‖π_θ) the batch carries (as PMPO). The E-step uses A (reward after `advantages`), not raw R.
    """
    adv = advantages(score, mask, baseline=baseline, normalize=advantage_norm)
    log_prior = torch.where(mask > 0, logp_ref.detach() - logp_old.detach(), torch.zeros_like(mask))
    eta = torch.tensor(beta, dtype=logp.dtype, device=logp.device)
    log_w, _, metrics = estep(adv, mask, eta, over=normalize, log_prior=log_prior)
    metrics.pop("dual/eta")  # β is a fixed coefficient here, not a dual
    nll = weighted_nll(logp, log_w, reduction="mean_contexts" if normalize == "context" else "sum")
    metrics["policy/nll"] = nll.detach()
    loss = nll
    if m_step != "none":
        if kl_ref is None:
            raise ValueError(f"RL-EM with m_step={m_step!r} needs kl_ref (closed-form KL(π_ref‖π_θ))")
        if m_step == "penalty":
            loss = loss + kl_penalty(kl_ref, float(kl_coef), context_mask(mask))
            metrics["kl/ref"] = masked_mean(kl_ref.detach(), context_mask(mask))
        else:
            tr, tm = masked_trust_region(kl_ref, mask, kl_coef, epsilon_kl, name="alpha")
            loss = loss + tr
            metrics.update({"dual/alpha": tm["dual/alpha"], "kl/ref": tm["kl/alpha_trust_region"]})
    return loss, metrics


@register
class RLEM(Method):
    name = "rlem"
    Config = RLEMConfig
    needs = Needs(min_samples=2, logp_old=True, logp_ref=True)
    GEMPI: ClassVar[GEMPIConfig] = RLEMConfig().to_gempi()

    def __init__(self, cfg: RLEMConfig):
        super().__init__(cfg)
        if cfg.m_step == "constraint":
            self.alpha_raw = dual_parameter(cfg.kl_coef, DUAL_FLOOR)

    def loss(self, batch: Batch) -> tuple[Tensor, Metrics]:
        c = self.cfg
        coef = F.softplus(self.alpha_raw) + DUAL_FLOOR if c.m_step == "constraint" else c.kl_coef
        return rlem_loss(batch.logp, batch.score, batch.mask, batch.logp_old, batch.logp_ref, beta=c.beta, normalize=c.normalize,
                         baseline=c.baseline, advantage_norm=c.advantage_norm, m_step=c.m_step, kl_ref=batch.kl_ref,
                         kl_coef=coef, epsilon_kl=c.epsilon_kl)
