"""The shared kernels, the E-step/M-step cores and the bandit-family losses (PMPO, DPO, MPO).

Four kinds (STYLE): exact values with hand derivations; gradient and stop-gradient contracts;
equivalences and invariances; robustness at extremes.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from algorithms.common import (
    diag_gaussian_logp, effective_sample_size, kl_categorical, kl_diag_gaussian, kl_k1, kl_k3, masked_mean,
    normalized_log_weights, top_k_mask,
)
from algorithms.config import ConfigError
from algorithms.dpo import DPOConfig, dpo_loss
from algorithms.estep import estep, temperature_loss
from algorithms.mpo import MPOConfig, mpo_loss
from algorithms.mstep import kl_trust_region, weighted_nll
from algorithms.pmpo import PMPOConfig, pmpo_loss

D = torch.float64


def t(x, grad=False):
    return torch.tensor(x, dtype=D, requires_grad=grad)


# ------------------------------------------------------------------------------------------------ kernels: exact


def test_masked_mean_exact_and_empty():
    x, m = t([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]), t([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    # row 0: (1 + 3) / 2 = 2; row 1 has no valid entry -> 0, not NaN
    assert masked_mean(x, m, dim=-1).tolist() == [2.0, 0.0]
    assert masked_mean(x, m).item() == 2.0


def test_top_k_mask_counts_fraction_ties_and_batch():
    score, mask = t([[3.0, 1.0, 2.0, 0.0]]), torch.ones(1, 4, dtype=D)
    assert top_k_mask(score, mask, k=2).tolist() == [[1.0, 0.0, 1.0, 0.0]]
    # frac 0.5 of 4 valid -> 2; with the last sample masked, floor(0.5 * 3) = 1
    assert top_k_mask(score, t([[1.0, 1.0, 1.0, 0.0]]), frac=0.5).tolist() == [[1.0, 0.0, 0.0, 0.0]]
    # ties: the lower index wins
    assert top_k_mask(t([[1.0, 1.0, 1.0]]), torch.ones(1, 3, dtype=D), k=1).tolist() == [[1.0, 0.0, 0.0]]
    # over the batch: the top 2 of all four values, wherever they sit
    both = top_k_mask(t([[5.0, 1.0], [4.0, 6.0]]), torch.ones(2, 2, dtype=D), k=2, over="batch")
    assert both.tolist() == [[1.0, 0.0], [0.0, 1.0]]


def test_normalized_log_weights_and_ess_exact():
    logits, mask = t([[0.0, math.log(3.0), 5.0]]), t([[1.0, 1.0, 0.0]])
    lw = normalized_log_weights(logits, mask)
    # weights 1/4, 3/4 on the valid entries, 0 on the masked one
    assert torch.allclose(lw.exp(), t([[0.25, 0.75, 0.0]]))
    # ESS = 1 / (1/16 + 9/16) = 1.6
    assert effective_sample_size(lw).item() == pytest.approx(1.6)
    # an all-masked context gives zero weights, never NaN
    assert lw.new_tensor(normalized_log_weights(logits, torch.zeros_like(mask)).exp().tolist()).sum() == 0


def test_gaussian_logp_and_kl_against_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu_p, mu_q, y = (torch.randn(5, 3, generator=g, dtype=D) for _ in range(3))
    ls_p, ls_q = (0.3 * torch.randn(5, 3, generator=g, dtype=D) for _ in range(2))
    p = torch.distributions.Normal(mu_p, ls_p.exp())
    q = torch.distributions.Normal(mu_q, ls_q.exp())
    assert torch.allclose(diag_gaussian_logp(y, mu_p, ls_p), p.log_prob(y).sum(-1))
    assert torch.allclose(kl_diag_gaussian(mu_p, ls_p, mu_q, ls_q), torch.distributions.kl_divergence(p, q).sum(-1))


def test_categorical_kl_and_estimators():
    lp, lq = t([[0.0, 1.0, -1.0]]), t([[0.5, 0.0, 0.0]])
    p, q = lp.softmax(-1), lq.softmax(-1)
    assert kl_categorical(lp, lq).item() == pytest.approx((p * (p / q).log()).sum().item())
    # k1 and k3 are unbiased: their expectation under p equals KL(p || q) (exact enumeration)
    logp, logq = p.log()[0], q.log()[0]
    assert (p[0] * kl_k1(logp, logq)).sum().item() == pytest.approx(kl_categorical(lp, lq).item())
    assert (p[0] * kl_k3(logp, logq)).sum().item() == pytest.approx(kl_categorical(lp, lq).item())
    assert (kl_k3(logp, logq) >= 0).all()


# ------------------------------------------------------------------------------------------------ E-step


def test_estep_weights_are_softmax_of_score_over_eta_and_detached():
    score = t([[1.0, 2.0, 3.0, 4.0]], grad=True)
    eta = t(2.0, grad=True)
    log_w, eta_loss, m = estep(score, torch.ones_like(score), eta, epsilon=0.1)
    assert torch.allclose(log_w.exp(), torch.softmax(score.detach() / 2.0, -1))
    assert not log_w.requires_grad
    # only η receives a gradient from the temperature loss
    (g_eta,) = torch.autograd.grad(eta_loss, eta)
    assert score.grad is None and torch.isfinite(g_eta)
    assert m["weights/ess"].item() == pytest.approx(1.0 / (log_w.exp() ** 2).sum().item())


def test_temperature_dual_gradient_matches_closed_form():
    # L(η) = η ε + η log mean exp(A/η);  dL/dη = ε + log mean exp(A/η) − E_p[A]/η  with p ∝ exp(A/η)
    a = t([[0.3, -1.2, 2.0, 0.7, -0.1]])
    eps, eta = 0.05, t(0.8, grad=True)
    (g,) = torch.autograd.grad(temperature_loss(a, torch.ones_like(a), eta, eps), eta)
    e = eta.detach()
    p = torch.softmax(a / e, -1)
    closed = eps + torch.logsumexp(a / e, -1) - math.log(5) - (p * a).sum() / e
    assert g.item() == pytest.approx(closed.item(), rel=1e-10)


def test_estep_top_k_over_batch_keeps_the_top_half():
    score = t([[4.0, 1.0], [3.0, 2.0]])
    log_w, _, _ = estep(score, torch.ones_like(score), t(1.0), over="batch", topk_frac=0.5)
    w = log_w.exp()
    # k = floor(0.5 * 4) = 2: scores 4 and 3 survive, weights e^4, e^3 normalised over the batch
    assert w[0, 1] == 0 and w[1, 1] == 0
    assert w[0, 0].item() == pytest.approx(math.exp(4) / (math.exp(4) + math.exp(3)))


@pytest.mark.parametrize("ratio", [1e2, 1e4])
def test_estep_and_dual_finite_for_extreme_scores(ratio):
    eta = t(1.0, grad=True)
    score = t([[ratio, -ratio, 0.0, ratio / 2]])
    log_w, eta_loss, _ = estep(score, torch.ones_like(score), eta, epsilon=0.1)
    (g,) = torch.autograd.grad(eta_loss, eta)
    assert torch.isfinite(eta_loss) and torch.isfinite(g)
    assert log_w.exp().sum().item() == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------------ M-step


def test_weighted_nll_exact_and_gradient():
    logp = t([[-1.0, -2.0], [-3.0, -4.0]], grad=True)
    log_w = torch.log(t([[0.25, 0.75], [1.0, 0.0]]))
    loss = weighted_nll(logp, log_w)
    # context 0: −(0.25·−1 + 0.75·−2) = 1.75; context 1: 3; mean = 2.375
    assert loss.item() == pytest.approx(2.375)
    (g,) = torch.autograd.grad(loss, logp)
    assert torch.allclose(g, -log_w.exp() / 2)


def test_kl_trust_region_stop_gradient_decomposition():
    kl = t([0.2, 0.4], grad=True)
    alpha = t(3.0, grad=True)
    loss, _ = kl_trust_region(kl, alpha, epsilon=0.1)
    g_kl, g_alpha = torch.autograd.grad(loss, [kl, alpha])
    # the policy sees a penalty of strength α on the mean KL; α sees ε − KL = 0.1 − 0.3 (so descent raises α)
    assert torch.allclose(g_kl, t([1.5, 1.5]))
    assert g_alpha.item() == pytest.approx(-0.2)


# ------------------------------------------------------------------------------------------------ PMPO


def test_pmpo_exact_value():
    logp = t([[-1.0, -2.0, -3.0, -4.0]])
    label = t([[1.0, 1.0, -1.0, -1.0]])
    kl = t([0.5])
    loss, m = pmpo_loss(logp, label, kl, alpha=0.5, beta=0.5)
    # −0.5·mean(−1, −2) + 0.5·mean(−3, −4) + 0.5·0.5 = 0.75 − 1.75 + 0.25 = −0.75
    assert loss.item() == pytest.approx(-0.75)
    assert m["policy/logp_accept"].item() == pytest.approx(-1.5)


def test_pmpo_gradient_pushes_accepted_up_and_rejected_down():
    logp = t([[-1.0, -2.0, -3.0, -4.0]], grad=True)
    kl = t([0.5], grad=True)
    loss, _ = pmpo_loss(logp, t([[1.0, 1.0, -1.0, -1.0]]), kl, alpha=0.3, beta=2.0)
    g, g_kl = torch.autograd.grad(loss, [logp, kl])
    # d/dlogp: −α/|D_a| on accepted, (1−α)/|D_r| on rejected; d/dKL = β
    assert torch.allclose(g, t([[-0.15, -0.15, 0.35, 0.35]]))
    assert g_kl.item() == pytest.approx(2.0)


def test_pmpo_empty_sets_are_finite_and_padding_invariant():
    logp = t([[-1.0, -2.0, -7.0]], grad=True)
    only_accept, _ = pmpo_loss(logp, t([[1.0, 1.0, 0.0]]), t([0.0]), alpha=0.5, beta=0.0)
    assert only_accept.item() == pytest.approx(0.75)  # −0.5·mean(−1, −2); the empty reject set adds 0
    unpadded, _ = pmpo_loss(logp[:, :2], t([[1.0, 1.0]]), t([0.0]), alpha=0.5, beta=0.0)
    assert only_accept.item() == unpadded.item()
    nothing, _ = pmpo_loss(logp, torch.zeros(1, 3, dtype=D), t([0.0]), alpha=0.5, beta=0.0)
    assert nothing.item() == 0.0


def test_pmpo_invariant_to_sample_permutation():
    g = torch.Generator().manual_seed(1)
    logp, label, kl = torch.randn(3, 4, generator=g, dtype=D), torch.tensor([[1.0, -1, 1, -1]] * 3, dtype=D), torch.rand(3, dtype=D)
    perm = torch.tensor([2, 0, 3, 1])
    a, _ = pmpo_loss(logp, label, kl, alpha=0.5, beta=0.5)
    b, _ = pmpo_loss(logp[:, perm], label[:, perm], kl, alpha=0.5, beta=0.5)
    assert a.item() == pytest.approx(b.item(), rel=1e-12)


@pytest.mark.parametrize("field, value", [("alpha", 1.5), ("alpha", -0.1), ("beta", -1.0)])
def test_pmpo_config_refuses_bad_values(field, value):
    with pytest.raises(ConfigError, match=f"PMPOConfig.{field}"):
        PMPOConfig(**{field: value})


# ------------------------------------------------------------------------------------------------ DPO


def test_dpo_exact_value_and_gradient_closed_form():
    lw, ll = t([-1.0], grad=True), t([-2.0], grad=True)
    rw, rl = t([-1.5]), t([-1.5])
    beta = 0.5
    loss, m = dpo_loss(lw, ll, rw, rl, beta=beta)
    # margin = 0.5·((−1 + 1.5) − (−2 + 1.5)) = 0.5;  loss = −log σ(0.5)
    assert loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.5))))
    gw, gl = torch.autograd.grad(loss, [lw, ll])
    # ∇ = −β σ(−margin) (∇log π(y_w) − ∇log π(y_l))
    s = 1 / (1 + math.exp(0.5))
    assert gw.item() == pytest.approx(-beta * s) and gl.item() == pytest.approx(beta * s)
    assert m["policy/accuracy"].item() == 1.0


def test_dpo_config_refuses_non_positive_beta():
    with pytest.raises(ConfigError, match="DPOConfig.beta"):
        DPOConfig(beta=0.0)


# ------------------------------------------------------------------------------------------------ MPO


def test_mpo_fixed_temperature_equals_weighted_nll_plus_trust_region():
    score, logp = t([[1.0, 0.0, -1.0, 2.0]]), t([[-1.0, -2.0, -3.0, -0.5]], grad=True)
    kl, alpha = t([0.3], grad=True), t(2.0, grad=True)
    loss, m = mpo_loss(score, torch.ones_like(score), logp, kl, t(1.0), alpha, epsilon_eta=None, epsilon_kl=0.1)
    w = torch.softmax(score, -1)
    expected = -(w * logp).sum() + 2.0 * 0.3 + 2.0 * (0.1 - 0.3)
    assert loss.item() == pytest.approx(expected.item())
    assert "dual/eta_loss" not in m


def test_mpo_config_validates_choices():
    with pytest.raises(ConfigError, match="MPOConfig.temperature"):
        MPOConfig(temperature="adaptive")
    with pytest.raises(ConfigError, match="MPOConfig.eta"):
        MPOConfig(eta=-1.0)


def test_method_duals_are_softplus_parameters_starting_at_their_initial_value():
    import algorithms

    m = algorithms.REGISTRY["mpo"](MPOConfig(eta=0.5, alpha=3.0))
    assert F.softplus(m.eta_raw).item() == pytest.approx(0.5, rel=1e-6)
    assert F.softplus(m.alpha_raw).item() == pytest.approx(3.0, rel=1e-6)
    assert not hasattr(algorithms.REGISTRY["mpo"](MPOConfig(temperature="fixed")), "eta_raw")


def test_dpo_method_invariant_to_sample_order_and_padding():
    import algorithms
    from algorithms.base import Batch

    g = torch.Generator().manual_seed(3)
    logp, logp_ref, score = (torch.randn(3, 4, generator=g, dtype=D) for _ in range(3))
    method = algorithms.REGISTRY["dpo"](DPOConfig(beta=0.5))
    base, _ = method(Batch(logp=logp, score=score, mask=torch.ones_like(score), logp_ref=logp_ref))
    perm = torch.tensor([3, 1, 0, 2])
    permuted, _ = method(Batch(logp=logp[:, perm], score=score[:, perm], mask=torch.ones_like(score), logp_ref=logp_ref[:, perm]))
    # a padded fifth sample with the best score is ignored because its mask is 0
    pad = lambda x, v: torch.cat([x, torch.full((3, 1), v, dtype=D)], -1)  # noqa: E731
    padded, _ = method(Batch(logp=pad(logp, 9.0), score=pad(score, 1e9), mask=pad(torch.ones_like(score), 0.0), logp_ref=pad(logp_ref, 0.0)))
    assert permuted.item() == pytest.approx(base.item(), rel=1e-12)
    assert padded.item() == pytest.approx(base.item(), rel=1e-12)


def test_mpo_invariant_to_sample_order_and_score_shift():
    g = torch.Generator().manual_seed(4)
    score, logp = torch.randn(2, 5, generator=g, dtype=D), torch.randn(2, 5, generator=g, dtype=D)
    kl, eta, alpha = t([0.1, 0.2]), t(0.7), t(1.5)
    mask = torch.ones_like(score)
    a, _ = mpo_loss(score, mask, logp, kl, eta, alpha, epsilon_eta=0.1, epsilon_kl=0.1)
    perm = torch.tensor([4, 2, 0, 1, 3])
    b, _ = mpo_loss(score[:, perm], mask, logp[:, perm], kl, eta, alpha, epsilon_eta=0.1, epsilon_kl=0.1)
    # softmax weights are invariant to a per-context shift of the scores; the temperature loss shifts by
    # exactly the mean of the shifts, so subtract it
    shift = t([[3.0], [-2.0]])
    c, _ = mpo_loss(score + shift, mask, logp, kl, eta, alpha, epsilon_eta=0.1, epsilon_kl=0.1)
    assert b.item() == pytest.approx(a.item(), rel=1e-12)
    assert (c - shift.mean()).item() == pytest.approx(a.item(), rel=1e-12)


def test_mpo_single_sample_per_context_is_finite_with_weight_one():
    logp = t([[-1.3]], grad=True)
    loss, m = mpo_loss(t([[5.0]]), t([[1.0]]), logp, t([0.0]), t(1.0), t(1.0), epsilon_eta=0.1, epsilon_kl=0.1)
    (g,) = torch.autograd.grad(loss, logp)
    assert torch.isfinite(loss) and g.item() == pytest.approx(-1.0)
    assert m["weights/ess"].item() == pytest.approx(1.0)
