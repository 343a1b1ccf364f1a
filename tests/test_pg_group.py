"""Tests for the REINFORCE family: RLOO, ReMax, GRPO, REINFORCE++ (values, gradients, K rules, padding),
and that every method of this family and of the preference losses runs under `torch.func.vmap` as the
bandit loop runs it.

Hand-derived values are worked out in the comments next to them.
"""

import math

import pytest
import torch
from torch.func import functional_call, vmap

from algorithms import REGISTRY, Batch
from algorithms.grpo import GRPOConfig, grpo_loss
from algorithms.kto import KTOConfig
from algorithms.reinforce_pp import reinforce_pp_advantages, reinforce_pp_loss
from algorithms.remax import remax_loss
from algorithms.rloo import RLOOConfig, rloo_loss

D = torch.float64


def t(*rows):
    return torch.tensor(rows, dtype=D)


# ------------------------------------------------------------------------------------------------
# RLOO
# ------------------------------------------------------------------------------------------------


def test_rloo_exact_gradient():
    # r = [1, 2, 3, 6]; LOO advantages [1 − 11/3, 2 − 10/3, 0, 4] = [−8/3, −4/3, 0, 4]
    # L = −mean_k A_k log π(y_k) -> ∂L/∂log π(y_k) = −A_k / 4
    logp = torch.zeros(1, 4, dtype=D, requires_grad=True)
    loss, _ = rloo_loss(logp, t([1.0, 2.0, 3.0, 6.0]), torch.ones(1, 4, dtype=D), None, beta=0.0, advantage_norm="none")
    (g,) = torch.autograd.grad(loss, logp)
    torch.testing.assert_close(g, -t([-8 / 3, -4 / 3, 0.0, 4.0]) / 4)


def test_rloo_subtracts_k1_kl_from_the_reward():
    # k1 = log π_old − log π_ref = [1, 0]; β = 0.5: r' = [3 − 0.5, 1] = [2.5, 1]; LOO A = [1.5, −1.5]
    logp = torch.zeros(1, 2, dtype=D, requires_grad=True)
    loss, m = rloo_loss(logp, t([3.0, 1.0]), torch.ones(1, 2, dtype=D), t([-1.0, 0.0]), beta=0.5,
                        advantage_norm="none", logp_old=t([0.0, 0.0]))
    (g,) = torch.autograd.grad(loss, logp)
    torch.testing.assert_close(g, -t([1.5, -1.5]) / 2)
    assert m["kl/ref"].item() == pytest.approx(0.5)


def test_rloo_needs_two_samples_and_is_finite_with_one_valid():
    with pytest.raises(ValueError, match="K >= 2"):
        REGISTRY["rloo"](RLOOConfig(beta=0.0))(Batch(logp=torch.zeros(3, 1), score=torch.ones(3, 1), mask=torch.ones(3, 1)))
    # a K = 2 context with one valid sample: no baseline, advantage 0, gradient 0, finite
    logp = torch.zeros(1, 2, dtype=D, requires_grad=True)
    loss, _ = rloo_loss(logp, t([5.0, float("nan")]), t([1.0, 0.0]), None, beta=0.0, advantage_norm="none")
    (g,) = torch.autograd.grad(loss, logp)
    assert torch.isfinite(loss) and (g == 0).all()


# ------------------------------------------------------------------------------------------------
# ReMax
# ------------------------------------------------------------------------------------------------


def test_remax_exact_gradient_with_greedy_baseline():
    # r = [1, 3], r(greedy) = 2 -> A = [−1, 1]; ∂L/∂log π = −A/2 = [0.5, −0.5]
    logp = torch.zeros(1, 2, dtype=D, requires_grad=True)
    loss, m = remax_loss(logp, t([1.0, 3.0]), torch.ones(1, 2, dtype=D), torch.tensor([2.0], dtype=D))
    (g,) = torch.autograd.grad(loss, logp)
    torch.testing.assert_close(g, t([0.5, -0.5]))
    assert m["policy/reward_greedy"].item() == 2.0
    # one sample per context is fine for ReMax
    loss1, _ = remax_loss(torch.zeros(3, 1, dtype=D), torch.ones(3, 1, dtype=D), torch.ones(3, 1, dtype=D), torch.zeros(3, dtype=D))
    assert torch.isfinite(loss1)


# ------------------------------------------------------------------------------------------------
# GRPO
# ------------------------------------------------------------------------------------------------


def _grpo_tokens():
    # one group of K = 3 outputs with 2, 1 and 3 valid tokens (T = 3)
    mask = t([1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 1.0])[None]
    logp = torch.zeros(1, 3, 3, dtype=D, requires_grad=True)
    return logp, mask


