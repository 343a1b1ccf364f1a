"""RLOO: REINFORCE with a leave-one-out baseline over the K samples of each context.

Source: Ahmadian et al. 2024 ("Back to Basics: Revisiting REINFORCE Style Optimization for Learning
from Human Feedback in LLMs"), the RLOO estimator; `[GRO] §2.1` eq. 10:

    r'_k = r_k − β · k1_k,          k1_k = log π_old(y_k|x) − log π_ref(y_k|x)   (KL in the reward)
    A_k  = r'_k − 1/(K−1) Σ_{j≠k} r'_j
    ∇L   = −mean_k A_k ∇ log π_θ(y_k|x)        (summed sequence log-prob; no ratio, no clip)

The reward's KL term is the k1 estimate at sampling time (docs/reference-settings.md; TRL's RLOOTrainer), so it is a
constant of the update. On-policy, log π_old = log π_θ.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from algorithms.advantages import batch_zscore, leave_one_out_advantage
from algorithms.base import Batch, Method, Metrics, Needs, register
from algorithms.common import kl_k1
from algorithms.config import check_choices, check_positive, field
from algorithms.ppo import AdvantageNorm, _zero_masked, reduce_tokens


@dataclass(frozen=True)
class RLOOConfig:
    beta: float = field(0.05, "β of the k1 KL subtracted from the reward; TRL RLOO default 0.05")
    advantage_norm: AdvantageNorm = field("none", "normalise A over the batch after the baseline; paper: none (TRL option)")

    def __post_init__(self):
        check_choices(self)
        check_positive(self, "beta", strict=False)


def kl_penalised_reward(score: Tensor, logp_sample: Tensor, logp_ref: Tensor | None, beta: float) -> Tensor:
    """r − β (log π_sample − log π_ref), all detached; logp_ref may be None when β = 0."""
    if beta == 0.0:
        return score.detach()
    if logp_ref is None:
        raise ValueError("a KL-penalised reward (beta > 0) needs the reference log-probs logp_ref")
    return score.detach() - beta * kl_k1(logp_sample.detach(), logp_ref.detach())


def rloo_advantage(score: Tensor, mask: Tensor, logp_sample: Tensor, logp_ref: Tensor | None, *, beta: float,
                   advantage_norm: AdvantageNorm) -> Tensor:
    """A_k of RLOO ([B, K], detached): leave-one-out on the KL-penalised reward, then optional batch z-score."""
    adv = leave_one_out_advantage(kl_penalised_reward(score, logp_sample, logp_ref, beta), mask)
    if advantage_norm == "batch":
        adv = batch_zscore(adv, mask)
    elif advantage_norm != "none":
        raise ValueError(f"unknown advantage_norm {advantage_norm!r}; allowed: none, batch")
    return adv


def rloo_loss(logp: Tensor, score: Tensor, mask: Tensor, logp_ref: Tensor | None, *, beta: float,
              advantage_norm: AdvantageNorm, logp_old: Tensor | None = None) -> tuple[Tensor, Metrics]:
    """−mean over valid samples of A_k · log π_θ(y_k|x) (Ahmadian et al. 2024, RLOO).

    Args:
        logp: [B, K] summed log π_θ(y|x), differentiable.
        score: [B, K] rewards r_k.
        mask: [B, K] float {0,1} valid samples.
        logp_ref: [B, K] log π_ref (None allowed when beta = 0).
        beta: β of the k1 reward KL; advantage_norm: "none" (paper) or "batch".
        logp_old: [B, K] log π at sampling time for the reward's KL; None: sg[logp] (on-policy).
    Returns: loss, metrics `policy/advantage_std`, `policy/reward` (mean r), `kl/ref` (mean k1 at sampling).
    Raises: ValueError if K < 2.
    Deviations: none.
    """
    sample = logp.detach() if logp_old is None else logp_old
    adv = rloo_advantage(score, mask, sample, logp_ref, beta=beta, advantage_norm=advantage_norm)
    loss = reduce_tokens((-adv * logp)[..., None], mask[..., None], "sequence_sum")
    n = mask.sum().clamp_min(1.0)
    metrics = {
        "policy/advantage_std": (_zero_masked(adv * adv, mask).sum() / n).sqrt(),
        "policy/reward": _zero_masked(score.detach(), mask).sum() / n,
    }
    if logp_ref is not None:
        metrics["kl/ref"] = _zero_masked(kl_k1(sample.detach(), logp_ref.detach()), mask).sum() / n
    return loss, metrics


@register
class RLOO(Method):
    name = "rloo"
    Config = RLOOConfig
    needs = Needs(min_samples=2, logp_ref=True)

    def loss(self, batch: Batch) -> tuple[Tensor, Metrics]:
        return rloo_loss(batch.logp, batch.score, batch.mask, batch.logp_ref, beta=self.cfg.beta,
                         advantage_norm=self.cfg.advantage_norm, logp_old=batch.logp_old)
