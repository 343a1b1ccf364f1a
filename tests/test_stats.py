"""Tests for suite.stats (rliable-style aggregate statistics).

Expected values of the hand-checked cases are worked out in the comments next to them.
"""

import numpy as np
import pytest
import scipy.stats

from suite.stats import (
    difference_ci,
    fit_loglog_slope,
    iqm,
    probability_of_improvement,
    stratified_bootstrap_ci,
)


def make_rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ------------------------------------------------------------------------------------------
# iqm
# ------------------------------------------------------------------------------------------


def test_iqm_of_one_to_eight():
    # N = 8, k = int(0.25 * 8) = 2 dropped at each end -> [3, 4, 5, 6], mean = 18 / 4 = 4.5
    assert iqm(np.arange(1, 9)) == pytest.approx(4.5)


def test_iqm_of_matrix_pools_all_runs_and_tasks():
    scores = np.array([[10.0, 0.0, 3.0, 7.0], [1.0, 100.0, 2.0, 5.0]])
    # flattened and sorted: [0, 1, 2, 3, 5, 7, 10, 100]; N = 8, k = 2
    # kept [2, 3, 5, 7] -> 17 / 4 = 4.25
    assert iqm(scores) == pytest.approx(4.25)


def test_iqm_when_n_not_divisible_by_four():
    # N = 10, k = int(2.5) = 2; sorted [0, 0, 0, 1, 2, 3, 4, 50, 100, 1000]
    # kept positions 2..7: [0, 1, 2, 3, 4, 50] -> 60 / 6 = 10
    assert iqm([1000, 0, 4, 100, 0, 2, 50, 3, 1, 0]) == pytest.approx(10.0)
    # N = 5, k = int(1.25) = 1; sorted [1, 2, 4, 5, 100] -> kept [2, 4, 5] -> 11 / 3
    assert iqm([5, 1, 4, 2, 100]) == pytest.approx(11.0 / 3.0)
    # N = 3, k = 0: nothing trimmed -> plain mean (1 + 2 + 9) / 3 = 4
    assert iqm([1, 2, 9]) == pytest.approx(4.0)


def test_iqm_matches_scipy_trim_mean():
    rng = make_rng(0)
    for n in (1, 2, 3, 4, 5, 7, 8, 13, 64, 101):
        x = rng.standard_cauchy(n)
        assert iqm(x) == pytest.approx(scipy.stats.trim_mean(x, 0.25), rel=1e-12, abs=1e-12)


def test_iqm_rejects_nan_and_bad_shapes():
    with pytest.raises(ValueError, match="NaN"):
        iqm([1.0, np.nan, 3.0])
    with pytest.raises(ValueError, match="NaN"):
        iqm(np.array([[1.0, 2.0], [np.nan, 4.0]]))
    with pytest.raises(ValueError, match="empty"):
        iqm([])
    with pytest.raises(ValueError):
        iqm(np.zeros((2, 2, 2)))


# ------------------------------------------------------------------------------------------
# stratified_bootstrap_ci
# ------------------------------------------------------------------------------------------


def test_bootstrap_with_single_run_is_degenerate():
    # One run per task: every resample reproduces the data, so point = lower = upper.
    # mean of [1, 5, 9] = 5; iqm of 3 values trims nothing -> also 5.
    scores = np.array([[1.0, 5.0, 9.0]])
    for statistic in (np.mean, iqm, lambda m: float(np.median(m))):
        assert stratified_bootstrap_ci(scores, statistic, make_rng(), n_boot=50) == (5.0, 5.0, 5.0)


def test_bootstrap_percentiles_of_two_point_distribution():
    # One task with runs [0, 1]: a resample mean is 0 (p = 1/4), 0.5 (p = 1/2) or 1 (p = 1/4).
    # With 2000 resamples ~500 are 0 and ~500 are 1, so the 2.5% / 97.5% percentiles are 0 / 1
    # and the 30% / 70% percentiles (confidence 0.4) both fall inside the 0.5 block.
    scores = np.array([0.0, 1.0])
    assert stratified_bootstrap_ci(scores, np.mean, make_rng(3)) == (0.5, 0.0, 1.0)
    assert stratified_bootstrap_ci(scores, np.mean, make_rng(3), confidence=0.4) == (0.5, 0.5, 0.5)


def test_bootstrap_ci_contains_point_estimate():
    rng = make_rng(1)
    for shape in [(10,), (5, 3), (20, 8)]:
        scores = rng.normal(size=shape)
        for statistic in (iqm, np.mean):
            point, lo, hi = stratified_bootstrap_ci(scores, statistic, make_rng(2))
            assert lo <= point <= hi
            assert lo < hi


