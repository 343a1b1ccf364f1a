"""Tests for algorithms.gro: claim T11 (every GRO instance's gradient equals its native loss's gradient),
the weight functions, GRO itself, the generated instance table, and config validation.
"""

import pytest
import torch
from torch.func import functional_call, vmap

from algorithms import REGISTRY, Batch
from algorithms.config import ConfigError
from algorithms.cpl import CPLConfig
from algorithms.dpo import DPOConfig
from algorithms.gro import (
    INSTANCES,
    GROConfig,
    cpl_as_gro,
    describe,
    dpo_as_gro,
    gro_instance,
    gro_instance_loss,
    gro_table,
    gro_table_markdown,
    gro_weight,
    grpo_as_gro,
    kto_as_gro,
    needs_of,
    reinforce_pp_as_gro,
    remax_as_gro,
    rloo_as_gro,
)
from algorithms.grpo import GRPOConfig, grpo_loss
from algorithms.kto import KTOConfig, kto_loss, kto_reference_point
from algorithms.reinforce_pp import REINFORCEPPConfig, reinforce_pp_loss
from algorithms.remax import ReMaxConfig
from algorithms.rloo import RLOOConfig

D = torch.float64


def make_batch(seed=0, b=3, k=4, equal_context=False):
    """A [B, K] batch with every optional field; logp is a leaf. Context 0 may have all-equal scores."""
    g = torch.Generator().manual_seed(seed)
    score = torch.randn(b, k, generator=g, dtype=D)
    if equal_context:
        score[0] = 0.7
    label = torch.where(score >= score.median(-1, keepdim=True).values, 1.0, -1.0).to(D)
    return Batch(logp=(torch.randn(b, k, generator=g, dtype=D) - 2.0).requires_grad_(), score=score,
                 mask=torch.ones(b, k, dtype=D), logp_old=torch.randn(b, k, generator=g, dtype=D) - 2.0,
                 logp_ref=torch.randn(b, k, generator=g, dtype=D) - 2.0, label=label,
                 baseline=torch.randn(b, generator=g, dtype=D))


def grad_of(loss, x):
    (g,) = torch.autograd.grad(loss, x)
    return g


def assert_same_gradient(native, gro, rel=1e-6):
    assert native.abs().max() > 0, "vacuous: the native gradient is zero"
    torch.testing.assert_close(gro, native, rtol=rel, atol=rel * native.abs().max().item())


# ------------------------------------------------------------------------------------------------
# T11 on the Method adaptors: native method vs the GRO method configured as its instance
# ------------------------------------------------------------------------------------------------

METHOD_CASES = [
    ("rloo", RLOOConfig()),
    ("rloo", RLOOConfig(beta=0.3, advantage_norm="batch")),
    ("remax", ReMaxConfig()),
    ("dpo", DPOConfig()),
    ("dpo", DPOConfig(beta=2.0)),
    ("cpl", CPLConfig()),
    ("cpl", CPLConfig(alpha=0.7, bias=0.9)),
    ("kto", KTOConfig(reference_point="matched", beta=0.5, desirable_weight=1.0, undesirable_weight=1.5)),
    ("kto", KTOConfig(reference_point="zero")),
    ("grpo", GRPOConfig()),
    ("reinforce_pp", REINFORCEPPConfig(beta=0.05)),
]


@pytest.mark.parametrize("name,cfg", METHOD_CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(METHOD_CASES)])
def test_T11_gro_instance_gradient_equals_native_method_gradient(name, cfg):
    batch = make_batch(seed=hash(name) % 1000, equal_context=name in ("dpo", "cpl"))
    native = grad_of(REGISTRY[name](cfg)(batch)[0], batch.logp)
    gro = grad_of(REGISTRY["gro"](gro_instance(name, cfg))(batch)[0], batch.logp)
    assert_same_gradient(native, gro)


# ------------------------------------------------------------------------------------------------
# T11 at token level (GRPO, REINFORCE++: per-token ratios, ragged sequences, clipping active)
# ------------------------------------------------------------------------------------------------


