"""Aggregate statistics for the benchmark suite, following the rliable methodology.

Reference: R. Agarwal, M. Schwarzer, P. S. Castro, A. Courville, M. G. Bellemare,
"Deep Reinforcement Learning at the Edge of the Statistical Precipice", NeurIPS 2021.

Conventions used throughout this module:

* Scores form a ``runs x tasks`` matrix: ``scores[i, j]`` is the (normalised) score of
  independent run ``i`` on task ``j``. A 1-D array is treated as the runs of a single task,
  i.e. as a ``(runs, 1)`` matrix.
* Confidence intervals are percentile intervals of a *stratified* bootstrap: runs are resampled
  with replacement independently within each task, so every resample keeps the task structure
  (and the number of runs per task) of the original data and never moves a score to another task.
* Every function that draws random numbers takes an explicit ``numpy.random.Generator``; nothing
  here touches global random state.
* NaN scores are rejected with ``ValueError``: callers must drop diverged runs explicitly.
"""

from __future__ import annotations

import operator
from typing import Callable

import numpy as np
import scipy.stats

__all__ = [
    "iqm",
    "stratified_bootstrap_ci",
    "probability_of_improvement",
    "difference_ci",
    "fit_loglog_slope",
    "normal_power",
    "seeds_to_decide",
]

Statistic = Callable[[np.ndarray], float]

# Upper bound on the number of floats gathered at once by the vectorised bootstrap paths
# (2**22 float64 values = 32 MiB); larger bootstraps are processed in batches of resamples.
_MAX_BATCH_ELEMENTS = 2**22


# --------------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------------


def _as_score_matrix(scores, name: str = "scores") -> np.ndarray:
    """Return ``scores`` as a float ``runs x tasks`` matrix (1-D input becomes one task)."""
    matrix = np.asarray(scores, dtype=float)
    if matrix.ndim == 1:
        matrix = matrix[:, None]
    elif matrix.ndim != 2:
        raise ValueError(
            f"{name} must be 1-D (runs) or 2-D (runs x tasks), got shape {matrix.shape}"
        )
    if matrix.size == 0:
        raise ValueError(f"{name} is empty (shape {matrix.shape})")
    n_nan = int(np.isnan(matrix).sum())
    if n_nan:
        raise ValueError(
            f"{name} contains {n_nan} NaN value(s); drop diverged runs explicitly before "
            "computing statistics"
        )
    return matrix


def _check_rng(rng) -> None:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")


def _check_n_boot(n_boot) -> int:
    n_boot = operator.index(n_boot)
    if n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot}")
    return n_boot


def _check_confidence(confidence: float) -> float:
    confidence = float(confidence)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    return confidence


def _as_scalar(value, what: str = "statistic") -> float:
    if np.ndim(value) != 0:
        raise TypeError(f"{what} must return a scalar, got shape {np.shape(value)}")
    return float(value)


# --------------------------------------------------------------------------------------------
# Row-wise kernels shared by the point estimates and the vectorised bootstrap
# --------------------------------------------------------------------------------------------


def _iqm_of_rows(rows: np.ndarray) -> np.ndarray:
    """Interquartile mean of each row of a ``(b, n)`` array; returns shape ``(b,)``.

    Same semantics as ``scipy.stats.trim_mean(row, 0.25)``: with ``k = int(0.25 * n)``, the
    ``k`` smallest and ``k`` largest values are discarded and the remaining ``n - 2k`` averaged.
    """
    n = rows.shape[1]
    k = int(0.25 * n)
    # After partitioning around positions k and n-k-1, rows[:, k:n-k] holds exactly the
    # values of sorted ranks k .. n-k-1 (in some order), which is all that the mean needs.
    middle = np.partition(rows, (k, n - k - 1), axis=1)[:, k : n - k]
    return middle.mean(axis=1)


def _batched_iqm(stack: np.ndarray) -> np.ndarray:
    """IQM of each matrix in a ``(b, runs, tasks)`` stack; returns shape ``(b,)``."""
    return _iqm_of_rows(stack.reshape(stack.shape[0], -1))


