"""The E-step core: from scores (and anchors) to per-sample weights in log space.

Source: `[EM-LLM] §10` (GEMPI): the non-parametric target
    q*(y|x) ∝ Π_j π_j(y|x)^{λ_j/Λ} · exp(A(x,y)/Λ)
is represented on samples y ~ π_sample by self-normalised importance weights
    w ∝ exp(A/η + log_prior),    log_prior = Σ_j (λ_j/Λ) log π_j(y|x) − log π_sample(y|x),
optionally restricted to a top-k subset (V-MPO, `[EM-SFT] §6`). With a single
anchor equal to the sampling policy (MPO, V-MPO) `log_prior` is zero.

The temperature η is fixed, or adapted by minimising the dual of the KL-constrained E-step
(MPO: Abdolmaleki et al. 2018 eq. 9; V-MPO: Song et al. 2019 eq. 4; `[EM-SFT] §6`):
    L(η) = η ε + η log( (1/n) Σ_{valid} exp(A/η) ),
written with log-sum-exp so it stays finite for |A|/η up to 1e4.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from algorithms.common import Over, effective_sample_size, normalized_log_weights, top_k_mask


def temperature_loss(score: Tensor, mask: Tensor, eta: Tensor, epsilon: float, over: Over = "context") -> Tensor:
    """Dual loss L(η) = η ε + η log mean_{valid} exp(A/η), differentiable in η only (scores detached).

    Args:
        score: [B, K] advantages/scores (detached inside).
        mask: [B, K] float {0,1}; the set the mean runs over (valid ∧ top-k).
        eta: scalar tensor > 0 (e.g. softplus of a raw dual).
        epsilon: KL bound ε_η of the E-step.
        over: "context": the mean runs over each context's K samples and the losses are averaged over
            contexts with at least one sample (MPO); "batch": one mean over every valid sample (V-MPO).
    """
    a = score.detach()
    masked = torch.where(mask > 0, a / eta, torch.full_like(a, float("-inf")))
    if over == "batch":
        n = mask.sum()
        lse = torch.logsumexp(masked.reshape(-1), 0)
        # an empty batch leaves only η ε (never −inf)
        return eta * epsilon + eta * torch.where(n > 0, lse - torch.log(n.clamp_min(1.0)), torch.zeros_like(lse))
    n = mask.sum(-1)
    has = (n > 0).to(a.dtype)
    lse = torch.logsumexp(masked, -1)
    per_ctx = torch.where(n > 0, lse - torch.log(n.clamp_min(1.0)), torch.zeros_like(lse))
    return eta * epsilon + eta * (per_ctx * has).sum() / has.sum().clamp_min(1.0)


def estep(
    score: Tensor,
    mask: Tensor,
    eta: Tensor,
    *,
    over: Over = "context",
    topk_frac: float | None = None,
    log_prior: Tensor | None = None,
    epsilon: float | None = None,
) -> tuple[Tensor, Tensor | None, dict[str, Tensor]]:
    """Normalised log-weights of the E-step target on samples, and the temperature's dual loss.

    Args:
        score: [B, K] advantages or scores A (higher is better); treated as constants.
        mask: [B, K] float {0,1} valid samples.
        eta: scalar temperature > 0 (a tensor; a dual's softplus for the adaptive case).
        over: normalise per context ("context": MPO's softmax over K actions of a state) or over the
            whole batch ("batch": V-MPO's softmax over the top-k of all samples).
        topk_frac: keep only the top floor(frac·n) scores (V-MPO k = N/2) within the same normaliser; None keeps all.
        log_prior: [B, K] extra log-weight Σ_j (λ_j/Λ) log π_j − log π_sample (GEMPI anchors), or None.
        epsilon: E-step KL bound ε_η; when given, also return the dual loss L(η) on the kept set.

    Returns:
        log_w: [B, K] detached log-weights, normalised over `over`; -inf on dropped samples.
        eta_loss: scalar L(η) (gradient only to η) or None when `epsilon` is None.
        metrics: `weights/ess` (mean ESS per normaliser), `weights/ess_frac` (ESS / kept count),
            `weights/max` (largest weight), `dual/eta`.
    """
    keep = mask if topk_frac is None else top_k_mask(score.detach(), mask, frac=topk_frac, over=over)
    logits = score.detach() / eta.detach()
    if log_prior is not None:
        logits = logits + log_prior.detach()
    log_w = normalized_log_weights(logits, keep, over=over)
    eta_loss = None if epsilon is None else temperature_loss(score, keep, eta, epsilon, over=over)
    ess = effective_sample_size(log_w, over=over)
    kept = keep.sum() if over == "batch" else keep.sum(-1)
    metrics = {
        "weights/ess": ess.mean().detach(),
        "weights/ess_frac": (ess / kept.clamp_min(1.0)).mean().detach(),
        "weights/max": log_w.exp().max().detach(),
        "dual/eta": eta.detach(),
    }
    return log_w, eta_loss, metrics


def kl_to_uniform(log_w: Tensor, keep: Tensor, over: Over = "context") -> Tensor:
    """KL(p ‖ uniform on the kept samples) = Σ p (log p + log n) of normalised log-weights, per normaliser ([B] per
    context, a scalar over the batch); 0 for a normaliser with nothing kept. Detached: a diagnostic and a dual's target."""
    lw = log_w.detach()
    p = lw.exp()
    if over == "batch":
        n = keep.sum().clamp_min(1.0)
        return torch.where(p > 0, p * (lw + torch.log(n)), torch.zeros_like(p)).sum()
    n = keep.sum(-1)
    return torch.where(p > 0, p * (lw + torch.log(n.clamp_min(1.0))[:, None]), torch.zeros_like(p)).sum(-1)


def weights_kl(log_w: Tensor, keep: Tensor) -> Tensor:
    """Mean over contexts with a kept sample of KL(w ‖ uniform on the kept samples): the E-step's KL to the sampling
    distribution on its samples, the quantity ε_η bounds (MPO, per context)."""
    has = (keep.sum(-1) > 0).to(log_w.dtype)
    return (kl_to_uniform(log_w, keep) * has).sum() / has.sum().clamp_min(1.0)


def solve_eta(score: Tensor, mask: Tensor, epsilon: float, *, lo: float = 1e-6, hi: float = 1e12, iters: int = 64) -> Tensor:
    """The temperature that minimises the dual L(η) on this batch (per context, MPO): the η at which the weights'
    KL to uniform, mean over contexts, equals ε (L'(η) = ε − KL(η), and KL falls as η grows).

    Bisection in log η, a fixed number of halvings and no data-dependent branch, so it runs under `vmap` (the bandit
    loop's seeds): 64 halvings of [1e-6, 1e12] leave a bracket 41.4/2^64 wide in log η. Where even η = lo keeps the KL
    below ε (all scores equal) it returns lo's side; where η = hi still exceeds it, hi. Detached scalar.
    """
    a = score.detach()
    log_lo = torch.full((), math.log(lo), dtype=a.dtype, device=a.device)
    log_hi = torch.full((), math.log(hi), dtype=a.dtype, device=a.device)
    for _ in range(iters):
        mid = 0.5 * (log_lo + log_hi)
        kl = weights_kl(normalized_log_weights(a / mid.exp(), mask), mask)
        too_greedy = kl > epsilon  # η too small: raise the lower end
        log_lo, log_hi = torch.where(too_greedy, mid, log_lo), torch.where(too_greedy, log_hi, mid)
    return (0.5 * (log_lo + log_hi)).exp()


def log_uniform_prior(n: int) -> float:
    """log(1/n): the weight each of n samples gets when the temperature is infinite."""
    return -math.log(n)
