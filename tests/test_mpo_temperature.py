"""MPO's solved temperature (`estep.solve_eta`, `MPOConfig(temperature="solved")`): the minimiser of the E-step dual
on a batch, checked against the KL bound it must meet, a brute-force scan of the dual, and `vmap` over seeds."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import vmap

from algorithms.base import Batch
from algorithms.common import normalized_log_weights
from algorithms.estep import solve_eta, temperature_loss, weights_kl
from algorithms.mpo import MPO, MPOConfig
from tasks.bandits import FUNCTIONS
from tasks.seeding import generator

EPS = MPOConfig().epsilon_eta


def sphere_batch(seed: int = 0, contexts: int = 1, k: int = 4, dim: int = 10) -> torch.Tensor:
    """Scores −f(y) of K Gaussian proposals around a point of the task box, as the bandit loop makes them: [contexts, K]."""
    g = generator(seed, "test/batch")
    mu = torch.rand(contexts, 1, dim, generator=g, dtype=torch.float64) * 4 - 2
    y = mu + 0.5 * torch.randn(contexts, k, dim, generator=g, dtype=torch.float64)
    return -FUNCTIONS["sphere"](y)


@pytest.mark.parametrize("seed", range(5))
def test_the_solved_eta_puts_the_weights_kl_exactly_on_the_bound(seed):
    score = sphere_batch(seed)
    mask = torch.ones_like(score)
    eta = solve_eta(score, mask, EPS)
    kl = weights_kl(normalized_log_weights(score / eta, mask), mask)
    assert kl.item() == pytest.approx(EPS, abs=1e-9)
    # the dual's derivative vanishes there: it is the minimiser the gradient steps chase
    eta_var = eta.clone().requires_grad_()
    (grad,) = torch.autograd.grad(temperature_loss(score, mask, eta_var, EPS), eta_var)
    assert abs(grad.item()) < 1e-8


def test_the_solved_eta_is_the_argmin_of_the_dual_over_a_scan():
    score = sphere_batch(3, contexts=5)
    mask = torch.ones_like(score)
    mask[1, 2:] = 0  # a context with two valid samples
    eta = solve_eta(score, mask, EPS).item()
    grid = torch.logspace(-3, 6, 20001, dtype=torch.float64)
    losses = torch.stack([temperature_loss(score, mask, e, EPS) for e in grid])
    best = grid[losses.argmin()].item()
    assert eta == pytest.approx(best, rel=2e-3)


def test_weights_kl_is_zero_for_uniform_weights_and_log_n_for_greedy_ones_over_the_kept_samples():
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    greedy = normalized_log_weights(torch.tensor([[9.0, 0, 0, 0], [9.0, 0, 0, 0], [0.0, 0, 0, 0]], dtype=torch.float64) * 1e3, mask)
    uniform = normalized_log_weights(torch.zeros(3, 4, dtype=torch.float64), mask)
    # the empty context does not count: means over the two contexts with samples
    assert weights_kl(greedy, mask).item() == pytest.approx((math.log(4) + math.log(2)) / 2)
    assert weights_kl(uniform, mask).item() == pytest.approx(0.0, abs=1e-15)


def test_scores_that_tie_leave_uniform_weights_whatever_eta():
    score = torch.full((2, 4), -3.0, dtype=torch.float64)
    mask = torch.ones_like(score)
    eta = solve_eta(score, mask, EPS)
    w = normalized_log_weights(score / eta, mask).exp()
    assert torch.allclose(w, torch.full_like(w, 0.25))


def test_solve_eta_runs_under_vmap_over_seeds_as_each_seed_alone():
    scores = torch.stack([sphere_batch(s) for s in range(6)])  # [S, 1, K]
    masks = torch.ones_like(scores)
    batched = vmap(lambda a, m: solve_eta(a, m, EPS))(scores, masks)
    alone = torch.stack([solve_eta(a, m, EPS) for a, m in zip(scores, masks)])
    assert torch.equal(batched, alone)


def test_mpo_with_a_solved_temperature_has_no_temperature_dual_and_logs_the_eta_it_used():
    method = MPO(MPOConfig(temperature="solved")).double()
    assert [name for name, _ in method.named_parameters()] == ["alpha_raw"]
    score = sphere_batch(1)
    logp = torch.zeros_like(score, requires_grad=True)
    batch = Batch(logp=logp, score=score, mask=torch.ones_like(score), kl_ref=torch.zeros(1, dtype=torch.float64))
    _, metrics = method.loss(batch)
    assert metrics["dual/eta"].item() == pytest.approx(solve_eta(score, torch.ones_like(score), EPS).item())
    assert metrics["weights/kl"].item() == pytest.approx(EPS, abs=1e-9)
    assert "dual/eta_loss" not in metrics
    assert 1.0 < metrics["weights/ess"].item() < 4.0  # neither greedy nor uniform: the KL is ε, between 0 and log 4