def _batched_mean(stack: np.ndarray) -> np.ndarray:
    """Mean over all run x task entries of each matrix in a ``(b, runs, tasks)`` stack."""
    return stack.mean(axis=(1, 2))


def _batched_probability_of_improvement(x_stack: np.ndarray, y_stack: np.ndarray) -> np.ndarray:
    """Task-averaged P(X > Y) for stacks ``x_stack (b, n_x, T)``, ``y_stack (b, n_y, T)``.

    For one task the Mann-Whitney count is ``U = #{(i, k): x_i > y_k} + 0.5 #{(i, k): x_i = y_k}``.
    It equals ``R_x - n_x (n_x + 1) / 2`` where ``R_x`` is the sum of the ranks of the x values
    in the pooled sample, ties receiving their average rank (mid-ranks). Returns shape ``(b,)``.
    """
    n_x, n_y = x_stack.shape[1], y_stack.shape[1]
    pooled = np.concatenate([x_stack, y_stack], axis=1)
    ranks = scipy.stats.rankdata(pooled, method="average", axis=1)
    u_x = ranks[:, :n_x, :].sum(axis=1) - n_x * (n_x + 1) / 2.0  # shape (b, T)
    return (u_x / (n_x * n_y)).mean(axis=1)


# --------------------------------------------------------------------------------------------
# Stratified bootstrap machinery
# --------------------------------------------------------------------------------------------


def _draw_run_indices(
    rng: np.random.Generator, n_boot: int, n_runs: int, n_tasks: int
) -> np.ndarray:
    """All bootstrap indices at once: ``idx[b, i, j]`` is the original run that becomes run
    ``i`` of task ``j`` in resample ``b``. Each task's runs are drawn independently."""
    return rng.integers(0, n_runs, size=(n_boot, n_runs, n_tasks))


