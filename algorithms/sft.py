"""SFT as EM with a delta target: weighted maximum likelihood with uniform weights on demonstrations.

Source: `[EM-SFT] §6` ("E-step / M-step for SFT", eq. 2–3) and
`[EM-LLM] §10` ("Recovering existing methods": SFT is the GEMPI tuple with m = 0):

    E-step:  q(τ|x) = δ(τ = y)            M-step:  max_θ E_{(x,y)~D} log π_θ(y|x)

Written as the generic M-step (`mstep.weighted_nll`) with uniform weights, so claim L8 can check it
against plain cross-entropy training step for step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from algorithms.base import Batch, Method, Metrics, Needs, register
from algorithms.common import normalized_log_weights
from algorithms.config import check_choices, field
from algorithms.gempi import GEMPIConfig, clipped_mean_log_weights
from algorithms.mstep import weighted_nll

Reduction = Literal["sample_mean", "context_mean"]


@dataclass(frozen=True)
class SFTConfig:
    reduction: Reduction = field("sample_mean", "'sample_mean': every demonstration weighs 1/N (standard cross-entropy); "
                                                "'context_mean': 1/K_x within a context, contexts averaged")
    demonstrations: Literal["all", "accepted"] = field(
        "all", "which samples are demonstrations: all valid ones, or those labelled accepted (+1)")

    def __post_init__(self):
        check_choices(self)

    def to_gempi(self) -> GEMPIConfig:
        return GEMPIConfig(anchors=(), coefficients=(), coefficient_names=(), temperature="none", weight_clip=None,
                           normalize="none" if self.reduction == "sample_mean" else "context", advantage_norm="none")


def sft_loss(logp: Tensor, mask: Tensor, *, reduction: Reduction) -> tuple[Tensor, Metrics]:
    """−E_{demonstrations} log π_θ(y|x): weighted NLL with delta-target (uniform) weights.

    Args:
        logp: [B, K] log π_θ(y|x) of demonstrations (summed over tokens), differentiable.
        mask: [B, K] float {0,1}: which entries are demonstrations.
        reduction: "sample_mean" (−(1/N) Σ log π over all N demonstrations) or "context_mean"
            (−mean_x (1/K_x) Σ_k log π over contexts with at least one demonstration).

    Returns: loss, metrics `policy/nll`, `policy/logp` (mean log-prob of the demonstrations).
    Deviations: none (token-level averaging is the task's choice of `logp`).
    """
    if reduction == "sample_mean":
        log_w = clipped_mean_log_weights(torch.zeros_like(logp), mask, None)
        loss = weighted_nll(logp, log_w, reduction="sum")
    else:
        log_w = normalized_log_weights(torch.zeros_like(logp), mask, over="context")
        loss = weighted_nll(logp, log_w, reduction="mean_contexts")
    n = mask.sum().clamp_min(1.0)
    mean_logp = torch.where(mask > 0, logp.detach(), torch.zeros_like(logp)).sum() / n
    return loss, {"policy/nll": loss.detach(), "policy/logp": mean_logp}


@register
class SFT(Method):
    name = "sft"
    Config = SFTConfig
    needs = Needs()
    GEMPI: ClassVar[GEMPIConfig] = SFTConfig().to_gempi()

    def loss(self, batch: Batch) -> tuple[Tensor, Metrics]:
        mask = batch.mask
        if self.cfg.demonstrations == "accepted":
            if batch.label is None:
                raise ValueError("SFT with demonstrations='accepted' needs Batch.label")
            mask = mask * (batch.label > 0).to(mask.dtype)
        return sft_loss(batch.logp, mask, reduction=self.cfg.reduction)