def token_data(seed=0, b=3, k=4, n=6):
    g = torch.Generator().manual_seed(seed)
    logp = (0.3 * torch.randn(b, k, n, generator=g, dtype=D) - 1.0).requires_grad_()
    old = logp.detach() + 0.3 * torch.randn(b, k, n, generator=g, dtype=D)  # ratios e^{±0.3}: some clipped
    ref = logp.detach() + 0.2 * torch.randn(b, k, n, generator=g, dtype=D)
    lengths = torch.randint(1, n + 1, (b, k), generator=g)
    mask = (torch.arange(n)[None, None, :] < lengths[..., None]).to(D)
    score = torch.randn(b, k, generator=g, dtype=D)
    return logp, old, ref, mask, score


@pytest.mark.parametrize("reduction", ["sequence_mean", "token_mean", "sequence_sum"])
def test_T11_grpo_token_level(reduction):
    logp, old, ref, mask, score = token_data(1)
    cfg = GRPOConfig(reduction=reduction)
    native_loss, m = grpo_loss(logp, old, ref, score, mask, clip_eps=cfg.clip_eps, beta=cfg.beta, reduction=reduction)
    assert 0 < m["ratio/clipfrac"] < 1  # both branches of the clip are exercised
    gro_loss_, _ = gro_instance_loss(grpo_as_gro(cfg), token_logp=logp, token_mask=mask, score=score,
                                     token_logp_old=old, token_logp_ref=ref)
    assert_same_gradient(grad_of(native_loss, logp), grad_of(gro_loss_, logp))


@pytest.mark.parametrize("reduction", ["token_mean", "sequence_mean"])
def test_T11_reinforce_pp_token_level(reduction):
    logp, old, ref, mask, score = token_data(2)
    cfg = REINFORCEPPConfig(beta=0.1, reduction=reduction)
    native_loss, m = reinforce_pp_loss(logp, old, ref, score, mask, clip_eps=cfg.clip_eps, beta=cfg.beta,
                                       gamma=cfg.gamma, reduction=reduction)
    assert 0 < m["ratio/clipfrac"] < 1
    gro_loss_, _ = gro_instance_loss(reinforce_pp_as_gro(cfg), token_logp=logp, token_mask=mask, score=score,
                                     token_logp_old=old, token_logp_ref=ref)
    assert_same_gradient(grad_of(native_loss, logp), grad_of(gro_loss_, logp))


def test_T11_kto_with_mismatched_reference_point():
    batch = make_batch(3)
    g = torch.Generator().manual_seed(4)
    mm, mm_ref = torch.randn(3, 4, generator=g, dtype=D), torch.randn(3, 4, generator=g, dtype=D) - 1.0
    cfg = KTOConfig(beta=0.3, desirable_weight=1.3, undesirable_weight=0.8)
    z = kto_reference_point(mm, mm_ref, batch.mask)
    assert z > 0  # the clamp is not what makes z
    native, _ = kto_loss(batch.logp, batch.logp_ref, batch.label, batch.mask, z, beta=cfg.beta,
                         desirable_weight=cfg.desirable_weight, undesirable_weight=cfg.undesirable_weight)
    gro, _ = gro_instance_loss(kto_as_gro(cfg), token_logp=batch.logp[..., None], token_mask=batch.mask[..., None],
                               score=batch.score, token_logp_ref=batch.logp_ref[..., None], label=batch.label,
                               logp_mismatched=mm, logp_ref_mismatched=mm_ref)
    assert_same_gradient(grad_of(native, batch.logp), grad_of(gro, batch.logp))


@pytest.mark.parametrize("name", sorted(INSTANCES))
def test_every_instance_runs_under_vmap_as_the_bandit_loop_runs_it(name):
    cfg = gro_instance(name)
    if cfg.anchor == "reference_point":
        cfg = gro_instance(name, KTOConfig(reference_point="matched"))
    method = REGISTRY["gro"](cfg)
    stacked = [make_batch(seed=i, equal_context=True) for i in range(3)]
    fields = ("logp", "score", "mask", "logp_old", "logp_ref", "label", "baseline")
    tensors = {f: torch.stack([getattr(b, f).detach() for b in stacked]) for f in fields}
    losses, _ = vmap(lambda x: functional_call(method, {}, (Batch(**x),)))(tensors)
    for i, b in enumerate(stacked):
        torch.testing.assert_close(losses[i], method(b)[0])


