"""Tests for the preference losses: DPO's gradient (claim T5), IPO and its link to PMPO (claim T6), KTO, CPL.

Hand-derived values are worked out in the comments next to them.
"""

import math

import pytest
import torch

from algorithms import REGISTRY, Batch
from algorithms.config import ConfigError
from algorithms.cpl import CPLConfig, cpl_loss
from algorithms.dpo import dpo_loss
from algorithms.ipo import IPOConfig, ipo_loss, ipo_margin, ipo_regularizer
from algorithms.kto import KTOConfig, kto_loss, kto_reference_point

D = torch.float64


def sig(x):
    return 1.0 / (1.0 + math.exp(-x))


# ------------------------------------------------------------------------------------------------
# T5: the DPO gradient ([EM-LLM] §5)
# ------------------------------------------------------------------------------------------------


def test_T5_dpo_gradient_matches_closed_form_on_a_categorical_policy():
    # π_θ = softmax(θ) over 6 outputs, P = 4 pairs; ∇_θ log π(y) = onehot(y) − softmax(θ).
    # Claim: ∇L = −β mean_p σ(r̂_l − r̂_w)(∇log π(y_w) − ∇log π(y_l)), r̂ = β log π_θ/π_ref.
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(6, generator=g, dtype=D, requires_grad=True)
    logp_ref_all = torch.log_softmax(torch.randn(6, generator=g, dtype=D), -1)
    y_w, y_l = torch.tensor([0, 2, 5, 1]), torch.tensor([3, 4, 0, 1])  # the last pair is degenerate (y_w = y_l)
    beta = 0.7
    logp_all = torch.log_softmax(theta, -1)
    loss, _ = dpo_loss(logp_all[y_w], logp_all[y_l], logp_ref_all[y_w], logp_ref_all[y_l], beta=beta)
    (grad,) = torch.autograd.grad(loss, theta)

    with torch.no_grad():
        probs = logp_all.exp()
        score_fn = lambda y: torch.nn.functional.one_hot(y, 6).to(D) - probs  # noqa: E731  ∇_θ log π(y)
        r_w = beta * (logp_all[y_w] - logp_ref_all[y_w])
        r_l = beta * (logp_all[y_l] - logp_ref_all[y_l])
        closed = -beta * (torch.sigmoid(r_l - r_w)[:, None] * (score_fn(y_w) - score_fn(y_l))).mean(0)
    torch.testing.assert_close(grad, closed, rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------------------------------------
# IPO
# ------------------------------------------------------------------------------------------------


def one(x):
    return torch.tensor([x], dtype=D)


def test_ipo_exact_values_sum_and_token_mean():
    # Δ_w = −1 − (−1.5) = 0.5, Δ_l = −2 − (−1.5) = −0.5, h = 1
    args = (one(-1.0), one(-2.0), one(-1.5), one(-1.5))
    # β = 0.5: target 1/(2β) = 1 -> (1 − 1)² = 0;  β = 0.25: target 2 -> (1 − 2)² = 1
    assert ipo_loss(*args, beta=0.5, log_ratio="sum")[0].item() == pytest.approx(0.0)
    assert ipo_loss(*args, beta=0.25, log_ratio="sum")[0].item() == pytest.approx(1.0)
    # token-averaged with lengths 2 and 4: h = 0.5/2 − (−0.5/4) = 0.375 -> (0.375 − 1)² = 0.390625
    loss, m = ipo_loss(*args, beta=0.5, log_ratio="token_mean", length_w=one(2.0), length_l=one(4.0))
    assert loss.item() == pytest.approx(0.390625)
    assert m["policy/margin"].item() == pytest.approx(0.375)
    with pytest.raises(ValueError, match="length"):
        ipo_loss(*args, beta=0.5, log_ratio="token_mean")


def test_ipo_splits_into_pmpo_policy_term_plus_beta_regulariser():
    # 004 App. E: β(h − 1/(2β))² = β h² − (log π(y_w) − log π(y_l)) + (log π_ref(y_w) − log π_ref(y_l)) + 1/(4β)
    g = torch.Generator().manual_seed(1)
    lw, ll = (torch.randn(5, generator=g, dtype=D).requires_grad_() for _ in range(2))
    rw, rl = torch.randn(5, generator=g, dtype=D), torch.randn(5, generator=g, dtype=D)
    beta = 0.3
    loss, _ = ipo_loss(lw, ll, rw, rl, beta=beta, log_ratio="sum")
    split = (beta * ipo_regularizer(lw, ll, rw, rl) - (lw - ll) + (rw - rl) + 1 / (4 * beta)).mean()
    torch.testing.assert_close(beta * loss, split)
    # hence the same gradients: the policy term −(log π(y_w) − log π(y_l)) is PMPO's (α = ½) up to a factor 2
    ga = torch.autograd.grad(beta * loss, (lw, ll))
    gb = torch.autograd.grad(split, (lw, ll))
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b)