def _gather(scores: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Resampled matrices ``out[..., i, j] = scores[idx[..., i, j], j]`` (task j stays task j)."""
    return scores[idx, np.arange(scores.shape[1])]


def _batches(n_boot: int, elements_per_resample: int):
    """Slices covering ``range(n_boot)`` sized to bound the memory of gathered resamples."""
    size = max(1, _MAX_BATCH_ELEMENTS // elements_per_resample)
    for start in range(0, n_boot, size):
        yield slice(start, min(start + size, n_boot))


def _bootstrap_replicates(
    scores: np.ndarray, statistic: Statistic, rng: np.random.Generator, n_boot: int
) -> np.ndarray:
    """``statistic`` on ``n_boot`` stratified resamples of a ``runs x tasks`` matrix.

    ``iqm`` and ``numpy.mean`` are evaluated vectorised across resamples; any other callable
    is called once per resample. Both paths consume ``rng`` identically, so they give the same
    replicates for the same generator state. Returns shape ``(n_boot,)``.
    """
    idx = _draw_run_indices(rng, n_boot, *scores.shape)
    if statistic is iqm:
        batched = _batched_iqm
    elif statistic is np.mean:
        batched = _batched_mean
    else:
        batched = None

    replicates = np.empty(n_boot)
    if batched is not None:
        for batch in _batches(n_boot, scores.size):
            replicates[batch] = batched(_gather(scores, idx[batch]))
    else:
        for b in range(n_boot):
            replicates[b] = _as_scalar(statistic(_gather(scores, idx[b])))
    return replicates


def _percentile_interval(replicates: np.ndarray, confidence: float) -> tuple[float, float]:
    """Equal-tailed percentile interval of bootstrap replicates."""
    tail = 100.0 * (1.0 - confidence) / 2.0
    lower, upper = np.percentile(replicates, [tail, 100.0 - tail])
    return float(lower), float(upper)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def iqm(scores: np.ndarray) -> float:
    """Interquartile mean (IQM) of all scores.

    The IQM is the 25% trimmed mean of the pooled scores: all ``N`` entries (a 1-D array of
    ``N`` runs, or a ``runs x tasks`` matrix flattened, ``N = runs * tasks``) are sorted, the
    ``k = int(0.25 * N)`` smallest and ``k`` largest are discarded, and the remaining ``N - 2k``
    are averaged. This matches ``scipy.stats.trim_mean(scores.ravel(), 0.25)``; for ``N < 4``
    nothing is trimmed and the IQM is the plain mean.

    Args:
        scores: array of shape ``(runs,)`` or ``(runs, tasks)``; must be non-empty.

    Returns:
        The interquartile mean as a Python float.

    Raises:
        ValueError: if ``scores`` contains NaN, is empty, or has more than two dimensions.
    """
    flat = _as_score_matrix(scores).reshape(1, -1)
    return float(_iqm_of_rows(flat)[0])


def stratified_bootstrap_ci(
    scores: np.ndarray,
    statistic: Statistic,
    rng: np.random.Generator,
    n_boot: int = 2000,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """Point estimate and stratified-bootstrap percentile CI of an aggregate statistic.

    Each of the ``n_boot`` resamples draws, independently for every task, ``runs`` runs with
    replacement from that task's runs (stratified by task: a score never changes task and every
    task keeps ``runs`` scores). ``statistic`` is applied to each resampled matrix and the CI is
    the equal-tailed percentile interval of those values, e.g. the 2.5th and 97.5th percentiles
    for ``confidence=0.95``.

    Args:
        scores: ``(runs, tasks)`` score matrix; a 1-D array of shape ``(runs,)`` is treated as a
            single task, shape ``(runs, 1)``. NaN is rejected.
        statistic: callable mapping a ``(runs, tasks)`` matrix to a scalar (it always receives
            a 2-D matrix). ``iqm`` and ``numpy.mean`` are recognised and evaluated vectorised
            over all resamples; any other callable is called once per resample.
        rng: source of randomness for the resampling.
        n_boot: number of bootstrap resamples (positive integer).
        confidence: coverage of the interval, strictly between 0 and 1.

    Returns:
        ``(point, lower, upper)`` where ``point = statistic(scores)`` on the original data and
        ``(lower, upper)`` is the percentile confidence interval.

    Raises:
        ValueError: on NaN or malformed ``scores``, ``n_boot < 1`` or ``confidence`` outside (0, 1).
        TypeError: if ``rng`` is not a ``numpy.random.Generator`` or ``statistic`` returns a
            non-scalar.
    """
    _check_rng(rng)
    n_boot = _check_n_boot(n_boot)
    confidence = _check_confidence(confidence)
    matrix = _as_score_matrix(scores)

    point = _as_scalar(statistic(matrix))
    replicates = _bootstrap_replicates(matrix, statistic, rng, n_boot)
    lower, upper = _percentile_interval(replicates, confidence)
    return point, lower, upper


def probability_of_improvement(
    x: np.ndarray,
    y: np.ndarray,
    rng: np.random.Generator,
    n_boot: int = 2000,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """Average probability of improvement P(X > Y) of algorithm X over algorithm Y.

    For each task ``j`` this is the probability that a random run of X beats a random run of Y
    on that task, ties counting one half:

        P_j = (1 / (n_x n_y)) * sum_{i, k} ( [x_ij > y_kj] + 0.5 [x_ij = y_kj] ),

    i.e. the Mann-Whitney U statistic of X divided by ``n_x n_y``. The result is the mean of
    ``P_j`` over tasks. The CI is a percentile interval over ``n_boot`` resamples in which the
    runs of ``x`` and of ``y`` are resampled independently of each other, each stratified by
    task (runs of ``x`` first, then runs of ``y``, are drawn from ``rng``).

    Args:
        x: ``(n_x, tasks)`` scores of algorithm X (1-D ``(n_x,)`` means a single task).
        y: ``(n_y, tasks)`` scores of algorithm Y; must have the same number of tasks as ``x``
            (``n_x`` and ``n_y`` may differ). NaN is rejected in both.
        rng: source of randomness for the resampling.
        n_boot: number of bootstrap resamples (positive integer).
        confidence: coverage of the interval, strictly between 0 and 1.

    Returns:
        ``(point, lower, upper)``: P(X > Y) on the original data and its percentile CI.
        All values lie in [0, 1]; P(X > Y) + P(Y > X) = 1 for the point estimates.

    Raises:
        ValueError: on NaN or malformed inputs, mismatched task counts, ``n_boot < 1`` or
            ``confidence`` outside (0, 1).
        TypeError: if ``rng`` is not a ``numpy.random.Generator``.
    """
    _check_rng(rng)
    n_boot = _check_n_boot(n_boot)
    confidence = _check_confidence(confidence)
    x = _as_score_matrix(x, "x")
    y = _as_score_matrix(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"x and y must cover the same tasks: x has {x.shape[1]} task(s), y has {y.shape[1]}"
        )

    point = float(_batched_probability_of_improvement(x[None], y[None])[0])

    idx_x = _draw_run_indices(rng, n_boot, *x.shape)
    idx_y = _draw_run_indices(rng, n_boot, *y.shape)
    replicates = np.empty(n_boot)
    for batch in _batches(n_boot, x.size + y.size):
        replicates[batch] = _batched_probability_of_improvement(
            _gather(x, idx_x[batch]), _gather(y, idx_y[batch])
        )
    lower, upper = _percentile_interval(replicates, confidence)
    return point, lower, upper


def difference_ci(
    x: np.ndarray,
    y: np.ndarray,
    statistic: Statistic,
    rng: np.random.Generator,
    n_boot: int = 2000,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """Point estimate and bootstrap CI of the difference ``statistic(x) - statistic(y)``.

    Each of the ``n_boot`` replicates is ``statistic(x*) - statistic(y*)`` where ``x*`` and
    ``y*`` are independent stratified resamples of the runs of ``x`` and of ``y`` (each task's
    runs resampled with replacement within that task; ``x`` is resampled first, then ``y``).
    The CI is the equal-tailed percentile interval of the replicates.

    Args:
        x: ``(n_x, tasks_x)`` score matrix (1-D means one task). NaN is rejected.
        y: ``(n_y, tasks_y)`` score matrix (1-D means one task). NaN is rejected. Shapes of ``x``
            and ``y`` may differ; only ``statistic`` has to make sense for both.
        statistic: callable mapping a 2-D score matrix to a scalar; ``iqm`` and ``numpy.mean``
            take the vectorised path (see ``stratified_bootstrap_ci``).
        rng: source of randomness for the resampling.
        n_boot: number of bootstrap resamples (positive integer).
        confidence: coverage of the interval, strictly between 0 and 1.

    Returns:
        ``(point, lower, upper)`` with ``point = statistic(x) - statistic(y)`` on the original
        data and ``(lower, upper)`` the percentile CI of the difference.

    Raises:
        ValueError: on NaN or malformed inputs, ``n_boot < 1`` or ``confidence`` outside (0, 1).
        TypeError: if ``rng`` is not a ``numpy.random.Generator`` or ``statistic`` returns a
            non-scalar.
    """
    _check_rng(rng)
    n_boot = _check_n_boot(n_boot)
    confidence = _check_confidence(confidence)
    x = _as_score_matrix(x, "x")
    y = _as_score_matrix(y, "y")

    point = _as_scalar(statistic(x)) - _as_scalar(statistic(y))
    replicates = _bootstrap_replicates(x, statistic, rng, n_boot) - _bootstrap_replicates(
        y, statistic, rng, n_boot
    )
    lower, upper = _percentile_interval(replicates, confidence)
    return point, lower, upper


def fit_loglog_slope(x: np.ndarray, y: np.ndarray) -> float:
    """Ordinary least-squares slope of ``log(y)`` regressed on ``log(x)``.

    For data following a power law ``y = c * x**p`` the slope is ``p``; used to check empirical
    convergence rates (e.g. error versus sample size). The slope is
    ``sum((u - mean(u)) * (v - mean(v))) / sum((u - mean(u))**2)`` with ``u = log x``,
    ``v = log y`` (natural log; the base does not affect the slope).

    Args:
        x: 1-D array of strictly positive, finite values, at least two of them distinct.
        y: 1-D array of strictly positive, finite values, same shape as ``x``.

    Returns:
        The fitted slope as a Python float.

    Raises:
        ValueError: if any value is non-positive or not finite, the shapes differ or are not
            1-D, fewer than two points are given, or all ``x`` are equal.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(
            f"x and y must be 1-D arrays of equal length, got shapes {x.shape} and {y.shape}"
        )
    if x.size < 2:
        raise ValueError(f"need at least two points to fit a slope, got {x.size}")
    for name, values in (("x", x), ("y", y)):
        if not np.all(np.isfinite(values)):
            raise ValueError(f"{name} contains non-finite values (NaN or inf)")
        if np.any(values <= 0):
            raise ValueError(f"{name} contains non-positive values; log-log fit needs values > 0")

    log_x = np.log(x)
    log_y = np.log(y)
    centred_x = log_x - log_x.mean()
    spread = float(centred_x @ centred_x)
    if spread == 0.0:
        raise ValueError("all x values are equal; the log-log slope is undefined")
    return float(centred_x @ (log_y - log_y.mean()) / spread)