def test_bootstrap_ci_shrinks_as_number_of_runs_grows():
    data_rng = make_rng(4)
    widths = {}
    for n_runs in (5, 100):
        scores = data_rng.normal(size=(n_runs, 5))
        for statistic in (iqm, np.mean):
            _, lo, hi = stratified_bootstrap_ci(scores, statistic, make_rng(5))
            widths[n_runs, statistic] = hi - lo
    # Width scales like 1 / sqrt(runs): expect a ratio of about sqrt(20) ~ 4.5.
    for statistic in (iqm, np.mean):
        assert widths[100, statistic] < 0.5 * widths[5, statistic]


def test_higher_confidence_gives_wider_nested_interval():
    scores = make_rng(6).normal(size=(10, 4))
    _, lo95, hi95 = stratified_bootstrap_ci(scores, iqm, make_rng(7), confidence=0.95)
    _, lo50, hi50 = stratified_bootstrap_ci(scores, iqm, make_rng(7), confidence=0.50)
    assert lo95 < lo50 < hi50 < hi95


def test_bootstrap_reproducible_with_same_seed_and_varies_with_seed():
    scores = make_rng(8).normal(size=(10, 4))
    for statistic in (iqm, np.mean, lambda m: float(np.median(m))):
        a = stratified_bootstrap_ci(scores, statistic, make_rng(11), n_boot=500)
        b = stratified_bootstrap_ci(scores, statistic, make_rng(11), n_boot=500)
        c = stratified_bootstrap_ci(scores, statistic, make_rng(12), n_boot=500)
        assert a == b
        assert a[0] == c[0]  # the point estimate does not depend on the rng
        assert a[1:] != c[1:]


def test_fast_paths_agree_with_generic_path():
    # iqm / np.mean are vectorised internally; wrapping them in a lambda forces the per-resample
    # path. Both consume the generator identically, so the intervals must match.
    scores = make_rng(9).normal(size=(7, 5))
    for fast, slow in ((iqm, lambda m: iqm(m)), (np.mean, lambda m: float(np.mean(m)))):
        expected = stratified_bootstrap_ci(scores, slow, make_rng(13), n_boot=1000)
        actual = stratified_bootstrap_ci(scores, fast, make_rng(13), n_boot=1000)
        np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=1e-12)


def test_resampling_is_stratified_by_task():
    # scores[i, j] = 100 j + i, so a value v belongs to task v // 100 and run v % 100.
    n_runs, n_tasks = 6, 4
    scores = 100.0 * np.arange(n_tasks)[None, :] + np.arange(n_runs)[:, None]
    seen_run_indices = []

    def checking_statistic(m):
        assert m.shape == (n_runs, n_tasks)
        # every value in column j comes from task j
        np.testing.assert_array_equal(m // 100, np.broadcast_to(np.arange(n_tasks), m.shape))
        seen_run_indices.append(m % 100)
        return float(m.mean())

    stratified_bootstrap_ci(scores, checking_statistic, make_rng(14), n_boot=200)
    assert len(seen_run_indices) == 1 + 200  # original data + every resample
    resampled = np.stack(seen_run_indices[1:])  # (200, runs, tasks) of original run indices
    # Resamples actually resample (repeats occur) ...
    assert any(len(np.unique(r[:, 0])) < n_runs for r in resampled)
    # ... and tasks are resampled independently, not with one shared run index per row.
    assert any(not np.array_equal(r[:, 0], r[:, 1]) for r in resampled)


def test_one_dimensional_scores_are_one_task():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    received = []

    def statistic(m):
        received.append(m.shape)
        return float(m.mean())

    # mean of [1, 2, 3, 4] = 2.5
    point, lo, hi = stratified_bootstrap_ci(x, statistic, make_rng(), n_boot=5)
    assert point == 2.5
    assert set(received) == {(4, 1)}
    assert stratified_bootstrap_ci(x, np.mean, make_rng(15)) == stratified_bootstrap_ci(
        x[:, None], np.mean, make_rng(15)
    )


def test_bootstrap_input_validation():
    scores = np.ones((3, 2))
    with pytest.raises(ValueError, match="NaN"):
        stratified_bootstrap_ci(np.array([[1.0, np.nan]]), iqm, make_rng())
    with pytest.raises(ValueError):
        stratified_bootstrap_ci(np.ones((2, 2, 2)), iqm, make_rng())
    with pytest.raises(ValueError):
        stratified_bootstrap_ci(scores, iqm, make_rng(), n_boot=0)
    for confidence in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError):
            stratified_bootstrap_ci(scores, iqm, make_rng(), confidence=confidence)
    with pytest.raises(TypeError):
        stratified_bootstrap_ci(scores, iqm, None)
    with pytest.raises(TypeError):
        stratified_bootstrap_ci(scores, lambda m: m.mean(axis=0), make_rng())