def test_T11_is_not_vacuous_a_wrong_weight_breaks_it():
    batch = make_batch(5)
    native = grad_of(REGISTRY["dpo"](DPOConfig())(batch)[0], batch.logp)
    wrong = GROConfig(**{**dpo_as_gro(DPOConfig()).__dict__, "weight": "sigmoid_prime"})
    gro = grad_of(REGISTRY["gro"](wrong)(batch)[0], batch.logp)
    assert not torch.allclose(gro, native, rtol=1e-3)


def test_T5_dpo_gradient_through_the_gro_form():
    # ∇ = −β σ(r̂_l − r̂_w)(∇ℓ_w − ∇ℓ_l) per pair, /B: check the per-sample coefficients directly
    batch = make_batch(6)
    beta = 0.4
    g = grad_of(REGISTRY["gro"](dpo_as_gro(DPOConfig(beta=beta)))(batch)[0], batch.logp)
    w, l = batch.score.argmax(-1), batch.score.argmin(-1)
    r = beta * (batch.logp.detach() - batch.logp_ref)
    rows = torch.arange(3)
    coef = beta * torch.sigmoid(r[rows, l] - r[rows, w]) / 3
    torch.testing.assert_close(g[rows, w], -coef)
    torch.testing.assert_close(g[rows, l], coef)


# ------------------------------------------------------------------------------------------------
# GRO itself and its pieces
# ------------------------------------------------------------------------------------------------


def test_weights_exact():
    u = torch.tensor([0.0, 1.0, -1.0, 0.3, -0.3], dtype=D)
    pos, neg = torch.ones_like(u), -torch.ones_like(u)
    s = torch.sigmoid
    torch.testing.assert_close(gro_weight(u, pos, weight="sigmoid", scale=2.0, clip_eps=0.2), 2 * s(-u))
    torch.testing.assert_close(gro_weight(u, neg, weight="sigmoid", scale=2.0, clip_eps=0.2), 2 * s(u))
    torch.testing.assert_close(gro_weight(u, pos, weight="sigmoid_prime", scale=1.0, clip_eps=0.2), s(u) * (1 - s(u)))
    # clip_ratio, ε = 0.2: log 1.2 = 0.182, log 0.8 = −0.223
    #   A > 0: e^u unless u > 0.182 -> [1, 0, e^−1, 0, e^−0.3];  A < 0: e^u unless u < −0.223 -> [1, e, 0, e^0.3, 0]
    e = torch.exp
    torch.testing.assert_close(gro_weight(u, pos, weight="clip_ratio", scale=1.0, clip_eps=0.2),
                               torch.stack([e(u[0]), 0 * u[1], e(u[2]), 0 * u[3], e(u[4])]))
    torch.testing.assert_close(gro_weight(u, neg, weight="clip_ratio", scale=1.0, clip_eps=0.2),
                               torch.stack([e(u[0]), e(u[1]), 0 * u[2], e(u[3]), 0 * u[4]]))


def test_gro_at_zero_separation_is_rloo():
    # all samples equally likely: each anchor (mean s of the others) equals s, u = 0, w = 2σ(0) = 1
    batch = make_batch(8)
    batch.logp = torch.full((3, 4), -2.0, dtype=D, requires_grad=True)
    gro = grad_of(REGISTRY["gro"](GROConfig())(batch)[0], batch.logp)
    rloo = grad_of(REGISTRY["rloo"](RLOOConfig(beta=0.0))(batch)[0], batch.logp)
    torch.testing.assert_close(gro, rloo)


def test_gro_weight_shrinks_for_well_separated_samples():
    # two samples, A = ±1: the better sample already far more likely than the other gets a smaller weight
    logp = torch.tensor([[-0.1, -5.0], [-5.0, -0.1]], dtype=D, requires_grad=True)
    batch = Batch(logp=logp, score=torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=D), mask=torch.ones(2, 2, dtype=D))
    g = grad_of(REGISTRY["gro"](GROConfig())(batch)[0], logp)
    # context 0 is already separated in A's direction, context 1 is misordered
    assert g[0].abs().max() < 0.05 * g[1].abs().max()


