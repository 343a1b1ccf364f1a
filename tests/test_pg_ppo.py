"""Tests for algorithms.ppo: clipped surrogate, value clipping, entropy bonus, reductions, the adaptor.

Hand-derived values are worked out in the comments next to them.
"""

import math

import pytest
import torch

from algorithms import REGISTRY, Batch
from algorithms.config import ConfigError
from algorithms.ppo import PPOConfig, ppo_loss, ppo_policy_loss, ppo_value_loss, reduce_tokens

D = torch.float64
EPS = 0.2


def col(*values):
    """[B, 1] tensor: B sequences (transitions) of one token each."""
    return torch.tensor(values, dtype=D)[:, None]


def policy(ratios, adv, **kw):
    logp = torch.log(col(*ratios)).requires_grad_()
    kw = {"clip_eps": EPS, "ratio_level": "token", "reduction": "token_mean", **kw}
    loss, metrics = ppo_policy_loss(logp, torch.zeros_like(logp), torch.tensor(adv, dtype=D), torch.ones_like(logp), **kw)
    (grad,) = torch.autograd.grad(loss, logp)
    return loss, metrics, grad[:, 0]


def test_policy_loss_and_ratio_metrics_exact():
    # r = [1.5, 0.5, 1.0], A = [1, 1, −2], ε = 0.2:
    #   min(1.5·1, 1.2·1) = 1.2; min(0.5·1, 0.8·1) = 0.5; min(1·−2, 1·−2) = −2
    #   loss = −(1.2 + 0.5 − 2)/3 = 0.1
    loss, m, _ = policy([1.5, 0.5, 1.0], [1.0, 1.0, -2.0])
    assert loss.item() == pytest.approx(0.1)
    assert m["ratio/clipfrac"].item() == pytest.approx(2 / 3)  # |r − 1| > 0.2 for 1.5 and 0.5
    assert m["ratio/mean"].item() == pytest.approx(1.0)
    assert m["ratio/std"].item() == pytest.approx(math.sqrt((0.25 + 0.25 + 0.0) / 3))
    # k3 estimate of KL(π_old‖π_θ): mean of r − 1 − log r
    k3 = [(r - 1 - math.log(r)) for r in (1.5, 0.5, 1.0)]
    assert m["kl/old"].item() == pytest.approx(sum(k3) / 3)


def test_gradient_vanishes_outside_the_clip_region_in_the_advantage_direction():
    # d/dlogp of −min(rA, clip(r)A)/N is −A r/N where the unclipped branch is active, else 0.
    ratios = [1.5, 0.5, 0.5, 1.5, 1.1]
    adv = [1.0, -1.0, 1.0, -1.0, 2.0]
    _, _, grad = policy(ratios, adv)
    n = len(ratios)
    # A>0 and r>1+ε: clipped -> 0.  A<0 and r<1−ε: clipped -> 0.
    assert grad[0].item() == 0.0 and grad[1].item() == 0.0
    # the other side of the region keeps its gradient (PPO's pessimistic min): −A r / N
    assert grad[2].item() == pytest.approx(-1.0 * 0.5 / n)
    assert grad[3].item() == pytest.approx(+1.0 * 1.5 / n)
    # inside the region: −A r / N
    assert grad[4].item() == pytest.approx(-2.0 * 1.1 / n)


def test_on_policy_gradient_is_reinforce():
    # at θ = θ_old every r = 1 and the gradient is −A/N per sample
    _, _, grad = policy([1.0, 1.0, 1.0], [3.0, -1.0, 0.5])
    torch.testing.assert_close(grad, -torch.tensor([3.0, -1.0, 0.5], dtype=D) / 3)


def test_sequence_level_ratio_vs_token_level():
    # one sequence, log-ratios [0.1, 0.15], A = 1, ε = 0.2
    logp = torch.tensor([[0.1, 0.15]], dtype=D)
    old, mask, adv = torch.zeros_like(logp), torch.ones_like(logp), torch.tensor([1.0], dtype=D)
    kw = {"clip_eps": EPS, "reduction": "token_mean"}
    # token level: e^0.1 = 1.10517 and e^0.15 = 1.16183 both lie inside [0.8, 1.2] -> −mean
    tok, _ = ppo_policy_loss(logp, old, adv, mask, ratio_level="token", **kw)
    assert tok.item() == pytest.approx(-(math.exp(0.1) + math.exp(0.15)) / 2)
    # sequence level: r_seq = e^0.25 = 1.284 > 1.2 -> clipped: −1.2
    seq, m = ppo_policy_loss(logp, old, adv, mask, ratio_level="sequence", **kw)
    assert seq.item() == pytest.approx(-1.2)
    assert m["ratio/clipfrac"].item() == 1.0
    with pytest.raises(ValueError, match="one advantage per sequence"):
        ppo_policy_loss(logp, old, torch.ones_like(logp), mask, ratio_level="sequence", **kw)


