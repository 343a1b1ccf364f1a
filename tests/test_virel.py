"""Tests for algorithms.virel (VIREL, `[EM-LLM] §9`).

Hand derivations are in the comments. Notation: δ = T Q − Q, ε = max(c·mean|δ|^p, floor),
Boltzmann target b = softmax(Q/ε), Z = Σ_a exp(Q_a/ε).
"""

import math

import pytest
import torch
from torch.func import functional_call, vmap

from algorithms import REGISTRY, Batch
from algorithms.common import diag_gaussian_logp
from algorithms.config import ConfigError
from algorithms.virel import (
    VIRELConfig,
    diag_gaussian_entropy,
    virel_actor_loss,
    virel_critic_loss,
    virel_epsilon,
)

D = torch.float64
SEMI = dict(residual_gradient="semi")


def t(x):
    return torch.tensor(x, dtype=D)


# ------------------------------------------------------------------------------------------------
# 1. exact values
# ------------------------------------------------------------------------------------------------


def test_epsilon_exact_and_floor():
    q, tgt, mask = t([[1.0, 2.0]]), t([[2.0, 0.0]]), torch.ones(1, 2, dtype=D)
    # δ = [1, −2]: mean δ² = (1 + 4)/2 = 2.5 ; mean |δ| = 1.5
    eps, res = virel_epsilon(q, tgt, mask, c=0.4, p=2.0, floor=0.1, **SEMI)
    assert res.item() == pytest.approx(2.5) and eps.item() == pytest.approx(1.0)  # 0.4 · 2.5
    eps, _ = virel_epsilon(q, tgt, mask, c=0.01, p=2.0, floor=0.1, **SEMI)
    assert eps.item() == pytest.approx(0.1)  # 0.025 < floor
    eps, res = virel_epsilon(q, tgt, mask, c=2.0, p=1.0, floor=0.1, **SEMI)
    assert res.item() == pytest.approx(1.5) and eps.item() == pytest.approx(3.0)


def test_epsilon_goes_to_floor_as_residual_vanishes():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(4, 3, generator=g, dtype=D)
    delta = torch.randn(4, 3, generator=g, dtype=D)
    mask = torch.ones(4, 3, dtype=D)
    c, floor = 0.5, 1e-3
    base = (delta ** 2).mean().item()
    eps = [virel_epsilon(q, q + s * delta, mask, c=c, p=2.0, floor=floor, **SEMI)[0].item() for s in (1.0, 0.3, 0.1, 0.01, 0.0)]
    # above the floor ε = c s² mean δ² exactly; it decreases monotonically and is the floor from s = 0.01 on
    assert eps[0] == pytest.approx(c * base) and eps[1] == pytest.approx(c * 0.09 * base)
    assert all(a >= b for a, b in zip(eps, eps[1:]))
    assert c * 1e-4 * base < floor and eps[3] == floor and eps[4] == floor


def test_actor_exact_categorical_value_and_metrics():
    # π = [1/4, 3/4], Q = [1, 0], ε = 1/2:
    # L = ¼(½ log ¼ − 1) + ¾(½ log ¾) = ⅛ log ¼ − ¼ + ⅜ log ¾ ≈ −0.531168
    logp, q, mask, eps = torch.log(t([[0.25, 0.75]])), t([[1.0, 0.0]]), torch.ones(1, 2, dtype=D), t(0.5)
    loss, m = virel_actor_loss(logp, q, mask, eps, estimator="exact")
    expected = math.log(0.25) / 8 - 0.25 + 3 * math.log(0.75) / 8
    assert loss.item() == pytest.approx(expected)
    assert m["policy/q"].item() == pytest.approx(0.25)
    assert m["policy/entropy"].item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
    # KL(π‖b) = Σ π (log π − Q/ε + log Z) = L/ε + log Z, Z = e² + 1
    assert m["policy/kl_boltzmann"].item() == pytest.approx(expected / 0.5 + math.log(math.e ** 2 + 1))
    # at π = b the loss is −ε log Z and the KL is 0
    b = torch.log_softmax(q / eps, -1)
    loss, m = virel_actor_loss(b, q, mask, eps, estimator="exact")
    assert loss.item() == pytest.approx(-0.5 * math.log(math.e ** 2 + 1))
    assert m["policy/kl_boltzmann"].item() == pytest.approx(0.0, abs=1e-12)