def test_gro_relu_drops_negative_advantages():
    batch = make_batch(9)
    g = grad_of(REGISTRY["gro"](GROConfig(f="relu", weight="one", weight_scale=1.0, anchor="none"))(batch)[0], batch.logp)
    rloo = grad_of(REGISTRY["rloo"](RLOOConfig(beta=0.0))(batch)[0], batch.logp)
    positive = rloo < 0  # gradient −A/N < 0 where A > 0
    torch.testing.assert_close(g[positive], rloo[positive])
    assert (g[~positive] == 0).all()


def test_gro_needs_two_samples_and_stays_finite_and_permutation_invariant():
    with pytest.raises(ValueError, match="K >= 2"):
        REGISTRY["gro"](GROConfig())(Batch(logp=torch.zeros(3, 1), score=torch.ones(3, 1), mask=torch.ones(3, 1)))
    batch = make_batch(10)
    batch.score = 1e12 * batch.score
    loss, metrics = REGISTRY["gro"](GROConfig())(batch)
    g = grad_of(loss, batch.logp)
    assert torch.isfinite(loss) and torch.isfinite(g).all() and all(torch.isfinite(v) for v in metrics.values())
    pc, ps = torch.tensor([2, 0, 1]), torch.tensor([3, 1, 0, 2])
    lp = batch.logp.detach()[pc][:, ps].requires_grad_()
    perm = Batch(logp=lp, score=batch.score[pc][:, ps], mask=batch.mask)
    gp = grad_of(REGISTRY["gro"](GROConfig())(perm)[0], lp)
    torch.testing.assert_close(gp, g[pc][:, ps])


def test_gro_instance_needs_a_batch_field_it_lacks():
    batch = make_batch(11)
    batch.baseline = None
    with pytest.raises(ValueError, match="baseline"):
        REGISTRY["gro"](remax_as_gro(ReMaxConfig()))(batch)
    assert needs_of(remax_as_gro(ReMaxConfig())).baseline
    assert needs_of(dpo_as_gro(DPOConfig())).min_samples == 2 and needs_of(dpo_as_gro(DPOConfig())).logp_ref
    assert needs_of(grpo_as_gro(GRPOConfig())).logp_old


@pytest.mark.parametrize("bad", [
    {"weight": "clip_ratio", "anchor": "none"},
    {"anchor": "other_samples", "score_level": "token"},
    {"anchor": "reference_point", "score": "logp"},
    {"pairs": "best_worst"},
    {"advantage": "median"},
    {"weight_scale": 0.0},
    {"label_neg": 1.0},
])
def test_config_validation(bad):
    with pytest.raises(ConfigError):
        GROConfig(**bad)


# ------------------------------------------------------------------------------------------------
# The table, generated from the configurations
# ------------------------------------------------------------------------------------------------


def test_table_has_every_instance_and_reads_the_configs():
    rows = {row["method"]: row for row in gro_table()}
    assert set(rows) == {"rloo", "remax", "grpo", "reinforce_pp", "dpo", "kto", "cpl", "gro"}
    assert set(INSTANCES) <= set(REGISTRY)
    for row in rows.values():
        assert {"A", "f", "s", "a", "w"} <= set(row) and all(row[c] for c in ("A", "f", "s", "a", "w"))
    assert rows["rloo"]["w"] == "1" and rows["rloo"]["a"] == "—"
    assert rows["grpo"]["w"].startswith("e^(s−a)") and "0.04" in rows["grpo"]["loss KL"]
    assert rows["kto"]["w"] == "0.1·σ'(s−a)"
    # a different native config gives a different row, from the same code
    custom = {row["method"]: row for row in gro_table({"dpo": DPOConfig(beta=0.5), "grpo": GRPOConfig(clip_eps=0.3)})}
    assert custom["dpo"]["s"] == "0.5·log π_θ/π_ref" and "ε=0.3" in custom["grpo"]["w"]
    assert describe(cpl_as_gro(CPLConfig(bias=0.25)))["s"].endswith("(×0.25 if A<0)")
    assert describe(rloo_as_gro(RLOOConfig(beta=0.0)))["A"] == "r − mean of the other samples' r"
    md = gro_table_markdown()
    assert md.count("\n") == 1 + len(rows) and md.startswith("| method | A | f | s | a | w |")
