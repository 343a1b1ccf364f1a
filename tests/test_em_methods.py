"""Exact values and gradient contracts of the dedicated EM losses: SFT, AWR, V-MPO, DAR (+ AT-DAR, DAR-TR,
Top-k DAR) and RL-EM. Each expected number is derived by hand in the comment above it.
"""

import math

import pytest
import torch

import algorithms  # noqa: F401
from algorithms import REGISTRY
from algorithms.awr import awr_loss
from algorithms.base import Batch
from algorithms.common import kl_diag_gaussian
from algorithms.dar import at_dar_loss, dar_loss, dar_tr_loss, topk_dar_loss
from algorithms.rlem import rlem_loss
from algorithms.sft import sft_loss
from algorithms.vmpo import (VMPO, VMPOConfig, categorical_kl_old, decoupled_gaussian_kl, vmpo_estep, vmpo_gaussian_loss, vmpo_kl_loss,
                             vmpo_loss, vmpo_policy_loss)

DT = torch.float64
LN2, LN3 = math.log(2.0), math.log(3.0)


def t(x, grad=False):
    return torch.tensor(x, dtype=DT, requires_grad=grad)


# ------------------------------------------------------------------------------------------------
# SFT
# ------------------------------------------------------------------------------------------------


def test_sft_exact_values_and_gradient():
    logp = t([[-1.0, -2.0], [-3.0, 7.0]], grad=True)
    mask = t([[1, 1], [1, 0]])
    # sample_mean: (1 + 2 + 3)/3 = 2; gradient −1/3 on each demonstration, 0 on padding
    loss, m = sft_loss(logp, mask, reduction="sample_mean")
    assert loss.item() == pytest.approx(2.0)
    assert torch.allclose(torch.autograd.grad(loss, logp)[0], t([[-1 / 3, -1 / 3], [-1 / 3, 0.0]]))
    assert m["policy/logp"].item() == pytest.approx(-2.0)
    # context_mean: mean(1.5, 3) = 2.25; gradient −1/4, −1/4 | −1/2
    loss, _ = sft_loss(logp, mask, reduction="context_mean")
    assert loss.item() == pytest.approx(2.25)
    assert torch.allclose(torch.autograd.grad(loss, logp)[0], t([[-0.25, -0.25], [-0.5, 0.0]]))


def test_sft_equals_cross_entropy_on_token_logits():
    # claim L8 in miniature: SFT written as the weighted M-step = F.cross_entropy over demonstrations
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, generator=g, dtype=DT, requires_grad=True)
    y = torch.randint(0, 5, (6,), generator=g)
    logp = torch.log_softmax(logits, -1).gather(-1, y[:, None])  # [6, 1]: B = 6 contexts, K = 1
    loss, _ = sft_loss(logp, torch.ones(6, 1, dtype=DT), reduction="sample_mean")
    ce = torch.nn.functional.cross_entropy(logits, y)
    assert loss.item() == pytest.approx(ce.item(), rel=1e-12)
    assert torch.allclose(torch.autograd.grad(loss, logits)[0], torch.autograd.grad(ce, logits)[0], rtol=1e-10)


def test_sft_accepted_demonstrations_only():
    m = REGISTRY["sft"](REGISTRY["sft"].Config(demonstrations="accepted"))
    b = Batch(logp=t([[-1.0, -5.0]]), score=t([[0.0, 0.0]]), mask=t([[1, 1]]), label=t([[1.0, -1.0]]))
    assert m.loss(b)[0].item() == pytest.approx(1.0)  # only the accepted sample: −(−1)
    with pytest.raises(ValueError, match="label"):
        m.loss(Batch(logp=b.logp, score=b.score, mask=b.mask))


# ------------------------------------------------------------------------------------------------
# AWR
# ------------------------------------------------------------------------------------------------


def test_awr_exact_value_with_clip():
    # β = 1, no normalisation: w = [e^0, e^{ln 2}, min(e^{ln 40}, 20)] = [1, 2, 20]
    # loss = −(1/3)(1·(−1) + 2·(−2) + 20·(−0.5)) = 15/3 = 5; dL/dlogp = −w/3
    logp = t([[-1.0, -2.0, -0.5]], grad=True)
    loss, m = awr_loss(logp, t([[0.0, LN2, math.log(40.0)]]), torch.ones(1, 3, dtype=DT), beta=1.0, weight_clip=20.0, advantage_norm="none")
    assert loss.item() == pytest.approx(5.0)
    assert torch.allclose(torch.autograd.grad(loss, logp)[0], t([[-1 / 3, -2 / 3, -20 / 3]]))
    assert m["weights/max"].item() == pytest.approx(20.0)
    assert m["weights/clipfrac"].item() == pytest.approx(1 / 3)


