"""GRO: generalised REINFORCE optimisation — one weighted score-function loss for RL-based and RL-free methods.

Source: `[GRO] §5` eq. 35–37 and Table 1 (the paper's equations were lost in its text extraction; this docstring
restates them):

    ∇θ L = − E[ f(A(x,y)) · w( sg[s_θ(x,y)] − a(x,y) ) · ∇θ log π_θ(y|x) ]

`gro_loss` realises it as the surrogate L = −reduce( sg[f(A) · w(u)] · log π_θ ), u = sg[s] − a, whose
gradient is exactly the line above (its value is not the native loss's; only gradients are compared).
Every choice is a named argument:

    A  advantage: raw reward, leave-one-out (RLOO), greedy baseline (ReMax), group z-score (GRPO),
       whitened token returns with a per-token k1 KL reward (REINFORCE++), or ± labels (DPO, KTO, CPL)
    f  "identity" (all instances) or "relu" (drop negative advantages, `[GRO] §5` footnote 10)
    s  a stop-gradient score: c·log π_θ or c·log π_θ/π_ref, per sequence or per token, optionally
       scaled by λ on samples with A < 0 (CPL's bias)
    a  anchor: none, the mean s of the context's other samples (DPO/CPL pairs, GRO itself),
       log π_old (the ratio of PPO-style methods), or c·z_ref (KTO's reference point)
    w  "one"; "sigmoid" c·σ(−sgn(A)·u); "sigmoid_prime" c·σ'(u); "clip_ratio" e^u · 1[not clipped]

Deviation from the stated w(sg[s] − a): the weight may also read sgn(A). DPO and CPL weigh the chosen
sample by σ(s_l − s_w) and the rejected one by the same number, i.e. σ(−sgn(A)·u) with u = s − a, and
PPO's clip region is one-sided in the advantage's direction; neither is a function of u alone.
Methods that add a KL to the LOSS (GRPO's k3) keep it as a second, explicit term (`loss_kl`); a KL in
the REWARD (RLOO, REINFORCE++) is part of A.

Each `*_as_gro` function maps a method's own config to its GRO instance, with the derivation from the
method's loss in its docstring; `describe` / `gro_table` turn those configurations into the table of
(A, f, s, a, w) — generated from the code, never typed by hand. Claim T11 (`tests/test_gro.py`)
checks every instance's gradient against its native loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from algorithms.advantages import batch_zscore, group_zscore, leave_one_out_advantage
from algorithms.base import Batch, Method, Metrics, Needs, register
from algorithms.config import ConfigError, check_choices, check_positive, check_range, field
from algorithms.cpl import CPLConfig
from algorithms.dpo import DPOConfig, best_worst
from algorithms.grpo import GRPOConfig, token_kl_k3
from algorithms.kto import KTOConfig, ReferencePoint, kto_reference_point
from algorithms.ppo import AdvantageNorm, Reduction, _zero_masked, reduce_tokens
from algorithms.reinforce_pp import REINFORCEPPConfig, reinforce_pp_advantages
from algorithms.remax import ReMaxConfig
from algorithms.rloo import RLOOConfig

AdvantageKind = Literal["raw", "leave_one_out", "greedy_baseline", "group_zscore", "token_return_whiten", "label"]
FKind = Literal["identity", "relu"]
ScoreKind = Literal["logp", "logratio_ref"]
Level = Literal["sequence", "token"]
AnchorKind = Literal["none", "other_samples", "logp_old", "reference_point"]
WeightKind = Literal["one", "sigmoid", "sigmoid_prime", "clip_ratio"]
Pairs = Literal["all", "best_worst"]


@dataclass(frozen=True)
class GROConfig:
    """One GRO instance. The defaults are GRO itself (`[GRO] §5`): leave-one-out advantage, identity f,
    s = log π_θ, anchor = the other samples of the context, sigmoid weight on the separation."""

    advantage: AdvantageKind = field("leave_one_out", "how A is formed from the rewards (see module doc)")
    reward_kl: float = field(0.0, "β of a k1 KL (log π_old − log π_ref) subtracted from the reward before A")
    advantage_norm: AdvantageNorm = field("none", "z-score A over the batch after forming it (RLOO option)")
    std_eps: float = field(1e-4, "eps added to the group std for advantage='group_zscore'; GRPO/TRL: 1e-4")
    gamma: float = field(1.0, "discount of the token returns for advantage='token_return_whiten'; REINFORCE++: 1")
    label_pos: float = field(1.0, "A of a chosen sample for advantage='label' (KTO: λ_D)")
    label_neg: float = field(-1.0, "A of a rejected sample for advantage='label' (KTO: −λ_U; CPL: −λ)")
    f: FKind = field("identity", "monotone f applied to A; identity in every instance of `[GRO]` Table 1")
    score: ScoreKind = field("logp", "s from log π_θ, or from log π_θ/π_ref (DPO, KTO)")
    score_level: Level = field("sequence", "s per sequence (summed log-probs) or per token (PPO-style ratios)")
    score_scale: float = field(1.0, "c in s = c·(log-prob or log-ratio): β for DPO/KTO, α for CPL")
    score_scale_neg: float = field(1.0, "extra factor on s where A < 0 (CPL's bias λ); 1 otherwise")
    anchor: AnchorKind = field("other_samples", "the anchor a that s is compared with")
    reference_point: ReferencePoint = field("mismatched", "for anchor='reference_point': how KTO's z is estimated")
    weight: WeightKind = field("sigmoid", "the dynamic weight w")
    weight_scale: float = field(2.0, "c in w; GRO default 2 so that w = 1 at zero separation (then GRO = RLOO)")
    clip_eps: float = field(0.2, "ε of weight='clip_ratio'")
    loss_kl: float = field(0.0, "β of a per-token k3 KL(π_θ‖π_ref) added to the loss (GRPO)")
    pairs: Pairs = field("all", "use all samples, or each context's best and worst by score (DPO/CPL pairs)")
    reduction: Reduction = field("sequence_sum", "how per-token terms become the loss (see ppo.reduce_tokens)")

    def __post_init__(self):
        check_choices(self)
        check_positive(self, "reward_kl", "loss_kl", strict=False)
        check_positive(self, "std_eps", "score_scale", "score_scale_neg", "weight_scale")
        check_range(self, "gamma", 0.0, 1.0)
        check_range(self, "clip_eps", 0.0, 1.0, lo_open=True, hi_open=True)
        if not self.label_pos > 0 or not self.label_neg < 0:
            raise ConfigError(f"GROConfig.label_pos = {self.label_pos!r} must be > 0 and label_neg = {self.label_neg!r} < 0.")
        if self.weight == "clip_ratio" and (self.anchor, self.score, self.score_scale, self.score_scale_neg) != ("logp_old", "logp", 1.0, 1.0):
            raise ConfigError("GROConfig.weight = 'clip_ratio' needs anchor='logp_old', score='logp', score_scale=1 and "
                              "score_scale_neg=1, so that s − a is the log-ratio log π_θ/π_old.")
        if self.anchor == "other_samples" and self.score_level != "sequence":
            raise ConfigError("GROConfig.anchor = 'other_samples' compares whole samples: it needs score_level='sequence'.")
        if self.anchor == "reference_point" and self.score != "logratio_ref":
            raise ConfigError("GROConfig.anchor = 'reference_point' (KTO's z) needs score='logratio_ref'.")
        if self.pairs == "best_worst" and self.advantage != "label":
            raise ConfigError("GROConfig.pairs = 'best_worst' labels the pair: it needs advantage='label'.")
        if self.score_scale_neg != 1.0 and self.advantage != "label":
            raise ConfigError("GROConfig.score_scale_neg != 1 reads the sign of a per-sample label: it needs advantage='label'.")


# ------------------------------------------------------------------------------------------------
# The pure loss
# ------------------------------------------------------------------------------------------------


def gro_weight(u: Tensor, sign: Tensor, *, weight: WeightKind, scale: float, clip_eps: float) -> Tensor:
    """w(u; sgn A) ≥ 0 on the separation u = sg[s] − a (detached tensors, any shape).

    "one": 1 · scale. "sigmoid": scale·σ(−sgn(A)·u): large while the sample sits on the wrong side of
    its anchor, vanishing once it is well separated. "sigmoid_prime": scale·σ(u)(1 − σ(u)).
    "clip_ratio": e^u (the ratio π_θ/π_old when u is the log-ratio) where PPO's min(·) is unclipped,
    0 where it is clipped in the advantage's direction (A > 0, u > log(1+ε); A < 0, u < log(1−ε)).
    """
    if weight == "one":
        return torch.full_like(u, scale)
    if weight == "sigmoid":
        return scale * torch.sigmoid(-sign * u)
    if weight == "sigmoid_prime":
        p = torch.sigmoid(u)
        return scale * p * (1.0 - p)
    if weight == "clip_ratio":
        up = (sign > 0) & (u > math.log1p(clip_eps))
        down = (sign < 0) & (u < math.log1p(-clip_eps))
        return scale * torch.where(up | down, torch.zeros_like(u), u.exp())
    raise ValueError(f"unknown weight {weight!r}; allowed: one, sigmoid, sigmoid_prime, clip_ratio")


def gro_loss(token_logp: Tensor, advantage: Tensor, s: Tensor, anchor: Tensor | None, token_mask: Tensor, *,
             f: FKind, weight: WeightKind, weight_scale: float, clip_eps: float, reduction: Reduction,
             token_logp_ref: Tensor | None = None, loss_kl: float = 0.0) -> tuple[Tensor, Metrics]:
    """Surrogate with gradient −E[f(A)·w(sg[s] − a)·∇ log π_θ] (`[GRO] §5` eq. 35), plus an optional loss KL.

    Args:
        token_logp: [B, K, T] per-token log π_θ, differentiable (T = 1: a whole sample as one action).
        advantage: [B, K] per sample or [B, K, T] per token; detached inside.
        s: [B, K] or [B, K, T] score; stop-gradient applied inside.
        anchor: same shape as s (or broadcastable), detached inside; None means a = 0.
        token_mask: [B, K, T] float {0,1}: the units that enter the loss.
        f, weight, weight_scale, clip_eps: see `GROConfig` and `gro_weight`.
        reduction: see `ppo.reduce_tokens`.
        token_logp_ref, loss_kl: a per-token k3 KL(π_θ‖π_ref) added to the loss with coefficient loss_kl,
            reduced the same way (GRPO); its gradient is (1 − π_ref/π_θ)·∇log π_θ per token.
    Returns: loss, metrics `policy/loss` (the score-function surrogate), `weights/mean`, `weights/max`
    (of w over valid units), `policy/separation` (mean u), `policy/advantage_mean`, and `kl/ref` when
    the loss KL is on.
    Deviations: w may read sgn(A) (see the module doc).
    """
    def expand(x: Tensor) -> Tensor:
        return x[..., None] if x.dim() == token_logp.dim() - 1 else x

    adv = expand(advantage.detach())
    u = expand(s.detach()) - (0.0 if anchor is None else expand(anchor.detach()))
    f_adv = adv if f == "identity" else F.relu(adv) if f == "relu" else None
    if f_adv is None:
        raise ValueError(f"unknown f {f!r}; allowed: identity, relu")
    w = gro_weight(u, torch.sign(adv), weight=weight, scale=weight_scale, clip_eps=clip_eps)
    coef = _zero_masked((f_adv * w).expand_as(token_logp), token_mask)
    pg = reduce_tokens(-coef * _zero_masked(token_logp, token_mask), token_mask, reduction)
    n = token_mask.sum().clamp_min(1.0)
    w_valid = _zero_masked(w.expand_as(token_logp), token_mask)
    metrics = {
        "policy/loss": pg.detach(),
        "weights/mean": w_valid.sum() / n,
        "weights/max": w_valid.max(),
        "policy/separation": _zero_masked(u.expand_as(token_logp), token_mask).sum() / n,
        "policy/advantage_mean": _zero_masked(adv.expand_as(token_logp), token_mask).sum() / n,
    }
    loss = pg
    if loss_kl > 0.0:
        if token_logp_ref is None:
            raise ValueError("gro_loss: loss_kl > 0 needs token_logp_ref")
        kl = token_kl_k3(token_logp, token_logp_ref, token_mask)
        loss = loss + loss_kl * reduce_tokens(kl, token_mask, reduction)
        metrics["kl/ref"] = kl.detach().sum() / n
    return loss, metrics


# ------------------------------------------------------------------------------------------------
# From a configuration and raw tensors to (A, s, a) — the instance mapping
# ------------------------------------------------------------------------------------------------


def _need(x: Tensor | None, what: str, why: str) -> Tensor:
    if x is None:
        raise ValueError(f"GRO with {why} needs {what}, which was not given")
    return x


def gro_terms(cfg: GROConfig, *, token_logp: Tensor, token_mask: Tensor, score: Tensor,
              token_logp_old: Tensor | None = None, token_logp_ref: Tensor | None = None, label: Tensor | None = None,
              baseline: Tensor | None = None, logp_mismatched: Tensor | None = None,
              logp_ref_mismatched: Tensor | None = None) -> dict[str, Tensor | None]:
    """The detached (A, s, a) and the unit mask of `cfg`'s instance, from raw tensors.

    Args:
        token_logp, token_mask: [B, K, T] (T = 1 for sequence-level data).
        score: [B, K] rewards (or any score, higher is better).
        token_logp_old, token_logp_ref: [B, K, T] or None; label: [B, K] ±1/0 or None; baseline: [B] or None;
        logp_mismatched, logp_ref_mismatched: [B, K] summed log-probs of other contexts' samples (KTO's z).
    Returns: {"token_logp": the differentiable log-probs the loss runs on ([B, K, T], or [B, 2, T] for
    pairs), "token_logp_ref": likewise, "advantage": [B, K] or [B, K, T], "s": at cfg.score_level,
    "anchor": same or None, "token_mask": restricted to the units that enter the loss}.

    With pairs="best_worst" every tensor is gathered into [B, 2, ...] (slot 0 the best, slot 1 the
    worst sample, as `dpo.best_worst`), so a context whose scores tie puts the same sample in both
    slots and the gather sums both roles' gradients, exactly as the native pair losses do.
    """
    dtype = token_logp.dtype
    seq_mask_all = (token_mask.sum(-1) > 0).to(dtype)
    z = None
    if cfg.anchor == "reference_point":
        if cfg.reference_point == "zero":
            z = token_logp.new_zeros(())
        elif cfg.reference_point == "matched":
            r_all = _need(token_logp_ref, "token_logp_ref", "reference_point='matched'")
            z = kto_reference_point(_zero_masked(token_logp.detach(), token_mask).sum(-1),
                                    _zero_masked(r_all.detach(), token_mask).sum(-1), seq_mask_all)
        else:
            mm = _need(logp_mismatched, "logp_mismatched", "reference_point='mismatched'")
            mm_ref = _need(logp_ref_mismatched, "logp_ref_mismatched", "reference_point='mismatched'")
            z = kto_reference_point(mm, mm_ref, seq_mask_all)
    chosen = rejected = None
    if cfg.pairs == "best_worst":
        idx = torch.stack(best_worst(score, seq_mask_all), -1)  # [B, 2]

        def take(x: Tensor | None) -> Tensor | None:
            if x is None:
                return None
            return x.gather(1, idx[..., None].expand(-1, -1, x.shape[-1])) if x.dim() == 3 else x.gather(1, idx)

        token_logp, token_mask, token_logp_old, token_logp_ref = map(take, (token_logp, token_mask, token_logp_old,
                                                                           token_logp_ref))
        score = take(score)
        pair_mask = (token_mask.sum(-1) > 0).to(dtype)
        chosen = torch.cat([pair_mask[:, :1], torch.zeros_like(pair_mask[:, 1:])], 1)  # slot 0: the best
        rejected = torch.cat([torch.zeros_like(pair_mask[:, :1]), pair_mask[:, 1:]], 1)  # slot 1: the worst
    seq_mask = (token_mask.sum(-1) > 0).to(dtype)
    logp_sg = _zero_masked(token_logp.detach(), token_mask)
    old = logp_sg if token_logp_old is None else _zero_masked(token_logp_old.detach(), token_mask)
    ref = None if token_logp_ref is None else _zero_masked(token_logp_ref.detach(), token_mask)

    unit = seq_mask
    if cfg.advantage == "label" and chosen is None:
        lab = _need(label, "label", "advantage='label'")
        chosen, rejected = seq_mask * (lab > 0).to(dtype), seq_mask * (lab < 0).to(dtype)
        unit = chosen + rejected
    unit_tok = token_mask * unit[..., None]

    reward = score.detach()
    if cfg.reward_kl > 0.0 and cfg.advantage != "token_return_whiten":
        ref_needed = _need(ref, "token_logp_ref", "reward_kl > 0")
        reward = reward - cfg.reward_kl * (old.sum(-1) - ref_needed.sum(-1))
    kind = cfg.advantage
    if kind == "raw":
        adv = reward
    elif kind == "leave_one_out":
        adv = leave_one_out_advantage(reward, unit)
    elif kind == "greedy_baseline":
        adv = reward - _need(baseline, "baseline", "advantage='greedy_baseline'").detach()[:, None]
    elif kind == "group_zscore":
        adv = group_zscore(reward, unit, eps=cfg.std_eps)
    elif kind == "token_return_whiten":
        if cfg.reward_kl > 0.0:
            _need(ref, "token_logp_ref", "reward_kl > 0")
        adv = reinforce_pp_advantages(score, old, ref, unit_tok, beta=cfg.reward_kl, gamma=cfg.gamma)
    else:  # label
        adv = cfg.label_pos * chosen + cfg.label_neg * rejected
    if cfg.advantage_norm == "batch":
        adv = batch_zscore(adv, unit if adv.dim() == unit.dim() else unit_tok)
    adv = _zero_masked(adv, unit if adv.dim() == unit.dim() else unit_tok)

    base = logp_sg if cfg.score_level == "token" else logp_sg.sum(-1)
    if cfg.score == "logratio_ref":
        r = _need(ref, "token_logp_ref", "score='logratio_ref'")
        base = base - (r if cfg.score_level == "token" else r.sum(-1))
    scale = cfg.score_scale
    if cfg.score_scale_neg != 1.0:
        scale = torch.where(adv < 0, torch.full_like(adv, cfg.score_scale * cfg.score_scale_neg),
                            torch.full_like(adv, cfg.score_scale))
    s = scale * base

    if cfg.anchor == "none":
        anchor = None
    elif cfg.anchor == "other_samples":
        s_units = _zero_masked(s, unit)
        n = unit.sum(-1, keepdim=True)
        anchor = (s_units.sum(-1, keepdim=True) - s_units) / (n - 1.0).clamp_min(1.0)
    elif cfg.anchor == "logp_old":
        o = _need(token_logp_old, "token_logp_old", "anchor='logp_old'")
        o = _zero_masked(o.detach(), token_mask)
        anchor = o if cfg.score_level == "token" else o.sum(-1)
    else:  # reference_point: KTO's z, from the batch before any pair selection
        anchor = cfg.score_scale * z * torch.ones_like(s)
    return {"token_logp": token_logp, "token_logp_ref": token_logp_ref, "advantage": adv, "s": s, "anchor": anchor,
            "token_mask": unit_tok}


def gro_instance_loss(cfg: GROConfig, *, token_logp: Tensor, token_mask: Tensor, score: Tensor,
                      **tensors: Tensor | None) -> tuple[Tensor, Metrics]:
    """`gro_terms` then `gro_loss` with `cfg`'s options (keyword tensors as in `gro_terms`)."""
    t = gro_terms(cfg, token_logp=token_logp, token_mask=token_mask, score=score, **tensors)
    return gro_loss(t["token_logp"], t["advantage"], t["s"], t["anchor"], t["token_mask"], f=cfg.f, weight=cfg.weight,
                    weight_scale=cfg.weight_scale, clip_eps=cfg.clip_eps, reduction=cfg.reduction,
                    token_logp_ref=t["token_logp_ref"], loss_kl=cfg.loss_kl)


