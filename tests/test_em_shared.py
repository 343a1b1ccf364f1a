"""Tests of the shared GEMPI E-step pieces (`algorithms/gempi.py`), its config and the generated table.

Hand derivations of the expected numbers are in the comments next to them.
"""

import math

import pytest
import torch

import algorithms  # noqa: F401  (registers every method)
from algorithms.config import ConfigError
from algorithms.estep import temperature_loss
from algorithms.gempi import (GEMPIConfig, advantages, anchor_log_ratios, clipped_mean_log_weights, estep_kls, gempi_loss,
                              gempi_table, gempi_table_markdown, gempi_tuple, masked_trust_region, multi_temperature_loss,
                              solve_temperature)
from algorithms.common import normalized_log_weights

DT = torch.float64


def t(x):
    return torch.tensor(x, dtype=DT)


# ------------------------------------------------------------------------------------------------
# advantages
# ------------------------------------------------------------------------------------------------


def test_advantages_context_mean_then_batch_whitening():
    score = t([[1.0, 3.0, 99.0], [4.0, 6.0, 8.0]])
    mask = t([[1, 1, 0], [1, 1, 1]])
    # context means: 2 and 6 -> A = [[-1, 1, pad], [-2, 0, 2]]
    a = advantages(score, mask, baseline="context_mean", normalize="none")
    assert torch.allclose(a, t([[-1, 1, 0], [-2, 0, 2]]))
    # batch: mean of {-1, 1, -2, 0, 2} = 0, unbiased var = (1+1+4+0+4)/4 = 2.5 -> divide by sqrt 2.5
    a = advantages(score, mask, baseline="context_mean", normalize="batch")
    s = math.sqrt(2.5) + 1e-8
    assert torch.allclose(a, t([[-1 / s, 1 / s, 0], [-2 / s, 0, 2 / s]]))


def test_advantages_ignore_non_finite_padding_and_single_sample_is_zero():
    score = t([[float("nan"), 2.0], [float("inf"), 5.0]])
    mask = t([[0, 1], [0, 1]])
    a = advantages(score, mask, baseline="context_mean", normalize="batch")
    # one valid sample per context: A = r − r = 0; std 0 -> 0 / 1e-8 = 0
    assert torch.equal(a, torch.zeros(2, 2, dtype=DT))


# ------------------------------------------------------------------------------------------------
# weights
# ------------------------------------------------------------------------------------------------


def test_clipped_mean_log_weights_clip_in_log_space_and_divide_by_kept():
    logits = t([[0.0, math.log(2.0), 1e4], [5.0, -1e4, 0.0]])
    keep = t([[1, 1, 1], [0, 1, 1]])
    w = clipped_mean_log_weights(logits, keep, 20.0).exp()
    # N = 5 kept; weights 1, 2, min(e^1e4, 20) = 20, (dropped), e^-1e4 = 0, 1 -> each / 5
    assert torch.allclose(w, t([[0.2, 0.4, 4.0], [0.0, 0.0, 0.2]]))
    assert torch.isfinite(clipped_mean_log_weights(logits, keep, 20.0)[keep > 0]).all()


def test_anchor_log_ratios_none_is_the_sampling_policy():
    mask = t([[1, 0]])
    d = anchor_log_ratios([t([[-1.0, -2.0]]), None], t([[-3.0, float("-inf")]]), mask)
    # d_ref = −1 − (−3) = 2 on the valid entry, 0 on padding; the None anchor gives 0
    assert torch.equal(d, t([[[2.0, 0.0]], [[0.0, 0.0]]]))


# ------------------------------------------------------------------------------------------------
# the multi-anchor temperature dual
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("over", ["context", "batch"])
def test_multi_temperature_loss_with_the_sampler_anchor_is_the_scalar_dual(over):
    g = torch.Generator().manual_seed(0)
    adv = torch.randn(3, 5, generator=g, dtype=DT)
    mask = (torch.rand(3, 5, generator=g) > 0.3).to(DT)
    eta1 = t(0.7).requires_grad_()
    eta2 = t(0.7).requires_grad_()
    mine = multi_temperature_loss(adv, torch.zeros(1, 3, 5, dtype=DT), mask, eta1.reshape(1), (0.05,), over=over)
    ref = temperature_loss(adv, mask, eta2, 0.05, over=over)
    assert torch.allclose(mine, ref, rtol=1e-12)
    assert torch.allclose(torch.autograd.grad(mine, eta1)[0], torch.autograd.grad(ref, eta2)[0], rtol=1e-10)


