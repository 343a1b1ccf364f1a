"""ReMax: REINFORCE whose baseline is the reward of the greedy output.

Source: Li et al. 2023 ("ReMax: A Simple, Effective, and Efficient Reinforcement Learning Method for
Aligning Large Language Models") Algorithm 1; `[GRO] §2.1` eq. 12:

    A_k = r(x, y_k) − r(x, ȳ),     ȳ = the greedy (argmax-decoded) output for x
    ∇L  = −mean_k A_k ∇ log π_θ(y_k|x)

The task supplies r(x, ȳ) in `Batch.baseline` ([B]); K ≥ 1 samples per context share it.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from algorithms.base import Batch, Method, Metrics, Needs, register
from algorithms.ppo import _zero_masked, reduce_tokens


@dataclass(frozen=True)
class ReMaxConfig:
    """ReMax has no hyperparameter of its own (the learning rate belongs to the loop)."""


def remax_loss(logp: Tensor, score: Tensor, mask: Tensor, baseline: Tensor) -> tuple[Tensor, Metrics]:
    """−mean over valid samples of (r_k − r(ȳ)) · log π_θ(y_k|x) (Li et al. 2023, Algorithm 1).

    Args:
        logp: [B, K] summed log π_θ(y|x), differentiable.
        score: [B, K] rewards of the sampled outputs.
        mask: [B, K] float {0,1}.
        baseline: [B] reward of each context's greedy output.
    Returns: loss, metrics `policy/advantage_mean`, `policy/reward`, `policy/reward_greedy`.
    Deviations: no KL-penalised reward (the greedy output's KL is not in `Batch`); ReMax's experiments
    that add one would need it in both r and the baseline.
    """
    adv = _zero_masked(score.detach() - baseline.detach()[:, None], mask)
    loss = reduce_tokens((-adv * logp)[..., None], mask[..., None], "sequence_sum")
    n = mask.sum().clamp_min(1.0)
    return loss, {
        "policy/advantage_mean": _zero_masked(adv, mask).sum() / n,
        "policy/reward": _zero_masked(score.detach(), mask).sum() / n,
        "policy/reward_greedy": baseline.detach().mean(),
    }


@register
class ReMax(Method):
    name = "remax"
    Config = ReMaxConfig
    needs = Needs(baseline=True)

    def loss(self, batch: Batch) -> tuple[Tensor, Metrics]:
        if batch.baseline is None:
            raise ValueError("remax needs batch.baseline, the reward of each context's greedy output")
        return remax_loss(batch.logp, batch.score, batch.mask, batch.baseline)
