"""Shared kernels, written and tested once: masked reductions, top-k masks, log-space weights, ESS, KLs.

Shapes: `B` contexts, `K` samples per context, `A` action dimensions.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

NEG_INF = float("-inf")
Over = Literal["context", "batch"]


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of `x` over entries where `mask` is 1; 0 (not NaN) where the mask is empty."""
    total = (x * mask).sum() if dim is None else (x * mask).sum(dim)
    count = mask.sum() if dim is None else mask.sum(dim)
    return total / count.clamp_min(1.0)


def top_k_mask(score: Tensor, mask: Tensor, k: int | None = None, frac: float | None = None, over: Over = "context") -> Tensor:
    """Float {0,1} mask of the k highest scores among valid samples, per context or over the whole batch.

    Exactly one of `k` (a count) or `frac` (k = floor(frac · n_valid), at least 1, as V-MPO's top half)
    is given. Ties are broken by position (the lower index wins), deterministically.
    """
    if (k is None) == (frac is None):
        raise ValueError("give exactly one of k or frac")
    flat = score.reshape(1, -1) if over == "batch" else score
    fmask = mask.reshape(1, -1) if over == "batch" else mask
    n_valid = fmask.sum(-1, keepdim=True)
    kk = torch.full_like(n_valid, float(k)) if k is not None else torch.floor(frac * n_valid).clamp_min(1.0)
    kk = torch.minimum(kk, n_valid)
    masked = torch.where(fmask > 0, flat, torch.full_like(flat, NEG_INF))
    # rank by score (descending), stable so the lower index wins ties
    order = torch.sort(masked, dim=-1, descending=True, stable=True).indices
    ranks = order.argsort(dim=-1)  # the inverse permutation; unlike an in-place scatter it has a vmap batching rule
    keep = (ranks.to(flat.dtype) < kk).to(flat.dtype) * fmask
    return keep.reshape(score.shape)


def normalized_log_weights(logits: Tensor, mask: Tensor, over: Over = "context") -> Tensor:
    """log softmax of `logits` over valid entries, per context ([B, K] -> rows sum to 1) or over the batch.

    Masked entries get -inf; a context with no valid entry gets all -inf (weights 0), never NaN.
    """
    masked = torch.where(mask > 0, logits, torch.full_like(logits, NEG_INF))
    if over == "batch":
        lse = torch.logsumexp(masked.reshape(-1), 0)
    else:
        lse = torch.logsumexp(masked, -1, keepdim=True)
    lse = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    return masked - lse


def effective_sample_size(log_w: Tensor, over: Over = "context") -> Tensor:
    """Kish ESS 1/Σ w² of normalised weights, per context ([B]) or for the whole batch (scalar)."""
    w = log_w.exp()
    sq = (w * w).sum() if over == "batch" else (w * w).sum(-1)
    return 1.0 / sq.clamp_min(1e-30)


def kl_diag_gaussian(mu_p: Tensor, log_std_p: Tensor, mu_q: Tensor, log_std_q: Tensor) -> Tensor:
    """KL(N(mu_p, σ_p²) ‖ N(mu_q, σ_q²)) for diagonal Gaussians, summed over the last dim [..., A] -> [...].

    Per dimension: log σ_q/σ_p + (σ_p² + (mu_p − mu_q)²) / (2σ_q²) − 1/2.
    """
    var_p, var_q = (2 * log_std_p).exp(), (2 * log_std_q).exp()
    per_dim = log_std_q - log_std_p + (var_p + (mu_p - mu_q) ** 2) / (2 * var_q) - 0.5
    return per_dim.sum(-1)


def diag_gaussian_logp(y: Tensor, mu: Tensor, log_std: Tensor) -> Tensor:
    """log N(y; mu, diag σ²) summed over the last dim [..., A] -> [...]."""
    z = (y - mu) * torch.exp(-log_std)
    return (-0.5 * z * z - log_std - 0.5 * torch.log(torch.tensor(2 * torch.pi, dtype=y.dtype, device=y.device))).sum(-1)


def kl_categorical(logits_p: Tensor, logits_q: Tensor) -> Tensor:
    """KL(Cat(p) ‖ Cat(q)) over the last dim [..., C] -> [...], from unnormalised logits."""
    return kl_categorical_logprobs(torch.log_softmax(logits_p, -1), torch.log_softmax(logits_q, -1))


def kl_categorical_logprobs(logp: Tensor, logq: Tensor) -> Tensor:
    """KL(Cat(p) ‖ Cat(q)) = Σ_c p_c (log p_c − log q_c) over the last dim [..., C] -> [...], from normalised
    log-probabilities."""
    return (logp.exp() * (logp - logq)).sum(-1)


def kl_k1(logp: Tensor, logp_ref: Tensor) -> Tensor:
    """Per-sample k1 estimate of KL(π ‖ π_ref) from samples of π: log π − log π_ref (unbiased, high variance)."""
    return logp - logp_ref


def kl_k3(logp: Tensor, logp_ref: Tensor) -> Tensor:
    """Per-sample k3 estimate of KL(π ‖ π_ref) from samples of π: r − 1 − log r with r = π_ref/π (≥ 0, unbiased)."""
    log_r = logp_ref - logp
    return log_r.exp() - 1.0 - log_r
