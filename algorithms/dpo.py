"""DPO on the best and worst of K scored samples.

Source: Rafailov et al. 2023 eq. 7; `[EM-LLM] §5`; as a baseline in
`[PMPO] §5.1–5.2` ("uses the best and worst action samples among the 4"):

    L = −E log σ( β [ (log π_θ(y_w) − log π_ref(y_w)) − (log π_θ(y_l) − log π_ref(y_l)) ] )

`log π` is the summed sequence log-probability (TRL convention); the token-averaged IPO variant lives
in its own file. A context whose best and worst scores tie states no preference: its pair contributes zero loss and
zero gradient, and the mean still runs over every context (the gradient of GRO's DPO instance, whose tied context pairs
a sample with itself, `[GRO]`; T11). Deviation: none on untied data; the papers do not say what to do with ties.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from algorithms.base import Batch, Method, Metrics, Needs, register
from algorithms.config import check_positive, field


@dataclass(frozen=True)
class DPOConfig:
    beta: float = field(0.1, "inverse temperature β of the implicit reward; TRL default 0.1, PMPO's Gaussian control: 20")

    def __post_init__(self):
        check_positive(self, "beta")


def dpo_loss(logp_w: Tensor, logp_l: Tensor, logp_ref_w: Tensor, logp_ref_l: Tensor, *, beta: float,
             valid: Tensor | None = None) -> tuple[Tensor, Metrics]:
    """−log σ(β(Δ_w − Δ_l)), Δ = log π_θ − log π_ref, averaged over pairs; a pair with `valid` False (a tie, no
    preference) contributes 0.

    Args: all [P] per pair (chosen w, rejected l); `logp_*` differentiable, `logp_ref_*` detached; `valid` [P]
    bool, False for a pair without a preference (a tie).
    Returns: loss, metrics `policy/margin` (mean β(Δ_w − Δ_l)) and `policy/accuracy` (fraction with margin > 0), both
    over the valid pairs.
    Deviations: none.
    """
    margin = beta * ((logp_w - logp_ref_w.detach()) - (logp_l - logp_ref_l.detach()))
    weight = torch.ones_like(margin) if valid is None else valid.to(margin.dtype)
    n = weight.sum().clamp_min(1.0)
    loss = (F.softplus(-margin) * weight).mean()  # softplus(−m) = −log σ(m), several times faster on CPU
    return loss, {"policy/margin": (margin.detach() * weight).sum() / n,
                  "policy/accuracy": ((margin.detach() > 0).to(margin.dtype) * weight).sum() / n}


def best_worst(score: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Indices [B] of the highest- and lowest-scoring valid sample of each context (ties: lower index)."""
    hi = torch.where(mask > 0, score, torch.full_like(score, float("-inf")))
    lo = torch.where(mask > 0, score, torch.full_like(score, float("inf")))
    return hi.argmax(-1), lo.argmin(-1)


@register
class DPO(Method):
    name = "dpo"
    Config = DPOConfig
    needs = Needs(min_samples=2, logp_ref=True)

    def loss(self, batch: Batch) -> tuple[Tensor, Metrics]:
        w, l = best_worst(batch.score, batch.mask)
        pick = lambda x, i: x.gather(-1, i[:, None])[:, 0]  # noqa: E731
        untied = pick(batch.score, w) > pick(batch.score, l)
        loss, metrics = dpo_loss(pick(batch.logp, w), pick(batch.logp, l), pick(batch.logp_ref, w),
                                 pick(batch.logp_ref, l), beta=self.cfg.beta, valid=untied)
        return loss, {**metrics, "pairs/tied": 1.0 - untied.float().mean()}