def test_T6_ipo_regulariser_is_unbiased_for_twice_the_variance_of_the_log_ratio():
    # Categorical over 7 outputs; y_w, y_l ~ π_ref independently. Claim (004 App. E):
    # E[(d(Y) − d(Y'))²] = 2 Var_{π_ref}[d], d = log π_θ/π_ref.
    g = torch.Generator().manual_seed(2)
    logp_ref = torch.log_softmax(torch.randn(7, generator=g, dtype=D), -1)
    logp = torch.log_softmax(torch.randn(7, generator=g, dtype=D), -1)
    p_ref = logp_ref.exp()
    d = logp - logp_ref
    two_var = 2 * ((p_ref * d * d).sum() - (p_ref * d).sum() ** 2)
    # exact expectation by enumerating all 49 ordered pairs
    i, j = torch.meshgrid(torch.arange(7), torch.arange(7), indexing="ij")
    i, j = i.flatten(), j.flatten()
    exact = (p_ref[i] * p_ref[j] * ipo_regularizer(logp[i], logp[j], logp_ref[i], logp_ref[j])).sum()
    torch.testing.assert_close(exact, two_var, rtol=1e-12, atol=1e-14)
    # Monte Carlo: the sample mean lies within 4 standard errors of 2 Var
    n = 200_000
    yw = torch.multinomial(p_ref, n, replacement=True, generator=g)
    yl = torch.multinomial(p_ref, n, replacement=True, generator=g)
    reg = ipo_regularizer(logp[yw], logp[yl], logp_ref[yw], logp_ref[yl])
    stderr = reg.std() / math.sqrt(n)
    assert abs(reg.mean() - two_var) < 4 * stderr


def test_ipo_method_uses_best_and_worst_and_lengths_default_to_one():
    logp = torch.tensor([[-1.0, -3.0, -2.0]], dtype=D)
    ref = torch.tensor([[-1.5, -1.0, -1.5]], dtype=D)
    score = torch.tensor([[5.0, 0.0, -1.0]], dtype=D)  # best = 0, worst = 2
    batch = Batch(logp=logp, score=score, mask=torch.ones_like(logp), logp_ref=ref)
    loss, _ = REGISTRY["ipo"](IPOConfig(beta=0.5))(batch)
    # h = (−1 + 1.5) − (−2 + 1.5) = 1, target 1 -> 0
    assert loss.item() == pytest.approx(0.0)
    with pytest.raises(ConfigError, match="log_ratio"):
        IPOConfig(log_ratio="mean")


def test_ipo_margin_token_mean_and_sum_agree_for_single_token_samples():
    args = (one(-0.3), one(-1.2), one(-0.7), one(-0.1))
    torch.testing.assert_close(ipo_margin(*args, log_ratio="sum"),
                               ipo_margin(*args, log_ratio="token_mean", length_w=one(1.0), length_l=one(1.0)))


# ------------------------------------------------------------------------------------------------
# KTO
# ------------------------------------------------------------------------------------------------