def test_multi_temperature_loss_exact_value():
    # one context, A = [0, 0.05 ln 3], d = 0, α = 0.01, β = 0.04 (Λ = 0.05), ε = (0.1, 0.1):
    # u = A/Λ = [0, ln 3]; log mean exp u = log((1 + 3)/2) = ln 2
    # L = 0.01·0.1 + 0.04·0.1 + 0.05·ln 2 = 0.005 + 0.034657...
    adv = t([[0.0, 0.05 * math.log(3.0)]])
    lam = t([0.01, 0.04])
    val = multi_temperature_loss(adv, torch.zeros(2, 1, 2, dtype=DT), torch.ones(1, 2, dtype=DT), lam, (0.1, 0.1), over="context")
    assert val.item() == pytest.approx(0.005 + 0.05 * math.log(2.0), rel=1e-12)


@pytest.mark.parametrize("over", ["context", "batch"])
def test_multi_temperature_dual_gradient_is_budget_minus_sample_kl(over):
    # ∂L/∂λ_j = ε_j − KL̂(q‖π_j), KL̂(q‖π_j) = KL(p‖uniform) − E_p[d_j]  (derivation in the docstring)
    g = torch.Generator().manual_seed(1)
    adv = torch.randn(4, 6, generator=g, dtype=DT)
    d = torch.randn(2, 4, 6, generator=g, dtype=DT)
    mask = (torch.rand(4, 6, generator=g) > 0.2).to(DT)
    d = d * mask
    lam = t([0.3, 0.9]).requires_grad_()
    eps = (0.2, 0.05)
    loss = multi_temperature_loss(adv, d, mask, lam, eps, over=over)
    grad = torch.autograd.grad(loss, lam)[0]
    logits = (adv + (lam.detach()[:, None, None] * d).sum(0)) / lam.detach().sum()
    kls = estep_kls(normalized_log_weights(logits, mask, over=over), d, mask, over)
    assert torch.allclose(grad, t(eps) - kls, rtol=1e-9, atol=1e-12)


def test_multi_temperature_loss_finite_for_huge_ratio_and_empty_set():
    adv = t([[1e4, -1e4, 0.0], [0.0, 0.0, 0.0]])
    mask = t([[1, 1, 1], [0, 0, 0]])
    lam = t([1.0]).requires_grad_()
    loss = multi_temperature_loss(adv, torch.zeros(1, 2, 3, dtype=DT), mask, lam, (0.1,), over="context")
    (grad,) = torch.autograd.grad(loss, lam)
    assert torch.isfinite(loss) and torch.isfinite(grad)
    # the empty context contributes nothing: L = 0.1 + (1e4 − ln 3)
    assert loss.item() == pytest.approx(0.1 + 1e4 - math.log(3.0), rel=1e-12)
    empty = multi_temperature_loss(adv, torch.zeros(1, 2, 3, dtype=DT), torch.zeros(2, 3, dtype=DT), lam, (0.1,), over="batch")
    assert empty.item() == pytest.approx(0.1)


# ------------------------------------------------------------------------------------------------
# the closed-form temperature
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("over", ["context", "batch"])
def test_closed_form_temperature_spends_exactly_its_kl_budget(over):
    g = torch.Generator().manual_seed(2)
    adv = torch.randn(3, 8, generator=g, dtype=DT) * 3
    mask = torch.ones(3, 8, dtype=DT)
    d = torch.zeros(1, 3, 8, dtype=DT)
    lam = solve_temperature(adv, d, mask, t([1.0]), (0.1,), over=over)
    # at the optimum dL/dΛ = ε − KL(p‖uniform) = 0
    kl = estep_kls(normalized_log_weights(adv / lam, mask, over=over), d, mask, over)
    assert kl.item() == pytest.approx(0.1, abs=1e-8)
    eta = lam.clone().requires_grad_()
    (grad,) = torch.autograd.grad(temperature_loss(adv, mask, eta, 0.1, over=over), eta)
    assert abs(grad.item()) < 1e-8
    # a larger budget allows a sharper target: lower temperature
    assert solve_temperature(adv, d, mask, t([1.0]), (0.5,), over=over) < lam


def test_closed_form_temperature_returns_the_bound_when_the_constraint_never_binds():
    # equal advantages: KL(p‖uniform) = 0 < ε for every Λ, so L' = ε > 0 everywhere -> Λ = lo
    adv = torch.zeros(1, 4, dtype=DT)
    lam = solve_temperature(adv, torch.zeros(1, 1, 4, dtype=DT), torch.ones(1, 4, dtype=DT), t([1.0]), (0.1,), over="context", lo=1e-6)
    assert lam.item() == pytest.approx(1e-6)