def test_awr_batch_normalised_advantages():
    # A = [1, 2, 3]: mean 2, unbiased std 1; Â = [−1, 0, 1] (up to the 1e-8); β = 2 -> w = exp(Â/2)
    logp = t([[-1.0, -1.0, -1.0]], grad=True)
    s = 1.0 + 1e-8
    w = [math.exp(-1 / s / 2), 1.0, math.exp(1 / s / 2)]
    loss, _ = awr_loss(logp, t([[1.0, 2.0, 3.0]]), torch.ones(1, 3, dtype=DT), beta=2.0, weight_clip=20.0, advantage_norm="batch")
    assert loss.item() == pytest.approx(sum(w) / 3, rel=1e-10)
    assert torch.allclose(torch.autograd.grad(loss, logp)[0], -t([w]) / 3)


def test_awr_weights_are_constants():
    adv = t([[0.5, -0.5]], grad=True)
    logp = t([[-1.0, -2.0]], grad=True)
    loss, _ = awr_loss(logp, adv, torch.ones(1, 2, dtype=DT), beta=1.0, weight_clip=20.0, advantage_norm="batch")
    g_adv, = torch.autograd.grad(loss, adv, allow_unused=True)
    assert g_adv is None


# ------------------------------------------------------------------------------------------------
# V-MPO
# ------------------------------------------------------------------------------------------------


def test_vmpo_estep_keeps_top_half_over_the_batch():
    # A = [[1, 2], [3, 4]], N = 4 -> k = 2, S = {3, 4}; ψ = softmax([3, 4]) = [1/(1+e), e/(1+e)]
    # L_η = ηε + η log((e^3 + e^4)/2) = 0.01 + 4 + log((1 + e^{-1})/2)
    eta = t(1.0, grad=True)
    log_w, eta_loss, m = vmpo_estep(t([[1.0, 2.0], [3.0, 4.0]]), torch.ones(2, 2, dtype=DT), eta, epsilon_eta=0.01, topk_frac=0.5)
    e = math.e
    assert torch.allclose(log_w.exp(), t([[0.0, 0.0], [1 / (1 + e), e / (1 + e)]]))
    assert eta_loss.item() == pytest.approx(0.01 + 4 + math.log((1 + 1 / e) / 2), rel=1e-12)
    assert not log_w.requires_grad
    assert m["dual/eta"].item() == 1.0
    # the KL ε_η bounds: ψ against uniform on S, Σ ψ log(2ψ)
    psi = (1 / (1 + e), e / (1 + e))
    assert m["weights/kl"].item() == pytest.approx(sum(p * math.log(2 * p) for p in psi), rel=1e-12)


def test_vmpo_temperature_gradient_matches_closed_form():
    # dL_η/dη = ε + g(η) − E_p[A]/η, g = log mean_S exp(A/η), p = softmax_S(A/η)   (`[EM-SFT] §6`)
    g = torch.Generator().manual_seed(0)
    adv = torch.randn(4, 6, generator=g, dtype=DT) * 2
    mask = torch.ones(4, 6, dtype=DT)
    eta = t(0.7, grad=True)
    log_w, eta_loss, _ = vmpo_estep(adv, mask, eta, epsilon_eta=0.05, topk_frac=0.5)
    (grad,) = torch.autograd.grad(eta_loss, eta)
    top = adv.flatten().sort(descending=True).values[:12]
    gval = torch.logsumexp(top / 0.7, 0) - math.log(12)
    p = torch.softmax(top / 0.7, 0)
    assert grad.item() == pytest.approx((0.05 + gval - (p * top).sum() / 0.7).item(), rel=1e-10)


def test_vmpo_kl_loss_stop_gradient_decomposition():
    # KL = mean(0.02, 0.04) = 0.03; L_α = α(ε − sg KL) + sg[α] KL -> value α ε = 0.02
    # dL/dα = ε − KL = −0.02 (α rises while KL > ε); dL/dKL_b = α / 2 = 1
    kl = t([0.02, 0.04], grad=True)
    alpha = t(2.0, grad=True)
    loss, m = vmpo_kl_loss(kl, torch.ones(2, 3, dtype=DT), alpha, epsilon_alpha=0.01)
    assert loss.item() == pytest.approx(0.02)
    g_kl, g_a = torch.autograd.grad(loss, (kl, alpha))
    assert torch.allclose(g_kl, t([1.0, 1.0])) and g_a.item() == pytest.approx(-0.02)
    assert m["kl/old"].item() == pytest.approx(0.03)