def test_reductions_exact():
    # two sequences, terms [1, 2, 3] (3 valid tokens) and [4, pad, pad] (1 valid token)
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 99.0, 99.0]], dtype=D)
    m = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]], dtype=D)
    assert reduce_tokens(x, m, "token_mean").item() == pytest.approx(10 / 4)  # (1+2+3+4)/4
    assert reduce_tokens(x, m, "sequence_mean").item() == pytest.approx((2 + 4) / 2)  # mean of [2, 4]
    assert reduce_tokens(x, m, "sequence_sum").item() == pytest.approx((6 + 4) / 2)  # mean of [6, 4]
    # context_sum on [B=1, K=2, T]: one context holding both sequences -> 6 + 4
    assert reduce_tokens(x[None], m[None], "context_sum").item() == pytest.approx(10.0)


def test_value_loss_clipping_exact():
    # sample 1: V = 2, V_old = 1, R = 3: unclipped (2−3)² = 1; V_clip = 1 + 0.2 = 1.2, (1.2−3)² = 3.24
    #           -> max 3.24 and the clipped branch has no gradient in V
    # sample 2: V = 0.5, V_old = 0.4, R = 1: within the clip, (0.5−1)² = 0.25 both ways
    # loss = ½ (3.24 + 0.25)/2 = 0.8725
    v = torch.tensor([2.0, 0.5], dtype=D, requires_grad=True)
    loss, m = ppo_value_loss(v, torch.tensor([1.0, 0.4], dtype=D), torch.tensor([3.0, 1.0], dtype=D),
                             torch.ones(2, dtype=D), clip_eps=0.2)
    assert loss.item() == pytest.approx(0.8725)
    assert m["value/clipfrac"].item() == pytest.approx(0.5)
    (g,) = torch.autograd.grad(loss, v)
    assert g[0].item() == 0.0
    assert g[1].item() == pytest.approx(0.5 * 2 * (0.5 - 1.0) / 2)  # ½ · 2(V − R) / N
    # without clipping: ½ ((2−3)² + (0.5−1)²)/2 = 0.3125
    plain, _ = ppo_value_loss(v, None, torch.tensor([3.0, 1.0], dtype=D), torch.ones(2, dtype=D), clip_eps=None)
    assert plain.item() == pytest.approx(0.3125)


def test_full_loss_combines_terms_and_entropy_bonus():
    g = torch.Generator().manual_seed(0)
    logp = 0.1 * torch.randn(6, 1, generator=g, dtype=D)
    old, mask, adv = torch.zeros_like(logp), torch.ones_like(logp), torch.randn(6, generator=g, dtype=D)
    value, value_old, target = (torch.randn(6, generator=g, dtype=D) for _ in range(3))
    ent = torch.rand(6, 1, generator=g, dtype=D)
    common = dict(clip_eps=EPS, ratio_level="token", reduction="token_mean", advantage_norm="none")
    pol, _ = ppo_policy_loss(logp, old, adv, mask, clip_eps=EPS, ratio_level="token", reduction="token_mean")
    vl, _ = ppo_value_loss(value, value_old, target, torch.ones(6, dtype=D), clip_eps=0.2)
    total, m = ppo_loss(logp, old, adv, mask, value=value, value_old=value_old, value_target=target, value_clip=0.2,
                        vf_coef=0.5, entropy=ent, ent_coef=0.01, **common)
    assert total.item() == pytest.approx(pol.item() + 0.5 * vl.item() - 0.01 * ent.mean().item())
    assert m["policy/entropy"].item() == pytest.approx(ent.mean().item())
    with pytest.raises(ValueError, match="entropy"):
        ppo_loss(logp, old, adv, mask, ent_coef=0.01, **common)


def test_method_reads_the_entropy_bonus_from_the_batch():
    g = torch.Generator().manual_seed(1)
    logp = 0.1 * torch.randn(4, 1, generator=g, dtype=D)
    batch = Batch(logp=logp, score=torch.randn(4, 1, generator=g, dtype=D), mask=torch.ones(4, 1, dtype=D),
                  logp_old=torch.zeros_like(logp), value=torch.zeros(4, 1, dtype=D), value_old=torch.zeros(4, 1, dtype=D),
                  value_target=torch.zeros(4, 1, dtype=D))
    method = REGISTRY["ppo"](PPOConfig(ent_coef=0.01))
    with pytest.raises(ValueError, match="entropy"):
        method.loss(batch)
    batch.entropy = torch.full((4, 1), 2.0, dtype=D)
    with_bonus, m = method.loss(batch)
    plain, _ = REGISTRY["ppo"](PPOConfig()).loss(batch)
    assert with_bonus.item() == pytest.approx(plain.item() - 0.01 * 2.0)
    assert m["policy/entropy"].item() == pytest.approx(2.0)