def needs_of(cfg: GROConfig) -> Needs:
    """What a `Batch` must carry for this instance (the class-level `GRO.needs` covers only the default)."""
    ref = cfg.reward_kl > 0 or cfg.loss_kl > 0 or cfg.score == "logratio_ref"
    k2 = cfg.advantage in ("leave_one_out", "group_zscore") or cfg.pairs == "best_worst"
    return Needs(min_samples=2 if k2 else 1, labels=cfg.advantage == "label" and cfg.pairs == "all",
                 logp_old=cfg.anchor == "logp_old", logp_ref=ref, baseline=cfg.advantage == "greedy_baseline")


@register
class GRO(Method):
    """GRO on a `Batch` (per token when the task sets token fields, else each sample one action). KTO's
    mismatched reference point reads `batch.logp_mismatched` / `batch.logp_ref_mismatched` when a task sets them."""

    name = "gro"
    Config = GROConfig
    needs = Needs(min_samples=2)

    @classmethod
    def needs_for(cls, cfg: GROConfig) -> Needs:
        return needs_of(cfg)

    def loss(self, batch: Batch) -> tuple[Tensor, Metrics]:
        logp, logp_old, logp_ref, mask = batch.tokens()
        return gro_instance_loss(self.cfg, token_logp=logp, token_mask=mask,
                                 score=batch.score, token_logp_old=logp_old, token_logp_ref=logp_ref,
                                 label=batch.label, baseline=batch.baseline,
                                 logp_mismatched=getattr(batch, "logp_mismatched", None),
                                 logp_ref_mismatched=getattr(batch, "logp_ref_mismatched", None))