def test_vmpo_duals_get_gradient_only_from_their_own_loss():
    g = torch.Generator().manual_seed(1)
    adv = torch.randn(3, 4, generator=g, dtype=DT)
    logp = torch.randn(3, 4, generator=g, dtype=DT, requires_grad=True)
    kl = torch.rand(3, generator=g, dtype=DT, requires_grad=True)
    mask = torch.ones(3, 4, dtype=DT)
    eta, alpha = t(1.3, grad=True), t(5.0, grad=True)
    total, _ = vmpo_loss(adv, mask, logp, kl, eta, alpha, epsilon_eta=0.01, epsilon_alpha=0.01, topk_frac=0.5)
    log_w, eta_loss, _ = vmpo_estep(adv, mask, eta, epsilon_eta=0.01, topk_frac=0.5)
    pi_loss, _ = vmpo_policy_loss(logp, log_w)
    kl_loss, _ = vmpo_kl_loss(kl, mask, alpha, epsilon_alpha=0.01)
    g_tot = torch.autograd.grad(total, (eta, alpha, logp, kl))
    assert g_tot[0].item() == pytest.approx(torch.autograd.grad(eta_loss, eta)[0].item(), rel=1e-12)
    assert g_tot[1].item() == pytest.approx(0.01 - kl.mean().item(), rel=1e-12)
    # the policy sees −ψ on log π and the penalty sg[α]/B on the KL
    assert torch.allclose(g_tot[2], -log_w.exp())
    assert torch.allclose(g_tot[3], torch.full((3,), 5.0 / 3, dtype=DT))
    assert torch.autograd.grad(pi_loss, eta, allow_unused=True)[0] is None
    assert torch.autograd.grad(kl_loss, eta, allow_unused=True)[0] is None


def test_decoupled_gaussian_kl_parts():
    # 1-D: μ_old = 0, σ_old = 1, μ = 1, σ = 2
    # KL_μ = (1 − 0)²/(2·1) = 0.5 ; KL_Σ = log 2 + 1/(2·4) − 1/2 = ln 2 − 0.375
    mu, std = t([[1.0]], grad=True), t([[2.0]], grad=True)
    kl_mean, kl_cov = decoupled_gaussian_kl(t([[0.0]]), t([[1.0]]), mu, std)
    assert kl_mean.item() == pytest.approx(0.5) and kl_cov.item() == pytest.approx(LN2 - 0.375)
    # each part moves only its own parameter
    assert torch.autograd.grad(kl_mean.sum(), std, allow_unused=True)[0] is None
    assert torch.autograd.grad(kl_cov.sum(), mu, allow_unused=True)[0] is None
    # with σ = σ_old the mean part is the whole KL; with μ = μ_old the covariance part is
    g = torch.Generator().manual_seed(2)
    mo, so, m2, s2 = (torch.randn(4, 3, generator=g, dtype=DT) for _ in range(4))
    so, s2 = so.exp(), s2.exp()
    assert torch.allclose(decoupled_gaussian_kl(mo, so, m2, so)[0], kl_diag_gaussian(mo, so.log(), m2, so.log()))
    assert torch.allclose(decoupled_gaussian_kl(mo, so, mo, s2)[1], kl_diag_gaussian(mo, so.log(), mo, s2.log()))


def test_vmpo_gaussian_loss_has_one_dual_per_part():
    g = torch.Generator().manual_seed(3)
    adv = torch.randn(4, 2, generator=g, dtype=DT)
    mu = torch.randn(4, 2, generator=g, dtype=DT, requires_grad=True)
    log_std = torch.zeros(4, 2, dtype=DT, requires_grad=True)
    kl_mean, kl_cov = decoupled_gaussian_kl(torch.zeros(4, 2, dtype=DT), torch.ones(4, 2, dtype=DT), mu, log_std.exp())
    a_mu, a_sig, eta = t(1.0, grad=True), t(1.0, grad=True), t(1.0, grad=True)
    loss, m = vmpo_gaussian_loss(adv, torch.ones(4, 2, dtype=DT), torch.randn(4, 2, generator=g, dtype=DT), kl_mean, kl_cov, eta,
                                 a_mu, a_sig, epsilon_eta=0.01, epsilon_alpha_mu=0.01, epsilon_alpha_sigma=1e-5, topk_frac=0.5)
    g_mu, g_sig = torch.autograd.grad(loss, (a_mu, a_sig))
    assert g_mu.item() == pytest.approx(0.01 - kl_mean.mean().item())
    assert g_sig.item() == pytest.approx(1e-5 - kl_cov.mean().item())  # = 1e-5 − 0: σ = σ_old
    assert set(m) >= {"dual/alpha_mu", "dual/alpha_sigma", "kl/mean", "kl/cov", "dual/eta"}