# --------------------------------------------------------------------------------------------
# Power: how many seeds would decide an open check
# --------------------------------------------------------------------------------------------


def normal_power(effect: float, sd: float, n: float, alpha: float = 0.05) -> float:
    """Power of a two-sided level-``alpha`` z-test of a mean difference with ``n`` runs per cell.

    The estimate's standard error is ``sd / sqrt(n)`` where ``sd**2 = sd_x**2 + sd_y**2`` sums the two
    cells' per-run variances (a single cell against a fixed bar has ``sd_y = 0``). With
    ``z = |effect| sqrt(n) / sd`` the closed form is ``Φ(z − z_{1−α/2}) + Φ(−z − z_{1−α/2})``.
    """
    if sd <= 0:
        return 1.0 if effect != 0 else float(alpha)
    z_crit = scipy.stats.norm.ppf(1.0 - alpha / 2.0)
    z = abs(effect) * np.sqrt(n) / sd
    return float(scipy.stats.norm.cdf(z - z_crit) + scipy.stats.norm.cdf(-z - z_crit))


def seeds_to_decide(effect: float, sd_x: float, sd_y: float = 0.0, *, alpha: float = 0.05, power: float = 0.8,
                    max_seeds: int = 1000) -> int | None:
    """Seeds per cell at which a check whose true distance from its margin is ``effect`` is decided with ``power``.

    A check compares an estimate (one cell's IQM, or the difference of two cells') with a margin; its 95% CI
    decides once it clears the margin. Under a normal approximation of that estimate, with per-run standard
    deviations ``sd_x`` (and ``sd_y`` for a difference), the smallest ``n`` with ``normal_power(effect,
    sqrt(sd_x² + sd_y²), n, alpha) ≥ power`` is returned; None when the effect is zero, not finite, or needs
    more than ``max_seeds`` (too close to the margin for any affordable number).

    ``effect`` is the observed distance of the point estimate from the margin (an estimate, so the answer is a
    planning number, not a guarantee); the IQM's variance is approximated by the mean's.
    """
    _check_confidence(1.0 - alpha)
    _check_confidence(power)
    sd = float(np.hypot(sd_x, sd_y))
    if not np.isfinite(effect) or not np.isfinite(sd) or effect == 0:
        return None
    if sd == 0:
        return 1
    z_sum = scipy.stats.norm.ppf(1.0 - alpha / 2.0) + scipy.stats.norm.ppf(power)
    n = max(1, int(np.ceil((z_sum * sd / abs(effect)) ** 2)))
    while n > 1 and normal_power(effect, sd, n - 1, alpha) >= power:  # the far tail can only lower n
        n -= 1
    while normal_power(effect, sd, n, alpha) < power:
        n += 1
    return n if n <= max_seeds else None
