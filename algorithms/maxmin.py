"""MaxMin-RLHF: EM over a mixture of Bradley–Terry reward models, then an egalitarian (max-min) policy target.

Source: `[EM-LLM] §8` (MaxMin-RLHF, Chakraborty et al. 2024), Algorithms 1–2.

Reward learning (Algorithm 2) treats the sub-population u of each annotator as a latent variable:

    p(D_i | u) = Π_{pairs p of i} σ(r_u(y_w) − r_u(y_l))                         (BT likelihood, eq. 8)
    E-step:  γ_iu ∝ π_u p(D_i | u)   (soft)   or   γ_iu = 1[u = argmax_u' p(D_i | u')]   (hard, eq. 11)
    M-step:  min_φ  −Σ_i Σ_u sg[γ_iu] Σ_p log σ(r_{φ_u}(y_w) − r_{φ_u}(y_l))

and the policy objective (Algorithm 1, eq. 12) is the egalitarian social utility max_π min_u F_u(π):
each iteration evaluates every group's utility F_u(π_t), picks u_min = argmin_u F_u(π_t), and improves
the policy against r_{u_min} with any KL-regularised fine-tuner (the E-step/M-step cores of this
package, or PPO). `maxmin_loss` gives that selection as a loss on group utilities, with a soft-min
option; `worst_group_weights` gives the weights to mix the groups' rewards into the fine-tuner's score.

Shapes: `U` annotators (users), `P` preference pairs per user (padded; `mask`), `M` mixture
components (clusters, the paper's |U|), `G` groups whose utilities are compared (the clusters, or
the true groups when evaluating). A reward model enters only through its **margins**
`margin[i, p, m] = r_m(y_w) − r_m(y_l)`, oriented so that y_w is the response user i preferred; the
reward model itself (tabular, linear or a network) lives in the task.

These pieces do not fit the `[B, K]` `Batch` of a single policy update (they are a nested reward-
learning loop over users × pairs × clusters plus a selection over groups), so no `Method` is registered;
the L6 loop composes them with a registered fine-tuner.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from algorithms.base import Metrics
from algorithms.config import ConfigError, check_choices, check_positive, field

Assignment = Literal["hard", "soft"]
Selection = Literal["hard", "soft"]
MStepReduction = Literal["pairs", "per_cluster"]


@dataclass(frozen=True)
class MaxMinConfig:
    n_clusters: int = field(2, "number M of reward models / sub-populations (the paper's |U|); L6 uses 2 groups")
    assignment: Assignment = field("hard", "E-step: 'hard' argmax assignment (Algorithm 2 as run in the paper) or 'soft' posterior")
    mixing: Literal["equal", "learned"] = field(
        "equal", "cluster priors π_u: 'equal' (the paper's hard E-step) or 'learned' (M-step π_u = mean γ_iu)")
    mstep_reduction: MStepReduction = field(
        "pairs", "M-step normaliser: 'pairs' (mean over valid pairs) or 'per_cluster' (mean within each cluster, then over clusters)")
    em_iterations: int = field(10, "EM iterations of reward learning (Algorithm 2: 'repeat until convergence'; suite choice)")
    selection: Selection = field("hard", "max-min selection: 'hard' argmin group (Algorithm 1) or 'soft' soft-min (suite option)")
    softmin_temperature: float = field(1.0, "temperature τ of the soft-min; used only when selection = 'soft' (not in the paper)")

    def __post_init__(self):
        check_choices(self)
        for name in ("n_clusters", "em_iterations"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"MaxMinConfig.{name} = {v!r} is invalid: must be an integer >= 1.")
        check_positive(self, "softmin_temperature")


# ------------------------------------------------------------------------------------------------
# (a) likelihood of each user's preferences under each cluster's reward model
# ------------------------------------------------------------------------------------------------


def user_log_likelihood(margin: Tensor, mask: Tensor) -> Tensor:
    """log p(D_i | u) = Σ_p mask_ip · log σ(margin_ipu), the BT log-likelihood of each user's pairs (`[EM-LLM] §8` eq. 8).

    Args:
        margin: [U, P, M] r_u(y_w) − r_u(y_l) per user i, pair p, cluster u (y_w: what user i preferred).
        mask: [U, P] float {0, 1}: which pairs are real. Padded pairs contribute exactly nothing, whatever
            their margin holds (NaN and ±inf included).

    Returns: [U, M] log-likelihoods, differentiable in `margin`. For per-datum responsibilities (the
    paper's eq. 11 applied to one comparison) pass each comparison as its own user: [N, 1, M].
    """
    valid = (mask > 0)[..., None]
    ll = torch.where(valid, F.logsigmoid(torch.where(valid, margin, torch.zeros_like(margin))), torch.zeros_like(margin))
    return ll.sum(1)


# ------------------------------------------------------------------------------------------------
# (b) E-step: responsibilities (log space), (M-step of the priors)
# ------------------------------------------------------------------------------------------------


def responsibilities(loglik: Tensor, *, assignment: Assignment, log_mix: Tensor | None = None,
                     user_mask: Tensor | None = None) -> tuple[Tensor, Metrics]:
    """E-step γ_iu of `[EM-LLM] §8` Algorithm 2 (a): posterior of cluster u for user i, computed in log space.

        soft:  log γ_iu = log π_u + log p(D_i|u) − logsumexp_u'(log π_u' + log p(D_i|u'))
        hard:  γ_iu = 1[u = argmax_u' (log π_u' + log p(D_i|u'))]   (ties: the lower cluster index)

    Args:
        loglik: [U, M] log p(D_i | u) (`user_log_likelihood`); treated as a constant.
        assignment: "hard" or "soft" (see `MaxMinConfig.assignment`).
        log_mix: [M] log priors log π_u, or None for equal priors (the paper's hard E-step, eq. 11).
            A −inf entry removes that cluster.
        user_mask: [U] float {0, 1}, optional: users counted in the metrics (a user with no valid pair gets
            the prior as its posterior; mask it out of the metrics here and of `mixing_log_weights`).

    Returns:
        resp: [U, M] detached responsibilities; rows sum to 1 (one-hot rows for "hard").
        metrics: `mixture/loglik` (mean over users of the marginal log-likelihood log Σ_u π_u p(D_i|u),
            the quantity exact EM never decreases), `mixture/entropy` (mean posterior entropy of the soft
            posterior, in nats), `mixture/mass_min` (smallest cluster's share of the users under `resp`).
    Deviations: eq. 11 writes the per-comparison BT likelihood un-normalised over clusters; we normalise
        it into the posterior and aggregate a user's comparisons by the product of their likelihoods
        (sum of logs), which is what "for each annotator" in Algorithm 2 implies. The argmax is the same.
    """
    logits = loglik.detach()
    logits = logits - math.log(logits.shape[-1]) if log_mix is None else logits + log_mix.detach()
    log_post = torch.log_softmax(logits, -1)
    post = log_post.exp()
    if assignment == "soft":
        resp = post
    elif assignment == "hard":
        resp = F.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)
    else:
        raise ValueError(f"assignment must be 'hard' or 'soft', got {assignment!r}")
    entropy = -torch.where(post > 0, post * log_post, torch.zeros_like(post)).sum(-1)
    m = torch.ones_like(logits[:, 0]) if user_mask is None else user_mask.to(logits.dtype)
    n = m.sum().clamp_min(1.0)
    metrics = {
        "mixture/loglik": (torch.logsumexp(logits, -1) * m).sum() / n,
        "mixture/entropy": (entropy * m).sum() / n,
        "mixture/mass_min": (resp * m[:, None]).sum(0).min() / n,
    }
    return resp, metrics


def mixing_log_weights(resp: Tensor, user_mask: Tensor | None = None) -> Tensor:
    """M-step of the priors: log π_u = log( Σ_i m_i γ_iu / Σ_i m_i ), [U, M] -> [M] (detached).

    `user_mask` [U] (float {0, 1}) drops padded users; an empty cluster gets log π_u = −inf.
    """
    m = torch.ones(resp.shape[0], dtype=resp.dtype, device=resp.device) if user_mask is None else user_mask.to(resp.dtype)
    mass = (resp.detach() * m[:, None]).sum(0) / m.sum().clamp_min(1.0)
    return torch.log(mass)


# ------------------------------------------------------------------------------------------------
# (c) M-step: responsibility-weighted Bradley–Terry NLL
# ------------------------------------------------------------------------------------------------


def mixture_mstep_loss(margin: Tensor, mask: Tensor, resp: Tensor, *, reduction: MStepReduction) -> tuple[Tensor, Metrics]:
    """M-step of `[EM-LLM] §8` Algorithm 2 (b): −Σ_i Σ_u sg[γ_iu] Σ_p mask_ip log σ(margin_ipu) / normaliser.

    With hard γ this is each cluster's BT cross-entropy on the data assigned to it; with soft γ it is the
    expected complete-data negative log-likelihood. d loss / d margin_ipu = γ_iu mask_ip (σ(margin_ipu) − 1) / n.

    Args:
        margin: [U, P, M] oriented reward margins (see `user_log_likelihood`), differentiable.
        mask: [U, P] float {0, 1} valid pairs.
        resp: [U, M] responsibilities; detached inside (the E-step's output is a constant of the M-step).
        reduction: "pairs": divide by the number of valid pairs, n = Σ mask (every pair's γ sums to 1 over
            clusters, so this is the per-pair NLL); "per_cluster": each cluster's sum is divided by its own
            mass n_u = Σ_i γ_iu Σ_p mask_ip (the mean BT loss on the data assigned to u, as the paper's
            per-cluster argmin), then averaged over clusters with n_u > 0.

    Returns: loss, metrics `reward/nll` (per-pair weighted NLL), `reward/accuracy` (γ-weighted fraction of
    valid pairs with margin > 0), `mixture/mass_min` (smallest cluster's share of the pairs).
    Deviations: the paper fits each φ_u to convergence ("argmin"); this is the loss of one gradient step.
    """
    valid = (mask > 0)[..., None]
    w = resp.detach()[:, None, :] * valid.to(margin.dtype)  # [U, P, M]
    safe = torch.where(valid, margin, torch.zeros_like(margin))
    nll = -F.logsigmoid(safe)
    weighted = torch.where(valid, w * nll, torch.zeros_like(nll))
    n_pairs = mask.gt(0).to(margin.dtype).sum().clamp_min(1.0)
    mass = w.sum((0, 1))  # [M]
    if reduction == "pairs":
        loss = weighted.sum() / n_pairs
    elif reduction == "per_cluster":
        has = (mass > 0).to(margin.dtype)
        loss = (weighted.sum((0, 1)) / mass.clamp_min(1e-30) * has).sum() / has.sum().clamp_min(1.0)
    else:
        raise ValueError(f"reduction must be 'pairs' or 'per_cluster', got {reduction!r}")
    with torch.no_grad():
        correct = torch.where(valid, (safe > 0).to(margin.dtype), torch.zeros_like(safe))
        metrics = {
            "reward/nll": weighted.sum() / n_pairs,
            "reward/accuracy": (w * correct).sum() / n_pairs,
            "mixture/mass_min": (mass / n_pairs).min(),
        }
    return loss, metrics


def weighted_bt_nll(margin: Tensor, weight: Tensor) -> Tensor:
    """The M-step loss of `mixture_mstep_loss` with reduction 'per_cluster', on dense pairs: Σ_m [Σ_n weight_nm ·
    softplus(−margin_nm) / Σ_n weight_nm], averaged over the clusters with weight (−log σ(x) = softplus(−x)).

    Args: margin [N, M] finite oriented margins of every pair under every cluster; weight [N, M] ≥ 0 (γ of the pair's
    annotator times its mask). Three dense ops and no metrics: the inner loop of an M-step solver calls it many times
    (tested equal in value and gradient to `mixture_mstep_loss`)."""
    mass = weight.sum(0)
    has = (mass > 0).to(margin.dtype)
    per = (F.softplus(-margin) * weight).sum(0) / mass.clamp_min(1e-30)
    return (per * has).sum() / has.sum().clamp_min(1.0)


# ------------------------------------------------------------------------------------------------
# (d) the egalitarian (max-min) selection over groups
# ------------------------------------------------------------------------------------------------


def worst_group_weights(utility: Tensor, *, selection: Selection, temperature: float | None = None,
                        group_mask: Tensor | None = None) -> Tensor:
    """Detached weights over groups, [G] -> [G], summing to 1: the gradient of the (soft-)min w.r.t. U_g.

    hard: one-hot on argmin_g U_g (ties: the lower index), Algorithm 1 step (b); soft: softmax(−U/τ).
    Mix the groups' rewards with them (r = Σ_g w_g r_g) to hand the fine-tuner "the reward of u_min".
    """
    u = utility.detach()
    valid = torch.ones_like(u, dtype=torch.bool) if group_mask is None else group_mask > 0
    if selection == "hard":
        masked = torch.where(valid, u, torch.full_like(u, float("inf")))
        return F.one_hot(masked.argmin(-1), u.shape[-1]).to(u.dtype)
    if selection == "soft":
        if temperature is None or not temperature > 0:
            raise ValueError(f"soft selection needs a temperature > 0, got {temperature!r}")
        return torch.softmax(torch.where(valid, -u / temperature, torch.full_like(u, float("-inf"))), -1)
    raise ValueError(f"selection must be 'hard' or 'soft', got {selection!r}")


def maxmin_loss(utility: Tensor, *, selection: Selection, temperature: float | None = None,
                group_mask: Tensor | None = None) -> tuple[Tensor, Metrics]:
    """−min_g U_g: the egalitarian objective of `[EM-LLM] §8` eq. 12 as a loss on group utilities.

        hard: objective = min_g U_g (gradient only to the argmin group, Algorithm 1 (b)–(c))
        soft: objective = −τ log( (1/G) Σ_g exp(−U_g/τ) )   (→ min as τ → 0, → mean as τ → ∞)

    Args:
        utility: [G] per-group utilities F_{r_g}(π) − β KL(π‖π_ref) (or just F_g), differentiable in the
            policy when the caller estimates them with a differentiable estimator.
        selection: "hard" or "soft". temperature: τ > 0, required for "soft".
        group_mask: [G] float {0, 1}, optional: groups to compare (absent groups are ignored).

    Returns: loss = −objective; metrics `maxmin/objective`, `maxmin/worst_group` (argmin index, as a float),
    `maxmin/min_utility`, `maxmin/gap` (max − min utility over compared groups).
    Deviations: the soft-min is a suite option (the paper uses the hard argmin); its 1/G makes it equal U
        when all groups tie, so it interpolates egalitarian (τ → 0) and utilitarian (τ → ∞) objectives.
    """
    valid = torch.ones_like(utility, dtype=torch.bool) if group_mask is None else group_mask > 0
    hi = torch.where(valid, utility, torch.full_like(utility, float("inf")))
    lo = torch.where(valid, utility, torch.full_like(utility, float("-inf")))
    worst = hi.detach().argmin(-1)
    if selection == "hard":
        objective = hi.gather(-1, worst[None])[0]
    elif selection == "soft":
        if temperature is None or not temperature > 0:
            raise ValueError(f"soft selection needs a temperature > 0, got {temperature!r}")
        n = valid.to(utility.dtype).sum()
        logits = torch.where(valid, -utility / temperature, torch.full_like(utility, float("-inf")))
        objective = -temperature * (torch.logsumexp(logits, -1) - torch.log(n))
    else:
        raise ValueError(f"selection must be 'hard' or 'soft', got {selection!r}")
    metrics = {
        "maxmin/objective": objective.detach(),
        "maxmin/worst_group": worst.to(utility.dtype),
        "maxmin/min_utility": hi.detach().min(),
        "maxmin/gap": (lo.max() - hi.min()).detach(),
    }
    return -objective, metrics


# ------------------------------------------------------------------------------------------------
# (e) cluster purity (the L6 report's recovery metric)
# ------------------------------------------------------------------------------------------------


def cluster_purity(assignment: Tensor, groups: Tensor, user_mask: Tensor | None = None) -> Tensor:
    """Purity = (1/N) Σ_clusters max_g |{i in cluster} ∩ {i in group g}|, in [0, 1].

    Args:
        assignment: [U] integer cluster of each user (e.g. `resp.argmax(-1)`).
        groups: [U] integer true group of each user.
        user_mask: [U] float {0, 1}, optional: users to count.

    1.0 means every cluster holds users of a single group. It is not symmetric: with as many clusters as
    users it is trivially 1, and it is the majority group's share when everything falls in one cluster;
    read it at the M of the experiment (L6: M = number of true groups).
    """
    a, g = assignment.long().reshape(-1), groups.long().reshape(-1)
    m = torch.ones(a.shape[0], dtype=torch.float64, device=a.device) if user_mask is None else user_mask.reshape(-1).to(torch.float64)
    n_a, n_g = int(a.max().item()) + 1 if a.numel() else 1, int(g.max().item()) + 1 if g.numel() else 1
    table = torch.zeros(n_a * n_g, dtype=torch.float64, device=a.device).index_add_(0, a * n_g + g, m).reshape(n_a, n_g)
    return table.max(1).values.sum() / m.sum().clamp_min(1.0)