def test_actor_sampled_estimators_exact_values():
    # two samples with log π = [log ¼, log ¾], Q = [1, 0], ε = ½
    lp, q, mask, eps = torch.log(t([[0.25, 0.75]])), t([[1.0, 0.0]]), torch.ones(1, 2, dtype=D), t(0.5)
    h = t([0.7])
    # closed-form entropy: −mean(Q log π) − ε H = −(log ¼)/2 − 0.35
    loss, m = virel_actor_loss(lp, q, mask, eps, estimator="score_function", entropy=h)
    assert loss.item() == pytest.approx(-math.log(0.25) / 2 - 0.35)
    assert m["policy/entropy"].item() == pytest.approx(0.7)
    # sample entropy: −mean((Q − ε log π) log π) = −[(1 − ½ log ¼) log ¼ + (−½ log ¾) log ¾]/2
    loss, m = virel_actor_loss(lp, q, mask, eps, estimator="score_function")
    a, b = math.log(0.25), math.log(0.75)
    assert loss.item() == pytest.approx(-((1 - 0.5 * a) * a + (-0.5 * b) * b) / 2)
    assert m["policy/entropy"].item() == pytest.approx(-(a + b) / 2)
    # reparameterised: mean(ε log π − Q) = [(½ log ¼ − 1) + ½ log ¾]/2
    loss, _ = virel_actor_loss(lp, q, mask, eps, estimator="reparameterised")
    assert loss.item() == pytest.approx((0.5 * a - 1 + 0.5 * b) / 2)


def test_critic_losses_exact():
    q, tgt, mask = t([[1.0, 2.0]]), t([[2.0, 0.0]]), torch.ones(1, 2, dtype=D)
    opts = dict(c=0.4, p=2.0, floor=0.1, **SEMI)
    loss, m = virel_critic_loss(q, tgt, mask, objective="residual", **opts)
    assert loss.item() == pytest.approx(2.5) and m["dual/epsilon"].item() == pytest.approx(1.0)
    # elbo value: −(ε·E[Q] − E[Q]·ε) = 0 at any point (only its gradient matters)
    loss, m = virel_critic_loss(q, tgt, mask, objective="elbo", **opts)
    assert loss.item() == pytest.approx(0.0) and m["value/q"].item() == pytest.approx(1.5)


def test_gaussian_entropy_closed_form():
    # ½ log(2πe σ²) per dim; σ = [1, e] -> log σ = [0, 1]
    h = diag_gaussian_entropy(t([[0.0, 1.0]]))
    assert h.item() == pytest.approx(math.log(2 * math.pi * math.e) + 1.0)


def test_config_validation():
    assert VIRELConfig().critic_objective == "residual"
    for bad in (dict(c=0.0), dict(epsilon_floor=-1.0), dict(residual_power=0.5)):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            VIRELConfig(**bad)
    with pytest.raises(ConfigError, match="actor_estimator"):
        VIRELConfig(actor_estimator="reparameterised")  # needs a pathwise Q: not from a Batch
    with pytest.raises(ConfigError, match="critic_objective"):
        VIRELConfig(critic_objective="td")


# ------------------------------------------------------------------------------------------------
# 2. gradient and stop-gradient contracts
# ------------------------------------------------------------------------------------------------


def linear_critic(seed=0, B=3, K=4, F_=5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, K, F_, generator=g, dtype=D)
    w = torch.randn(F_, generator=g, dtype=D).requires_grad_()
    tgt = torch.randn(B, K, generator=g, dtype=D) * 3
    return x, w, tgt


def test_actor_loss_sends_no_gradient_to_the_critic():
    x, w, tgt = linear_critic()
    q = x @ w
    eps, _ = virel_epsilon(q, tgt, torch.ones_like(q), c=1.0, p=2.0, floor=1e-3, **SEMI)
    assert eps.requires_grad
    logits = torch.zeros(3, 4, dtype=D, requires_grad=True)
    for est in ("exact", "score_function"):
        loss, metrics = virel_actor_loss(torch.log_softmax(logits, -1), q, torch.ones_like(q), eps, estimator=est)
        gw, gl = torch.autograd.grad(loss, [w, logits], allow_unused=True)
        assert gw is None and gl is not None and gl.abs().sum() > 0
        assert not any(v.requires_grad for v in metrics.values())


