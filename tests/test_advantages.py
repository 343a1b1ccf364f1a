"""Tests for algorithms.advantages: GAE, V-MPO unroll returns, RLOO / GRPO / batch normalisations.

Hand-derived values are worked out in the comments next to them.
"""

import math

import pytest
import torch

from algorithms.advantages import (
    batch_zscore,
    discounted_returns,
    gae,
    group_zscore,
    leave_one_out_advantage,
    reverse_linear_scan,
    unroll_returns,
    whiten,
)

D = torch.float64


def t(*rows):
    return torch.tensor(rows, dtype=D)


def gae_loop(reward, value, next_value, terminated, truncated, gamma, lam):
    """The textbook backward loop, one scalar at a time: the oracle for the vectorised scan."""
    adv = torch.zeros_like(reward)
    for b in range(reward.shape[0]):
        carry = 0.0
        for i in reversed(range(reward.shape[1])):
            live = 1.0 - float(terminated[b, i])
            delta = float(reward[b, i]) + gamma * live * float(next_value[b, i]) - float(value[b, i])
            carry = delta + gamma * lam * live * (1.0 - float(truncated[b, i])) * carry
            adv[b, i] = carry
    return adv


# tiny unroll used by the exact tests: γ = λ = 0.5
R, V, NV = t([1.0, 2.0, 3.0]), t([0.5, 1.0, 1.5]), t([1.0, 1.5, 2.0])
NONE = t([0.0, 0.0, 0.0])
AT1 = t([0.0, 1.0, 0.0])


def test_gae_exact_no_episode_end():
    # δ = r + γV' − V = [1 + .5 − .5, 2 + .75 − 1, 3 + 1 − 1.5] = [1, 1.75, 2.5]
    # A2 = 2.5; A1 = 1.75 + .25·2.5 = 2.375; A0 = 1 + .25·2.375 = 1.59375; returns = A + V
    adv, ret = gae(R, V, NV, NONE, NONE, gamma=0.5, lam=0.5)
    torch.testing.assert_close(adv, t([1.59375, 2.375, 2.5]))
    torch.testing.assert_close(ret, t([2.09375, 3.375, 4.0]))


def test_gae_termination_does_not_bootstrap_truncation_does():
    # terminated after t=1: δ1 = 2 − 1 = 1 (no γV'), A1 = 1 (no carry), A0 = 1 + .25·1 = 1.25, A2 = 2.5
    adv_term, _ = gae(R, V, NV, AT1, NONE, gamma=0.5, lam=0.5)
    torch.testing.assert_close(adv_term, t([1.25, 1.0, 2.5]))
    # truncated after t=1: δ1 = 2 + .5·1.5 − 1 = 1.75 (bootstrap from the cut episode's last obs),
    # but no carry from t=2 (the next episode): A1 = 1.75, A0 = 1 + .25·1.75 = 1.4375
    adv_trunc, _ = gae(R, V, NV, NONE, AT1, gamma=0.5, lam=0.5)
    torch.testing.assert_close(adv_trunc, t([1.4375, 1.75, 2.5]))
    # a step flagged both counts as terminated
    adv_both, _ = gae(R, V, NV, AT1, AT1, gamma=0.5, lam=0.5)
    torch.testing.assert_close(adv_both, adv_term)


def test_gae_vectorised_equals_python_loop():
    g = torch.Generator().manual_seed(0)
    for b, n in [(5, 37), (3, 64), (2, 1), (4, 2)]:  # odd, power-of-two, single-step and two-step unrolls
        reward, value, next_value = (torch.randn(b, n, generator=g, dtype=D) for _ in range(3))
        terminated = (torch.rand(b, n, generator=g) < 0.1).to(D)
        truncated = (torch.rand(b, n, generator=g) < 0.1).to(D)
        adv, ret = gae(reward, value, next_value, terminated, truncated, gamma=0.99, lam=0.95)
        expected = gae_loop(reward, value, next_value, terminated, truncated, 0.99, 0.95)
        torch.testing.assert_close(adv, expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ret, expected + value, rtol=1e-12, atol=1e-12)


def test_reverse_linear_scan_is_the_recurrence():
    # x2 = 3; x1 = 2 + 0.5·3 = 3.5; x0 = 1 + 0·3.5 = 1 (a zero multiplier cuts the chain)
    torch.testing.assert_close(reverse_linear_scan(t([1.0, 2.0, 3.0]), t([0.0, 0.5, 0.7])), t([1.0, 3.5, 3.0]))


def test_unroll_returns_exact():
    # G2 = 3 + .5·2 = 4 (bootstrap at the unroll's end); G1 = 2 + .5·4 = 4; G0 = 1 + .5·4 = 3
    torch.testing.assert_close(unroll_returns(R, NV, NONE, NONE, gamma=0.5), t([3.0, 4.0, 4.0]))
    # terminated after t=1: G1 = 2, G0 = 1 + .5·2 = 2
    torch.testing.assert_close(unroll_returns(R, NV, AT1, NONE, gamma=0.5), t([2.0, 2.0, 4.0]))
    # truncated after t=1: G1 = 2 + .5·1.5 = 2.75, G0 = 1 + .5·2.75 = 2.375
    torch.testing.assert_close(unroll_returns(R, NV, NONE, AT1, gamma=0.5), t([2.375, 2.75, 4.0]))