def test_batch_advantage_normalisation():
    # A = [1, 2, 3] -> (A − 2)/(std_unbiased 1 + 1e-8) = [−1, 0, 1]; at r = 1 the gradient is −Â/N
    logp = torch.zeros(3, 1, dtype=D, requires_grad=True)
    loss, m = ppo_loss(logp, torch.zeros_like(logp), torch.tensor([1.0, 2.0, 3.0], dtype=D), torch.ones_like(logp),
                       clip_eps=EPS, ratio_level="token", reduction="token_mean", advantage_norm="batch")
    (g,) = torch.autograd.grad(loss, logp)
    torch.testing.assert_close(g[:, 0], -torch.tensor([-1.0, 0.0, 1.0], dtype=D) / (1 + 1e-8) / 3)
    assert m["policy/advantage_mean"].item() == pytest.approx(0.0, abs=1e-12)


def _random_tokens(seed, b=6, n=5):
    g = torch.Generator().manual_seed(seed)
    logp = (0.3 * torch.randn(b, n, generator=g, dtype=D)).requires_grad_()
    old = 0.3 * torch.randn(b, n, generator=g, dtype=D)
    adv = torch.randn(b, n, generator=g, dtype=D)
    mask = (torch.rand(b, n, generator=g) < 0.8).to(D)
    mask[:, 0] = 1.0
    return logp, old, adv, mask


@pytest.mark.parametrize("reduction", ["token_mean", "sequence_mean", "sequence_sum"])
def test_invariant_to_permutation_and_padding(reduction):
    logp, old, adv, mask = _random_tokens(1)
    kw = dict(clip_eps=EPS, ratio_level="token", reduction=reduction, advantage_norm="batch")
    loss, _ = ppo_loss(logp, old, adv, mask, **kw)
    (grad,) = torch.autograd.grad(loss, logp)
    perm = torch.randperm(logp.shape[0], generator=torch.Generator().manual_seed(3))
    lp = logp.detach()[perm].requires_grad_()
    loss_p, _ = ppo_loss(lp, old[perm], adv[perm], mask[perm], **kw)
    (grad_p,) = torch.autograd.grad(loss_p, lp)
    torch.testing.assert_close(loss_p, loss)
    torch.testing.assert_close(grad_p, grad[perm])
    # pad: a fully masked sequence and two masked tokens holding NaN / inf garbage
    pad = lambda x, v: torch.cat([torch.cat([x, torch.full((x.shape[0], 2), v, dtype=D)], 1),  # noqa: E731
                                  torch.full((1, x.shape[1] + 2), v, dtype=D)], 0)
    lq = pad(logp.detach(), float("nan")).requires_grad_()
    loss_q, _ = ppo_loss(lq, pad(old, float("inf")), pad(adv, float("nan")), pad(mask, 0.0), **kw)
    (grad_q,) = torch.autograd.grad(loss_q, lq)
    torch.testing.assert_close(loss_q, loss)
    torch.testing.assert_close(grad_q[:-1, :-2], grad)
    assert (grad_q[-1] == 0).all() and (grad_q[:, -2:] == 0).all()


def test_finite_for_large_advantages():
    logp, old, adv, mask = _random_tokens(4)
    loss, m = ppo_loss(logp, old, 1e12 * adv, mask, clip_eps=EPS, ratio_level="token", reduction="token_mean",
                       advantage_norm="none")
    (grad,) = torch.autograd.grad(loss, logp)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert all(torch.isfinite(v) for v in m.values())


def test_method_adaptor_matches_pure_loss_and_config_is_validated():
    g = torch.Generator().manual_seed(5)
    b, k = 4, 3
    logp = (0.2 * torch.randn(b, k, generator=g, dtype=D)).requires_grad_()
    fields = {n: torch.randn(b, k, generator=g, dtype=D) for n in ("logp_old", "score", "value", "value_old", "value_target")}
    batch = Batch(logp=logp, mask=torch.ones(b, k, dtype=D), **fields)
    method = REGISTRY["ppo"](PPOConfig())
    loss, metrics = method(batch)
    expected, _ = ppo_loss(logp[..., None], fields["logp_old"][..., None], fields["score"], torch.ones(b, k, 1, dtype=D),
                           clip_eps=0.2, ratio_level="token", reduction="token_mean", advantage_norm="batch",
                           value=fields["value"], value_old=fields["value_old"], value_target=fields["value_target"],
                           value_mask=torch.ones(b, k, dtype=D), value_clip=0.2, vf_coef=0.5)
    torch.testing.assert_close(loss, expected)
    assert {"ratio/clipfrac", "ratio/mean", "ratio/std", "kl/old", "value/loss"} <= set(metrics)
    assert method.needs.logp_old and method.needs.values
    with pytest.raises(ConfigError, match="clip_eps"):
        PPOConfig(clip_eps=0.0)
    with pytest.raises(ConfigError, match="ratio_level"):
        PPOConfig(ratio_level="trajectory")
    with pytest.raises(ConfigError, match="value_clip"):
        PPOConfig(value_clip=-0.1)
