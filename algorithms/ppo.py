"""PPO: the clipped-ratio policy loss, the clipped value loss and the entropy bonus.

Source: Schulman et al. 2017 eq. 7 and 9; `[EM-LLM] §4`:

    L^CLIP(θ) = E[ min( r A, clip(r, 1−ε, 1+ε) A ) ],   r = π_θ(a|s) / π_old(a|s)
    L(θ, φ)   = −L^CLIP + c_1 L^VF − c_2 E[ S(π_θ(·|s)) ]

Per-token ratio r_t = exp(ℓ_θ,t − ℓ_old,t), or the sequence-level ratio of `[EM-LLM] §4` ("Sequence-Level
PPO (LLM Case)") r_seq = exp(Σ_t (ℓ_θ,t − ℓ_old,t)), one term per sequence. Reference settings
(docs/reference-settings.md, CleanRL `ppo_continuous_action`): ε = 0.2, the value clipped with the same ε, c_1 = 0.5,
c_2 = 0, advantages normalised per minibatch.

This file also holds the two kernels GRPO and REINFORCE++ reuse: `reduce_tokens` (the loss
normalisation libraries disagree on, always an explicit argument) and `clipped_surrogate`.
Shapes: `B` sequences (or transitions), optionally `K` samples per context, `T` tokens: [B, T] or
[B, K, T]; a transition of control RL is a sequence of one token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from algorithms.advantages import batch_zscore
from algorithms.base import Batch, Method, Metrics, Needs, register
from algorithms.common import kl_k3
from algorithms.config import check_choices, check_positive, check_range, field

Reduction = Literal["token_mean", "sequence_mean", "sequence_sum", "context_sum"]
RatioLevel = Literal["token", "sequence"]
AdvantageNorm = Literal["none", "batch"]


def _zero_masked(x: Tensor, mask: Tensor) -> Tensor:
    """x where mask is 1, exactly 0 elsewhere (padding may hold garbage; its gradient is 0)."""
    return torch.where(mask > 0, x, torch.zeros_like(x))


def reduce_tokens(x: Tensor, mask: Tensor, reduction: Reduction) -> Tensor:
    """A scalar from per-token terms; padding (mask 0) never counts.

    Args:
        x, mask: [B, K, T] or [B, T] (read as K = 1); mask float {0,1}.
        reduction:
            "token_mean"    Σ x / Σ mask over the batch: every token weighs the same (PPO for LMs in TRL
                            and OpenRLHF, DAPO, TRL's current GRPO default);
            "sequence_mean" mean over valid sequences of each sequence's token mean (GRPO paper eq. 3,
                            Shao et al. 2024: 1/G Σ_i 1/|o_i| Σ_t);
            "sequence_sum"  mean over valid sequences of each sequence's token sum (REINFORCE on the
                            summed log-probability; RLOO, ReMax, KTO's mean over examples);
            "context_sum"   mean over valid contexts of the sum over their sequences and tokens (DPO,
                            CPL: a context is one preference pair).
    """
    if x.dim() == 2:
        x, mask = x[:, None], mask[:, None]
    xm = _zero_masked(x, mask)
    if reduction == "token_mean":
        return xm.sum() / mask.sum().clamp_min(1.0)
    n_tok = mask.sum(-1)
    seq_valid = (n_tok > 0).to(x.dtype)
    seq_sum = xm.sum(-1)
    if reduction == "sequence_mean":
        return (seq_sum / n_tok.clamp_min(1.0)).sum() / seq_valid.sum().clamp_min(1.0)
    if reduction == "sequence_sum":
        return seq_sum.sum() / seq_valid.sum().clamp_min(1.0)
    if reduction == "context_sum":
        ctx_valid = (seq_valid.sum(-1) > 0).to(x.dtype)
        return seq_sum.sum() / ctx_valid.sum().clamp_min(1.0)
    raise ValueError(f"unknown reduction {reduction!r}; allowed: token_mean, sequence_mean, sequence_sum, context_sum")


def clipped_surrogate(logp: Tensor, logp_old: Tensor, advantage: Tensor, mask: Tensor, *, clip_eps: float,
                      ratio_level: RatioLevel) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-term −min(r A, clip(r, 1−ε, 1+ε) A) and what it was computed from.

    Args:
        logp: [..., T] per-token log π_θ, differentiable.
        logp_old: [..., T] per-token log π_old (detached inside).
        advantage: [..., T] per token, or [...] one per sequence (broadcast over its tokens); detached.
        mask: [..., T] float {0,1}.
        clip_eps: ε.
        ratio_level: "token" (a ratio and a term per token) or "sequence" (r_seq = exp Σ_t (ℓ − ℓ_old),
            one term per sequence, returned with T = 1; needs a per-sequence advantage).

    Returns: (loss_terms, term_mask, ratio, log_ratio), all [..., T] (or [..., 1] for "sequence");
    ratio and log_ratio are differentiable.
    """
    per_sequence_adv = advantage.shape == logp.shape[:-1]
    adv = advantage.detach()[..., None] if per_sequence_adv else advantage.detach()
    log_ratio = _zero_masked(logp - logp_old.detach(), mask)
    term_mask = mask
    if ratio_level == "sequence":
        if not per_sequence_adv:
            raise ValueError(f"a sequence-level ratio needs one advantage per sequence (shape {tuple(logp.shape[:-1])}); "
                             f"got {tuple(advantage.shape)}")
        log_ratio = log_ratio.sum(-1, keepdim=True)
        term_mask = (mask.sum(-1, keepdim=True) > 0).to(logp.dtype)
    elif ratio_level != "token":
        raise ValueError(f"unknown ratio_level {ratio_level!r}; allowed: token, sequence")
    adv = _zero_masked(adv.expand_as(log_ratio), term_mask)
    ratio = log_ratio.exp()
    terms = -torch.minimum(ratio * adv, ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * adv)
    return terms, term_mask, ratio, log_ratio