def test_vmpo_adaptor_duals_start_at_paper_values_and_stay_positive():
    method = VMPO(VMPOConfig())
    assert (torch.nn.functional.softplus(method.eta_raw) + 1e-8).item() == pytest.approx(1.0)
    assert (torch.nn.functional.softplus(method.alpha_raw) + 1e-8).item() == pytest.approx(5.0)
    with torch.no_grad():
        method.eta_raw.fill_(-1e4)
    b = Batch(logp=torch.zeros(1, 2), score=torch.tensor([[1.0, 2.0]]), mask=torch.ones(1, 2), kl_old=torch.zeros(1))
    loss, m = method.loss(b)
    assert m["dual/eta"].item() == pytest.approx(1e-8, rel=1e-6) and torch.isfinite(loss)  # A/η = 2e8 stays finite
    with pytest.raises(ValueError, match="loss_decoupled"):
        VMPO(VMPOConfig(kl_split="decoupled")).loss(b)


def test_categorical_kl_old_detaches_the_old_logits():
    old = t([[0.0, 1.0]], grad=True)
    new = t([[1.0, 0.0]], grad=True)
    kl = categorical_kl_old(old, new)
    assert torch.autograd.grad(kl.sum(), old, allow_unused=True)[0] is None
    p = torch.softmax(t([0.0, 1.0]), 0)
    assert kl.item() == pytest.approx((p * (p.log() - torch.log_softmax(t([1.0, 0.0]), 0))).sum().item())


# ------------------------------------------------------------------------------------------------
# DAR and its variants
# ------------------------------------------------------------------------------------------------

# one prompt, K = 4, α = 0.005, β = 0.045 (t = 0.05, α/t = 0.1), no baseline / normalisation:
#   d = log π_ref − log π_t = [0, 10 ln 3, 10 ln 0.5, 0]  -> w_reg = exp(0.1 d) = [1, 3, 0.5, 1]
#   A = [0.05 ln 2, 0, 0.05 ln 30, 1]                      -> w_adv = exp(A/t) = [2, 1, 30, e^20]
#   product [2, 3, 15, e^20] -> clipped at 20: [2, 3, 15, 20]   (clipping w_adv alone would give 10 for the third)
DAR_ADV = [[0.05 * LN2, 0.0, 0.05 * math.log(30.0), 1.0]]
DAR_D = [[0.0, 10 * LN3, 10 * math.log(0.5), 0.0]]
DAR_W = [2.0, 3.0, 15.0, 20.0]
DAR_KW = dict(alpha=0.005, beta=0.045, weight_clip=20.0, baseline="none", advantage_norm="none")


def _dar_inputs():
    logp = t([[-1.0, -2.0, -1.0, -0.5]], grad=True)
    logp_old = t([[-1.0, -1.0, -1.0, -1.0]])
    return logp, t(DAR_ADV), torch.ones(1, 4, dtype=DT), logp_old, logp_old + t(DAR_D)


def test_dar_clips_the_product_of_the_two_weights():
    logp, adv, mask, lo, lr = _dar_inputs()
    loss, m = dar_loss(logp, adv, mask, lo, lr, **DAR_KW)
    # −(1/4)(2·(−1) + 3·(−2) + 15·(−1) + 20·(−0.5)) = 33/4
    assert loss.item() == pytest.approx(33 / 4)
    assert torch.allclose(torch.autograd.grad(loss, logp)[0], -t([DAR_W]) / 4)
    assert m["weights/clipfrac"].item() == pytest.approx(0.25)