def test_kto_exact_value():
    # r = log π − log π_ref = [0.5, −0.5], z = 0.2, β = 1, λ_D = 1, λ_U = 2:
    #   desirable 1 − σ(0.5 − 0.2), undesirable 2·(1 − σ(0.2 + 0.5)); mean over the 2 labelled samples
    logp = torch.tensor([[-1.0, -2.0, 9.0]], dtype=D)
    ref = torch.tensor([[-1.5, -1.5, 0.0]], dtype=D)
    label = torch.tensor([[1.0, -1.0, 0.0]], dtype=D)  # the third sample is unlabelled: ignored
    loss, m = kto_loss(logp, ref, label, torch.ones_like(logp), torch.tensor(0.2, dtype=D), beta=1.0,
                       desirable_weight=1.0, undesirable_weight=2.0)
    assert loss.item() == pytest.approx(((1 - sig(0.3)) + 2 * (1 - sig(0.7))) / 2)
    assert m["policy/reward_chosen"].item() == pytest.approx(0.5)
    assert m["policy/reward_rejected"].item() == pytest.approx(-0.5)


def test_kto_reference_point_is_detached_batch_mean_clamped_at_zero():
    logp_mm = torch.tensor([[-1.0, -2.0]], dtype=D, requires_grad=True)
    # mean(log π − log π_ref) = mean(0.4, 0.2) = 0.3
    z = kto_reference_point(logp_mm, torch.tensor([[-1.4, -2.2]], dtype=D), torch.ones(1, 2, dtype=D))
    assert z.item() == pytest.approx(0.3) and not z.requires_grad
    # negative mean −0.3 is clamped to 0
    z = kto_reference_point(logp_mm, torch.tensor([[-0.6, -1.8]], dtype=D), torch.ones(1, 2, dtype=D))
    assert z.item() == 0.0


def test_kto_method_reference_points():
    logp = torch.tensor([[-1.0, -2.0]], dtype=D)
    base = dict(logp=logp, score=torch.zeros_like(logp), mask=torch.ones_like(logp),
                logp_ref=torch.tensor([[-1.5, -1.5]], dtype=D), label=torch.tensor([[1.0, -1.0]], dtype=D))
    with pytest.raises(ValueError, match="logp_mismatched"):
        REGISTRY["kto"](KTOConfig())(Batch(**base))
    # "matched": z = max(0, mean(0.5, −0.5)) = 0; "zero": z = 0 -> same loss
    a, _ = REGISTRY["kto"](KTOConfig(reference_point="matched"))(Batch(**base))
    b, _ = REGISTRY["kto"](KTOConfig(reference_point="zero"))(Batch(**base))
    assert a.item() == pytest.approx(b.item()) == pytest.approx(((1 - sig(0.05)) + (1 - sig(0.05))) / 2)


# ------------------------------------------------------------------------------------------------
# CPL
# ------------------------------------------------------------------------------------------------


def test_cpl_exact_value_and_gradient():
    # α = 0.5, λ = 0.5, log π(y_w) = −1, log π(y_l) = −2: m = 0.5·(−1) − 0.5·0.5·(−2) = 0 -> loss log 2
    # ∂L/∂log π(y_w) = −σ(−m) α = −0.25;  ∂L/∂log π(y_l) = +σ(−m) λ α = 0.125
    lw, ll = one(-1.0).requires_grad_(), one(-2.0).requires_grad_()
    loss, _ = cpl_loss(lw, ll, alpha=0.5, bias=0.5)
    assert loss.item() == pytest.approx(math.log(2))
    gw, gl = torch.autograd.grad(loss, (lw, ll))
    assert gw.item() == pytest.approx(-0.25) and gl.item() == pytest.approx(0.125)


def test_cpl_with_no_bias_is_dpo_with_a_uniform_reference():
    # 003 §2.2 eq. 21–22: with π_ref uniform, DPO's margin is CPL's with λ = 1, α = β
    g = torch.Generator().manual_seed(3)
    lw, ll = torch.randn(5, generator=g, dtype=D), torch.randn(5, generator=g, dtype=D)
    uniform = torch.full((5,), -math.log(10.0), dtype=D)
    torch.testing.assert_close(cpl_loss(lw, ll, alpha=0.3, bias=1.0)[0], dpo_loss(lw, ll, uniform, uniform, beta=0.3)[0])


def test_cpl_config_and_finite_for_large_log_probs():
    with pytest.raises(ConfigError, match="bias"):
        CPLConfig(bias=0.0)
    loss, _ = cpl_loss(one(-1e6), one(-1.0), alpha=1.0, bias=0.5)
    assert torch.isfinite(loss)