def test_gempi_closed_form_weights_match_the_solved_temperature():
    g = torch.Generator().manual_seed(3)
    adv = torch.randn(2, 5, generator=g, dtype=DT)
    mask = torch.ones(2, 5, dtype=DT)
    logp = torch.randn(2, 5, generator=g, dtype=DT, requires_grad=True)
    cfg = GEMPIConfig(temperature="closed_form", epsilons=(0.2,), normalize="context", weight_clip=None, advantage_norm="none")
    loss, m = gempi_loss(logp, adv, mask, anchor_logp=[None], logp_sample=None, lambdas=cfg.coefficients, **cfg.loss_options())
    lam = solve_temperature(adv, torch.zeros(1, 2, 5, dtype=DT), mask, t([1.0]), (0.2,), over="context")
    w = torch.softmax(adv / lam, -1)
    assert m["dual/Lambda"].item() == pytest.approx(lam.item())
    assert loss.item() == pytest.approx(-(w * logp).sum(-1).mean().item(), rel=1e-10)
    assert m["kl/q_anchor_0"].item() == pytest.approx(0.2, abs=1e-8)


# ------------------------------------------------------------------------------------------------
# the masked trust region
# ------------------------------------------------------------------------------------------------


def test_masked_trust_region_drops_padding_contexts_and_is_zero_when_empty():
    kl = t([0.02, 0.04, 123.0]).requires_grad_()
    alpha = t(2.0).requires_grad_()
    mask = t([[1, 0], [1, 1], [0, 0]])
    loss, m = masked_trust_region(kl, mask, alpha, 0.01)
    # mean KL over the two real contexts = 0.03; value = sg[α]·0.03 + α(0.01 − 0.03) = α·0.01 = 0.02
    assert loss.item() == pytest.approx(0.02)
    g_kl, g_a = torch.autograd.grad(loss, (kl, alpha))
    assert torch.allclose(g_kl, t([1.0, 1.0, 0.0]))  # α / 2 on real contexts
    assert g_a.item() == pytest.approx(0.01 - 0.03)
    assert m["kl/alpha_trust_region"].item() == pytest.approx(0.03)
    loss0, _ = masked_trust_region(kl, torch.zeros(3, 2, dtype=DT), alpha, 0.01)
    g_kl, g_a = torch.autograd.grad(loss0, (kl, alpha))
    assert loss0.item() == 0.0 and g_a.item() == 0.0 and torch.equal(g_kl, torch.zeros(3, dtype=DT))


