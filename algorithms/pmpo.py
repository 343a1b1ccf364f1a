"""PMPO: preference-based MPO, learning from accepted and/or rejected samples.

Source: `[PMPO] §3.3 eq. 10` (derivation §3.1–3.2, App. A–B):

    J_ar(π_θ; x) = α E_{y∈D_a}[log π_θ(y|x)] − (1−α) E_{y∈D_r}[log π_θ(y|x)] − β KL(π_ref ‖ π_θ; x)

and the loss is −J averaged over contexts. α = 1, β = 0: accept-only (weighted MLE on preferred
samples, eq. 6); α = 0: reject-only (regularised minimum likelihood, eq. 9), which needs β high enough
to keep the policy near the reference (the paper: β > 1 − α); paper defaults α = 0.5, β = 0.5 (§5).
The KL is in closed form (App. B).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from algorithms.base import Batch, Method, Metrics, Needs, register
from algorithms.common import masked_mean
from algorithms.config import check_positive, check_range, field


@dataclass(frozen=True)
class PMPOConfig:
    alpha: float = field(0.5, "trade-off α between accept (α) and reject (1−α) terms; paper: 1 / 0.5 / 0 for A / AR / R")
    beta: float = field(0.5, "weight β of KL(π_ref‖π_θ); paper: 0 (A), 0.5 (AR), 2 (R)")

    def __post_init__(self):
        check_range(self, "alpha", 0.0, 1.0)
        check_positive(self, "beta", strict=False)


def pmpo_loss(logp: Tensor, label: Tensor, kl_ref: Tensor, *, alpha: float, beta: float) -> tuple[Tensor, Metrics]:
    """−J_ar of `[PMPO] §3.3 eq. 10`.

    Args:
        logp: [B, K] log π_θ(y|x), differentiable.
        label: [B, K] +1 accepted, −1 rejected, 0 neither (padding or unlabelled).
        kl_ref: [B] closed-form KL(π_ref(·|x) ‖ π_θ(·|x)), differentiable.
        alpha, beta: see `PMPOConfig`.

    Each expectation is the mean over that context's accepted (rejected) samples; a context with an
    empty set contributes 0 to that term (finite, never NaN).

    Returns: loss, metrics `policy/logp_accept`, `policy/logp_reject`, `kl/ref`.
    Deviations: none.
    """
    accept, reject = (label > 0).to(logp.dtype), (label < 0).to(logp.dtype)
    logp_a = masked_mean(logp, accept, dim=-1)
    logp_r = masked_mean(logp, reject, dim=-1)
    kl = kl_ref.mean()
    loss = (-alpha * logp_a + (1.0 - alpha) * logp_r).mean() + beta * kl
    metrics = {
        "policy/logp_accept": masked_mean(logp.detach(), accept),
        "policy/logp_reject": masked_mean(logp.detach(), reject),
        "kl/ref": kl.detach(),
    }
    return loss, metrics


@register
class PMPO(Method):
    name = "pmpo"
    Config = PMPOConfig
    needs = Needs(labels=True, kl_ref=True)

    def loss(self, batch: Batch) -> tuple[Tensor, Metrics]:
        return pmpo_loss(batch.logp, batch.label * batch.mask, batch.kl_ref, alpha=self.cfg.alpha, beta=self.cfg.beta)
