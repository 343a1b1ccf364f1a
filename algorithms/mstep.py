"""The M-step core: weighted maximum likelihood with optional KL terms.

Source: `[EM-LLM] §10` (GEMPI, general M-step) and V-MPO
(`[EM-SFT] §6`; Song et al. 2019 eq. 5): maximise Σ w log π_θ(y|x) with either
a fixed KL penalty or a KL trust region enforced by a Lagrange multiplier α with the stop-gradient
decomposition
    L(θ, α) = α·sg[ε − KL]  +  sg[α]·KL,
so the policy sees a penalty of strength α and α rises while KL > ε and falls while KL < ε.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from algorithms.common import masked_mean

Reduction = Literal["mean_contexts", "sum"]


def weighted_nll(logp: Tensor, log_w: Tensor, reduction: Reduction = "mean_contexts") -> Tensor:
    """−Σ_k w_k log π_θ(y_k|x): the weighted maximum-likelihood loss on given weights.

    Args:
        logp: [B, K] log π_θ, differentiable.
        log_w: [B, K] normalised log-weights (detached); -inf entries contribute nothing.
        reduction: "mean_contexts" when weights sum to 1 in each context (MPO-style: the loss is the
            mean over contexts with any weight); "sum" when they sum to 1 over the batch (V-MPO).
    """
    w = log_w.detach().exp()
    term = torch.where(w > 0, w * logp, torch.zeros_like(logp))
    if reduction == "sum":
        return -term.sum()
    has = (w.sum(-1) > 0).to(logp.dtype)
    return -(term.sum(-1) * has).sum() / has.sum().clamp_min(1.0)


def kl_penalty(kl: Tensor, coef: float, context_mask: Tensor | None = None) -> Tensor:
    """coef · mean KL over contexts ([B] -> scalar)."""
    mask = torch.ones_like(kl) if context_mask is None else context_mask
    return coef * masked_mean(kl, mask)


def kl_trust_region(kl: Tensor, alpha: Tensor, epsilon: float, context_mask: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Lagrangian KL trust region with the stop-gradient decomposition (V-MPO eq. 5).

    Args:
        kl: [B] KL(π_old‖π_θ) (or to the target/reference), differentiable in θ.
        alpha: scalar Lagrange multiplier > 0 (softplus of a raw dual).
        epsilon: the trust-region bound ε_α.
        context_mask: [B] float {0,1}: contexts that count in the mean (padding excluded); None = all.

    Returns: (loss, metrics) with loss = sg[α]·mean KL + α·(ε − sg[mean KL]).
    """
    mean_kl = kl.mean() if context_mask is None else masked_mean(kl, context_mask)
    loss = alpha.detach() * mean_kl + alpha * (epsilon - mean_kl.detach())
    return loss, {"dual/alpha": alpha.detach(), "kl/trust_region": mean_kl.detach()}