def test_grpo_on_policy_gradient_and_reductions():
    # r = [0, 1, 5]: mean 2, deviations [−2, −1, 3], unbiased std √((4+1+9)/2) = √7
    adv = t(-2.0, -1.0, 3.0) / (math.sqrt(7) + 1e-4)
    logp, mask = _grpo_tokens()
    score = t([0.0, 1.0, 5.0])
    lengths = mask.sum(-1)[0]
    for reduction, denom in [("sequence_mean", 3 * lengths), ("token_mean", torch.full((3,), 6.0, dtype=D))]:
        loss, _ = grpo_loss(logp, logp.detach(), None, score, mask, clip_eps=0.2, beta=0.0, reduction=reduction)
        (g,) = torch.autograd.grad(loss, logp)
        # at r = 1: ∂/∂ℓ_{k,t} = −A_k / (K |o_k|) (sequence_mean) or −A_k / Σ|o| (token_mean); 0 on padding
        torch.testing.assert_close(g[0], (-adv / denom)[:, None] * mask[0])


def test_grpo_k3_kl_value_and_gradient():
    # log π − log π_ref = d per token, A = 0 (equal rewards): loss = β·reduce(e^{−d} + d − 1),
    # ∂/∂ℓ = β (1 − e^{−d}) / N (token_mean, N = 6 valid tokens)
    logp, mask = _grpo_tokens()
    d = 0.3
    ref = torch.full((1, 3, 3), -d, dtype=D)
    loss, m = grpo_loss(logp, logp.detach(), ref, t([1.0, 1.0, 1.0]), mask, clip_eps=0.2, beta=0.1, reduction="token_mean")
    assert loss.item() == pytest.approx(0.1 * (math.exp(-d) + d - 1))
    assert m["kl/ref"].item() == pytest.approx(math.exp(-d) + d - 1)
    (g,) = torch.autograd.grad(loss, logp)
    torch.testing.assert_close(g[0], 0.1 * (1 - math.exp(-d)) / 6 * mask[0])


def test_grpo_needs_a_group():
    with pytest.raises(ValueError, match="K >= 2"):
        grpo_loss(torch.zeros(2, 1, 3), torch.zeros(2, 1, 3), None, torch.zeros(2, 1), torch.ones(2, 1, 3),
                  clip_eps=0.2, beta=0.0, reduction="token_mean")
    with pytest.raises(ValueError, match="K >= 2"):
        REGISTRY["grpo"](GRPOConfig())(Batch(logp=torch.zeros(2, 1), score=torch.zeros(2, 1), mask=torch.ones(2, 1),
                                             logp_old=torch.zeros(2, 1), logp_ref=torch.zeros(2, 1)))


# ------------------------------------------------------------------------------------------------
# REINFORCE++
# ------------------------------------------------------------------------------------------------


def test_reinforce_pp_token_returns_exact():
    # one sequence, tokens 3 valid + 1 pad, r = 1, k1_t = [0.1, 0.2, 0.3], β = 1:
    #   token rewards [−0.1, −0.2, 1 − 0.3] ; γ = 1 returns G = [0.4, 0.5, 0.7]
    #   whitened over the 3 valid tokens with the population variance
    old = t([0.1, 0.2, 0.3, 7.0])
    ref = torch.zeros(1, 4, dtype=D)
    mask = t([1.0, 1.0, 1.0, 0.0])
    adv = reinforce_pp_advantages(torch.tensor([1.0], dtype=D), old, ref, mask, beta=1.0, gamma=1.0)
    g = torch.tensor([0.4, 0.5, 0.7], dtype=D)
    expected = (g - g.mean()) / g.var(unbiased=False).sqrt()
    torch.testing.assert_close(adv[0, :3], expected)
    assert adv[0, 3] == 0


def test_reinforce_pp_whitens_over_the_whole_batch_not_per_context():
    # β = 0, T = 1: A = whiten(r) over all 4 samples of 2 contexts; r = [[1, 2], [3, 4]] -> (r − 2.5)/√1.25
    logp = torch.zeros(2, 2, 1, dtype=D, requires_grad=True)
    loss, _ = reinforce_pp_loss(logp, logp.detach(), None, t([1.0, 2.0], [3.0, 4.0]), torch.ones(2, 2, 1, dtype=D),
                                clip_eps=0.2, beta=0.0, gamma=1.0, reduction="token_mean")
    (g,) = torch.autograd.grad(loss, logp)
    torch.testing.assert_close(g[..., 0], -(t([1.0, 2.0], [3.0, 4.0]) - 2.5) / math.sqrt(1.25) / 4)
    # K = 1 is fine (no per-context baseline)
    one, _ = reinforce_pp_loss(torch.zeros(3, 1, 2), torch.zeros(3, 1, 2), None, torch.randn(3, 1), torch.ones(3, 1, 2),
                               clip_eps=0.2, beta=0.0, gamma=1.0, reduction="token_mean")
    assert torch.isfinite(one)


