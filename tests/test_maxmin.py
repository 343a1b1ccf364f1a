"""Tests for algorithms.maxmin (MaxMin-RLHF, `[EM-LLM] §8`).

Hand derivations are in the comments. Useful values: σ(ln 3) = 3/4, σ(−ln 3) = 1/4, σ(0) = 1/2.
"""

import math

import pytest
import torch

from algorithms.config import ConfigError
from algorithms.maxmin import (
    MaxMinConfig,
    cluster_purity,
    maxmin_loss,
    mixing_log_weights,
    mixture_mstep_loss,
    responsibilities,
    user_log_likelihood,
    weighted_bt_nll,
    worst_group_weights,
)

LN3 = math.log(3.0)
D = torch.float64


def t(x):
    return torch.tensor(x, dtype=D)


# ------------------------------------------------------------------------------------------------
# 1. exact values
# ------------------------------------------------------------------------------------------------


def one_user():
    # U = 1 user, P = 2 pairs, M = 2 clusters.
    # cluster 0 margins [ln 3, ln 3] -> likelihood (3/4)(3/4) = 9/16
    # cluster 1 margins [−ln 3, 0]   -> likelihood (1/4)(1/2) = 2/16
    margin = t([[[LN3, -LN3], [LN3, 0.0]]])  # [U, P, M]
    return margin, torch.ones(1, 2, dtype=D)


def test_user_log_likelihood_exact():
    margin, mask = one_user()
    ll = user_log_likelihood(margin, mask)
    assert ll.shape == (1, 2)
    torch.testing.assert_close(ll, t([[math.log(9 / 16), math.log(2 / 16)]]))


def test_soft_responsibilities_equal_and_learned_priors():
    margin, mask = one_user()
    ll = user_log_likelihood(margin, mask)
    # equal priors: γ ∝ [9/16, 2/16] -> [9/11, 2/11]
    resp, m = responsibilities(ll, assignment="soft")
    torch.testing.assert_close(resp, t([[9 / 11, 2 / 11]]))
    torch.testing.assert_close(m["mixture/loglik"], t(math.log(0.5 * 9 / 16 + 0.5 * 2 / 16)))
    # priors π = [0.2, 0.8]: γ ∝ [0.2·9/16, 0.8·2/16] = [1.8, 1.6]/16 -> [9/17, 8/17]
    log_mix = torch.log(t([0.2, 0.8]))
    resp, m = responsibilities(ll, assignment="soft", log_mix=log_mix)
    torch.testing.assert_close(resp, t([[9 / 17, 8 / 17]]))
    torch.testing.assert_close(m["mixture/loglik"], t(math.log(3.4 / 16)))
    # posterior entropy −Σ γ log γ
    h = -(9 / 17 * math.log(9 / 17) + 8 / 17 * math.log(8 / 17))
    torch.testing.assert_close(m["mixture/entropy"], t(h))


def test_hard_responsibilities_argmax_with_priors_and_ties():
    margin, mask = one_user()
    ll = user_log_likelihood(margin, mask)
    resp, _ = responsibilities(ll, assignment="hard")
    torch.testing.assert_close(resp, t([[1.0, 0.0]]))  # 9/16 > 2/16
    # π = [0.1, 0.9]: 0.1·9/16 = 0.9/16 < 0.9·2/16 = 1.8/16 -> cluster 1
    resp, m = responsibilities(ll, assignment="hard", log_mix=torch.log(t([0.1, 0.9])))
    torch.testing.assert_close(resp, t([[0.0, 1.0]]))
    assert m["mixture/mass_min"].item() == 0.0
    # metrics count only unmasked users: two copies of the user plus a masked user with a huge likelihood
    ll3 = torch.cat([ll, ll, t([[0.0, 50.0]])])
    _, m3 = responsibilities(ll3, assignment="soft", user_mask=t([1, 1, 0]))
    _, m1 = responsibilities(ll, assignment="soft")
    for k in m1:
        torch.testing.assert_close(m3[k], m1[k])
    # an exact tie goes to the lower cluster index
    resp, _ = responsibilities(torch.zeros(3, 2, dtype=D), assignment="hard")
    torch.testing.assert_close(resp, t([[1.0, 0.0]] * 3))