def ratio_metrics(ratio: Tensor, log_ratio: Tensor, mask: Tensor, clip_eps: float) -> Metrics:
    """`ratio/clipfrac` (share of terms with |r − 1| > ε, as CleanRL), `ratio/mean`, `ratio/std`, and
    `kl/old`: the k3 estimate of KL(π_old ‖ π_θ) from samples of π_old, mean of (r − 1) − log r."""
    r, lr = ratio.detach(), log_ratio.detach()
    n = mask.sum().clamp_min(1.0)
    mean = _zero_masked(r, mask).sum() / n
    var = _zero_masked((r - mean) ** 2, mask).sum() / n
    clipped = ((r - 1.0).abs() > clip_eps).to(r.dtype)
    return {
        "ratio/clipfrac": _zero_masked(clipped, mask).sum() / n,
        "ratio/mean": mean,
        "ratio/std": var.sqrt(),
        # kl_k3(logp_old, logp) = r − 1 − log r depends on the log-ratio only
        "kl/old": _zero_masked(kl_k3(torch.zeros_like(lr), lr), mask).sum() / n,
    }


def ppo_policy_loss(logp: Tensor, logp_old: Tensor, advantage: Tensor, mask: Tensor, *, clip_eps: float,
                    ratio_level: RatioLevel, reduction: Reduction) -> tuple[Tensor, Metrics]:
    """−L^CLIP (Schulman et al. 2017 eq. 7), reduced over terms by `reduction`.

    Args: see `clipped_surrogate`; reduction: see `reduce_tokens` (with ratio_level "sequence" each
    sequence is one term, so token_mean, sequence_mean and sequence_sum coincide).
    Returns: loss, metrics `policy/loss`, `ratio/clipfrac`, `ratio/mean`, `ratio/std`, `kl/old`.
    Deviations: none.
    """
    terms, term_mask, ratio, log_ratio = clipped_surrogate(logp, logp_old, advantage, mask, clip_eps=clip_eps,
                                                           ratio_level=ratio_level)
    loss = reduce_tokens(terms, term_mask, reduction)
    metrics = {"policy/loss": loss.detach(), **ratio_metrics(ratio, log_ratio, term_mask, clip_eps)}
    return loss, metrics