# ------------------------------------------------------------------------------------------------
# The instances: each method's config -> its GRO config, with the derivation
# ------------------------------------------------------------------------------------------------


def rloo_as_gro(cfg: RLOOConfig) -> GROConfig:
    """RLOO (`rloo.rloo_loss`): L = −mean_k A_k log π_θ(y_k), A_k = LOO(r − β k1)_k, a constant.

    ∇L = −mean_k A_k ∇log π_θ(y_k): f = identity, w = 1, no anchor; the reward KL sits in A.
    """
    return GROConfig(advantage="leave_one_out", reward_kl=cfg.beta, advantage_norm=cfg.advantage_norm,
                     score="logp", anchor="none", weight="one", weight_scale=1.0, reduction="sequence_sum")


def remax_as_gro(cfg: ReMaxConfig) -> GROConfig:
    """ReMax (`remax.remax_loss`): L = −mean_k (r_k − r(ȳ)) log π_θ(y_k).

    ∇L = −mean_k (r_k − r(ȳ)) ∇log π_θ(y_k): A = r − r(greedy), f = identity, w = 1, no anchor.
    """
    return GROConfig(advantage="greedy_baseline", score="logp", anchor="none", weight="one", weight_scale=1.0,
                     reduction="sequence_sum")


def grpo_as_gro(cfg: GRPOConfig) -> GROConfig:
    """GRPO (`grpo.grpo_loss`): ℓ_t = −min(ρ_t A, clip(ρ_t) A) + β k3_t, ρ_t = exp(ℓ_θ,t − ℓ_old,t).

    Where the min picks ρ_t A (unclipped), ∂ℓ_t/∂ℓ_θ,t = −A ρ_t; where it picks the clipped constant
    (A > 0 and ρ_t > 1+ε, or A < 0 and ρ_t < 1−ε) the derivative is 0. So the first term's gradient is
    −A · ρ_t 1[unclipped] · ∇ℓ_θ,t: A = group z-score, f = identity, s = log π_θ per token, a = log π_old
    per token (u = log ρ_t), w = e^u · 1[unclipped] ("clip_ratio"). The k3 term stays as the loss KL
    (∇k3_t = (1 − π_ref/π_θ) ∇ℓ_θ,t), reduced the same way.
    """
    return GROConfig(advantage="group_zscore", std_eps=cfg.std_eps, score="logp", score_level="token",
                     anchor="logp_old", weight="clip_ratio", weight_scale=1.0, clip_eps=cfg.clip_eps,
                     loss_kl=cfg.beta, reduction=cfg.reduction)


