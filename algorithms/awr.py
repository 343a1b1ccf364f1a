"""AWR: advantage-weighted regression, weights exp(A/β) clipped, unconstrained M-step.

Source: Peng et al. 2019 (arXiv:1910.00177) §3 and Alg. 1; `[EM-LLM] §6`
(derivation: π* ∝ μ exp(A/β), projected by weighted maximum likelihood) and §10 (GEMPI tuple: m = 1,
π_1 = π_t, λ_1 = β fixed, no filter, no M-step trust region):

    min_θ −(1/N) Σ_i min(exp(Â_i/β), w_max) log π_θ(a_i|s_i)

with Â the advantage (optionally normalised over the batch), β = 1.0 and w_max = 20 (docs/reference-settings.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from algorithms.base import Batch, Method, Metrics, Needs, register
from algorithms.config import check_choices, check_positive, field
from algorithms.gempi import AdvNorm, GEMPIConfig, advantages, clipped_mean_log_weights, weight_metrics
from algorithms.mstep import weighted_nll


@dataclass(frozen=True)
class AWRConfig:
    beta: float = field(1.0, "temperature β of exp(A/β); AWR paper / docs/reference-settings.md: 1.0 (on normalised advantages)")
    weight_clip: float = field(20.0, "clip w_max of the weights exp(A/β); AWR paper: 20")
    advantage_norm: AdvNorm = field(
        "batch", "advantage normalisation: 'none' or 'batch' ((A − mean)/(std + 1e-8), unbiased std, over valid samples)")

    def __post_init__(self):
        check_choices(self)
        check_positive(self, "beta", "weight_clip")

    def to_gempi(self) -> GEMPIConfig:
        return GEMPIConfig(anchors=("pi_t",), coefficients=(self.beta,), coefficient_names=("beta",), temperature="fixed",
                           normalize="none", weight_clip=self.weight_clip, advantage_norm=self.advantage_norm)


def awr_loss(logp: Tensor, advantage: Tensor, mask: Tensor, *, beta: float, weight_clip: float,
             advantage_norm: AdvNorm) -> tuple[Tensor, Metrics]:
    """−(1/N) Σ_valid min(exp(Â/β), w_max) log π_θ; weights detached.

    Args:
        logp: [B, K] log π_θ(a|s) of the behaviour samples, differentiable.
        advantage: [B, K] A = R − V(s) (treated as a constant).
        mask: [B, K] float {0,1} valid samples; N is their count.
        beta: temperature β > 0. weight_clip: w_max. advantage_norm: "none" or "batch".

    Returns: loss, metrics `policy/nll`, `weights/ess`, `weights/ess_frac`, `weights/max`, `weights/clipfrac`.
    Deviations: the loss is the mean over all valid samples of the batch (Peng et al. average over a
    sampled minibatch); the clip is applied in log space, min(A/β, log w_max), which is the same number.
    """
    adv = advantages(advantage, mask, baseline="none", normalize=advantage_norm)
    logits = adv / beta
    log_w = clipped_mean_log_weights(logits, mask, weight_clip)
    nll = weighted_nll(logp, log_w, reduction="sum")
    metrics = weight_metrics(log_w, logits, mask, weight_clip, "none")
    metrics["policy/nll"] = nll.detach()
    return nll, metrics


@register
class AWR(Method):
    name = "awr"
    Config = AWRConfig
    needs = Needs()
    GEMPI: ClassVar[GEMPIConfig] = AWRConfig().to_gempi()

    def loss(self, batch: Batch) -> tuple[Tensor, Metrics]:
        c = self.cfg
        return awr_loss(batch.logp, batch.score, batch.mask, beta=c.beta, weight_clip=c.weight_clip, advantage_norm=c.advantage_norm)