def ppo_value_loss(value: Tensor, value_old: Tensor | None, value_target: Tensor, mask: Tensor, *,
                   clip_eps: float | None) -> tuple[Tensor, Metrics]:
    """½ E[max((V − R)², (V_clip − R)²)], V_clip = V_old + clip(V − V_old, −ε, ε) (CleanRL `clip_vloss`).

    Args:
        value: [...] V_φ(s), differentiable; value_old: [...] at sampling time; value_target: [...] R
            (GAE λ-returns); mask: [...] float {0,1}. Any shape, all the same.
        clip_eps: ε of the value clip (needs value_old); None: plain ½ E[(V − R)²].
    Returns: loss, metrics `value/loss`, `value/clipfrac` (share where the clipped error is the larger).
    Deviations: none.
    """
    n = mask.sum().clamp_min(1.0)
    v, target = _zero_masked(value, mask), _zero_masked(value_target.detach(), mask)
    err = (v - target) ** 2
    if clip_eps is None:
        per, active = err, torch.zeros_like(err)
    else:
        if value_old is None:
            raise ValueError("ppo_value_loss: value clipping needs value_old (the critic's prediction at sampling time)")
        v_old = _zero_masked(value_old.detach(), mask)
        err_clipped = (v_old + (v - v_old).clamp(-clip_eps, clip_eps) - target) ** 2
        per, active = torch.maximum(err, err_clipped), (err_clipped > err).to(err.dtype)
    loss = 0.5 * _zero_masked(per, mask).sum() / n
    return loss, {"value/loss": loss.detach(), "value/clipfrac": _zero_masked(active, mask).sum() / n}


def ppo_loss(logp: Tensor, logp_old: Tensor, advantage: Tensor, mask: Tensor, *, clip_eps: float,
             ratio_level: RatioLevel, reduction: Reduction, advantage_norm: AdvantageNorm,
             value: Tensor | None = None, value_old: Tensor | None = None, value_target: Tensor | None = None,
             value_mask: Tensor | None = None, value_clip: float | None = None, vf_coef: float = 0.0,
             entropy: Tensor | None = None, ent_coef: float = 0.0) -> tuple[Tensor, Metrics]:
    """−L^CLIP + c_1 L^VF − c_2 S: the full PPO loss (`[EM-LLM] §4` "Full Objective").

    Args:
        logp, logp_old, mask: [B, T] or [B, K, T] per-token log-probs (current differentiable, old
            detached) and mask; a control transition is T = 1.
        advantage: per token (same shape as logp) or per sequence (logp's shape without T); detached.
        clip_eps, ratio_level, reduction: see `ppo_policy_loss`.
        advantage_norm: "none", or "batch": (A − mean)/(std + 1e-8) over the valid terms of this
            (mini)batch, as CleanRL's `norm_adv`.
        value, value_old, value_target, value_mask: [...] critic tensors (one shape); value None: no
            value term. value_clip: ε of the value clip or None; vf_coef: c_1.
        entropy: per-token entropy S(π_θ(·|s)) (logp's shape), differentiable, or None; ent_coef: c_2
            (needs entropy when > 0), reduced like the policy term.
    Returns: loss, metrics: those of `ppo_policy_loss` and `ppo_value_loss`, `policy/entropy`,
    `policy/advantage_mean`, `policy/advantage_std` (after normalisation).
    Deviations: none.
    """
    adv = advantage.detach()
    adv_mask = mask if adv.shape == mask.shape else (mask.sum(-1) > 0).to(mask.dtype)
    if advantage_norm == "batch":
        adv = batch_zscore(adv, adv_mask)
    elif advantage_norm != "none":
        raise ValueError(f"unknown advantage_norm {advantage_norm!r}; allowed: none, batch")
    loss, metrics = ppo_policy_loss(logp, logp_old, adv, mask, clip_eps=clip_eps, ratio_level=ratio_level,
                                    reduction=reduction)
    n_adv = adv_mask.sum().clamp_min(1.0)
    adv_mean = _zero_masked(adv, adv_mask).sum() / n_adv
    metrics["policy/advantage_mean"] = adv_mean
    metrics["policy/advantage_std"] = (_zero_masked((adv - adv_mean) ** 2, adv_mask).sum() / n_adv).sqrt()
    if value is not None:
        vmask = value_mask if value_mask is not None else torch.ones_like(value)
        v_loss, v_metrics = ppo_value_loss(value, value_old, value_target, vmask, clip_eps=value_clip)
        loss = loss + vf_coef * v_loss
        metrics.update(v_metrics)
    elif vf_coef > 0:
        raise ValueError("ppo_loss: vf_coef > 0 needs value, value_old and value_target")
    if entropy is not None:
        ent = reduce_tokens(entropy, mask, reduction)
        loss = loss - ent_coef * ent
        metrics["policy/entropy"] = ent.detach()
    elif ent_coef > 0:
        raise ValueError("ppo_loss: ent_coef > 0 needs the per-token entropy of π_θ")
    return loss, metrics


