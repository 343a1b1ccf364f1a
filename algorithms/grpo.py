"""GRPO: PPO's clipped ratio with a group z-score advantage and a k3 KL to the reference in the loss.

Source: Shao et al. 2024 (DeepSeekMath) §4.1 eq. 3–4; `[GRO] §2.1` eq. 11.
For each context (prompt) a group of K outputs o_1..o_K with rewards r_k:

    A_k      = (r_k − mean(r)) / (std(r) + 1e-4)                     (unbiased std; TRL's eps)
    ℓ_{k,t}  = −min(ρ_{k,t} A_k, clip(ρ_{k,t}, 1−ε, 1+ε) A_k) + β D_{k,t},   ρ = π_θ/π_old per token
    D_{k,t}  = π_ref/π_θ − log(π_ref/π_θ) − 1                         (k3, the paper's eq. 4)
    L        = reduce(ℓ)       paper: 1/K Σ_k 1/|o_k| Σ_t ℓ_{k,t}   ("sequence_mean")

The loss normalisation is the explicit `reduction` (TRL has changed its default between
releases; "sequence_mean" is the paper's, "token_mean" DAPO's and TRL's later default).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from algorithms.advantages import group_zscore
from algorithms.base import Batch, Method, Metrics, Needs, register
from algorithms.common import kl_k3
from algorithms.config import check_choices, check_positive, check_range, field
from algorithms.ppo import Reduction, _zero_masked, clipped_surrogate, ratio_metrics, reduce_tokens


@dataclass(frozen=True)
class GRPOConfig:
    clip_eps: float = field(0.2, "clip ε of the per-token ratio; DeepSeekMath: 0.2")
    beta: float = field(0.04, "β of the k3 KL(π_θ‖π_ref) added to the loss; DeepSeekMath: 0.04")
    reduction: Reduction = field("sequence_mean", "loss normalisation; paper: sequence_mean (1/K Σ 1/|o| Σ_t)")
    std_eps: float = field(1e-4, "added to the group's unbiased std; TRL: 1e-4")

    def __post_init__(self):
        check_choices(self)
        check_range(self, "clip_eps", 0.0, 1.0, lo_open=True, hi_open=True)
        check_positive(self, "beta", strict=False)
        check_positive(self, "std_eps")


def token_kl_k3(token_logp: Tensor, token_logp_ref: Tensor, token_mask: Tensor) -> Tensor:
    """Per-token k3 estimate of KL(π_θ ‖ π_ref), differentiable in π_θ; 0 on padding."""
    logp = _zero_masked(token_logp, token_mask)
    ref = _zero_masked(token_logp_ref.detach(), token_mask)
    return _zero_masked(kl_k3(logp, ref), token_mask)


def grpo_loss(token_logp: Tensor, token_logp_old: Tensor, token_logp_ref: Tensor | None, score: Tensor,
              token_mask: Tensor, *, clip_eps: float, beta: float, reduction: Reduction,
              std_eps: float = 1e-4) -> tuple[Tensor, Metrics]:
    """GRPO's loss (Shao et al. 2024 eq. 3), reduced by `reduction`.

    Args:
        token_logp: [B, K, T] per-token log π_θ, differentiable.
        token_logp_old: [B, K, T] per-token log π_old (sampling policy), detached inside.
        token_logp_ref: [B, K, T] per-token log π_ref, detached; None allowed when beta = 0.
        score: [B, K] reward of each output (the group is the K outputs of a context).
        token_mask: [B, K, T] float {0,1}; a sample with no valid token is not in its group.
        clip_eps, beta, reduction, std_eps: see `GRPOConfig`.
    Returns: loss, metrics `policy/loss` (the clipped part), `policy/advantage_std`, `kl/ref` (mean
    per-token k3), `ratio/clipfrac`, `ratio/mean`, `ratio/std`, `kl/old`.
    Raises: ValueError if K < 2.
    Deviations: none.
    """
    seq_mask = (token_mask.sum(-1) > 0).to(token_logp.dtype)
    adv = group_zscore(score.detach(), seq_mask, eps=std_eps)
    terms, term_mask, ratio, log_ratio = clipped_surrogate(token_logp, token_logp_old, adv, token_mask,
                                                           clip_eps=clip_eps, ratio_level="token")
    pg = reduce_tokens(terms, token_mask, reduction)
    loss = pg
    metrics = {"policy/loss": pg.detach(), **ratio_metrics(ratio, log_ratio, term_mask, clip_eps),
               "policy/advantage_std": (_zero_masked(adv * adv, seq_mask).sum() / seq_mask.sum().clamp_min(1.0)).sqrt()}
    if beta > 0.0 or token_logp_ref is not None:
        if token_logp_ref is None:
            raise ValueError("grpo_loss: beta > 0 needs token_logp_ref")
        kl = token_kl_k3(token_logp, token_logp_ref, token_mask)
        loss = loss + beta * reduce_tokens(kl, token_mask, reduction)
        metrics["kl/ref"] = kl.detach().sum() / token_mask.sum().clamp_min(1.0)
    return loss, metrics


@register
class GRPO(Method):
    """GRPO on a `Batch`: the K samples of a context are its group; per token when the task sets token fields."""

    name = "grpo"
    Config = GRPOConfig
    needs = Needs(min_samples=2, logp_old=True, logp_ref=True)

    def loss(self, batch: Batch) -> tuple[Tensor, Metrics]:
        c = self.cfg
        logp, logp_old, logp_ref, mask = batch.tokens()
        return grpo_loss(logp, logp_old, logp_ref, batch.score, mask, clip_eps=c.clip_eps, beta=c.beta,
                         reduction=c.reduction, std_eps=c.std_eps)

