"""The bandit family: test functions, the loop's contracts, and learning on Sphere (known optimum 0)."""

import math

import numpy as np
import pytest
import torch

import tasks
from algorithms.base import Needs
from algorithms.config import ConfigError
from algorithms.mpo import MPOConfig
from algorithms.pmpo import PMPOConfig
from suite import stats
from tasks import RunSpec
from tasks.bandits import FUNCTIONS, BanditConfig, BanditLoopConfig, rosenbrock, schwefel, sphere


def test_functions_exact_values_and_optima():
    x = torch.tensor([[1.0, 2.0, 3.0]])
    assert sphere(x).item() == 14.0  # 1 + 4 + 9
    # 100(2 − 1)² + (1 − 1)² + 100(3 − 4)² + (1 − 2)² = 100 + 0 + 100 + 1
    assert rosenbrock(x).item() == 201.0
    # partial sums 1, 3, 6 -> 1 + 9 + 36
    assert schwefel(x).item() == 46.0
    assert sphere(torch.zeros(1, 10)).item() == 0.0
    assert rosenbrock(torch.ones(1, 10)).item() == 0.0
    assert schwefel(torch.zeros(1, 10)).item() == 0.0


def test_every_function_is_registered_as_a_task():
    assert set(FUNCTIONS) <= set(tasks.TASKS)
    assert all(tasks.TASKS[f].family.name == "bandit" for f in FUNCTIONS)


def test_loop_config_refuses_accepting_every_sample():
    with pytest.raises(ConfigError, match="accept"):
        BanditLoopConfig(samples=4, accept=4)
    with pytest.raises(ConfigError, match="BanditConfig.dim"):
        BanditConfig(dim=1)


def test_needs_a_family_cannot_meet_are_named():
    bandit = tasks.TASKS["sphere"].family.provides
    assert Needs(values=True, min_samples=8).missing(bandit) == ["min_samples=8 (task gives K=4)", "values"]
    tasks.check_compatible("sphere", "pmpo")  # does not raise


def _train(algo, cfg, fn="sphere", seeds=range(10), **loop):
    specs = [RunSpec(fn, tasks.TASKS[fn].config, algo, cfg, BanditLoopConfig(**loop), s) for s in seeds]
    return tasks.TASKS[fn].family.train(specs)


def _final(result, metric="f"):
    return [v for _, m, v in result.rows if m == metric][-1]


def test_reference_is_refreshed_every_period_and_the_kl_is_to_it():
    # right after a refresh the policy equals the reference, so the logged KL at a refresh step is the
    # KL accumulated by one step only, far below the KL logged just before the next refresh
    res = _train("pmpo", PMPOConfig(alpha=1.0, beta=0.0), seeds=[0], steps=200, ref_period=100, log_every=1)[0]
    kl = {s: v for s, m, v in res.rows if m == "kl/ref"}
    assert kl[101] < 0.1 * kl[100]


def test_a_diverging_variant_is_recorded_with_step_and_reason_and_others_are_unaffected():
    res = _train("pmpo", PMPOConfig(alpha=0.0, beta=0.0), seeds=[0, 1], steps=3000)
    assert all(r.status == "diverged" for r in res)
    for r in res:
        assert isinstance(r.diverged["step"], int) and r.diverged["step"] > 0
        assert "KL" in r.diverged["reason"] or "non-finite" in r.diverged["reason"]
    # rows stop at the divergence step
    assert max(s for s, _, _ in res[0].rows) <= res[0].diverged["step"]


def test_sphere_learning_threshold():
    """PMPO-AR, 10 seeds, 1500 steps: the IQM of log10 f(μ_T)/f(μ_0) is below −1 (10× closer to 0)."""
    res = _train("pmpo", PMPOConfig(alpha=0.5, beta=0.5), steps=1500)
    scores = np.array([math.log10(_final(r) / _final(r, "f_init")) for r in res])
    assert all(r.status == "ok" for r in res)
    assert stats.iqm(scores) < -1.0


def test_dual_temperature_adapts_to_the_score_scale():
    # Rosenbrock's score gaps are ~10³ at the start, so with η = 1 the E-step KL is far above ε_η and
    # the dual raises η step after step (its lr bounds each step to ~1e-2 in softplus space)
    res = _train("mpo", MPOConfig(), fn="rosenbrock", seeds=[0], steps=300)[0]
    etas = [v for _, m, v in res.rows if m == "dual/eta"]
    assert all(b > a for a, b in zip(etas, etas[1:]))
    assert etas[-1] > 3.0