# ------------------------------------------------------------------------------------------------
# config validation
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, needle", [
    (dict(anchors=("pi_x",)), "pi_x"),
    (dict(coefficients=(1.0, 2.0)), "coefficients"),
    (dict(coefficients=(-1.0,)), "coefficients"),
    (dict(temperature="none"), "temperature"),
    (dict(temperature="dual"), "epsilons"),
    (dict(temperature="adaptive"), "temperature"),
    (dict(weight_clip=None), "weight_clip"),
    (dict(topk_frac=0.0), "topk_frac"),
    (dict(m_step="constraint", m_coef=(1.0,)), "m_epsilon"),
    (dict(m_step="penalty", m_coef=(1.0, 2.0)), "penalty"),
    (dict(temperature="closed_form", epsilons=(0.1,), filter="topk", topk_by="log_weight"), "topk_by"),
])
def test_gempi_config_rejects_bad_values_naming_the_field(kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        GEMPIConfig(**kwargs)


def test_method_configs_reject_bad_values():
    from algorithms.awr import AWRConfig
    from algorithms.dar import ATDARConfig, DARConfig, TopKDARConfig
    from algorithms.rlem import RLEMConfig
    from algorithms.sft import SFTConfig
    from algorithms.vmpo import VMPOConfig

    for make, needle in [(lambda: AWRConfig(beta=-1.0), "AWRConfig.beta"), (lambda: AWRConfig(advantage_norm="group"), "advantage_norm"),
                         (lambda: VMPOConfig(topk_frac=1.5), "VMPOConfig.topk_frac"), (lambda: VMPOConfig(eta=0.0), "VMPOConfig.eta"),
                         (lambda: DARConfig(alpha=-0.1), "DARConfig.alpha"), (lambda: DARConfig(alpha=0.0, beta=0.0), "alpha \\+ beta"),
                         (lambda: ATDARConfig(alpha=0.0), "ATDARConfig.alpha"), (lambda: TopKDARConfig(topk_over="prompt"), "topk_over"),
                         (lambda: RLEMConfig(m_step="constraint", kl_coef=0.0), "RLEMConfig.kl_coef"),
                         (lambda: SFTConfig(reduction="sum"), "reduction")]:
        with pytest.raises(ConfigError, match=needle):
            make()


# ------------------------------------------------------------------------------------------------
# the table (T8): generated from each method's own config
# ------------------------------------------------------------------------------------------------


def test_gempi_table_rows_follow_the_papers_recovering_table():
    rows = {r["method"]: r for r in gempi_table()}
    # `[EM-LLM] §10` table: SFT m=0; AWR m=1 π_t fixed none; V-MPO m=1 π_t adaptive KL top-k; DAR m=2 π_ref,π_t fixed; RL-EM m=1 π_ref fixed
    assert [r["method"] for r in gempi_table()][:5] == ["sft", "awr", "vmpo", "dar", "rlem"]
    assert (rows["sft"]["m"], rows["sft"]["anchors"], rows["sft"]["M-step"]) == (0, "—", "none")
    assert (rows["awr"]["m"], rows["awr"]["anchors"], rows["awr"]["temperature"], rows["awr"]["filter"]) == (1, "π_t", "fixed", "none")
    assert rows["vmpo"]["m"] == 1 and rows["vmpo"]["anchors"] == "π_t" and rows["vmpo"]["temperature"].startswith("adaptive dual")
    assert rows["vmpo"]["filter"].startswith("top-k") and rows["vmpo"]["M-step"].startswith("KL(π_old‖π_θ) constraint")
    assert (rows["dar"]["m"], rows["dar"]["anchors"], rows["dar"]["Lambda"]) == (2, "π_ref, π_t", "alpha+beta = 0.05")
    assert (rows["rlem"]["m"], rows["rlem"]["anchors"], rows["rlem"]["temperature"]) == (1, "π_ref", "fixed")
    # the novel variants differ from DAR on exactly their axis
    assert rows["at_dar"]["temperature"].startswith("adaptive dual") and rows["at_dar"]["M-step"] == "none"
    assert rows["dar_tr"]["M-step"].startswith("KL(π_old‖π_θ) constraint") and rows["dar_tr"]["temperature"] == "fixed"
    assert rows["topk_dar"]["filter"].startswith("top-k") and rows["topk_dar"]["temperature"] == "fixed"
    md = gempi_table_markdown(gempi_table())
    assert md.count("\n") == len(rows) + 1 and "| dar | 2 | π_ref, π_t |" in md


def test_gempi_tuple_follows_the_config_it_is_given():
    from algorithms.dar import DARConfig
    from algorithms.vmpo import VMPOConfig

    assert gempi_tuple("dar", DARConfig(alpha=0.01, beta=0.09))["coefficients"] == "alpha=0.01, beta=0.09"
    assert "decoupled" in gempi_tuple("vmpo", VMPOConfig(kl_split="decoupled"))["M-step"]
    with pytest.raises(ConfigError, match="did you mean|Did you mean"):
        gempi_tuple("vmpoo")


def test_gempi_anchors_as_a_stacked_tensor_equal_a_list_and_weights_carry_no_gradient():
    g = torch.Generator().manual_seed(6)
    logp = torch.randn(2, 3, generator=g, dtype=DT, requires_grad=True)
    score = torch.randn(2, 3, generator=g, dtype=DT)
    mask = torch.ones(2, 3, dtype=DT)
    lo, lr = torch.randn(2, 3, generator=g, dtype=DT), torch.randn(2, 3, generator=g, dtype=DT)
    cfg = GEMPIConfig(anchors=("pi_ref", "pi_t"), coefficients=(0.3, 0.7), coefficient_names=("alpha", "beta"), temperature="dual",
                      epsilons=(0.1, 0.2), normalize="context", weight_clip=None)
    lam = t([0.3, 0.7]).requires_grad_()
    a, _ = gempi_loss(logp, score, mask, anchor_logp=[lr, None], logp_sample=lo, lambdas=lam, **cfg.loss_options())
    b, _ = gempi_loss(logp, score, mask, anchor_logp=torch.stack([lr, lo]), logp_sample=lo, lambdas=lam, **cfg.loss_options())
    assert a.item() == pytest.approx(b.item(), rel=1e-12)
    # λ's gradient comes from the dual alone: the weighted NLL holds sg[λ]
    adv = advantages(score, mask, baseline="none", normalize="batch")
    dual = multi_temperature_loss(adv, anchor_log_ratios([lr, None], lo, mask), mask, lam, (0.1, 0.2), over="context")
    assert torch.allclose(torch.autograd.grad(a, lam)[0], torch.autograd.grad(dual, lam)[0], rtol=1e-12)