# ------------------------------------------------------------------------------------------
# probability_of_improvement
# ------------------------------------------------------------------------------------------


def brute_force_poi(x, y):
    """Direct pairwise definition: mean over tasks of P(x > y) with ties counting 1/2."""
    per_task = []
    for j in range(x.shape[1]):
        diff = x[:, j][:, None] - y[:, j][None, :]
        per_task.append(np.mean((diff > 0) + 0.5 * (diff == 0)))
    return float(np.mean(per_task))


def test_poi_hand_computed_single_task():
    # pairs (x, y): (3,1) -> 1, (3,3) -> 1/2, (4,1) -> 1, (4,3) -> 1; (1 + 0.5 + 1 + 1) / 4 = 0.875
    point, lo, hi = probability_of_improvement([3.0, 4.0], [1.0, 3.0], make_rng())
    assert point == pytest.approx(0.875)
    assert 0.0 <= lo <= point <= hi <= 1.0


def test_poi_hand_computed_unequal_run_counts():
    # x = [1, 5, 6], y = [2, 4]: (1,2) 0, (1,4) 0, (5,2) 1, (5,4) 1, (6,2) 1, (6,4) 1 -> 4 / 6
    point, _, _ = probability_of_improvement([1.0, 5.0, 6.0], [2.0, 4.0], make_rng())
    assert point == pytest.approx(4.0 / 6.0)


def test_poi_hand_computed_multi_task():
    # task 0: x = [3, 4], y = [1, 3] -> 0.875 (as above)
    # task 1: x = [0, 1], y = [2, 2] -> every pair loses -> 0
    # average over tasks: (0.875 + 0) / 2 = 0.4375
    x = np.array([[3.0, 0.0], [4.0, 1.0]])
    y = np.array([[1.0, 2.0], [3.0, 2.0]])
    point, _, _ = probability_of_improvement(x, y, make_rng())
    assert point == pytest.approx(0.4375)


def test_poi_all_ties_is_one_half():
    # every pair is a tie -> 1/2 each
    point, lo, hi = probability_of_improvement([2.0, 2.0], [2.0, 2.0, 2.0], make_rng())
    assert (point, lo, hi) == (0.5, 0.5, 0.5)


def test_poi_matches_brute_force_with_ties():
    rng = make_rng(16)
    x = rng.integers(0, 4, size=(6, 3)).astype(float)  # small integer range -> many ties
    y = rng.integers(0, 4, size=(4, 3)).astype(float)
    point, _, _ = probability_of_improvement(x, y, make_rng())
    assert point == pytest.approx(brute_force_poi(x, y), abs=1e-12)


def test_poi_is_complementary_for_continuous_data():
    rng = make_rng(17)
    x = rng.normal(size=(8, 5))
    y = rng.normal(0.3, size=(6, 5))
    p_xy, _, _ = probability_of_improvement(x, y, make_rng(1))
    p_yx, _, _ = probability_of_improvement(y, x, make_rng(1))
    assert p_xy + p_yx == pytest.approx(1.0, abs=1e-12)


def test_poi_of_identical_inputs_is_one_half():
    x = make_rng(18).normal(size=(10, 4))
    point, lo, hi = probability_of_improvement(x, x.copy(), make_rng(2))
    assert point == pytest.approx(0.5, abs=1e-12)
    assert lo <= 0.5 <= hi


def test_poi_fully_separated_data_has_degenerate_ci():
    # every x beats every y in every task, in every resample too -> (1, 1, 1)
    x = np.array([[10.0, 20.0], [11.0, 21.0], [12.0, 22.0]])
    y = np.array([[0.0, 1.0], [2.0, 3.0]])
    assert probability_of_improvement(x, y, make_rng()) == (1.0, 1.0, 1.0)
    assert probability_of_improvement(y, x, make_rng()) == (0.0, 0.0, 0.0)


def test_poi_ci_bootstrap_is_reproducible_and_resamples():
    rng = make_rng(19)
    x = rng.normal(0.2, size=(10, 3))
    y = rng.normal(size=(8, 3))
    a = probability_of_improvement(x, y, make_rng(5), n_boot=500)
    b = probability_of_improvement(x, y, make_rng(5), n_boot=500)
    c = probability_of_improvement(x, y, make_rng(6), n_boot=500)
    assert a == b
    assert a[1:] != c[1:]
    assert a[1] <= a[0] <= a[2]
    assert a[1] < a[2]


def test_poi_rejects_mismatched_tasks_and_nan():
    with pytest.raises(ValueError, match="tasks"):
        probability_of_improvement(np.ones((3, 2)), np.ones((3, 3)), make_rng())
    with pytest.raises(ValueError, match="NaN"):
        probability_of_improvement([1.0, np.nan], [1.0, 2.0], make_rng())


