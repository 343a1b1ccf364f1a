"""DAR (direct advantage regression) and its GEMPI variants AT-DAR, DAR-TR and Top-k DAR.

Source: He et al. 2025 (arXiv:2504.14177); `[EM-LLM] §7` and
`[EM-SFT] §7` (the dual-KL objective, its closed form and practical form);
`[EM-LLM] §10` ("Recovering existing methods": m = 2, π_ref and π_t with α, β;
"Novel instantiations": AT-DAR, DAR-TR, Top-k DAR). With t = α + β the target is

    q*(y|x) ∝ π_ref^{α/t} π_t^{β/t} exp(A/t),

and on samples y ~ π_t the practical loss (`[EM-LLM] §7`, last display) is the weighted regression

    min_θ −(1/N) Σ_i min(w_reg,i · w_adv,i, w_max) log π_θ(y_i|x_i),
    w_reg = (π_ref(y|x)/π_t(y|x))^{α/t},   w_adv = exp(Â/t),

with Â batch-normalised, t = 0.05, α/t = 0.1, w_max = 20 (the product is clipped), K = 4 (docs/reference-settings.md).
Variants:
- AT-DAR: α and β are duals with KL budgets ε_α (on KL(q‖π_ref)) and ε_β (on KL(q‖π_t)), minimising
  L(α, β) = α ε_α + β ε_β + (α+β) log Ẑ(x; α, β)  (`[EM-LLM] §10`, via `gempi.multi_temperature_loss`).
- DAR-TR: DAR plus a Lagrangian trust region KL(π_old‖π_θ) ≤ ε_M on the M-step (multiplier γ).
- Top-k DAR: DAR's weights restricted to the top-k samples (by advantage by default), other weights 0.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from algorithms.base import Batch, Method, Metrics, Needs, dual_parameter, register
from algorithms.common import Over, normalized_log_weights, top_k_mask
from algorithms.config import ConfigError, check_choices, check_positive, check_range, field
from algorithms.gempi import (DUAL_FLOOR, AdvNorm, Baseline, GEMPIConfig, advantages, anchor_log_ratios, clipped_mean_log_weights,
                              estep_kls, masked_trust_region, multi_temperature_loss, weight_metrics)
from algorithms.mstep import weighted_nll


# ------------------------------------------------------------------------------------------------
# Configs
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DARConfig:
    alpha: float = field(0.005, "coefficient α of KL(π‖π_ref); docs/reference-settings.md: α+β = 0.05 with α/(α+β) = 0.1")
    beta: float = field(0.045, "coefficient β of KL(π‖π_t); docs/reference-settings.md: α+β = 0.05 with α/(α+β) = 0.1")
    weight_clip: float = field(20.0, "clip of the product w_reg·w_adv; DAR: 20")
    baseline: Baseline = field(
        "context_mean", "V^{π_t}(x) subtracted from r: 'context_mean' (K-sample Monte Carlo) or 'none' (score is an advantage)")
    advantage_norm: AdvNorm = field("batch", "advantage normalisation; DAR: batch-level")

    def __post_init__(self):
        check_choices(self)
        check_positive(self, "alpha", "beta", strict=False)
        check_positive(self, "weight_clip")
        if not self.alpha + self.beta > 0:
            raise ConfigError(f"{type(self).__name__}.alpha + beta = {self.alpha + self.beta!r} is invalid: must be > 0.")

    def _gempi(self, **kw) -> GEMPIConfig:
        base = dict(anchors=("pi_ref", "pi_t"), coefficients=(self.alpha, self.beta), coefficient_names=("alpha", "beta"),
                    temperature="fixed", normalize="none", weight_clip=self.weight_clip, baseline=self.baseline,
                    advantage_norm=self.advantage_norm)
        return GEMPIConfig(**{**base, **kw})

    def to_gempi(self) -> GEMPIConfig:
        return self._gempi()


@dataclass(frozen=True)
class ATDARConfig(DARConfig):
    epsilon_alpha: float = field(0.1, "budget ε_α on KL(q‖π_ref); not given by the paper (suite's choice)")
    epsilon_beta: float = field(0.1, "budget ε_β on KL(q‖π_t); not given by the paper (suite's choice)")
    dual_over: Over = field("context", "partition estimate Ẑ(x) per prompt ('context') or over the batch")

    def __post_init__(self):
        super().__post_init__()
        check_positive(self, "alpha", "beta", "epsilon_alpha", "epsilon_beta")

    def to_gempi(self) -> GEMPIConfig:
        return self._gempi(temperature="dual", epsilons=(self.epsilon_alpha, self.epsilon_beta), dual_over=self.dual_over)


@dataclass(frozen=True)
class DARTRConfig(DARConfig):
    gamma: float = field(1.0, "initial Lagrange multiplier γ of the M-step trust region (softplus dual)")
    epsilon_m: float = field(0.01, "M-step bound ε_M on KL(π_old‖π_θ); not given by the paper (V-MPO's ε_α scale)")

    def __post_init__(self):
        super().__post_init__()
        check_positive(self, "gamma", "epsilon_m")

    def to_gempi(self) -> GEMPIConfig:
        return self._gempi(m_step="constraint", m_kl="old", m_coef=(self.gamma,), m_epsilon=(self.epsilon_m,))


@dataclass(frozen=True)
class TopKDARConfig(DARConfig):
    topk_frac: float = field(0.5, "fraction ρ kept (k = max(1, floor(ρn))); V-MPO's top half")
    topk_over: Over = field("batch", "top-k over the whole batch (V-MPO) or within each prompt's K samples")
    topk_by: Literal["advantage", "log_weight"] = field(
        "advantage", "rank by advantage (`[EM-LLM] §10` Top-k DAR) or by the DAR log-weight (q*/π_t)")

    def __post_init__(self):
        super().__post_init__()
        check_range(self, "topk_frac", 0.0, 1.0, lo_open=True)

    def to_gempi(self) -> GEMPIConfig:
        return self._gempi(filter="topk", topk_frac=self.topk_frac, topk_over=self.topk_over, topk_by=self.topk_by)


# ------------------------------------------------------------------------------------------------
# Pure losses
# ------------------------------------------------------------------------------------------------


def dar_logits(advantage: Tensor, logp_old: Tensor, logp_ref: Tensor, mask: Tensor, *, alpha: float | Tensor,
               beta: float | Tensor) -> Tensor:
    """log(w_reg · w_adv) = (α/t)(log π_ref − log π_t) + Â/t, t = α + β; [B, K] detached, 0 on padding."""
    alpha = alpha.detach() if isinstance(alpha, Tensor) else alpha
    beta = beta.detach() if isinstance(beta, Tensor) else beta
    t = alpha + beta
    log_ratio = torch.where(mask > 0, logp_ref.detach() - logp_old.detach(), torch.zeros_like(mask))
    log_w_reg = (alpha / t) * log_ratio
    log_w_adv = advantage.detach() / t
    return log_w_reg + log_w_adv


def _dar_fit(logp: Tensor, logits: Tensor, keep: Tensor, weight_clip: float) -> tuple[Tensor, Tensor, Metrics]:
    log_w = clipped_mean_log_weights(logits, keep, weight_clip)
    nll = weighted_nll(logp, log_w, reduction="sum")
    metrics = weight_metrics(log_w, logits, keep, weight_clip, "none")
    metrics["policy/nll"] = nll.detach()
    return nll, log_w, metrics


def dar_loss(logp: Tensor, score: Tensor, mask: Tensor, logp_old: Tensor, logp_ref: Tensor, *, alpha: float, beta: float,
             weight_clip: float, baseline: Baseline, advantage_norm: AdvNorm) -> tuple[Tensor, Metrics]:
    """DAR practical loss −(1/N) Σ_valid min(w_reg·w_adv, w_max) log π_θ (`[EM-LLM] §7`, last display).

    Args:
        logp: [B, K] log π_θ(y|x), differentiable (sequence log-prob summed over tokens).
        score: [B, K] rewards r(x, y) (or advantages with baseline="none"). mask: [B, K] valid samples.
        logp_old: [B, K] log π_t(y|x) of the sampling policy; logp_ref: [B, K] log π_ref(y|x) (both detached).
        alpha, beta: KL coefficients (α ≥ 0, β ≥ 0, α+β > 0). weight_clip: w_max.
        baseline, advantage_norm: see `gempi.advantages`.

    Returns: loss, metrics `policy/nll`, `weights/ess`, `weights/ess_frac`, `weights/max`, `weights/clipfrac`.
    Deviations: the papers write E_x E_{y~π_t}; the suite averages over all N valid samples of the batch.
        V^{π_t}(x) is not specified in the given papers; the default is the K-sample mean (baseline).
    """
    adv = advantages(score, mask, baseline=baseline, normalize=advantage_norm)
    logits = dar_logits(adv, logp_old, logp_ref, mask, alpha=alpha, beta=beta)
    nll, _, metrics = _dar_fit(logp, logits, mask, weight_clip)
    return nll, metrics


def at_dar_loss(logp: Tensor, score: Tensor, mask: Tensor, logp_old: Tensor, logp_ref: Tensor, alpha: Tensor, beta: Tensor, *,
                epsilon_alpha: float, epsilon_beta: float, weight_clip: float, baseline: Baseline, advantage_norm: AdvNorm,
                dual_over: Over) -> tuple[Tensor, Metrics]:
    """AT-DAR: DAR's weighted regression with detached (α, β) plus their dual (`[EM-LLM] §10`, "Novel instantiations"):

        L(α, β) = α ε_α + β ε_β + (α+β) · E_x log (1/K) Σ_k exp( (α (log π_ref − log π_t) + Â) / (α+β) ),

    whose gradients are ∂L/∂α = ε_α − KL̂(q‖π_ref) and ∂L/∂β = ε_β − KL̂(q‖π_t).

    Args: as `dar_loss`, with `alpha`, `beta` scalar tensors (softplus'd duals, the only path of their
        gradient is the dual), budgets ε_α, ε_β, and `dual_over` ("context": Ẑ(x) per prompt; "batch").
    Returns: loss, metrics of `dar_loss` plus `dual/alpha`, `dual/beta`, `dual/temperature_loss`,
        `kl/q_ref`, `kl/q_t` (the sample KLs the budgets bound).
    Deviations: the dual uses the unclipped target (clipping is a property of the M-step estimator).
    """
    adv = advantages(score, mask, baseline=baseline, normalize=advantage_norm)
    logits = dar_logits(adv, logp_old, logp_ref, mask, alpha=alpha, beta=beta)
    nll, _, metrics = _dar_fit(logp, logits, mask, weight_clip)
    d = anchor_log_ratios([logp_ref, None], logp_old, mask)
    lam = torch.stack([alpha.reshape(()), beta.reshape(())])
    dual = multi_temperature_loss(adv, d, mask, lam, (epsilon_alpha, epsilon_beta), over=dual_over)
    kls = estep_kls(normalized_log_weights(logits, mask, over=dual_over), d, mask, dual_over)
    metrics.update({"dual/alpha": alpha.detach(), "dual/beta": beta.detach(), "dual/temperature_loss": dual.detach(),
                    "kl/q_ref": kls[0], "kl/q_t": kls[1]})
    return nll + dual, metrics


def dar_tr_loss(logp: Tensor, score: Tensor, mask: Tensor, logp_old: Tensor, logp_ref: Tensor, kl_old: Tensor, gamma: Tensor, *,
                alpha: float, beta: float, epsilon_m: float, weight_clip: float, baseline: Baseline,
                advantage_norm: AdvNorm) -> tuple[Tensor, Metrics]:
    """DAR-TR: `dar_loss` + γ(ε_M − sg[KL]) + sg[γ]·KL, KL = mean over contexts of KL(π_old‖π_θ) (`[EM-LLM] §10` eq. 26).

    Args: as `dar_loss`, plus `kl_old` [B] (differentiable), `gamma` scalar softplus'd dual, bound ε_M.
    Returns: loss, metrics of `dar_loss` plus `dual/gamma`, `kl/old`.
    Deviations: the paper names the M-step coefficient γ (eq. 26) and leaves ε_M open.
    """
    nll, metrics = dar_loss(logp, score, mask, logp_old, logp_ref, alpha=alpha, beta=beta, weight_clip=weight_clip,
                            baseline=baseline, advantage_norm=advantage_norm)
    tr, tm = masked_trust_region(kl_old, mask, gamma, epsilon_m, name="gamma")
    metrics.update({"dual/gamma": tm["dual/gamma"], "kl/old": tm["kl/gamma_trust_region"]})
    return nll + tr, metrics


def topk_dar_loss(logp: Tensor, score: Tensor, mask: Tensor, logp_old: Tensor, logp_ref: Tensor, *, alpha: float, beta: float,
                  weight_clip: float, baseline: Baseline, advantage_norm: AdvNorm, topk_frac: float, topk_over: Over,
                  topk_by: Literal["advantage", "log_weight"]) -> tuple[Tensor, Metrics]:
    """Top-k DAR: −(1/k) Σ_{i∈S} min(w_reg·w_adv, w_max) log π_θ, S the top-k samples (`[EM-LLM] §10`).

    Args: as `dar_loss`, plus topk_frac ρ, topk_over ("batch" | "context"), topk_by ("advantage" | "log_weight").
    Returns: loss, metrics of `dar_loss` plus `weights/kept_frac`.
    Deviations: advantages are normalised over all valid samples before the filter; the mean runs over the
        kept set (so the loss scale matches DAR's); ties go to the lower index.
    """
    adv = advantages(score, mask, baseline=baseline, normalize=advantage_norm)
    logits = dar_logits(adv, logp_old, logp_ref, mask, alpha=alpha, beta=beta)
    keep = top_k_mask(adv if topk_by == "advantage" else logits, mask, frac=topk_frac, over=topk_over)
    nll, _, metrics = _dar_fit(logp, logits, keep, weight_clip)
    metrics["weights/kept_frac"] = (keep.sum() / mask.sum().clamp_min(1.0)).detach()
    return nll, metrics


# ------------------------------------------------------------------------------------------------
# Adaptors
# ------------------------------------------------------------------------------------------------

DAR_NEEDS = Needs(min_samples=2, logp_old=True, logp_ref=True)


def _needs_for(cls, cfg: DARConfig) -> Needs:
    """With baseline="none" the score is already an advantage and one sample per context suffices
    (on-policy control, K = 1); the K-sample baseline needs K >= 2."""
    needs = cls.needs
    return needs if cfg.baseline == "context_mean" else dataclasses.replace(needs, min_samples=1)


def _common(c: DARConfig) -> dict:
    return dict(weight_clip=c.weight_clip, baseline=c.baseline, advantage_norm=c.advantage_norm)


@register
class DAR(Method):
    name = "dar"
    summary = "DAR: direct advantage regression, weights (π_ref/π_t)^{α/t} exp(Â/t) clipped at w_max, with fixed α and β."
    Config = DARConfig
    needs = DAR_NEEDS
    needs_for = classmethod(_needs_for)
    GEMPI: ClassVar[GEMPIConfig] = DARConfig().to_gempi()

    def loss(self, batch: Batch) -> tuple[Tensor, Metrics]:
        c = self.cfg
        return dar_loss(batch.logp, batch.score, batch.mask, batch.logp_old, batch.logp_ref, alpha=c.alpha, beta=c.beta, **_common(c))


@register
class ATDAR(Method):
    name = "at_dar"
    summary = "AT-DAR: DAR whose temperatures α and β are duals with KL budgets on KL(q‖π_ref) and KL(q‖π_t)."
    Config = ATDARConfig
    needs = DAR_NEEDS
    needs_for = classmethod(_needs_for)
    GEMPI: ClassVar[GEMPIConfig] = ATDARConfig().to_gempi()

    def __init__(self, cfg: ATDARConfig):
        super().__init__(cfg)
        self.alpha_raw = dual_parameter(cfg.alpha, DUAL_FLOOR)
        self.beta_raw = dual_parameter(cfg.beta, DUAL_FLOOR)

    def loss(self, batch: Batch) -> tuple[Tensor, Metrics]:
        c = self.cfg
        alpha, beta = F.softplus(self.alpha_raw) + DUAL_FLOOR, F.softplus(self.beta_raw) + DUAL_FLOOR
        return at_dar_loss(batch.logp, batch.score, batch.mask, batch.logp_old, batch.logp_ref, alpha, beta,
                           epsilon_alpha=c.epsilon_alpha, epsilon_beta=c.epsilon_beta, dual_over=c.dual_over, **_common(c))


@register
class DARTR(Method):
    name = "dar_tr"
    summary = "DAR-TR: DAR plus a Lagrangian trust region KL(π_old‖π_θ) ≤ ε_M on the M-step."
    Config = DARTRConfig
    needs = Needs(min_samples=2, logp_old=True, logp_ref=True, kl_old=True)
    needs_for = classmethod(_needs_for)
    GEMPI: ClassVar[GEMPIConfig] = DARTRConfig().to_gempi()

    def __init__(self, cfg: DARTRConfig):
        super().__init__(cfg)
        self.gamma_raw = dual_parameter(cfg.gamma, DUAL_FLOOR)

    def loss(self, batch: Batch) -> tuple[Tensor, Metrics]:
        c = self.cfg
        gamma = F.softplus(self.gamma_raw) + DUAL_FLOOR
        return dar_tr_loss(batch.logp, batch.score, batch.mask, batch.logp_old, batch.logp_ref, batch.kl_old, gamma,
                           alpha=c.alpha, beta=c.beta, epsilon_m=c.epsilon_m, **_common(c))


@register
class TopKDAR(Method):
    name = "topk_dar"
    summary = "Top-k DAR: DAR's weights kept only on the top-k samples (by advantage by default), the others 0."
    Config = TopKDARConfig
    needs = DAR_NEEDS
    needs_for = classmethod(_needs_for)
    GEMPI: ClassVar[GEMPIConfig] = TopKDARConfig().to_gempi()

    def loss(self, batch: Batch) -> tuple[Tensor, Metrics]:
        c = self.cfg
        return topk_dar_loss(batch.logp, batch.score, batch.mask, batch.logp_old, batch.logp_ref, alpha=c.alpha, beta=c.beta,
                             topk_frac=c.topk_frac, topk_over=c.topk_over, topk_by=c.topk_by, **_common(c))