def test_unroll_returns_equal_gae_lambda_one_returns():
    g = torch.Generator().manual_seed(1)
    reward, value, final_value = (torch.randn(4, 23, generator=g, dtype=D) for _ in range(3))
    terminated = (torch.rand(4, 23, generator=g) < 0.15).to(D)
    truncated = (torch.rand(4, 23, generator=g) < 0.15).to(D)
    # inside an episode V(s'_t) is the next step's V(s_{t+1}); at an episode end (and the unroll's end)
    # it is the value of the final observation, unrelated to the reset one
    ends = torch.maximum(terminated, truncated)
    following = torch.cat([value[:, 1:], final_value[:, -1:]], dim=1)
    next_value = torch.where(ends > 0, final_value, following)
    _, ret = gae(reward, value, next_value, terminated, truncated, gamma=0.9, lam=1.0)
    torch.testing.assert_close(unroll_returns(reward, next_value, terminated, truncated, gamma=0.9), ret)


def test_discounted_returns_skip_padding():
    # mask [1,1,1,0], γ = .5: G2 = 4, G1 = 2 + .5·4 = 4, G0 = 1 + .5·4 = 3, padding contributes 0
    out = discounted_returns(t([1.0, 2.0, 4.0, 100.0]), t([1.0, 1.0, 1.0, 0.0]), gamma=0.5)
    torch.testing.assert_close(out[..., :3], t([3.0, 4.0, 4.0]))


def test_leave_one_out_exact_and_padding():
    # others' means: (2+3+6)/3, (1+3+6)/3, (1+2+6)/3, (1+2+3)/3 = 11/3, 10/3, 3, 2
    torch.testing.assert_close(leave_one_out_advantage(t([1.0, 2.0, 3.0, 6.0]), t([1.0, 1.0, 1.0, 1.0])),
                               t([1 - 11 / 3, 2 - 10 / 3, 0.0, 4.0]))
    # a padded 4th sample (garbage 999) is ignored: others' means (2+3)/2, (1+3)/2, (1+2)/2
    torch.testing.assert_close(leave_one_out_advantage(t([1.0, 2.0, 3.0, 999.0]), t([1.0, 1.0, 1.0, 0.0])),
                               t([-1.5, 0.0, 1.5, 0.0]))
    # one valid sample: no baseline exists -> 0, finite
    torch.testing.assert_close(leave_one_out_advantage(t([5.0, 7.0]), t([1.0, 0.0])), t([0.0, 0.0]))


def test_group_zscore_exact():
    # mean 3, deviations [−2, −1, 0, 3], unbiased var (4+1+0+9)/3 = 14/3
    std = math.sqrt(14 / 3)
    torch.testing.assert_close(group_zscore(t([1.0, 2.0, 3.0, 6.0]), t([1.0, 1.0, 1.0, 1.0])),
                               t([-2.0, -1.0, 0.0, 3.0]) / (std + 1e-4))
    # equal scores: std 0 -> 0/(0 + 1e-4) = 0, finite
    torch.testing.assert_close(group_zscore(t([2.0, 2.0, 2.0]), t([1.0, 1.0, 1.0])), t([0.0, 0.0, 0.0]))


@pytest.mark.parametrize("fn", [leave_one_out_advantage, group_zscore])
def test_per_context_baselines_refuse_one_sample_per_context(fn):
    with pytest.raises(ValueError, match="K >= 2"):
        fn(torch.ones(3, 1, dtype=D), torch.ones(3, 1, dtype=D))


def test_batch_normalisations_exact():
    x, m = t([1.0, 2.0, 3.0, 4.0, 50.0]), t([1.0, 1.0, 1.0, 1.0, 0.0])
    # mean 2.5; population var 1.25 (OpenRLHF whitening); unbiased var 5/3 (CleanRL / TRL)
    x, m = x[0], m[0]
    torch.testing.assert_close(whiten(x, m)[:4], (x[:4] - 2.5) / math.sqrt(1.25))
    torch.testing.assert_close(batch_zscore(x, m)[:4], (x[:4] - 2.5) / (math.sqrt(5 / 3) + 1e-8))
    assert whiten(x, m)[4] == 0 and batch_zscore(x, m)[4] == 0


def test_normalisations_finite_for_large_values_and_invariant_to_permutation():
    g = torch.Generator().manual_seed(2)
    x = 1e6 * torch.randn(6, 4, generator=g)
    m = torch.ones(6, 4)
    for fn in (group_zscore, leave_one_out_advantage):
        out = fn(x, m)
        assert torch.isfinite(out).all()
        perm = torch.randperm(4, generator=g)
        torch.testing.assert_close(fn(x[:, perm], m[:, perm]), out[:, perm])
    for fn in (whiten, batch_zscore):
        assert torch.isfinite(fn(x, m)).all()