@dataclass(frozen=True)
class PPOConfig:
    clip_eps: float = field(0.2, "clip ε of the ratio (and of the value when value_clip is set); CleanRL/PPO paper: 0.2")
    ratio_level: RatioLevel = field("token", "ratio per token (PPO) or per sequence (`[EM-LLM] §4` sequence-level PPO)")
    reduction: Reduction = field("token_mean", "how per-token terms become the loss (see reduce_tokens)")
    advantage_norm: AdvantageNorm = field("batch", "advantage normalisation per minibatch; CleanRL norm_adv=True: batch")
    value_clip: float | None = field(0.2, "value-clip ε (None: no value clipping); CleanRL clips with clip_coef 0.2")
    vf_coef: float = field(0.5, "value-loss coefficient c_1; CleanRL: 0.5")
    ent_coef: float = field(0.0, "entropy-bonus coefficient c_2; CleanRL continuous control: 0")

    def __post_init__(self):
        check_choices(self)
        check_range(self, "clip_eps", 0.0, 1.0, lo_open=True, hi_open=True)
        check_positive(self, "value_clip")
        check_positive(self, "vf_coef", "ent_coef", strict=False)


@register
class PPO(Method):
    """PPO on a `Batch` whose `score` holds the advantages (the loop computes them, e.g. with `gae`).

    Each of the K samples of a context is one action (T = 1) unless the task sets the batch's token-level fields
    (LM RLHF): then `ratio_level` picks a ratio per token or one per sequence, and `score` (with the critic's
    tensors) is either per sequence [B, K] or per token [B, K, T]. With ent_coef > 0 it needs `Batch.entropy` and
    refuses a batch without it.
    """

    name = "ppo"
    Config = PPOConfig
    needs = Needs(logp_old=True, values=True)

    def loss(self, batch: Batch) -> tuple[Tensor, Metrics]:
        c = self.cfg
        logp, logp_old, _, mask = batch.tokens()
        entropy = batch.entropy
        if entropy is not None and entropy.shape != logp.shape:
            entropy = entropy[..., None]
        value_mask = mask if batch.value is not None and batch.value.shape == mask.shape else batch.mask
        return ppo_loss(logp, logp_old, batch.score, mask, clip_eps=c.clip_eps, ratio_level=c.ratio_level,
                        reduction=c.reduction, advantage_norm=c.advantage_norm, value=batch.value,
                        value_old=batch.value_old, value_target=batch.value_target, value_mask=value_mask,
                        value_clip=c.value_clip, vf_coef=c.vf_coef, entropy=entropy, ent_coef=c.ent_coef)