def reinforce_pp_as_gro(cfg: REINFORCEPPConfig) -> GROConfig:
    """REINFORCE++ (`reinforce_pp.reinforce_pp_loss`): ℓ_t = −min(ρ_t A_t, clip(ρ_t) A_t), A_t the
    whitened token return with the per-token k1 KL reward (a constant of the update).

    As for GRPO, ∇ℓ_t = −A_t ρ_t 1[unclipped] ∇ℓ_θ,t: A = whitened token returns (reward_kl = β, γ),
    s = log π_θ per token, a = log π_old per token, w = "clip_ratio"; no loss KL.
    """
    return GROConfig(advantage="token_return_whiten", reward_kl=cfg.beta, gamma=cfg.gamma, score="logp",
                     score_level="token", anchor="logp_old", weight="clip_ratio", weight_scale=1.0,
                     clip_eps=cfg.clip_eps, reduction=cfg.reduction)


def dpo_as_gro(cfg: DPOConfig) -> GROConfig:
    """DPO (`dpo.dpo_loss` on each context's best/worst): L = −mean_pairs log σ(r̂_w − r̂_l), r̂ = β(log π_θ − log π_ref).

    ∇L = −mean_pairs β σ(r̂_l − r̂_w)(∇log π_θ(y_w) − ∇log π_θ(y_l))  (`[EM-LLM] §5`, claim T5). With
    s = r̂ (stop-gradient), each sample's anchor the other sample's s, A = +1 (y_w) / −1 (y_l) and
    w = β σ(−sgn(A)(s − a)): y_w gets −(+1)·βσ(r̂_l − r̂_w), y_l gets −(−1)·βσ(r̂_l − r̂_w) — the same
    two terms. The pair sum is averaged over contexts ("context_sum").
    """
    return GROConfig(advantage="label", label_pos=1.0, label_neg=-1.0, score="logratio_ref", score_scale=cfg.beta,
                     anchor="other_samples", weight="sigmoid", weight_scale=cfg.beta, pairs="best_worst",
                     reduction="context_sum")