def test_dar_reduces_to_awr_at_alpha_zero_and_to_vmpo_weights_when_ref_is_sampler():
    # T2: α = 0 (or π_ref = π_t) leaves w = exp(A/t): DAR with (0, t) = AWR with β = t
    logp, adv, mask, lo, lr = _dar_inputs()
    a = dar_loss(logp, adv, mask, lo, lr, **{**DAR_KW, "alpha": 0.0, "beta": 0.05})[0]
    b = awr_loss(logp, adv, mask, beta=0.05, weight_clip=20.0, advantage_norm="none")[0]
    c = dar_loss(logp, adv, mask, lo, lo, **DAR_KW)[0]
    assert a.item() == pytest.approx(b.item(), rel=1e-12) and c.item() == pytest.approx(b.item(), rel=1e-12)


def test_dar_default_advantage_is_context_mean_then_batch_normalised():
    # K = 2: r = [0, 2] -> A = [−1, 1] -> batch-normalised by the unbiased std √2: [−1/√2, 1/√2];
    # d = 0, t = 0.05 -> w = [e^{−14.14}, min(e^{14.14}, 20) = 20]
    logp = t([[-1.0, -2.0]], grad=True)
    lo = t([[-1.0, -1.0]])
    loss, _ = dar_loss(logp, t([[0.0, 2.0]]), torch.ones(1, 2, dtype=DT), lo, lo, alpha=0.005, beta=0.045, weight_clip=20.0,
                       baseline="context_mean", advantage_norm="batch")
    w0 = math.exp(-1 / (math.sqrt(2.0) + 1e-8) / 0.05)
    assert loss.item() == pytest.approx((w0 * 1 + 20 * 2) / 2, rel=1e-10)


def test_at_dar_exact_dual_and_its_gradients():
    # one prompt, A = [0, 0.05 ln 3], d = 0, α = 0.01, β = 0.04, ε = (0.1, 0.1):
    # dual = 0.001 + 0.004 + 0.05 ln 2 ; p = [1/4, 3/4]; KL(p‖u) = ¼ln½ + ¾ln(3/2)
    # ∂/∂α = ε_α − (KL(p‖u) − E_p[d]) = 0.1 − KL(p‖u) = ∂/∂β ; NLL weights = clip(exp(A/t)) = [1, 3]
    logp = t([[-1.0, -1.0]], grad=True)
    lo = t([[-2.0, -2.0]])
    alpha, beta = t(0.01, grad=True), t(0.04, grad=True)
    loss, m = at_dar_loss(logp, t([[0.0, 0.05 * LN3]]), torch.ones(1, 2, dtype=DT), lo, lo, alpha, beta, epsilon_alpha=0.1,
                          epsilon_beta=0.1, weight_clip=20.0, baseline="none", advantage_norm="none", dual_over="context")
    dual = 0.005 + 0.05 * LN2
    assert m["dual/temperature_loss"].item() == pytest.approx(dual, rel=1e-12)
    assert loss.item() == pytest.approx((1 + 3) / 2 + dual, rel=1e-12)
    kl_u = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    g_a, g_b = torch.autograd.grad(loss, (alpha, beta))
    assert g_a.item() == pytest.approx(0.1 - kl_u, rel=1e-10) and g_b.item() == pytest.approx(0.1 - kl_u, rel=1e-10)
    assert m["kl/q_t"].item() == pytest.approx(kl_u, rel=1e-10)


def test_at_dar_dual_gradients_are_budget_minus_sample_kls():
    g = torch.Generator().manual_seed(4)
    logp = torch.randn(3, 4, generator=g, dtype=DT, requires_grad=True)
    score = torch.randn(3, 4, generator=g, dtype=DT)
    lo = torch.randn(3, 4, generator=g, dtype=DT)
    lr = lo + 0.3 * torch.randn(3, 4, generator=g, dtype=DT)
    alpha, beta = t(0.2, grad=True), t(0.5, grad=True)
    loss, m = at_dar_loss(logp, score, torch.ones(3, 4, dtype=DT), lo, lr, alpha, beta, epsilon_alpha=0.3, epsilon_beta=0.05,
                          weight_clip=20.0, baseline="context_mean", advantage_norm="batch", dual_over="context")
    g_a, g_b, g_logp = torch.autograd.grad(loss, (alpha, beta, logp))
    assert g_a.item() == pytest.approx(0.3 - m["kl/q_ref"].item(), rel=1e-9)
    assert g_b.item() == pytest.approx(0.05 - m["kl/q_t"].item(), rel=1e-9)
    # the weights seen by the policy use sg[α], sg[β]: same policy gradient as plain DAR at those values
    ref, _ = dar_loss(logp, score, torch.ones(3, 4, dtype=DT), lo, lr, alpha=0.2, beta=0.5, weight_clip=20.0,
                      baseline="context_mean", advantage_norm="batch")
    assert torch.allclose(g_logp, torch.autograd.grad(ref, logp)[0], rtol=1e-12)


