"""REINFORCE++: token-level KL-penalised returns, whitened over the whole batch, with PPO's clipped ratio.

Source: Hu 2025 ("REINFORCE++: A Simple and Efficient Approach for Aligning Large Language Models")
and OpenRLHF's implementation; `[GRO] §2.1` eq. 13:

    r_t = −β k1_t + [t = last token] · r(x, y),    k1_t = log π_old(y_t|·) − log π_ref(y_t|·)
    G_t = Σ_{s≥t} γ^{s−t} r_s                        (γ = 1)
    A_t = (G_t − mean) · rsqrt(max(var, 1e-8))      over every valid token of the batch (no critic,
                                                     no per-prompt baseline)
    L   = reduce_t −min(ρ_t A_t, clip(ρ_t, 1−ε, 1+ε) A_t)

The KL lives in the reward (per token, k1, at sampling time), not in the loss.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from algorithms.advantages import discounted_returns, whiten
from algorithms.base import Batch, Method, Metrics, Needs, register
from algorithms.config import check_choices, check_positive, check_range, field
from algorithms.ppo import Reduction, _zero_masked, clipped_surrogate, ratio_metrics, reduce_tokens


@dataclass(frozen=True)
class REINFORCEPPConfig:
    clip_eps: float = field(0.2, "clip ε of the per-token ratio; REINFORCE++/OpenRLHF: 0.2")
    beta: float = field(0.01, "β of the per-token k1 KL reward; OpenRLHF init_kl_coef default 0.01")
    gamma: float = field(1.0, "discount γ of the token returns; REINFORCE++: 1")
    reduction: Reduction = field("token_mean", "loss normalisation; OpenRLHF: token_mean")

    def __post_init__(self):
        check_choices(self)
        check_range(self, "clip_eps", 0.0, 1.0, lo_open=True, hi_open=True)
        check_positive(self, "beta", strict=False)
        check_range(self, "gamma", 0.0, 1.0)


def last_token(token_mask: Tensor) -> Tensor:
    """Float {0,1} [..., T]: 1 at each sequence's last valid token."""
    count = token_mask.cumsum(-1)
    return ((count == token_mask.sum(-1, keepdim=True)) & (token_mask > 0)).to(token_mask.dtype)


def reinforce_pp_advantages(score: Tensor, token_logp_old: Tensor, token_logp_ref: Tensor | None, token_mask: Tensor,
                            *, beta: float, gamma: float) -> Tensor:
    """Whitened token returns of REINFORCE++ ([B, K, T] or [B, T], detached).

    Args: score [B, K] (or [B]) sequence reward; token_logp_old, token_logp_ref, token_mask [..., T];
    token_logp_ref may be None when beta = 0.
    """
    reward = last_token(token_mask) * score.detach()[..., None]
    if beta > 0.0:
        if token_logp_ref is None:
            raise ValueError("reinforce_pp: beta > 0 needs token_logp_ref")
        k1 = _zero_masked(token_logp_old.detach() - token_logp_ref.detach(), token_mask)
        reward = reward - beta * k1
    returns = discounted_returns(reward, token_mask, gamma=gamma)
    return whiten(returns, token_mask)


def reinforce_pp_loss(token_logp: Tensor, token_logp_old: Tensor, token_logp_ref: Tensor | None, score: Tensor,
                      token_mask: Tensor, *, clip_eps: float, beta: float, gamma: float,
                      reduction: Reduction) -> tuple[Tensor, Metrics]:
    """REINFORCE++'s clipped loss on whitened token returns (Hu 2025).

    Args:
        token_logp: [B, K, T] (or [B, T]) per-token log π_θ, differentiable.
        token_logp_old: same shape, log π_old at sampling (the ratio's denominator and the KL reward's).
        token_logp_ref: same shape, log π_ref (None allowed when beta = 0).
        score: [B, K] (or [B]) sequence rewards, placed on each sequence's last valid token.
        token_mask: same shape as token_logp, float {0,1}.
        clip_eps, beta, gamma, reduction: see `REINFORCEPPConfig`.
    Returns: loss, metrics `policy/loss`, `policy/reward` (mean sequence reward), `kl/ref` (mean
    per-token k1 at sampling), `ratio/clipfrac`, `ratio/mean`, `ratio/std`, `kl/old`.
    Deviations: none.
    """
    adv = reinforce_pp_advantages(score, token_logp_old, token_logp_ref, token_mask, beta=beta, gamma=gamma)
    terms, term_mask, ratio, log_ratio = clipped_surrogate(token_logp, token_logp_old, adv, token_mask,
                                                           clip_eps=clip_eps, ratio_level="token")
    loss = reduce_tokens(terms, token_mask, reduction)
    n_tok = token_mask.sum().clamp_min(1.0)
    seq_valid = (token_mask.sum(-1) > 0).to(token_mask.dtype)
    metrics = {"policy/loss": loss.detach(), **ratio_metrics(ratio, log_ratio, term_mask, clip_eps),
               "policy/reward": _zero_masked(score.detach(), seq_valid).sum() / seq_valid.sum().clamp_min(1.0)}
    if token_logp_ref is not None:
        metrics["kl/ref"] = _zero_masked(token_logp_old.detach() - token_logp_ref.detach(), token_mask).sum() / n_tok
    return loss, metrics


@register
class REINFORCEPP(Method):
    """REINFORCE++ on a `Batch`: per token when the task sets token fields; otherwise each sample is one action
    (T = 1), so its return is r − β k1."""

    name = "reinforce_pp"
    Config = REINFORCEPPConfig
    needs = Needs(logp_old=True, logp_ref=True)

    def loss(self, batch: Batch) -> tuple[Tensor, Metrics]:
        c = self.cfg
        logp, logp_old, logp_ref, mask = batch.tokens()
        return reinforce_pp_loss(logp, logp_old, logp_ref, batch.score, mask, clip_eps=c.clip_eps, beta=c.beta,
                                 gamma=c.gamma, reduction=c.reduction)