def kto_as_gro(cfg: KTOConfig) -> GROConfig:
    """KTO (`kto.kto_loss`): desirable λ_D(1 − σ(β(r − z))), undesirable λ_U(1 − σ(β(z − r))), z detached.

    ∂/∂log π_θ: −λ_D β σ'(β(r − z)) and +λ_U β σ'(β(z − r)) = +λ_U β σ'(β(r − z)) (σ' is even). With
    s = β r, a = β z: u = β(r − z), A = +λ_D / −λ_U, w = β σ'(u) ("sigmoid_prime"); mean over
    labelled samples ("sequence_sum" on the labelled units) (`[GRO] §2.2` eq. 17).
    """
    return GROConfig(advantage="label", label_pos=cfg.desirable_weight, label_neg=-cfg.undesirable_weight,
                     score="logratio_ref", score_scale=cfg.beta, anchor="reference_point",
                     reference_point=cfg.reference_point, weight="sigmoid_prime", weight_scale=cfg.beta,
                     reduction="sequence_sum")


def cpl_as_gro(cfg: CPLConfig) -> GROConfig:
    """CPL (`cpl.cpl_loss` on best/worst): L = −mean log σ(m), m = α log π_θ(y_w) − λ α log π_θ(y_l).

    ∇L = −σ(−m)(α ∇log π_θ(y_w) − λ α ∇log π_θ(y_l)) (`[GRO] §2.2` eq. 19–20). Take s = α log π_θ for
    y_w and s = λ α log π_θ for y_l (score_scale_neg = λ), anchors the other sample's s, so
    u_w = m and u_l = −m; A = +1 / −λ and w = α σ(−sgn(A) u) = α σ(−m) for both: y_w gets −α σ(−m),
    y_l gets +λ α σ(−m). Averaged over pairs ("context_sum").
    """
    return GROConfig(advantage="label", label_pos=1.0, label_neg=-cfg.bias, score="logp", score_scale=cfg.alpha,
                     score_scale_neg=cfg.bias, anchor="other_samples", weight="sigmoid", weight_scale=cfg.alpha,
                     pairs="best_worst", reduction="context_sum")


