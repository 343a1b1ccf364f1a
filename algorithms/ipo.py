"""IPO: identity preference optimisation, a squared loss on the preference margin of log-ratios.

Source: Azar et al. 2023 ("A General Theoretical Paradigm to Understand Learning from Human
Preferences"), the sampled IPO loss with τ = β; TRL's `loss_type="ipo"`:

    h = [log π_θ(y_w) − log π_ref(y_w)] − [log π_θ(y_l) − log π_ref(y_l)]
    L = E[ (h − 1/(2β))² ]

The log-probabilities are token-averaged in TRL (docs/reference-settings.md); the original DPO/IPO code sums them. That
choice is the explicit `log_ratio` option ("token_mean" or "sum").

`[PMPO] App. E` splits β·L (up to a constant) into a policy term and a
regulariser: β·(h − 1/(2β))² = β h² − (log π_θ(y_w) − log π_θ(y_l)) + (log π_ref(y_w) − log π_ref(y_l))
+ 1/(4β). The regulariser h² (`ipo_regularizer`) is an unbiased estimate of
2·Var_{Y∼π_ref}[log π_θ(Y)/π_ref(Y)] when y_w, y_l are drawn independently from π_ref (claim T6).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from algorithms.base import Batch, Method, Metrics, Needs, register
from algorithms.config import check_choices, check_positive, field
from algorithms.dpo import best_worst

LogRatio = Literal["token_mean", "sum"]


@dataclass(frozen=True)
class IPOConfig:
    beta: float = field(0.1, "β (Azar et al.'s τ): the target margin is 1/(2β); TRL default 0.1")
    log_ratio: LogRatio = field("token_mean", "log-probs averaged over tokens (TRL's IPO) or summed (original DPO/IPO code)")

    def __post_init__(self):
        check_choices(self)
        check_positive(self, "beta")


def ipo_margin(logp_w: Tensor, logp_l: Tensor, logp_ref_w: Tensor, logp_ref_l: Tensor, *, log_ratio: LogRatio,
               length_w: Tensor | None = None, length_l: Tensor | None = None) -> Tensor:
    """h = Δ_w − Δ_l with Δ = log π_θ − log π_ref, summed or divided by the sequence's token count.

    Args: all [P] per pair; `logp_*` summed sequence log-probs (policy differentiable, reference
    detached inside); `length_*` [P] token counts (needed for log_ratio="token_mean").
    """
    delta_w, delta_l = logp_w - logp_ref_w.detach(), logp_l - logp_ref_l.detach()
    if log_ratio == "token_mean":
        if length_w is None or length_l is None:
            raise ValueError("ipo log_ratio='token_mean' needs the token counts length_w and length_l")
        delta_w, delta_l = delta_w / length_w.clamp_min(1.0), delta_l / length_l.clamp_min(1.0)
    elif log_ratio != "sum":
        raise ValueError(f"unknown log_ratio {log_ratio!r}; allowed: token_mean, sum")
    return delta_w - delta_l


def ipo_regularizer(logp_w: Tensor, logp_l: Tensor, logp_ref_w: Tensor, logp_ref_l: Tensor) -> Tensor:
    """h² per pair ([P]) on summed log-ratios: IPO's regulariser in `[PMPO] App. E` (claim T6)."""
    return ipo_margin(logp_w, logp_l, logp_ref_w, logp_ref_l, log_ratio="sum") ** 2


def ipo_loss(logp_w: Tensor, logp_l: Tensor, logp_ref_w: Tensor, logp_ref_l: Tensor, *, beta: float,
             log_ratio: LogRatio, length_w: Tensor | None = None, length_l: Tensor | None = None) -> tuple[Tensor, Metrics]:
    """mean over pairs of (h − 1/(2β))² (Azar et al. 2023, sampled IPO loss).

    Args: see `ipo_margin`; beta: β > 0.
    Returns: loss, metrics `policy/margin` (mean h), `policy/accuracy` (share with h > 0),
    `policy/regularizer` (mean h², App. E's regulariser on the same log-ratio convention).
    Deviations: none (TRL's convention by default; the summed one by option).
    """
    h = ipo_margin(logp_w, logp_l, logp_ref_w, logp_ref_l, log_ratio=log_ratio, length_w=length_w, length_l=length_l)
    loss = ((h - 1.0 / (2.0 * beta)) ** 2).mean()
    hd = h.detach()
    return loss, {"policy/margin": hd.mean(), "policy/accuracy": (hd > 0).to(hd.dtype).mean(),
                  "policy/regularizer": (hd * hd).mean()}


@register
class IPO(Method):
    """IPO on the best and worst of K scored samples (as `dpo`).

    `Batch` carries summed log-probs and no token counts: the adaptor reads `batch.length` ([B, K]) when
    a task sets it and otherwise treats every sample as one token (exact for bandits and control, where
    a sample is one action). LM tasks must provide lengths for log_ratio="token_mean".
    """

    name = "ipo"
    Config = IPOConfig
    needs = Needs(min_samples=2, logp_ref=True)

    def loss(self, batch: Batch) -> tuple[Tensor, Metrics]:
        w, l = best_worst(batch.score, batch.mask)
        pick = lambda x, i: x.gather(-1, i[:, None])[:, 0]  # noqa: E731
        length = getattr(batch, "length", None)
        if length is None:
            length = torch.ones_like(batch.logp)
        return ipo_loss(pick(batch.logp, w), pick(batch.logp, l), pick(batch.logp_ref, w), pick(batch.logp_ref, l),
                        beta=self.cfg.beta, log_ratio=self.cfg.log_ratio, length_w=pick(length, w),
                        length_l=pick(length, l))