def test_exact_actor_gradient_closed_form():
    # d/dz_j Σ_a π_a f_a with f = ε log π − Q: Σ_a ∂π_a/∂z_j f_a + ε Σ_a π_a (δ_aj − π_j) = π_j (f_j − E_π f)
    g = torch.Generator().manual_seed(1)
    z = torch.randn(2, 5, generator=g, dtype=D).requires_grad_()
    q = torch.randn(2, 5, generator=g, dtype=D)
    eps = t(0.7)
    loss, _ = virel_actor_loss(torch.log_softmax(z, -1), q, torch.ones_like(q), eps, estimator="exact")
    (grad,) = torch.autograd.grad(loss, z)
    pi = torch.softmax(z.detach(), -1)
    f = eps * torch.log(pi) - q
    closed = pi * (f - (pi * f).sum(-1, keepdim=True)) / 2  # mean over B = 2 states
    torch.testing.assert_close(grad, closed)


@pytest.mark.parametrize("closed_entropy", [True, False])
def test_score_function_gradient_is_unbiased_for_the_exact_gradient(closed_entropy):
    # one state, 4 actions: the sample-average gradient over N draws of π approaches the exact gradient
    z = t([[0.3, -0.5, 1.0, 0.0]]).requires_grad_()
    q = t([[1.0, 0.2, -0.4, 0.6]])
    eps = t(0.5)
    exact, _ = virel_actor_loss(torch.log_softmax(z, -1), q, torch.ones_like(q), eps, estimator="exact")
    (g_exact,) = torch.autograd.grad(exact, z)
    N = 100_000
    g = torch.Generator().manual_seed(0)
    a = torch.multinomial(torch.softmax(z.detach(), -1)[0], N, replacement=True, generator=g)
    logp = torch.log_softmax(z, -1)[0, a][None]
    entropy = -(torch.softmax(z, -1) * torch.log_softmax(z, -1)).sum(-1) if closed_entropy else None
    loss, _ = virel_actor_loss(logp, q[0, a][None], torch.ones(1, N, dtype=D), eps, estimator="score_function", entropy=entropy)
    (g_sf,) = torch.autograd.grad(loss, z)
    torch.testing.assert_close(g_sf, g_exact, atol=1e-2, rtol=0)


def test_residual_critic_gradient_semi_and_full():
    x, w, tgt = linear_critic()
    tgt = tgt.requires_grad_()
    q = x @ w
    n = q.numel()
    opts = dict(c=1.0, p=2.0, floor=1e-3)
    # semi: d/dq mean (sg[T] − q)² = −2 δ / n ; the target receives nothing
    loss, _ = virel_critic_loss(q, tgt, torch.ones_like(q), objective="residual", residual_gradient="semi", **opts)
    gq, gt = torch.autograd.grad(loss, [q, tgt], allow_unused=True)
    torch.testing.assert_close(gq, -2 * (tgt.detach() - q.detach()) / n)
    assert gt is None
    # full (residual gradient): the target gets +2 δ / n
    loss, _ = virel_critic_loss(q, tgt, torch.ones_like(q), objective="residual", residual_gradient="full", **opts)
    gq, gt = torch.autograd.grad(loss, [q, tgt])
    torch.testing.assert_close(gt, 2 * (tgt.detach() - q.detach()) / n)
    torch.testing.assert_close(gq, -gt)


def test_elbo_critic_gradient_is_eq_21():
    # −∇_w loss = ε E[∇Q] − E[Q] ∇ε, with Q = x·w, ∇Q = x, ε = c mean (T − Q)², ∇ε = c mean(−2(T − Q) x)
    x, w, tgt = linear_critic(2)
    c = 0.3
    q = x @ w
    loss, m = virel_critic_loss(q, tgt, torch.ones_like(q), objective="elbo", c=c, p=2.0, floor=1e-6, **SEMI)
    (gw,) = torch.autograd.grad(loss, w)
    qd = q.detach()
    eps = c * ((tgt - qd) ** 2).mean()
    assert m["dual/epsilon"].item() == pytest.approx(eps.item())  # above the floor
    d_eps = c * (-2 * (tgt - qd)[..., None] * x).mean((0, 1))
    eq21 = eps * x.mean((0, 1)) - qd.mean() * d_eps
    torch.testing.assert_close(-gw, eq21)


