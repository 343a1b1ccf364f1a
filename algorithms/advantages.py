"""Advantage and return estimators shared by the policy-gradient losses, written and tested once.

Shapes (STYLE): `B` rows (environments or contexts), `T` time steps (or tokens), `K` samples per
context. Time is the LAST dimension everywhere here ([B, T]); a sample-per-context tensor is [B, K].

- `reverse_linear_scan`: x_t = b_t + a_t x_{t+1} along the last dim, vectorised over time with a
  parallel (Hillis–Steele) scan: log2(T) tensor operations instead of a Python loop over T.
- `gae`: generalised advantage estimation (Schulman et al. 2016; `[EM-LLM] §4`)
  with termination and truncation kept apart: truncation (a time limit) bootstraps from the value of
  the next observation, termination does not. CleanRL's `ppo_continuous_action` treats both as
  termination; docs/reference-settings.md asks for the bootstrap on truncation.
- `unroll_returns`: V-MPO's n-step targets that bootstrap at the end of the unroll
  (`[EM-LLM] §3`, `[EM-SFT] §6`; Song et al. 2019).
- `leave_one_out_advantage` (RLOO), `group_zscore` (GRPO), `batch_zscore` (CleanRL's minibatch
  advantage normalisation) and `whiten` (OpenRLHF's REINFORCE++ batch whitening): the per-context and
  per-batch normalisations the methods disagree on, each named after its convention.

All functions are differentiable-agnostic (callers detach) and free of data-dependent Python control
flow, so they run under `torch.func.vmap`; a requirement on K is checked on shapes, not on values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def reverse_linear_scan(b: Tensor, a: Tensor) -> Tensor:
    """Solve x_t = b_t + a_t · x_{t+1} with x_T = 0 along the last dim ([..., T] -> [..., T]).

    Vectorised over time: the recurrence is a composition of affine maps x ↦ b_t + a_t x, which is
    associative, so an inclusive Hillis–Steele scan over the time-reversed sequence needs ⌈log2 T⌉
    rounds of whole-tensor operations. Equal to the Python loop up to float rounding (tested).
    """
    x, c = b.flip(-1), a.flip(-1)  # reversed: y_t = x_t + c_t · y_{t-1}, y_{-1} = 0
    n, d = x.shape[-1], 1
    while d < n:
        x_prev = F.pad(x[..., :-d], (d, 0))  # element t-d (0 before the start: y_{-1} = 0)
        c_prev = F.pad(c[..., :-d], (d, 0))  # its multiplier (irrelevant once the span reaches the start)
        x = x + c * x_prev
        c = c * c_prev
        d *= 2
    return x.flip(-1)


def gae(reward: Tensor, value: Tensor, next_value: Tensor, terminated: Tensor, truncated: Tensor, *, gamma: float,
        lam: float) -> tuple[Tensor, Tensor]:
    """GAE(γ, λ) advantages and λ-returns over an unroll, bootstrapping at its end.

        δ_t = r_t + γ (1 − term_t) V(s'_t) − V(s_t)
        A_t = δ_t + γ λ (1 − term_t)(1 − trunc_t) A_{t+1},   A_T = 0

    where s'_t is the observation that followed action a_t: for a truncated step it is the final
    observation of the cut episode (not the reset one), so a time limit bootstraps from its value while
    a termination does not; either one stops the sum from running into the next episode.

    Args:
        reward: [B, T] r_t.
        value: [B, T] V(s_t).
        next_value: [B, T] V(s'_t): value[:, t+1] inside an episode, the final observation's value at a
            truncation, anything at a termination (multiplied by 0), V(s_T) at the end of the unroll.
        terminated: [B, T] float {0,1}: the episode ended in a terminal state after step t.
        truncated: [B, T] float {0,1}: the episode was cut (time limit) after step t; a step flagged
            both counts as terminated.
        gamma, lam: discount γ and GAE λ (CleanRL: 0.99, 0.95).

    Returns: (advantage [B, T], return_ = advantage + value [B, T], the critic's target).
    """
    live = 1.0 - terminated
    delta = reward + gamma * live * next_value - value
    carry = gamma * lam * live * (1.0 - truncated)
    advantage = reverse_linear_scan(delta, carry)
    return advantage, advantage + value


def unroll_returns(reward: Tensor, next_value: Tensor, terminated: Tensor, truncated: Tensor, *, gamma: float) -> Tensor:
    """V-MPO's value targets: discounted rewards to the end of the unroll (or episode), then a bootstrap.

        G_t = r_t + γ (1 − term_t) · { V(s'_t)   if trunc_t or t = T−1
                                     { G_{t+1}   otherwise

    i.e. G_t = Σ_{k=t}^{e−1} γ^{k−t} r_k + γ^{e−t} V(s_e), with e the end of the unroll or the
    truncation, and no bootstrap after a termination (`[EM-LLM] §3`: n-step
    targets G^(n); V-MPO bootstraps at the end of the unroll, so n shrinks towards the unroll's end).
    Equal to the λ = 1 returns of `gae` (tested).

    Args: as `gae` ([B, T] each). Returns: G [B, T].
    """
    last = F.pad(torch.zeros_like(truncated[..., 1:]), (0, 1), value=1.0)  # 1 at t = T−1
    boot = torch.maximum(truncated, last)
    live = 1.0 - terminated
    b = reward + gamma * live * boot * next_value
    a = gamma * live * (1.0 - boot)
    return reverse_linear_scan(b, a)


def discounted_returns(reward: Tensor, mask: Tensor, *, gamma: float) -> Tensor:
    """G_t = Σ_{s≥t} γ^{s−t} mask_s r_s along the last dim ([..., T]); masked steps add nothing.

    Used for token-level returns in a sequence (REINFORCE++: γ = 1, padding masked out).
    """
    r = torch.where(mask > 0, reward, torch.zeros_like(reward))
    return reverse_linear_scan(r, torch.full_like(r, gamma))


def _require_samples(score: Tensor, what: str) -> None:
    if score.shape[-1] < 2:
        raise ValueError(f"{what} needs K >= 2 samples per context; got K = {score.shape[-1]} (score shape {tuple(score.shape)}).")


def leave_one_out_advantage(score: Tensor, mask: Tensor) -> Tensor:
    """RLOO advantage: score minus the mean score of the context's OTHER valid samples.

        A_k = r_k − (1/(n−1)) Σ_{j≠k} r_j = n/(n−1) · (r_k − mean_j r_j)

    Source: Kool et al. 2019 (the K-sample leave-one-out baseline); Ahmadian et al. 2024 ("Back to
    Basics", RLOO); `[GRO] §2.1` eq. 10.

    Args: score, mask: [B, K] (valid samples 1). Returns: A [B, K], 0 on masked samples and in a context
    with fewer than 2 valid samples (no baseline exists there).
    Raises: ValueError if K < 2 (checked on the shape).
    """
    _require_samples(score, "the leave-one-out baseline")
    r = torch.where(mask > 0, score, torch.zeros_like(score))
    n = mask.sum(-1, keepdim=True)
    others = (r.sum(-1, keepdim=True) - r) / (n - 1.0).clamp_min(1.0)
    return torch.where((mask > 0) & (n >= 2), r - others, torch.zeros_like(r))


def group_zscore(score: Tensor, mask: Tensor, eps: float = 1e-4) -> Tensor:
    """GRPO advantage: z-score within the context's group, (r − mean) / (std + eps), unbiased std.

    Source: Shao et al. 2024 (DeepSeekMath) §4.1.2 "outcome supervision"; the unbiased std (torch.std)
    and eps = 1e-4 follow TRL's GRPOTrainer (docs/reference-settings.md).

    Args: score, mask: [B, K]; eps added to the std. Returns: [B, K], 0 on masked samples and in a
    context with fewer than 2 valid samples; a group with equal scores gets 0 (finite).
    Raises: ValueError if K < 2 (checked on the shape).
    """
    _require_samples(score, "the group z-score")
    r = torch.where(mask > 0, score, torch.zeros_like(score))
    n = mask.sum(-1, keepdim=True)
    mean = r.sum(-1, keepdim=True) / n.clamp_min(1.0)
    dev = torch.where(mask > 0, r - mean, torch.zeros_like(r))
    std = ((dev * dev).sum(-1, keepdim=True) / (n - 1.0).clamp_min(1.0)).sqrt()
    return torch.where((mask > 0) & (n >= 2), dev / (std + eps), torch.zeros_like(r))


def batch_zscore(x: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """(x − mean) / (std + eps) over every valid entry of the batch, unbiased std.

    CleanRL's PPO minibatch advantage normalisation (`norm_adv`, eps 1e-8) and TRL's RLOO
    `normalize_advantage`. Masked entries return 0. Any shape.
    """
    n = mask.sum()
    xm = torch.where(mask > 0, x, torch.zeros_like(x))
    mean = xm.sum() / n.clamp_min(1.0)
    dev = torch.where(mask > 0, x - mean, torch.zeros_like(x))
    std = ((dev * dev).sum() / (n - 1.0).clamp_min(1.0)).sqrt()
    return dev / (std + eps)


def whiten(x: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """(x − mean) · rsqrt(max(var, eps)) over every valid entry of the batch, population variance.

    OpenRLHF's advantage normalisation for REINFORCE++ (Hu 2025): mean and variance over all valid
    tokens of all sequences of the batch, variance clamped at 1e-8. Masked entries return 0. Any shape.
    """
    n = mask.sum()
    xm = torch.where(mask > 0, x, torch.zeros_like(x))
    mean = xm.sum() / n.clamp_min(1.0)
    dev = torch.where(mask > 0, x - mean, torch.zeros_like(x))
    var = (dev * dev).sum() / n.clamp_min(1.0)
    return dev * torch.rsqrt(var.clamp_min(eps))
