"""GEMPI: the generic EM policy-improvement loss (multi-anchor E-step, general M-step) and its tuple.

Source: `[EM-LLM] §10` (Generalized EM Policy Improvement). A method is the tuple

    G = ({D_j}, {π_j}, {λ_j}, T, F, D_M, ε_M),

and with every D_j = KL the E-step target is the multi-KL closed form (eq. 23)

    q*(y|x) ∝ Π_j π_j(y|x)^{λ_j/Λ} exp(A(x,y)/Λ),    Λ = Σ_j λ_j,

represented on samples y ~ π_t (the sampling policy, `Batch.logp_old`) by the log-weight (eq. 24 minus
log π_t, the importance correction of the "importance-weighted practical form")

    ℓ = Σ_j (λ_j/Λ) log π_j − log π_t + A/Λ  =  (A + Σ_j λ_j (log π_j − log π_t)) / Λ.

An anchor equal to π_t contributes nothing to the bracket. The temperature T is fixed, dual-adaptive
(the multi-temperature dual eq. 25, L = Σ_j λ_j ε_j + Λ log Ẑ) or closed-form (Λ solved on the batch so
that dL/dΛ = 0 at fixed ratios λ_j/Λ); the filter F is the identity or top-k (V-MPO,
`[EM-SFT] §6`); the weights are self-normalised per context or over the batch,
or left unnormalised and clipped (AWR's and DAR's practical form); the M-step (eq. 26) is weighted
NLL alone, with a KL penalty, or with a Lagrangian KL constraint (stop-gradient decomposition).

This module also holds the E-step pieces that the dedicated EM losses (sft, awr, vmpo, dar*, rlem)
share beyond `estep.py`: advantage preprocessing, the multi-anchor temperature dual, the exact
closed-form temperature, clipped mean weights, and a trust region over contexts that have samples.
`GEMPIConfig` describes a tuple; each EM method's config maps itself to one (`to_gempi()`), its Method
class carries the default as `GEMPI`, and `gempi_table()` renders the "Recovering existing methods"
table from those objects (claim T8).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from algorithms.advantages import batch_zscore
from algorithms.base import REGISTRY, Batch, Method, Metrics, Needs, dual_parameter, register
from algorithms.common import NEG_INF, Over, effective_sample_size, masked_mean, normalized_log_weights, top_k_mask
from algorithms.config import ConfigError, check_choices, check_positive, check_range, field, unknown
from algorithms.estep import kl_to_uniform
from algorithms.mstep import kl_penalty, kl_trust_region, weighted_nll

DUAL_FLOOR = 1e-8
"""Duals are softplus(raw) + DUAL_FLOOR (V-MPO: kept ≥ 1e-8)."""
ADV_EPS = 1e-8
"""Added to the standard deviation in batch advantage normalisation."""

Baseline = Literal["none", "context_mean"]
AdvNorm = Literal["none", "batch"]
Normalize = Literal["context", "batch", "none"]
Temperature = Literal["none", "fixed", "dual", "closed_form"]
ANCHORS = ("pi_t", "pi_ref")
ANCHOR_TEXT = {"pi_t": "π_t", "pi_ref": "π_ref"}


# ------------------------------------------------------------------------------------------------
# Shared E-step / M-step pieces
# ------------------------------------------------------------------------------------------------


def advantages(score: Tensor, mask: Tensor, *, baseline: Baseline, normalize: AdvNorm) -> Tensor:
    """Detached advantages from scores: optional per-context mean baseline, optional batch whitening.

    Args:
        score: [B, K] rewards or advantages; padding may hold any finite or non-finite value.
        mask: [B, K] float {0,1}.
        baseline: "none" (score is already an advantage) or "context_mean" (A = r − mean_k r, the
            K-sample Monte-Carlo estimate of V^{π_t}(x)).
        normalize: "none" or "batch": `advantages.batch_zscore`, (A − mean) / (std + 1e-8) over every valid
            sample of the batch with the unbiased std (DAR's "batch-level advantage normalisation", AWR's
            normalised advantages; CleanRL's convention, as PPO here).

    Returns: [B, K] detached, 0 on masked entries.
    """
    a = torch.where(mask > 0, score.detach(), torch.zeros_like(score))
    if baseline == "context_mean":
        a = a - masked_mean(a, mask, dim=-1)[..., None]
    if normalize == "batch":
        a = batch_zscore(a, mask, eps=ADV_EPS)
    return torch.where(mask > 0, a, torch.zeros_like(a))


def context_mask(mask: Tensor) -> Tensor:
    """[B] float: 1 for contexts with at least one valid sample."""
    return (mask.sum(-1) > 0).to(mask.dtype)


def masked_trust_region(kl: Tensor, mask: Tensor, alpha: Tensor, epsilon: float, name: str = "alpha") -> tuple[Tensor, Metrics]:
    """`mstep.kl_trust_region` over the contexts that have a valid sample (padding contexts drop out).

    Args:
        kl: [B] closed-form KL, differentiable in θ. mask: [B, K]. alpha: scalar multiplier > 0.
        epsilon: the bound. name: metric key suffix (`dual/<name>`, `kl/<name>_trust_region`).
    Returns: loss sg[α]·mean KL + α(ε − sg[mean KL]); 0 (with zero gradients) when no context has a sample.
    No data-dependent branch or indexing, so the loss traces into one graph under `torch.compile` (and vmap).
    """
    has = context_mask(mask)
    kl = torch.where(has > 0, kl, torch.zeros_like(kl))  # a padding context's KL may be garbage (even NaN): it never counts
    loss, m = kl_trust_region(kl, alpha, epsilon, context_mask=has)
    loss = torch.where(has.sum() > 0, loss, torch.zeros_like(loss))
    return loss, {f"dual/{name}": m["dual/alpha"], f"kl/{name}_trust_region": m["kl/trust_region"]}


def anchor_log_ratios(anchor_logp: Sequence[Tensor | None] | Tensor, logp_sample: Tensor | None, mask: Tensor) -> Tensor:
    """[M, B, K] detached d_j = log π_j − log π_t (0 for an anchor given as None, i.e. equal to π_t; 0 on padding)."""
    anchors = list(anchor_logp.unbind(0)) if isinstance(anchor_logp, Tensor) else list(anchor_logp)
    if not anchors:
        return mask.new_zeros((0, *mask.shape))
    out = []
    for a in anchors:
        if a is None:
            out.append(torch.zeros_like(mask))
            continue
        if logp_sample is None:
            raise ValueError("an anchor other than the sampling policy needs logp_sample (Batch.logp_old)")
        out.append(torch.where(mask > 0, a.detach() - logp_sample.detach(), torch.zeros_like(mask)))
    return torch.stack(out)


def _log_mean_exp(u: Tensor, keep: Tensor, over: Over) -> tuple[Tensor, Tensor]:
    """log mean_{keep} exp(u) per context ([B]) or over the batch ([1]); and which normalisers are non-empty."""
    masked = torch.where(keep > 0, u, torch.full_like(u, NEG_INF))
    if over == "batch":
        masked, n = masked.reshape(1, -1), keep.sum().reshape(1)
    else:
        n = keep.sum(-1)
    lme = torch.logsumexp(masked, -1) - torch.log(n.clamp_min(1.0))
    has = n > 0
    return torch.where(has, lme, torch.zeros_like(lme)), has.to(u.dtype)


def multi_temperature_loss(advantage: Tensor, log_ratios: Tensor, keep: Tensor, lambdas: Tensor, epsilons: Sequence[float], *,
                           over: Over) -> Tensor:
    """Multi-anchor temperature dual (`[EM-LLM] §10` eq. 25), differentiable in the λ_j only.

        L(λ) = Σ_j λ_j ε_j + Λ · E_x log (1/n) Σ_{y∈S(x)} exp( (A + Σ_j λ_j d_j) / Λ ),    Λ = Σ_j λ_j,

    where d_j = log π_j − log π_t and the inner mean is the sample estimate Ẑ(x) of the partition function
    (samples from π_t). With one anchor equal to π_t (d = 0) this is V-MPO's / MPO's L(η) = ηε + η log mean
    exp(A/η) (`estep.temperature_loss`). Its gradient is ∂L/∂λ_j = ε_j − KL̂(q‖π_j) with
    KL̂(q‖π_j) = KL(p‖uniform) − E_p[d_j], p the normalised weights: each dual rises while its KL is over budget.

    Args:
        advantage: [B, K] (detached inside). log_ratios: [M, B, K] d_j (detached inside).
        keep: [B, K] the set S the mean runs over (valid ∧ filtered). lambdas: [M] > 0, differentiable.
        epsilons: M KL budgets ε_j. over: "context" (mean over contexts of per-context log Ẑ(x)) or "batch"
            (one Ẑ over every kept sample, V-MPO).
    Returns: scalar; normalisers with no kept sample contribute 0.
    """
    lam = lambdas.reshape(-1)
    lam_total = lam.sum()
    tilt = (lam[:, None, None] * log_ratios.detach()).sum(0)
    u = torch.where(keep > 0, (advantage.detach() + tilt) / lam_total, torch.zeros_like(advantage))
    lme, has = _log_mean_exp(u, keep, over)
    eps = torch.as_tensor(list(epsilons), dtype=lam.dtype, device=lam.device)
    return (lam * eps).sum() + lam_total * (lme * has).sum() / has.sum().clamp_min(1.0)


def estep_kls(log_w: Tensor, log_ratios: Tensor, keep: Tensor, over: Over) -> Tensor:
    """[M] sample estimates KL̂(q‖π_j) = KL(p‖uniform on S) − E_p[d_j], averaged over normalisers (detached).

    `log_w` are normalised log-weights p over `over`; for an anchor equal to π_t (d = 0) this is the
    E-step's KL to the sampling distribution, the quantity V-MPO's ε_η bounds.
    """
    p = log_w.detach().exp()
    d = log_ratios.detach()
    kl_u = kl_to_uniform(log_w, keep, over)
    if over == "batch":
        return kl_u - (p[None] * d).sum((-2, -1))
    has = (keep.sum(-1) > 0).to(p.dtype)
    return ((kl_u[None] - (p[None] * d).sum(-1)) * has).sum(-1) / has.sum().clamp_min(1.0)


def solve_temperature(advantage: Tensor, log_ratios: Tensor, keep: Tensor, ratios: Tensor, epsilons: Sequence[float], *,
                      over: Over, lo: float = 1e-6, hi: float = 1e6, grid: int = 33, rounds: int = 7) -> Tensor:
    """Closed-form temperature: the Λ > 0 minimising the dual L(Λ) at fixed ratios ρ_j = λ_j/Λ, on this batch.

    L(Λ) = Λ ε̄ + Λ E_x log mean_S exp(A/Λ + c), ε̄ = Σ ρ_j ε_j, c = Σ ρ_j d_j, is convex in Λ, so its derivative
        L'(Λ) = ε̄ + E_x[ log mean_S exp(A/Λ + c) − E_p[A]/Λ ] = ε̄ − E_x[KL(p‖uniform) − E_p[c]]
    is increasing; a bracketing search in log Λ on [lo, hi] (`rounds` passes over `grid` points, each pass
    shrinking the bracket (grid − 1)-fold: 32^7 ≈ 3e10 by default) finds L'(Λ) = 0, i.e. the Λ at which the
    weights use exactly their KL budget. Returns lo (hi) when L' > 0 (< 0) on the whole range. Detached scalar.
    """
    a = advantage.detach()
    c = (ratios.detach().reshape(-1)[:, None, None] * log_ratios.detach()).sum(0)
    eps_bar = float((ratios.detach().reshape(-1) * torch.as_tensor(list(epsilons), dtype=a.dtype, device=a.device)).sum())
    if over == "batch":
        a, c, keep = a.reshape(1, -1), c.reshape(1, -1), keep.reshape(1, -1)
    n = keep.sum(-1)
    has = (n > 0).to(a.dtype)

    def slopes(log_lam: Tensor) -> Tensor:  # [G] -> L'(Λ) at each Λ = exp(log_lam)
        lam = log_lam.exp()[:, None, None]
        u = torch.where(keep[None] > 0, a[None] / lam + c[None], torch.full_like(c[None], NEG_INF).expand(len(log_lam), -1, -1))
        lse = torch.logsumexp(u, -1)
        lse = torch.where(has[None] > 0, lse, torch.zeros_like(lse))
        e_a = (torch.exp(u - lse[..., None]) * a[None]).sum(-1)
        per = (lse - torch.log(n.clamp_min(1.0))[None] - e_a / lam[..., 0]) * has[None]
        return eps_bar + per.sum(-1) / has.sum().clamp_min(1.0)

    pts = torch.linspace(math.log(lo), math.log(hi), grid, dtype=a.dtype, device=a.device)
    for r in range(rounds):
        s = slopes(pts)
        if r == 0 and s[0] >= 0:
            return torch.tensor(lo, dtype=a.dtype, device=a.device)
        if r == 0 and s[-1] <= 0:
            return torch.tensor(hi, dtype=a.dtype, device=a.device)
        i = int(torch.nonzero(s > 0)[0]) if bool((s > 0).any()) else grid - 1
        i = max(i, 1)
        pts = torch.linspace(float(pts[i - 1]), float(pts[i]), grid, dtype=a.dtype, device=a.device)
    return torch.tensor(math.exp(0.5 * (float(pts[0]) + float(pts[-1]))), dtype=a.dtype, device=a.device)


def clipped_mean_log_weights(logits: Tensor, keep: Tensor, weight_clip: float | None) -> Tensor:
    """log of the unnormalised practical weights w = min(exp(ℓ), clip), divided by the number of kept samples.

    With `weighted_nll(..., reduction="sum")` this gives −(1/N) Σ_{kept} min(exp ℓ, clip) log π_θ: AWR's and
    DAR's Monte-Carlo weighted regression. The clip is applied to ℓ in log space, so it stays finite for
    any ℓ. [B, K] detached; -inf on entries not kept.
    """
    lw = logits.detach()
    if weight_clip is not None:
        lw = torch.clamp(lw, max=math.log(weight_clip))
    n = keep.sum().clamp_min(1.0)
    return torch.where(keep > 0, lw - torch.log(n), torch.full_like(lw, NEG_INF))


def weight_metrics(log_w: Tensor, logits: Tensor, keep: Tensor, weight_clip: float | None, over: Over | Literal["none"]) -> Metrics:
    """`weights/ess`, `weights/ess_frac`, `weights/max` (and `weights/clipfrac` for clipped weights)."""
    norm_over: Over = "batch" if over == "none" else over
    sn = log_w if over != "none" else normalized_log_weights(log_w, keep, over="batch")
    ess = effective_sample_size(sn, over=norm_over)
    kept = keep.sum() if norm_over == "batch" else keep.sum(-1)
    out = {"weights/ess": ess.mean().detach(), "weights/ess_frac": (ess / kept.clamp_min(1.0)).mean().detach()}
    if over == "none":
        w = torch.where(keep > 0, log_w + torch.log(keep.sum().clamp_min(1.0)), torch.full_like(log_w, NEG_INF)).exp()
        out["weights/max"] = w.max().detach()
        if weight_clip is None:
            clipped = torch.zeros_like(keep)
        else:
            clipped = (logits.detach() >= math.log(weight_clip)).to(keep.dtype) * keep
        out["weights/clipfrac"] = (clipped.sum() / keep.sum().clamp_min(1.0)).detach()
    else:
        out["weights/max"] = log_w.exp().max().detach()
    return out


# ------------------------------------------------------------------------------------------------
# The generic loss
# ------------------------------------------------------------------------------------------------


def gempi_loss(
    logp: Tensor,
    score: Tensor,
    mask: Tensor,
    *,
    anchor_logp: Sequence[Tensor | None] | Tensor,
    logp_sample: Tensor | None,
    lambdas: Tensor | Sequence[float],
    temperature: Temperature,
    epsilons: Sequence[float],
    dual_over: Over,
    filter: Literal["identity", "topk"],
    topk_frac: float,
    topk_over: Over,
    topk_by: Literal["advantage", "log_weight"],
    normalize: Normalize,
    weight_clip: float | None,
    baseline: Baseline,
    advantage_norm: AdvNorm,
    m_step: Literal["none", "penalty", "constraint"],
    kl: Tensor | Sequence[Tensor] | None = None,
    m_coef: Tensor | float | Sequence[Tensor | float] | None = None,
    m_epsilon: Sequence[float] = (),
) -> tuple[Tensor, Metrics]:
    """Generic GEMPI loss: multi-anchor E-step weights (eq. 23–24) + weighted NLL M-step (eq. 26) + duals.

        loss = −Σ_i w_i log π_θ(y_i|x_i)  [+ L_dual(λ)]  [+ γ·KL  or  sg[α]·KL + α(ε_M − sg[KL])]

    Source: `[EM-LLM] §10` (eq. 22–26, "Recovering existing methods", "Novel
    instantiations"); V-MPO's top-k and log-sum-exp dual from `[EM-SFT] §6`.

    Args:
        logp: [B, K] log π_θ(y|x), differentiable.
        score: [B, K] rewards or advantages (detached); turned into A by `baseline` then `advantage_norm`.
        mask: [B, K] float {0,1} valid samples (for SFT, m = 0: the demonstrations).
        anchor_logp: the m anchors' log-probs of the samples, a [M, B, K] tensor or a list of M [B, K]
            tensors; an entry None stands for the sampling policy π_t itself (its factor cancels).
        logp_sample: [B, K] log π_t of the samples (Batch.logp_old); needed when an anchor is not None.
        lambdas: [M] coefficients λ_j (a tensor of softplus'd duals when temperature == "dual").
        temperature: "none" (m = 0), "fixed" (Λ = Σλ_j), "dual" (λ_j adapted by eq. 25; loss added),
            "closed_form" (Λ solved on the batch at fixed ratios λ_j/Λ, see `solve_temperature`).
        epsilons: M KL budgets ε_j for "dual" / "closed_form". dual_over: "context" | "batch" normaliser of Ẑ.
        filter: "identity" or "topk" (keep the top floor(topk_frac·n) samples, ties: lower index).
        topk_frac, topk_over ("context" | "batch"), topk_by ("advantage" | "log_weight" ℓ).
        normalize: "context" (self-normalised per context, loss averaged over contexts), "batch"
            (self-normalised over the batch, loss summed), "none" (w = min(exp ℓ, weight_clip), loss averaged
            over kept samples: AWR/DAR's practical form).
        weight_clip: clip of the unnormalised weights (required with normalize="none" and m ≥ 1).
        baseline, advantage_norm: see `advantages`.
        m_step: "none", "penalty" (m_coef γ · mean KL) or "constraint" (Lagrangian, m_coef the multiplier α).
        kl: [B] closed-form KL for the M-step term, or a sequence of [B] parts (V-MPO's decoupled Gaussian
            mean and covariance KLs), each with its own entry of m_coef and m_epsilon.
        m_coef: γ (penalty) or α tensor(s) (constraint). m_epsilon: the ε_M bound(s) of the constraint.

    Returns: loss, metrics `policy/nll`, `weights/ess`, `weights/ess_frac`, `weights/max`
        (`weights/clipfrac` when unnormalised), `dual/lambda_<j>`, `dual/Lambda`, `dual/temperature_loss`,
        `kl/q_anchor_<j>` (sample KL̂(q‖π_j)), and `dual/alpha[_<i>]`, `kl/m_step[_<i>]`.
    Deviations: the paper's λ_j > 0; λ_j = 0 is accepted for a fixed temperature (α → 0 limits of DAR).
    """
    m = len(anchor_logp)
    adv = advantages(score, mask, baseline=baseline, normalize=advantage_norm)
    d = anchor_log_ratios(anchor_logp, logp_sample, mask)
    metrics: Metrics = {}
    lam = lam_det = None

    def filtered(rank: Tensor) -> Tensor:
        return mask if filter == "identity" else top_k_mask(rank, mask, frac=topk_frac, over=topk_over)

    by_weight = filter == "topk" and topk_by == "log_weight" and m > 0
    keep = None if by_weight else filtered(adv)
    if m == 0:
        logits = torch.zeros_like(adv)  # SFT: the delta target puts uniform weight on the demonstrations
    else:
        lam = (lambdas if isinstance(lambdas, Tensor) else torch.as_tensor(list(lambdas), dtype=logp.dtype, device=logp.device)).reshape(-1)
        if temperature == "closed_form":
            if by_weight:
                raise ValueError("topk_by='log_weight' needs the temperature before the filter; use 'advantage' with closed_form")
            ratios = lam.detach() / lam.detach().sum()
            lam_det = ratios * solve_temperature(adv, d, keep, ratios, epsilons, over=dual_over)
        else:
            lam_det = lam.detach()
        logits = (adv + (lam_det[:, None, None] * d).sum(0)) / lam_det.sum()
    if by_weight:
        keep = filtered(logits)
    if normalize == "none":
        log_w = clipped_mean_log_weights(logits, keep, weight_clip)
        nll = weighted_nll(logp, log_w, reduction="sum")
    else:
        log_w = normalized_log_weights(logits, keep, over=normalize)
        nll = weighted_nll(logp, log_w, reduction="mean_contexts" if normalize == "context" else "sum")
    metrics.update(weight_metrics(log_w, logits, keep, weight_clip, normalize))
    metrics["policy/nll"] = nll.detach()
    loss = nll
    if m > 0:
        for j in range(m):
            metrics[f"dual/lambda_{j}"] = lam_det[j].detach()
        metrics["dual/Lambda"] = lam_det.sum().detach()
        p_log = normalized_log_weights(logits, keep, over=dual_over)
        for j, v in enumerate(estep_kls(p_log, d, keep, dual_over)):
            metrics[f"kl/q_anchor_{j}"] = v.detach()
    if temperature == "dual":
        dual = multi_temperature_loss(adv, d, keep, lam, epsilons, over=dual_over)
        loss = loss + dual
        metrics["dual/temperature_loss"] = dual.detach()
    if m_step != "none":
        if kl is None:
            raise ValueError(f"m_step={m_step!r} needs a closed-form KL (kl)")
        kls = [kl] if isinstance(kl, Tensor) else list(kl)
        coefs = list(m_coef) if isinstance(m_coef, (list, tuple)) else [m_coef]
        if len(coefs) != len(kls):
            raise ValueError(f"{len(kls)} KL part(s) but {len(coefs)} M-step coefficient(s)")
        for i, (kl_i, c_i) in enumerate(zip(kls, coefs)):
            sfx = "" if len(kls) == 1 else f"_{i}"
            if m_step == "penalty":
                term = kl_penalty(kl_i, float(c_i), context_mask(mask))
                metrics[f"kl/m_step{sfx}"] = masked_mean(kl_i.detach(), context_mask(mask))
            else:
                term, tr = masked_trust_region(kl_i, mask, c_i, m_epsilon[i], name=f"alpha{sfx}")
                metrics[f"dual/alpha{sfx}"] = tr[f"dual/alpha{sfx}"]
                metrics[f"kl/m_step{sfx}"] = tr[f"kl/alpha{sfx}_trust_region"]
            loss = loss + term
    return loss, metrics


# ------------------------------------------------------------------------------------------------
# The tuple
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GEMPIConfig:
    """A GEMPI tuple G = ({D_j}, {π_j}, {λ_j}, T, F, D_M, ε_M) plus the practical knobs that fix the loss.

    Defaults describe AWR (one anchor π_t, fixed β = 1, no filter, clipped unnormalised weights).
    """

    anchors: tuple[str, ...] = field(
        ("pi_t",), "anchor policies π_j of the E-step (m = len): 'pi_t' sampling policy, 'pi_ref' reference; () is SFT (m = 0)")
    coefficients: tuple[float, ...] = field(
        (1.0,), "coefficients λ_j ≥ 0 of KL(q‖π_j), Λ = Σλ_j; initial values when the temperature is dual")
    coefficient_names: tuple[str, ...] = field(("beta",), "names of the λ_j in the papers (eta, alpha, beta), for the GEMPI table")
    divergence: Literal["kl"] = field("kl", "E-step divergences D_j (all anchors); only KL has the closed form of eq. 23")
    temperature: Temperature = field(
        "fixed", "T: 'none' (m = 0), 'fixed', 'dual' (eq. 25, adaptive), 'closed_form' (Λ solved on the batch)")
    epsilons: tuple[float, ...] = field((), "KL budgets ε_j per anchor, for 'dual' and 'closed_form' temperatures")
    dual_over: Over = field("context", "normaliser of the dual's partition estimate Ẑ: per context (MPO) or the batch (V-MPO)")
    filter: Literal["identity", "topk"] = field("identity", "F: all samples or the top-k (V-MPO: top half)")
    topk_frac: float = field(0.5, "top-k fraction ρ: k = max(1, floor(ρ·n)); V-MPO 0.5")
    topk_over: Over = field("batch", "top-k per context or over the whole batch (V-MPO: batch)")
    topk_by: Literal["advantage", "log_weight"] = field(
        "advantage", "rank for top-k: advantage (V-MPO) or the log-weight ℓ (q*/π_t)")
    normalize: Normalize = field(
        "none", "weights self-normalised per 'context' or over the 'batch', or 'none' (clipped exp ℓ, mean over samples)")
    weight_clip: float | None = field(
        20.0, "clip of unnormalised weights (AWR, DAR: 20); None for no clip (only with normalised weights or m = 0)")
    baseline: Baseline = field("none", "per-context baseline subtracted from the score before normalisation")
    advantage_norm: AdvNorm = field("batch", "advantage whitening over the batch ('none' or 'batch')")
    m_step: Literal["none", "penalty", "constraint"] = field(
        "none", "D_M of eq. 26: none, KL penalty γ, or Lagrangian KL constraint (stop-gradient)")
    m_kl: Literal["old", "ref"] = field(
        "old", "which closed-form KL the M-step uses: KL(π_old‖π_θ) (Batch.kl_old) or KL(π_ref‖π_θ) (Batch.kl_ref)")
    m_coef: tuple[float, ...] = field(
        (), "penalty γ or initial multiplier α per KL part (2 parts: V-MPO's decoupled mean / covariance)")
    m_epsilon: tuple[float, ...] = field((), "constraint bounds ε_M per KL part")

    def __post_init__(self):
        check_choices(self)
        for a in self.anchors:
            if a not in ANCHORS:
                raise unknown("anchor in GEMPIConfig.anchors", a, ANCHORS)
        m = len(self.anchors)
        if len(self.coefficients) != m or len(self.coefficient_names) != m:
            raise ConfigError(f"GEMPIConfig.coefficients = {self.coefficients!r} and coefficient_names = {self.coefficient_names!r} "
                              f"must each have one entry per anchor ({m}).")
        if any(not c >= 0 for c in self.coefficients) or (m and not sum(self.coefficients) > 0):
            raise ConfigError(f"GEMPIConfig.coefficients = {self.coefficients!r} is invalid: must be >= 0 with a positive sum.")
        if (m == 0) != (self.temperature == "none"):
            raise ConfigError(f"GEMPIConfig.temperature = {self.temperature!r} is invalid with m = {m}: "
                              "'none' exactly when there are no anchors.")
        if self.temperature in ("dual", "closed_form"):
            if len(self.epsilons) != m:
                raise ConfigError(f"GEMPIConfig.epsilons = {self.epsilons!r} is invalid: the {self.temperature} temperature "
                                  f"needs one budget per anchor ({m}).")
            if any(not e > 0 for e in self.epsilons):
                raise ConfigError(f"GEMPIConfig.epsilons = {self.epsilons!r} is invalid: must be > 0.")
        if self.temperature == "dual" and any(not c > 0 for c in self.coefficients):
            raise ConfigError(f"GEMPIConfig.coefficients = {self.coefficients!r} is invalid: dual temperatures start > 0.")
        if self.temperature == "closed_form" and self.filter == "topk" and self.topk_by == "log_weight":
            raise ConfigError("GEMPIConfig.topk_by = 'log_weight' is invalid with temperature 'closed_form': allowed: advantage.")
        check_range(self, "topk_frac", 0.0, 1.0, lo_open=True)
        check_positive(self, "weight_clip")
        if self.normalize == "none" and m > 0 and self.weight_clip is None:
            raise ConfigError("GEMPIConfig.weight_clip = None is invalid with normalize = 'none': "
                              "unnormalised exp(ℓ) overflows; give a clip.")
        if self.m_step == "none":
            if self.m_coef or self.m_epsilon:
                raise ConfigError("GEMPIConfig.m_coef / m_epsilon must be () when m_step = 'none'.")
        else:
            parts = len(self.m_coef)
            if parts not in (1, 2) or any(not c >= 0 for c in self.m_coef):
                raise ConfigError(f"GEMPIConfig.m_coef = {self.m_coef!r} is invalid: one or two values >= 0.")
            if self.m_step == "constraint" and (len(self.m_epsilon) != parts or any(not e > 0 for e in self.m_epsilon)
                                                or any(not c > 0 for c in self.m_coef)):
                raise ConfigError(f"GEMPIConfig.m_epsilon = {self.m_epsilon!r} is invalid: "
                                  "one bound > 0 per multiplier (> 0) in m_coef.")
            if self.m_step == "penalty" and (parts != 1 or self.m_epsilon):
                raise ConfigError("GEMPIConfig: a KL penalty takes one m_coef and no m_epsilon.")

    @property
    def m(self) -> int:
        return len(self.anchors)

    def loss_options(self) -> dict[str, Any]:
        """Keyword options of `gempi_loss` fixed by this tuple (tensors and duals come from the caller)."""
        return dict(temperature=self.temperature, epsilons=self.epsilons, dual_over=self.dual_over, filter=self.filter,
                    topk_frac=self.topk_frac, topk_over=self.topk_over, topk_by=self.topk_by, normalize=self.normalize,
                    weight_clip=self.weight_clip, baseline=self.baseline, advantage_norm=self.advantage_norm,
                    m_step=self.m_step, m_epsilon=self.m_epsilon)

    def needs(self) -> Needs:
        """What a batch must carry for this tuple."""
        ref = "pi_ref" in self.anchors
        return Needs(min_samples=2 if (self.normalize == "context" and self.m > 0) or self.baseline == "context_mean" else 1,
                     logp_old=ref, logp_ref=ref, kl_old=self.m_step != "none" and self.m_kl == "old",
                     kl_ref=self.m_step != "none" and self.m_kl == "ref")

    def as_tuple(self) -> dict[str, Any]:
        """The tuple as JSON-ready values, one key per column of the paper's table (`[EM-LLM] §10`)."""
        m = self.m
        lam = sum(self.coefficients)
        if self.filter == "identity":
            filt = "none"
        else:
            filt = f"top-k (ρ={self.topk_frac:g} of {self.topk_over}, by {self.topk_by.replace('_', '-')})"
        if self.m_step == "none":
            mstep = "none"
        else:
            what = "KL(π_old‖π_θ)" if self.m_kl == "old" else "KL(π_ref‖π_θ)"
            if len(self.m_coef) == 2:
                what += " decoupled μ/Σ"
            if self.m_step == "penalty":
                mstep = f"{what} penalty γ={self.m_coef[0]:g}"
            else:
                mstep = f"{what} constraint (Lagrange dual, ε_M={'/'.join(f'{e:g}' for e in self.m_epsilon)})"
        temp = {"none": "—", "fixed": "fixed", "dual": "adaptive dual", "closed_form": "closed-form (batch)"}[self.temperature]
        if self.temperature in ("dual", "closed_form"):
            temp += " (ε=" + ", ".join(f"{e:g}" for e in self.epsilons) + ")"
        if m == 0:
            weights = "uniform per context" if self.normalize == "context" else "uniform on demonstrations"
        elif self.normalize == "none":
            weights = "unnormalised" + (f", clip {self.weight_clip:g}" if self.weight_clip is not None else "")
        else:
            weights = {"context": "self-normalised per context", "batch": "self-normalised over batch"}[self.normalize]
        return {
            "m": m,
            "divergences": "KL" if m else "—",
            "anchors": ", ".join(ANCHOR_TEXT[a] for a in self.anchors) if m else "—",
            "coefficients": ", ".join(f"{n}={c:g}" for n, c in zip(self.coefficient_names, self.coefficients)) if m else "—",
            "Lambda": (("+".join(self.coefficient_names) + f" = {lam:g}") if m else "—"),
            "temperature": temp,
            "filter": filt if m else "—",
            "weights": weights,
            "M-step": mstep,
        }


PAPER_ORDER = ("sft", "awr", "vmpo", "dar", "rlem")
"""The rows of `[EM-LLM] §10`'s "Recovering existing methods" table that the suite implements, in its order."""
TABLE_COLUMNS = ("method", "m", "anchors", "coefficients", "Lambda", "temperature", "filter", "weights", "M-step")


def gempi_tuple(method_name: str, cfg: Any | None = None) -> dict[str, Any]:
    """The GEMPI tuple of a registered method (its default config, or `cfg`), with the method's name."""
    if method_name not in REGISTRY:
        raise unknown("algorithm", method_name, REGISTRY)
    cls = REGISTRY[method_name]
    if cfg is not None:
        g = cfg if isinstance(cfg, GEMPIConfig) else cfg.to_gempi()
    elif getattr(cls, "GEMPI", None) is not None:
        g = cls.GEMPI
    else:
        raise ValueError(f"algorithm {method_name!r} is not a GEMPI instance (no GEMPI tuple)")
    return {"method": method_name, **g.as_tuple()}


def gempi_table(names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per registered method that declares a GEMPI tuple (all of them when `names` is None: the
    paper's table order first, then the novel variants alphabetically)."""
    if names is None:
        have = {n for n, c in REGISTRY.items() if getattr(c, "GEMPI", None) is not None}
        names = [n for n in PAPER_ORDER if n in have] + sorted(have - set(PAPER_ORDER))
    return [gempi_tuple(n) for n in names]


def gempi_table_markdown(rows: list[dict[str, Any]]) -> str:
    """Render `gempi_table()` rows as a Markdown table (columns `TABLE_COLUMNS`)."""
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join(str(r[c]) for c in TABLE_COLUMNS) + " |")
    return "\n".join(lines)


@register
class GEMPIMethod(Method):
    """The generic GEMPI adaptor: anchors from the batch by name, duals for 'dual' temperatures and constraints."""

    name = "gempi"
    Config = GEMPIConfig
    needs = Needs()

    @classmethod
    def needs_for(cls, cfg: GEMPIConfig) -> Needs:
        return cfg.needs()

    def __init__(self, cfg: GEMPIConfig):
        super().__init__(cfg)
        if cfg.temperature == "dual":
            self.lambda_raw = nn.ParameterList([dual_parameter(c, DUAL_FLOOR) for c in cfg.coefficients])
        if cfg.m_step == "constraint":
            self.m_alpha_raw = nn.ParameterList([dual_parameter(c, DUAL_FLOOR) for c in cfg.m_coef])

    def lambdas(self, dtype: torch.dtype = torch.float32, device: torch.device | None = None) -> Tensor:
        if self.cfg.temperature == "dual":
            return torch.stack([F.softplus(r) + DUAL_FLOOR for r in self.lambda_raw])
        return torch.as_tensor(self.cfg.coefficients, dtype=dtype, device=device)

    def loss_decoupled(self, batch: Batch, kl_mean: Tensor, kl_cov: Tensor) -> tuple[Tensor, Metrics]:
        """`loss` with a 2-part M-step KL (V-MPO's decoupled Gaussian mean / covariance KLs, [B] each,
        from `vmpo.decoupled_gaussian_kl`), one multiplier and bound each (m_coef, m_epsilon of length 2)."""
        if len(self.cfg.m_coef) != 2:
            raise ValueError("loss_decoupled needs a 2-part M-step (len(m_coef) == 2)")
        return self.loss(batch, kl_parts=(kl_mean, kl_cov))

    def loss(self, batch: Batch, kl_parts: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Metrics]:
        cfg = self.cfg
        missing = cfg.needs().missing(Needs(min_samples=batch.logp.shape[-1], labels=batch.label is not None,
                                            logp_old=batch.logp_old is not None, logp_ref=batch.logp_ref is not None,
                                            kl_ref=batch.kl_ref is not None, kl_old=batch.kl_old is not None))
        if [x for x in missing if not x.startswith("min_samples")]:
            raise ValueError(f"GEMPI tuple {cfg.as_tuple()} needs batch fields it lacks: {', '.join(missing)}")
        anchors = [None if a == "pi_t" else batch.logp_ref for a in cfg.anchors]
        kl = (batch.kl_old if cfg.m_kl == "old" else batch.kl_ref) if cfg.m_step != "none" else None
        if kl_parts is not None:
            kl = tuple(kl_parts)
        if cfg.m_step == "constraint":
            if len(cfg.m_coef) != 1 and kl_parts is None:
                raise ValueError("a decoupled (2-part) M-step KL is not in Batch; use loss_decoupled(batch, kl_mean, kl_cov)")
            m_coef: Any = [F.softplus(r) + DUAL_FLOOR for r in self.m_alpha_raw]
        elif cfg.m_step == "penalty":
            m_coef = cfg.m_coef[0]
        else:
            m_coef = None
        return gempi_loss(batch.logp, batch.score, batch.mask, anchor_logp=anchors, logp_sample=batch.logp_old,
                          lambdas=self.lambdas(batch.logp.dtype, batch.logp.device), kl=kl, m_coef=m_coef, **cfg.loss_options())