# ------------------------------------------------------------------------------------------------
# 3. invariances
# ------------------------------------------------------------------------------------------------


def test_padding_changes_nothing():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(3, 4, generator=g, dtype=D).requires_grad_()
    q = torch.randn(3, 4, generator=g, dtype=D)
    tgt = q + torch.randn(3, 4, generator=g, dtype=D)
    mask = torch.ones(3, 4, dtype=D)
    eps = t(0.4)
    pad = lambda x, v: torch.cat([x, torch.full((3, 2), v, dtype=D)], 1)  # noqa: E731
    pmask = pad(mask, 0.0)
    for est in ("exact", "score_function", "reparameterised"):
        a, ma = virel_actor_loss(torch.log_softmax(z, -1), q, mask, eps, estimator=est)
        b, mb = virel_actor_loss(pad(torch.log_softmax(z, -1), 5.0), pad(q, float("nan")), pmask, eps, estimator=est)
        torch.testing.assert_close(a, b)
        for k in ma:
            torch.testing.assert_close(ma[k], mb[k])
        torch.testing.assert_close(torch.autograd.grad(a, z)[0], torch.autograd.grad(b, z)[0])
    for obj in ("residual", "elbo"):
        opts = dict(objective=obj, c=0.5, p=2.0, floor=1e-3, **SEMI)
        a, ma = virel_critic_loss(q, tgt, mask, **opts)
        b, mb = virel_critic_loss(pad(q, 7.0), pad(tgt, float("nan")), pmask, **opts)
        for k in ma:
            torch.testing.assert_close(ma[k], mb[k])


def test_state_permutation_and_per_state_q_shift():
    g = torch.Generator().manual_seed(4)
    z = torch.randn(4, 3, generator=g, dtype=D).requires_grad_()
    q = torch.randn(4, 3, generator=g, dtype=D)
    mask, eps, perm = torch.ones(4, 3, dtype=D), t(0.3), torch.tensor([2, 0, 3, 1])
    a, _ = virel_actor_loss(torch.log_softmax(z, -1), q, mask, eps, estimator="exact")
    b, _ = virel_actor_loss(torch.log_softmax(z[perm], -1), q[perm], mask, eps, estimator="exact")
    torch.testing.assert_close(a, b)
    # Q → Q + c(s) shifts the loss by −mean c(s) and leaves the gradient (hence the minimiser) unchanged
    shift = torch.randn(4, 1, generator=g, dtype=D)
    c, _ = virel_actor_loss(torch.log_softmax(z, -1), q + shift, mask, eps, estimator="exact")
    torch.testing.assert_close(c, a - shift.mean())
    torch.testing.assert_close(torch.autograd.grad(a, z)[0], torch.autograd.grad(c, z)[0])


