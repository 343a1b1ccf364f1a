"""CPL: contrastive preference learning, a Bradley–Terry likelihood on discounted sums of α·log π.

Source: Hejna et al. 2023 ("Contrastive Preference Learning: Learning from Human Feedback without RL"),
the CPL objective with its conservative bias λ on the rejected segment, as in the reference code's
`biased_bce_with_logits`; `[GRO] §2.2` eq. 18–20:

    m = α Σ_t γ^t log π_θ(a_t⁺|s_t⁺) − λ · α Σ_t γ^t log π_θ(a_t⁻|s_t⁻)
    L = −E log σ(m)

For LM samples γ = 1, so the sums are the summed sequence log-probs `logp`. There is no reference
policy: with π_ref uniform, DPO's margin reduces to CPL's with λ = 1 and α = β (`[GRO] §2.2` eq. 21–22).
λ < 1 weighs the rejected segment less: the loss is then strictly better for solutions that put high
likelihood on the (in-distribution) chosen data than for ones that only push the rejected data down.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from algorithms.base import Batch, Method, Metrics, Needs, register
from algorithms.config import check_positive, check_range, field
from algorithms.dpo import best_worst


@dataclass(frozen=True)
class CPLConfig:
    alpha: float = field(0.1, "temperature α on log π; 0.1 = DPO's β (CPL ≡ DPO with uniform π_ref, `[GRO] §2.2`); CPL code's class default 1.0")
    bias: float = field(0.5, "conservative bias λ on the rejected sample's term, in (0, 1]; CPL's configs use 0.5 (and 0.75)")

    def __post_init__(self):
        check_positive(self, "alpha")
        check_range(self, "bias", 0.0, 1.0, lo_open=True)


def cpl_loss(logp_w: Tensor, logp_l: Tensor, *, alpha: float, bias: float) -> tuple[Tensor, Metrics]:
    """−log σ(α log π_θ(y_w) − λ α log π_θ(y_l)), averaged over pairs (Hejna et al. 2023, biased CPL).

    Args: logp_w, logp_l: [P] summed log-probs of the chosen and rejected sample of each pair,
    differentiable; alpha: α; bias: λ.
    Returns: loss, metrics `policy/margin` (mean m), `policy/accuracy` (share with
    log π(y_w) > log π(y_l), the unbiased comparison).
    Deviations: segments are whole samples with γ = 1 (the paper discounts within a segment of control
    steps); no BC regulariser (the paper's "CPL (BC)" variant).
    """
    margin = alpha * logp_w - bias * alpha * logp_l
    # −log σ(m) = softplus(−m): the same value and gradient; F.logsigmoid's CPU kernel costs ~10 ms per
    # call on this suite's 2-core machines, softplus ~0.3 ms
    loss = F.softplus(-margin).mean()
    return loss, {"policy/margin": margin.detach().mean(),
                  "policy/accuracy": (logp_w.detach() > logp_l.detach()).to(logp_w.dtype).mean()}


@register
class CPL(Method):
    """CPL on the best and worst of K scored samples (as `dpo`)."""

    name = "cpl"
    Config = CPLConfig
    needs = Needs(min_samples=2)

    def loss(self, batch: Batch) -> tuple[Tensor, Metrics]:
        w, l = best_worst(batch.score, batch.mask)
        pick = lambda x, i: x.gather(-1, i[:, None])[:, 0]  # noqa: E731
        return cpl_loss(pick(batch.logp, w), pick(batch.logp, l), alpha=self.cfg.alpha, bias=self.cfg.bias)