def test_reinforce_pp_and_grpo_invariant_to_padding_and_finite_for_large_rewards():
    g = torch.Generator().manual_seed(0)
    b, k, n = 2, 3, 4
    logp = (0.2 * torch.randn(b, k, n, generator=g, dtype=D)).requires_grad_()
    old, ref = 0.2 * torch.randn(b, k, n, generator=g, dtype=D), 0.2 * torch.randn(b, k, n, generator=g, dtype=D)
    score = 1e9 * torch.randn(b, k, generator=g, dtype=D)
    mask = torch.ones(b, k, n, dtype=D)
    fns = [lambda *a: reinforce_pp_loss(*a, clip_eps=0.2, beta=0.01, gamma=1.0, reduction="token_mean"),
           lambda *a: grpo_loss(*a, clip_eps=0.2, beta=0.04, reduction="sequence_mean")]
    for fn in fns:
        loss, m = fn(logp, old, ref, score, mask)
        (grad,) = torch.autograd.grad(loss, logp)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()
        # padding: one extra garbage token per sequence and one extra masked sample per context
        padded = lambda x, v: torch.nn.functional.pad(torch.nn.functional.pad(x, (0, 1), value=v), (0, 0, 0, 1), value=v)  # noqa: E731
        lp = padded(logp.detach(), float("nan")).requires_grad_()
        score_p = torch.nn.functional.pad(score, (0, 1), value=float("nan"))
        loss_p, _ = fn(lp, padded(old, float("inf")), padded(ref, float("-inf")), score_p, padded(mask, 0.0))
        (grad_p,) = torch.autograd.grad(loss_p, lp)
        torch.testing.assert_close(loss_p, loss)
        torch.testing.assert_close(grad_p[:, :k, :n], grad)
        assert (grad_p[:, k] == 0).all() and (grad_p[..., n] == 0).all()


# ------------------------------------------------------------------------------------------------
# vmap over seeds, as tasks/bandits.py runs every method
# ------------------------------------------------------------------------------------------------

VMAP_METHODS = {
    "rloo": RLOOConfig(), "remax": None, "grpo": GRPOConfig(), "reinforce_pp": None, "ipo": None,
    "kto": KTOConfig(reference_point="matched"), "cpl": None, "gro": None, "ppo": None,
}


@pytest.mark.parametrize("name", sorted(VMAP_METHODS))
def test_methods_run_under_vmap_and_match_the_per_seed_loop(name):
    g = torch.Generator().manual_seed(7)
    s, b, k = 3, 2, 4
    tensors = {f: torch.randn(s, b, k, generator=g, dtype=D) for f in
               ("logp", "score", "logp_old", "logp_ref", "value", "value_old", "value_target")}
    tensors["mask"] = torch.ones(s, b, k, dtype=D)
    tensors["label"] = torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=D).expand(s, b, k).clone()
    tensors["baseline"] = torch.randn(s, b, generator=g, dtype=D)
    cls = REGISTRY[name]
    method = cls(VMAP_METHODS[name] or cls.Config()).to(D)
    params = dict(method.named_parameters())

    def per_seed(p, x):
        return functional_call(method, p, (Batch(**x),))

    losses, metrics = vmap(per_seed, in_dims=(None, 0))(params, tensors)
    for i in range(s):
        loss_i, metrics_i = method(Batch(**{f: v[i] for f, v in tensors.items()}))
        torch.testing.assert_close(losses[i], loss_i)
        for key, value in metrics_i.items():
            torch.testing.assert_close(metrics[key][i], value)


# ------------------------------------------------------------------------------------------------
# Learning on a bandit with a known optimum
# ------------------------------------------------------------------------------------------------

ARM_REWARD = torch.tensor([0.0, 0.2, 0.5, 0.3, 1.0], dtype=D)  # arm 4 is optimal


@pytest.mark.parametrize("name", ["rloo", "remax", "grpo", "reinforce_pp", "ipo", "kto", "cpl", "gro"])
def test_each_method_finds_the_best_arm_of_a_five_armed_bandit(name):
    # 8 identical contexts × K = 4 on-policy samples per step; reward + small noise; reference = the
    # uniform initial policy; ReMax's baseline is the reward of the greedy arm. A normalised gradient
    # step (scale-free across losses) of 0.2 for 120 steps; the optimal arm must reach probability 0.9.
    g = torch.Generator().manual_seed(0)
    theta = torch.zeros(5, dtype=D, requires_grad=True)
    logp_ref = torch.log_softmax(torch.zeros(5, dtype=D), -1)
    cfg = KTOConfig(reference_point="matched") if name == "kto" else REGISTRY[name].Config()
    method = REGISTRY[name](cfg)
    for _ in range(120):
        logp_all = torch.log_softmax(theta, -1)
        y = torch.multinomial(logp_all.exp().detach(), 32, replacement=True, generator=g).reshape(8, 4)
        score = ARM_REWARD[y] + 0.01 * torch.randn(8, 4, generator=g, dtype=D)
        rank = score.argsort(-1).argsort(-1)
        batch = Batch(logp=logp_all[y], score=score, mask=torch.ones(8, 4, dtype=D), logp_old=logp_all[y].detach(),
                      logp_ref=logp_ref[y], label=torch.where(rank >= 2, 1.0, -1.0).to(D),
                      baseline=ARM_REWARD[theta.argmax()].expand(8))
        (grad,) = torch.autograd.grad(method(batch)[0], theta)
        with torch.no_grad():
            theta -= 0.2 * grad / (grad.norm() + 1e-12)
    assert torch.softmax(theta, -1)[4] > 0.9