def test_mixing_log_weights_exact():
    resp = t([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [0.3, 0.7]])
    # all users: mass [1.8, 2.2] / 4 ; last user masked: [1.5, 1.5] / 3
    torch.testing.assert_close(mixing_log_weights(resp), torch.log(t([0.45, 0.55])))
    torch.testing.assert_close(mixing_log_weights(resp, t([1, 1, 1, 0])), torch.log(t([0.5, 0.5])))


def test_mstep_loss_exact_both_reductions():
    # user 0: margins [0, ln3] (cluster 0, 1); user 1: [ln3, 0]; one pair each.
    margin = t([[[0.0, LN3]], [[LN3, 0.0]]])
    mask = torch.ones(2, 1, dtype=D)
    hard = t([[0.0, 1.0], [1.0, 0.0]])
    # each user sits in the cluster where its margin is ln 3: NLL −log(3/4) = log(4/3) per pair
    loss, m = mixture_mstep_loss(margin, mask, hard, reduction="pairs")
    torch.testing.assert_close(loss, t(math.log(4 / 3)))
    assert m["reward/accuracy"].item() == pytest.approx(1.0)
    # soft γ = 1/2 everywhere: per pair ½(log 2 + log 4/3); mean over 2 pairs -> ½ log(8/3)
    loss, m = mixture_mstep_loss(margin, mask, torch.full((2, 2), 0.5, dtype=D), reduction="pairs")
    torch.testing.assert_close(loss, t(0.5 * math.log(8 / 3)))
    assert m["reward/accuracy"].item() == pytest.approx(0.5)  # margin 0 is not > 0

    # three users, two in cluster 0 with margin 0 (NLL log 2), one in cluster 1 with margin ln 3 (log 4/3)
    margin = t([[[0.0, 0.0]], [[0.0, 0.0]], [[0.0, LN3]]])
    mask = torch.ones(3, 1, dtype=D)
    hard = t([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    pairs, _ = mixture_mstep_loss(margin, mask, hard, reduction="pairs")
    per_cluster, m = mixture_mstep_loss(margin, mask, hard, reduction="per_cluster")
    torch.testing.assert_close(pairs, t((2 * math.log(2) + math.log(4 / 3)) / 3))
    torch.testing.assert_close(per_cluster, t((math.log(2) + math.log(4 / 3)) / 2))
    torch.testing.assert_close(m["mixture/mass_min"], t(1 / 3))


def test_maxmin_hard_and_soft_exact():
    u = t([2.0, 1.0, 3.0])
    loss, m = maxmin_loss(u, selection="hard")
    assert loss.item() == -1.0
    assert m["maxmin/worst_group"].item() == 1.0
    assert m["maxmin/gap"].item() == 2.0
    # soft, two tied groups at 1: −τ log(mean(e^{−1}, e^{−1})) = 1 for any τ
    loss, _ = maxmin_loss(t([1.0, 1.0]), selection="soft", temperature=0.7)
    torch.testing.assert_close(loss, t(-1.0))
    # soft, U = [0, ln 3], τ = 1: −log((1 + 1/3)/2) = log(3/2)
    loss, _ = maxmin_loss(t([0.0, LN3]), selection="soft", temperature=1.0)
    torch.testing.assert_close(loss, t(-math.log(1.5)))
    # ties in the hard argmin: the lower index
    _, m = maxmin_loss(t([1.0, 0.5, 0.5]), selection="hard")
    assert m["maxmin/worst_group"].item() == 1.0
    # a masked group is not compared even when its utility is lowest
    loss, m = maxmin_loss(t([2.0, -5.0, 3.0]), selection="hard", group_mask=t([1, 0, 1]))
    assert loss.item() == -2.0 and m["maxmin/worst_group"].item() == 0.0 and m["maxmin/gap"].item() == 1.0


def test_softmin_limits_between_min_and_mean():
    u = t([0.3, -1.2, 2.0, 0.9])
    objs = [-maxmin_loss(u, selection="soft", temperature=tau)[0].item() for tau in (1e-3, 0.1, 1.0, 10.0, 1e4)]
    assert all(a <= b + 1e-12 for a, b in zip(objs, objs[1:]))  # rises with τ
    # τ → 0: min + τ log G (+ exponentially small) ; τ → ∞: the mean
    assert objs[0] == pytest.approx(-1.2 + 1e-3 * math.log(4), abs=1e-9)
    assert objs[-1] == pytest.approx(u.mean().item(), abs=1e-3)


def test_cluster_purity_exact():
    a = torch.tensor([0, 0, 1, 1, 1])
    g = torch.tensor([0, 0, 1, 1, 0])
    # cluster 0 = {g0, g0} -> 2 ; cluster 1 = {g1, g1, g0} -> 2 ; purity 4/5
    assert cluster_purity(a, g).item() == pytest.approx(0.8)
    assert cluster_purity(1 - a, g).item() == pytest.approx(0.8)  # cluster labels do not matter
    assert cluster_purity(a, 1 - g).item() == pytest.approx(0.8)
    assert cluster_purity(torch.zeros(5, dtype=torch.long), g).item() == pytest.approx(0.6)  # majority share
    assert cluster_purity(a, g, user_mask=t([1, 1, 1, 1, 0])).item() == pytest.approx(1.0)


def test_config_validation():
    assert MaxMinConfig().n_clusters == 2
    with pytest.raises(ConfigError, match="n_clusters"):
        MaxMinConfig(n_clusters=0)
    with pytest.raises(ConfigError, match="softmin_temperature"):
        MaxMinConfig(softmin_temperature=0.0)
    with pytest.raises(ConfigError, match="assignment"):
        MaxMinConfig(assignment="argmax")


# ------------------------------------------------------------------------------------------------
# 2. gradient and stop-gradient contracts
# ------------------------------------------------------------------------------------------------


def random_problem(seed=0, U=5, P=4, M=3):
    g = torch.Generator().manual_seed(seed)
    margin = torch.randn(U, P, M, generator=g, dtype=D) * 2
    mask = (torch.rand(U, P, generator=g, dtype=D) > 0.3).to(D)
    mask[:, 0] = 1.0
    return margin, mask


def test_responsibilities_carry_no_gradient():
    margin, mask = random_problem()
    margin.requires_grad_()
    ll = user_log_likelihood(margin, mask)
    assert ll.requires_grad
    for kind in ("soft", "hard"):
        resp, metrics = responsibilities(ll, assignment=kind, log_mix=torch.log(t([0.2, 0.3, 0.5])).requires_grad_())
        assert not resp.requires_grad
        assert not any(v.requires_grad for v in metrics.values())


def test_mstep_gradient_matches_closed_form_and_ignores_resp_graph():
    margin, mask = random_problem()
    margin.requires_grad_()
    # a responsibility tensor that *does* carry a graph back to the margins: the loss must detach it
    resp = torch.softmax(user_log_likelihood(margin, mask), -1)
    assert resp.requires_grad
    loss, _ = mixture_mstep_loss(margin, mask, resp, reduction="pairs")
    (grad,) = torch.autograd.grad(loss, margin)
    # d/dm [−log σ(m)] = σ(m) − 1 ; weight γ_iu mask_ip / n
    n = mask.sum()
    closed = resp.detach()[:, None, :] * mask[..., None] * (torch.sigmoid(margin.detach()) - 1.0) / n
    torch.testing.assert_close(grad, closed)


def test_mstep_gradient_per_cluster_closed_form():
    margin, mask = random_problem(1)
    margin.requires_grad_()
    resp, _ = responsibilities(user_log_likelihood(margin, mask), assignment="soft")
    loss, _ = mixture_mstep_loss(margin, mask, resp, reduction="per_cluster")
    (grad,) = torch.autograd.grad(loss, margin)
    mass = (resp[:, None, :] * mask[..., None]).sum((0, 1))  # n_u
    closed = resp[:, None, :] * mask[..., None] * (torch.sigmoid(margin.detach()) - 1.0) / mass / 3
    torch.testing.assert_close(grad, closed)


def test_maxmin_gradient_hard_is_argmin_onehot_soft_is_softmax():
    u = t([0.4, -0.2, 1.5]).requires_grad_()
    (g,) = torch.autograd.grad(-maxmin_loss(u, selection="hard")[0], u)
    torch.testing.assert_close(g, t([0.0, 1.0, 0.0]))
    torch.testing.assert_close(worst_group_weights(u, selection="hard"), g)
    (g,) = torch.autograd.grad(-maxmin_loss(u, selection="soft", temperature=0.5)[0], u)
    torch.testing.assert_close(g, torch.softmax(-u.detach() / 0.5, -1))
    torch.testing.assert_close(worst_group_weights(u, selection="soft", temperature=0.5), g)
    assert not worst_group_weights(u, selection="soft", temperature=0.5).requires_grad


# ------------------------------------------------------------------------------------------------
# 3. invariances
# ------------------------------------------------------------------------------------------------


def test_user_permutation_permutes_responsibilities():
    margin, mask = random_problem(2)
    perm = torch.tensor([3, 0, 4, 1, 2])
    log_mix = torch.log(t([0.5, 0.2, 0.3]))
    for kind in ("soft", "hard"):
        r, _ = responsibilities(user_log_likelihood(margin, mask), assignment=kind, log_mix=log_mix)
        rp, _ = responsibilities(user_log_likelihood(margin[perm], mask[perm]), assignment=kind, log_mix=log_mix)
        torch.testing.assert_close(rp, r[perm])
    r, _ = responsibilities(user_log_likelihood(margin, mask), assignment="soft")
    a, _ = mixture_mstep_loss(margin, mask, r, reduction="per_cluster")
    b, _ = mixture_mstep_loss(margin[perm], mask[perm], r[perm], reduction="per_cluster")
    torch.testing.assert_close(a, b)


def test_cluster_relabelling_permutes_responsibility_columns():
    margin, mask = random_problem(3)
    perm = torch.tensor([2, 0, 1])
    log_mix = torch.log(t([0.5, 0.2, 0.3]))
    for kind in ("soft", "hard"):
        r, _ = responsibilities(user_log_likelihood(margin, mask), assignment=kind, log_mix=log_mix)
        rp, _ = responsibilities(user_log_likelihood(margin[..., perm], mask), assignment=kind, log_mix=log_mix[perm])
        torch.testing.assert_close(rp, r[:, perm])
    for red in ("pairs", "per_cluster"):
        a, _ = mixture_mstep_loss(margin, mask, r, reduction=red)
        b, _ = mixture_mstep_loss(margin[..., perm], mask, r[:, perm], reduction=red)
        torch.testing.assert_close(a, b)


def test_padding_pairs_with_zero_mask_changes_nothing():
    margin, mask = random_problem(4)
    margin.requires_grad_()
    junk = t([[[float("nan"), 1e6, -float("inf")]]]).expand(5, 2, 3)
    padded = torch.cat([margin, junk], 1)
    pmask = torch.cat([mask, torch.zeros(5, 2, dtype=D)], 1)
    ll, llp = user_log_likelihood(margin, mask), user_log_likelihood(padded, pmask)
    torch.testing.assert_close(llp, ll)
    r, _ = responsibilities(ll, assignment="soft")
    for red in ("pairs", "per_cluster"):
        a, ma = mixture_mstep_loss(margin, mask, r, reduction=red)
        b, mb = mixture_mstep_loss(padded, pmask, r, reduction=red)
        torch.testing.assert_close(a, b)
        for k in ma:
            torch.testing.assert_close(ma[k], mb[k])
        (ga,) = torch.autograd.grad(a, margin)
        (gb,) = torch.autograd.grad(b, margin)
        torch.testing.assert_close(ga, gb)
        assert torch.isfinite(gb).all()


def test_purity_invariant_to_user_order():
    g = torch.Generator().manual_seed(0)
    a, truth = torch.randint(0, 3, (20,), generator=g), torch.randint(0, 2, (20,), generator=g)
    perm = torch.randperm(20, generator=g)
    assert cluster_purity(a[perm], truth[perm]).item() == pytest.approx(cluster_purity(a, truth).item())


# ------------------------------------------------------------------------------------------------
# 4. learning: EM recovers two groups with opposite preferences
# ------------------------------------------------------------------------------------------------


def synthetic_users(seed, n_major=10, n_minor=6, n_items=6, n_pairs=15, scale=2.0):
    """Majority ranks items by u, minority by −u; each user labels random pairs by BT with reward scale·(±u)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.linspace(-1.0, 1.0, n_items, dtype=D)
    groups = torch.tensor([0] * n_major + [1] * n_minor)
    sign = 1.0 - 2.0 * groups.to(D)  # +1 majority, −1 minority
    U = len(groups)
    i = torch.randint(0, n_items, (U, n_pairs), generator=g)
    j = (i + torch.randint(1, n_items, (U, n_pairs), generator=g)) % n_items  # j ≠ i
    p_i = torch.sigmoid(scale * sign[:, None] * (u[i] - u[j]))
    i_wins = torch.rand(U, n_pairs, generator=g, dtype=D) < p_i
    winner, loser = torch.where(i_wins, i, j), torch.where(i_wins, j, i)
    return winner, loser, groups, n_items


def run_em(winner, loser, n_items, *, assignment, seed, M=2, iters=5):
    g = torch.Generator().manual_seed(seed)
    theta = (0.5 * torch.randn(M, n_items, generator=g, dtype=D)).requires_grad_()  # tabular r_m(item)
    mask = torch.ones(winner.shape, dtype=D)
    log_mix = None

    def margins():
        return (theta[:, winner] - theta[:, loser]).permute(1, 2, 0)  # [U, P, M]

    history = []
    for _ in range(iters):
        with torch.no_grad():
            resp, metrics = responsibilities(user_log_likelihood(margins(), mask), assignment=assignment, log_mix=log_mix)
        history.append(resp.argmax(-1))
        if assignment == "soft":
            log_mix = mixing_log_weights(resp)
        opt = torch.optim.LBFGS([theta], lr=1.0, max_iter=15, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss, _ = mixture_mstep_loss(margins(), mask, resp, reduction="pairs")
            loss = loss + 1e-3 * (theta ** 2).sum()  # keeps tabular BT finite on separable data
            loss.backward()
            return loss

        opt.step(closure)
    with torch.no_grad():
        resp, metrics = responsibilities(user_log_likelihood(margins(), mask), assignment=assignment, log_mix=log_mix)
    return resp, theta.detach(), history


@pytest.mark.parametrize("assignment", ["hard", "soft"])
@pytest.mark.parametrize("seed", [0, 1])
def test_em_recovers_opposite_groups(assignment, seed):
    winner, loser, groups, n_items = synthetic_users(seed)
    resp, theta, _ = run_em(winner, loser, n_items, assignment=assignment, seed=100 + seed)
    assign = resp.argmax(-1)
    assert cluster_purity(assign, groups).item() == 1.0
    # each recovered reward ranks the items like its group: the majority's cluster correlates with +u
    u = torch.linspace(-1.0, 1.0, n_items, dtype=D)
    c_major = assign[groups == 0][0]
    corr = lambda x: torch.corrcoef(torch.stack([x, u]))[0, 1].item()  # noqa: E731
    assert corr(theta[c_major]) > 0.9
    assert corr(theta[1 - c_major]) < -0.9


def test_weighted_bt_nll_equals_the_per_cluster_mstep_loss_in_value_and_gradient():
    torch.manual_seed(0)
    U, P, M = 6, 5, 3
    margin, mask = torch.randn(U, P, M, dtype=torch.float64), (torch.rand(U, P) > 0.3).double()
    resp = torch.softmax(torch.randn(U, M, dtype=torch.float64), -1)
    resp[:, 2] = 0.0  # a cluster without weight is left out of both means
    a, b = margin.clone().requires_grad_(True), margin.clone().requires_grad_(True)
    core = mixture_mstep_loss(a, mask, resp, reduction="per_cluster")[0]
    fast = weighted_bt_nll(b.reshape(-1, M), (resp[:, None, :] * mask[..., None]).reshape(-1, M))
    core.backward()
    fast.backward()
    torch.testing.assert_close(fast, core)
    torch.testing.assert_close(b.grad, a.grad)
