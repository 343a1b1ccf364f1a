"""KTO: Kahneman–Tversky optimisation on unpaired desirable / undesirable samples.

Source: Ethayarajh et al. 2024 ("KTO: Model Alignment as Prospect Theoretic Optimization"),
in TRL's `KTOTrainer.kto_loss` convention (docs/reference-settings.md):

    r(x, y) = log π_θ(y|x) − log π_ref(y|x)                       (summed sequence log-probs)
    z       = max(0, sg[ mean_{(x, y')} r(x, y') ])              over MISMATCHED pairs: y' answers
                                                                  another prompt of the batch
    L       = mean over labelled samples of  λ_D (1 − σ(β (r − z)))   (desirable)
                                         or  λ_U (1 − σ(β (z − r)))   (undesirable)

z is detached, batch-level and clamped at 0. `[GRO] §2.2` eq. 17 gives its
gradient, a REINFORCE-like term weighted by the derivative of the sigmoid (see `gro.kto_as_gro`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from algorithms.base import Batch, Method, Metrics, Needs, register
from algorithms.config import check_choices, check_positive, field

ReferencePoint = Literal["mismatched", "matched", "zero"]


@dataclass(frozen=True)
class KTOConfig:
    beta: float = field(0.1, "β of the implicit reward; TRL default 0.1")
    desirable_weight: float = field(1.0, "λ_D, weight of desirable samples; TRL default 1.0")
    undesirable_weight: float = field(1.0, "λ_U, weight of undesirable samples; TRL default 1.0")
    reference_point: ReferencePoint = field(
        "mismatched", "z from mismatched pairs (KTO paper, TRL), from the batch's own samples, or z = 0")

    def __post_init__(self):
        check_choices(self)
        check_positive(self, "beta")
        check_positive(self, "desirable_weight", "undesirable_weight")


def kto_reference_point(logp: Tensor, logp_ref: Tensor, mask: Tensor) -> Tensor:
    """z = max(0, mean over valid entries of sg[log π_θ] − log π_ref): a detached scalar.

    Args: logp, logp_ref, mask: same shape ([B, K] or [P]); with mismatched completions (TRL's "KL
    completions", y' from another prompt scored under this prompt) this is KTO's reference point.
    """
    r = torch.where(mask > 0, logp.detach() - logp_ref.detach(), torch.zeros_like(logp))
    return (r.sum() / mask.sum().clamp_min(1.0)).clamp_min(0.0)


def kto_loss(logp: Tensor, logp_ref: Tensor, label: Tensor, mask: Tensor, z: Tensor, *, beta: float,
             desirable_weight: float, undesirable_weight: float) -> tuple[Tensor, Metrics]:
    """TRL's KTO loss, averaged over labelled samples.

    Args:
        logp: [B, K] log π_θ(y|x) (summed over tokens), differentiable.
        logp_ref: [B, K] log π_ref(y|x), detached inside.
        label: [B, K] +1 desirable, −1 undesirable, 0 ignored.
        mask: [B, K] float {0,1} valid samples.
        z: scalar reference point (`kto_reference_point`), detached inside.
        beta, desirable_weight, undesirable_weight: β, λ_D, λ_U.
    Returns: loss, metrics `kl/ref` (z), `policy/reward_chosen`, `policy/reward_rejected` (mean β r of
    each set; 0 when empty).
    Deviations: none.
    """
    z = z.detach()
    valid = mask > 0
    chosen, rejected = (valid & (label > 0)).to(logp.dtype), (valid & (label < 0)).to(logp.dtype)
    r = torch.where(valid, logp - logp_ref.detach(), torch.zeros_like(logp))
    loss_c = 1.0 - torch.sigmoid(beta * (r - z))
    loss_r = 1.0 - torch.sigmoid(beta * (z - r))
    per = desirable_weight * chosen * loss_c + undesirable_weight * rejected * loss_r
    loss = per.sum() / (chosen + rejected).sum().clamp_min(1.0)
    rd = beta * r.detach()
    metrics = {
        "kl/ref": z,
        "policy/reward_chosen": (rd * chosen).sum() / chosen.sum().clamp_min(1.0),
        "policy/reward_rejected": (rd * rejected).sum() / rejected.sum().clamp_min(1.0),
    }
    return loss, metrics


def reference_point_from_batch(batch: Batch, how: ReferencePoint) -> Tensor:
    """KTO's z for a `Batch`. "mismatched" reads `batch.logp_mismatched` / `batch.logp_ref_mismatched`
    ([B, K]: log-probs of another context's completions scored under this context), which a task must
    set; "matched" uses the batch's own samples (biased: correlated with the samples it is compared to);
    "zero" is z = 0."""
    if how == "zero":
        return batch.logp.new_zeros(())
    if how == "matched":
        return kto_reference_point(batch.logp, batch.logp_ref, batch.mask)
    logp_mm, logp_ref_mm = getattr(batch, "logp_mismatched", None), getattr(batch, "logp_ref_mismatched", None)
    if logp_mm is None or logp_ref_mm is None:
        raise ValueError("KTO reference_point='mismatched' needs batch.logp_mismatched and batch.logp_ref_mismatched "
                         "(log-probs of another context's completions under this context); this batch has none. "
                         "Use reference_point='matched' or 'zero' for a task without them.")
    return kto_reference_point(logp_mm, logp_ref_mm, batch.mask)


@register
class KTO(Method):
    name = "kto"
    Config = KTOConfig
    needs = Needs(labels=True, logp_ref=True)

    def loss(self, batch: Batch) -> tuple[Tensor, Metrics]:
        c = self.cfg
        z = reference_point_from_batch(batch, c.reference_point)
        return kto_loss(batch.logp, batch.logp_ref, batch.label, batch.mask, z, beta=c.beta,
                        desirable_weight=c.desirable_weight, undesirable_weight=c.undesirable_weight)