# ------------------------------------------------------------------------------------------
# difference_ci
# ------------------------------------------------------------------------------------------


def test_difference_of_x_with_itself_has_zero_point():
    x = make_rng(20).normal(size=(10, 4))
    for statistic in (iqm, np.mean):
        point, lo, hi = difference_ci(x, x, statistic, make_rng(3))
        assert point == 0.0
        assert lo < 0.0 < hi  # x and its copy are resampled independently


def test_difference_hand_computed_degenerate():
    # x has one run: mean(x) = (2 + 4) / 2 = 3 in every resample;
    # y has identical runs: mean(y) = 1 in every resample -> difference 2 exactly.
    x = np.array([[2.0, 4.0]])
    y = np.ones((3, 2))
    assert difference_ci(x, y, np.mean, make_rng()) == (2.0, 2.0, 2.0)


def test_difference_point_and_ci_properties():
    rng = make_rng(21)
    x = rng.normal(1.0, size=(12, 3))
    y = rng.normal(0.0, size=(9, 5))  # shapes may differ for an aggregate statistic
    point, lo, hi = difference_ci(x, y, iqm, make_rng(4))
    assert point == pytest.approx(iqm(x) - iqm(y))
    assert lo <= point <= hi
    assert difference_ci(x, y, iqm, make_rng(4)) == (point, lo, hi)
    assert difference_ci(x, y, iqm, make_rng(5))[1:] != (lo, hi)
    # the vectorised and per-resample paths agree
    slow = difference_ci(x, y, lambda m: iqm(m), make_rng(4))
    np.testing.assert_allclose(slow, (point, lo, hi), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------
# fit_loglog_slope
# ------------------------------------------------------------------------------------------


def test_fit_loglog_slope_recovers_power_law_exponent():
    x = np.logspace(0, 4, 9)
    assert fit_loglog_slope(x, 3.0 / x) == pytest.approx(-1.0, abs=1e-12)


def test_fit_loglog_slope_hand_computed():
    # log10 x = [0, 1, 2], log10 y = [0, 2, 4] -> y = x^2, slope 2
    assert fit_loglog_slope([1.0, 10.0, 100.0], [1.0, 100.0, 10000.0]) == pytest.approx(2.0)


def test_fit_loglog_slope_rejects_invalid_input():
    with pytest.raises(ValueError, match="non-positive"):
        fit_loglog_slope([1.0, 2.0], [1.0, 0.0])
    with pytest.raises(ValueError, match="non-positive"):
        fit_loglog_slope([-1.0, 2.0], [1.0, 2.0])
    with pytest.raises(ValueError):
        fit_loglog_slope([1.0, np.nan], [1.0, 2.0])
    with pytest.raises(ValueError):
        fit_loglog_slope([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError):
        fit_loglog_slope([1.0], [1.0])
    with pytest.raises(ValueError, match="equal"):
        fit_loglog_slope([2.0, 2.0], [1.0, 3.0])


# ------------------------------------------------------------------------------------------------ power
def test_seeds_to_decide_matches_the_closed_form_normal_power_calculation():
    from scipy.stats import norm

    from suite.stats import normal_power, seeds_to_decide

    # n = ((z_.975 + z_.8) σ / δ)² = (2.8016 · 2 / 1)² = 31.4 -> 32 seeds per cell for δ = 1, σ = 2
    assert seeds_to_decide(1.0, 2.0) == 32
    assert normal_power(1.0, 2.0, 32) >= 0.8 > normal_power(1.0, 2.0, 31)
    # a difference of two cells: variances add; σ = hypot(1.5, 2) = 2.5, δ = 0.5 -> (2.8016 · 5)² = 196.2 -> 197
    assert seeds_to_decide(-0.5, 1.5, 2.0) == 197
    # the closed form itself: Φ(z − z_crit) + Φ(−z − z_crit) with z = δ√n/σ
    z = 0.7 * np.sqrt(20) / 1.3
    assert normal_power(0.7, 1.3, 20) == pytest.approx(norm.cdf(z - 1.959964) + norm.cdf(-z - 1.959964), rel=1e-6)
    assert seeds_to_decide(1e-4, 1.0) is None  # too close to the margin for any affordable number
    assert seeds_to_decide(0.0, 1.0) is None and seeds_to_decide(1.0, 0.0) == 1


def test_seeds_to_decide_gives_the_power_it_promises_in_simulation():
    from suite.stats import seeds_to_decide

    rng = np.random.default_rng(7)
    delta, sd = 0.8, 2.0
    n = seeds_to_decide(delta, sd)
    draws = rng.normal(delta, sd, size=(4000, n))
    z = draws.mean(axis=1) / (sd / np.sqrt(n))
    assert 0.77 < np.mean(np.abs(z) > 1.959964) < 0.84