def test_dar_tr_adds_the_trust_region_with_its_own_dual():
    logp, adv, mask, lo, lr = _dar_inputs()
    kl = t([0.05], grad=True)
    gamma = t(3.0, grad=True)
    loss, m = dar_tr_loss(logp, adv, mask, lo, lr, kl, gamma, epsilon_m=0.01, **DAR_KW)
    # DAR 33/4 + trust-region value γ ε = 0.03; dL/dγ = ε − KL = −0.04; dL/dKL = γ
    assert loss.item() == pytest.approx(33 / 4 + 0.03)
    g_kl, g_g = torch.autograd.grad(loss, (kl, gamma))
    assert g_kl.item() == pytest.approx(3.0) and g_g.item() == pytest.approx(-0.04)
    assert m["dual/gamma"].item() == 3.0


def test_topk_dar_keeps_the_best_half():
    logp, adv, mask, lo, lr = _dar_inputs()
    # top 2 by advantage: samples 3 (A = 1) and 2 (A = 0.05 ln 30) -> −(1/2)(15·(−1) + 20·(−0.5)) = 12.5
    loss, m = topk_dar_loss(logp, adv, mask, lo, lr, topk_frac=0.5, topk_over="batch", topk_by="advantage", **DAR_KW)
    assert loss.item() == pytest.approx(12.5)
    assert torch.allclose(torch.autograd.grad(loss, logp)[0], t([[0.0, 0.0, -7.5, -10.0]]))
    # by log-weight ℓ = log(w_reg·w_adv) = log [2, 3, 15, e^20]: the same two here
    loss2, _ = topk_dar_loss(logp, adv, mask, lo, lr, topk_frac=0.5, topk_over="batch", topk_by="log_weight", **DAR_KW)
    assert loss2.item() == pytest.approx(12.5)
    assert m["weights/kept_frac"].item() == 0.5


# ------------------------------------------------------------------------------------------------
# RL-EM
# ------------------------------------------------------------------------------------------------


def test_rlem_exact_self_normalised_weights():
    # β = 1, A = [0, ln 2], log π_ref − log π_t = [0, ln 3] -> w ∝ [1, 2·3] = [1/7, 6/7]
    logp = t([[-1.0, -2.0]], grad=True)
    lo = t([[-1.0, -1.0]])
    loss, _ = rlem_loss(logp, t([[0.0, LN2]]), torch.ones(1, 2, dtype=DT), lo, lo + t([[0.0, LN3]]), beta=1.0, normalize="context",
                        baseline="none", advantage_norm="none", m_step="none")
    assert loss.item() == pytest.approx(1 / 7 + 12 / 7)
    assert torch.allclose(torch.autograd.grad(loss, logp)[0], t([[-1 / 7, -6 / 7]]))


def test_rlem_m_step_penalty_and_constraint():
    logp = t([[-1.0, -2.0]], grad=True)
    lo = t([[-1.0, -1.0]])
    kl = t([0.3], grad=True)
    kw = dict(beta=1.0, normalize="context", baseline="none", advantage_norm="none")
    base = rlem_loss(logp, t([[0.0, LN2]]), torch.ones(1, 2, dtype=DT), lo, lo, m_step="none", **kw)[0]
    pen = rlem_loss(logp, t([[0.0, LN2]]), torch.ones(1, 2, dtype=DT), lo, lo, m_step="penalty", kl_ref=kl, kl_coef=0.5, **kw)[0]
    assert pen.item() == pytest.approx(base.item() + 0.15)  # + γ KL = 0.5·0.3
    assert torch.autograd.grad(pen, kl)[0].item() == pytest.approx(0.5)
    a = t(2.0, grad=True)
    con = rlem_loss(logp, t([[0.0, LN2]]), torch.ones(1, 2, dtype=DT), lo, lo, m_step="constraint", kl_ref=kl, kl_coef=a,
                    epsilon_kl=0.1, **kw)[0]
    assert torch.autograd.grad(con, a)[0].item() == pytest.approx(0.1 - 0.3)
    with pytest.raises(ValueError, match="kl_ref"):
        rlem_loss(logp, t([[0.0, LN2]]), torch.ones(1, 2, dtype=DT), lo, lo, m_step="penalty", kl_coef=0.5, **kw)