# ------------------------------------------------------------------------------------------------
# 4. known optimum and learning
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("eps", [0.1, 0.5, 3.0])
def test_actor_minimiser_is_boltzmann_of_q_categorical(eps):
    q = t([[1.0, 0.2, -0.4, 0.6, 0.0], [0.0, 0.0, 2.0, -1.0, 0.5]])
    z = torch.zeros(2, 5, dtype=D, requires_grad=True)
    opt = torch.optim.LBFGS([z], lr=1.0, max_iter=40, tolerance_grad=1e-12, tolerance_change=1e-14, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss, _ = virel_actor_loss(torch.log_softmax(z, -1), q, torch.ones_like(q), t(eps), estimator="exact")
        loss.backward()
        return loss

    opt.step(closure)
    torch.testing.assert_close(torch.softmax(z.detach(), -1), torch.softmax(q / eps, -1), atol=1e-6, rtol=0)
    _, m = virel_actor_loss(torch.log_softmax(z.detach(), -1), q, torch.ones_like(q), t(eps), estimator="exact")
    assert m["policy/kl_boltzmann"].item() < 1e-6


def test_actor_minimiser_is_boltzmann_of_q_gaussian():
    # Q(a) = −(k/2)(a − a*)²  =>  exp(Q/ε) ∝ N(a*, ε/k): the Gaussian actor must reach μ = a*, σ² = ε/k.
    # Reparameterised samples a = μ + σ ξ with fixed ξ standardised to mean 0, mean square 1, so the sample
    # loss −ε log σ + (k/2)((μ − a*)² + σ²) + const has exactly that minimiser.
    a_star, k, eps = 0.7, 2.0, 0.3
    u = (torch.arange(400, dtype=D) + 0.5) / 400
    xi = math.sqrt(2) * torch.erfinv(2 * u - 1)
    xi = (xi - xi.mean()) / xi.pow(2).mean().sqrt()
    mu = torch.zeros(1, 1, dtype=D, requires_grad=True)
    log_std = torch.zeros(1, 1, dtype=D, requires_grad=True)
    opt = torch.optim.LBFGS([mu, log_std], lr=1.0, max_iter=100, tolerance_grad=1e-12, tolerance_change=1e-15,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        a = (mu + log_std.exp() * xi)[..., None]  # [B=1, K=400, A=1]
        logp = diag_gaussian_logp(a, mu[..., None], log_std[..., None])
        qa = -0.5 * k * (a[..., 0] - a_star) ** 2
        loss, _ = virel_actor_loss(logp, qa, torch.ones_like(qa), t(eps), estimator="reparameterised")
        loss.backward()
        return loss

    opt.step(closure)
    assert mu.item() == pytest.approx(a_star, abs=1e-6)
    assert (2 * log_std).exp().item() == pytest.approx(eps / k, rel=1e-6)


def test_registered_method_learns_greedy_bandit_policy_and_epsilon_hits_floor():
    # 3-armed bandit (γ = 0, so T Q = r), all arms enumerated ("exact"), tabular actor and critic.
    # As the critic fits r, the residual -> 0, ε -> floor and the Boltzmann target -> the greedy arm 0.
    r = t([[1.0, 0.0, 0.5]])
    cfg = VIRELConfig(c=1.0, epsilon_floor=1e-3, actor_estimator="exact")
    method = REGISTRY["virel"](cfg)
    z = torch.zeros(1, 3, dtype=D, requires_grad=True)
    qtab = torch.zeros(1, 3, dtype=D, requires_grad=True)
    opt = torch.optim.Adam([z, qtab], lr=0.1)
    eps_log = []
    for _ in range(150):
        batch = Batch(logp=torch.log_softmax(z, -1), score=qtab.detach(), mask=torch.ones(1, 3, dtype=D),
                      value=qtab, value_target=r)
        loss, m = method(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        eps_log.append(m["dual/epsilon"].item())
    assert eps_log[0] == pytest.approx((1 + 0.25) / 3)  # c · mean r² at Q = 0
    assert eps_log[-1] == pytest.approx(1e-3)
    assert torch.softmax(z.detach(), -1)[0, 0].item() > 0.95
    torch.testing.assert_close(qtab.detach(), r, atol=1e-2, rtol=0)


def test_method_is_vmap_compatible():
    # the bandit family's loop runs methods under vmap(functional_call); VIREL must too
    method = REGISTRY["virel"](VIRELConfig())
    g = torch.Generator().manual_seed(5)
    S, B, K = 3, 2, 4
    tensors = dict(logp=torch.log_softmax(torch.randn(S, B, K, generator=g, dtype=D), -1),
                   score=torch.randn(S, B, K, generator=g, dtype=D), mask=torch.ones(S, B, K, dtype=D),
                   value=torch.randn(S, B, K, generator=g, dtype=D), value_target=torch.randn(S, B, K, generator=g, dtype=D))
    loss_v, metrics_v = vmap(lambda tt: functional_call(method, {}, (Batch(**tt),)))(tensors)
    for s in range(S):
        loss, metrics = method(Batch(**{k: v[s] for k, v in tensors.items()}))
        torch.testing.assert_close(loss_v[s], loss)
        torch.testing.assert_close(metrics_v["dual/epsilon"][s], metrics["dual/epsilon"])