INSTANCES: dict[str, tuple[type, Callable[[Any], GROConfig]]] = {
    "rloo": (RLOOConfig, rloo_as_gro),
    "remax": (ReMaxConfig, remax_as_gro),
    "grpo": (GRPOConfig, grpo_as_gro),
    "reinforce_pp": (REINFORCEPPConfig, reinforce_pp_as_gro),
    "dpo": (DPOConfig, dpo_as_gro),
    "kto": (KTOConfig, kto_as_gro),
    "cpl": (CPLConfig, cpl_as_gro),
}
"""Method name -> (its config class, the map to its GRO instance). The names are the registry's."""


def gro_instance(name: str, native: Any = None) -> GROConfig:
    """The GRO config of method `name` under its config `native` (its defaults when None)."""
    if name not in INSTANCES:
        raise ValueError(f"no GRO instance for {name!r}; known: {', '.join(INSTANCES)}")
    cls, to_gro = INSTANCES[name]
    return to_gro(cls() if native is None else native)


# ------------------------------------------------------------------------------------------------
# The table: (A, f, s, a, w) as short strings, from the configurations
# ------------------------------------------------------------------------------------------------


def _num(x: float) -> str:
    return f"{x:g}"


def describe(cfg: GROConfig) -> dict[str, str]:
    """Short strings for A, f, s, a, w (and the extra loss KL, the reduction) read off `cfg`'s fields."""
    r = "r" if cfg.reward_kl == 0 else f"(r − {_num(cfg.reward_kl)}·k1)"
    adv = {
        "raw": r,
        "leave_one_out": f"{r} − mean of the other samples' {r}",
        "greedy_baseline": f"{r} − {r}(greedy)",
        "group_zscore": f"({r} − mean_K)/(std_K + {_num(cfg.std_eps)})",
        "token_return_whiten": (f"whiten_batch(Σ_t'≥t γ^(t'−t) r_t'), γ={_num(cfg.gamma)}, "
                                f"r_t = r·1[last] − {_num(cfg.reward_kl)}·k1_t"),
        "label": f"+{_num(cfg.label_pos)} chosen / −{_num(-cfg.label_neg)} rejected",
    }[cfg.advantage]
    if cfg.advantage_norm == "batch":
        adv = f"zscore_batch({adv})"
    if cfg.pairs == "best_worst":
        adv += " (best/worst of K)"
    logp = "log π_θ" if cfg.score == "logp" else "log π_θ/π_ref"
    c = "" if cfg.score_scale == 1.0 else f"{_num(cfg.score_scale)}·"
    s = f"{c}{logp}" + (" per token" if cfg.score_level == "token" else "")
    if cfg.score_scale_neg != 1.0:
        s += f" (×{_num(cfg.score_scale_neg)} if A<0)"
    anchor = {
        "none": "—",
        "other_samples": "s of the pair's other sample" if cfg.pairs == "best_worst" else "mean s of the context's other samples",
        "logp_old": "log π_old" + (" per token" if cfg.score_level == "token" else ""),
        "reference_point": f"{_num(cfg.score_scale)}·z_ref ({cfg.reference_point}, ≥ 0)",
    }[cfg.anchor]
    k = "" if cfg.weight_scale == 1.0 else f"{_num(cfg.weight_scale)}·"
    w = {
        "one": _num(cfg.weight_scale),
        "sigmoid": f"{k}σ(−sgn(A)(s−a))",
        "sigmoid_prime": f"{k}σ'(s−a)",
        "clip_ratio": f"{k}e^(s−a)·1[unclipped, ε={_num(cfg.clip_eps)}]",
    }[cfg.weight]
    extra = "—" if cfg.loss_kl == 0 else f"+ {_num(cfg.loss_kl)}·k3 KL(π_θ‖π_ref)"
    return {"A": adv, "f": "A" if cfg.f == "identity" else "max(A, 0)", "s": s, "a": anchor, "w": w,
            "loss KL": extra, "reduction": cfg.reduction}


def gro_table(natives: dict[str, Any] | None = None) -> list[dict[str, str]]:
    """One row per instance (and GRO itself): {"method", "A", "f", "s", "a", "w", "loss KL", "reduction"}.

    Args: natives: method name -> its config (defaults for the methods not given).
    """
    natives = natives or {}
    rows = [{"method": name, **describe(gro_instance(name, natives.get(name)))} for name in INSTANCES]
    rows.append({"method": "gro", **describe(natives.get("gro", GROConfig()))})
    return rows


def gro_table_markdown(natives: dict[str, Any] | None = None) -> str:
    """`gro_table` as a Markdown table (for reports)."""
    rows = gro_table(natives)
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(row[c] for c in cols) + " |" for row in rows]
    return "\n".join(lines)
