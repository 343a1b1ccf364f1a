"""`make bench`: the vectorised bandit seed sweep against a per-seed loop on the same work.

Both variants train the same 10 seeds for the same steps; the vectorised one trains them as one
batch (parameters stacked over seeds, the loss vmapped), the loop trains them one at a time. The
machine is noisy, so the two are timed interleaved and the ratio of their best rounds is reported
(target ≥ 5× at 10 seeds).
"""

import time

import pytest
import torch

import tasks
from algorithms.pmpo import PMPOConfig
from tasks import RunSpec
from tasks.bandits import BanditLoopConfig

pytestmark = pytest.mark.bench
SEEDS, STEPS = 10, 300


def _specs():
    loop = BanditLoopConfig(steps=STEPS)
    return [RunSpec("sphere", tasks.TASKS["sphere"].config, "pmpo", PMPOConfig(), loop, s) for s in range(SEEDS)]


def vectorised():
    return tasks.TASKS["sphere"].family.train(_specs())


def per_seed_loop():
    return [tasks.TASKS["sphere"].family.train([s])[0] for s in _specs()]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def test_bench_vectorised_sweep(benchmark):
    benchmark.pedantic(vectorised, rounds=3, iterations=1, warmup_rounds=1)


def test_bench_per_seed_loop(benchmark):
    benchmark.pedantic(per_seed_loop, rounds=3, iterations=1, warmup_rounds=1)


def test_bench_ratio_vectorised_vs_loop(benchmark):
    """Interleaved rounds; reports and checks best(loop) / best(vectorised)."""
    vec, loop = [], []
    vectorised()
    for _ in range(3):
        t0 = time.perf_counter(); vectorised(); vec.append(time.perf_counter() - t0)  # noqa: E702
        t0 = time.perf_counter(); per_seed_loop(); loop.append(time.perf_counter() - t0)  # noqa: E702
    ratio = min(loop) / min(vec)
    benchmark.extra_info.update(seeds=SEEDS, steps=STEPS, vectorised_s=min(vec), loop_s=min(loop), ratio=ratio)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    print(f"\nbandit sweep, {SEEDS} seeds x {STEPS} steps: vectorised {min(vec):.2f}s, per-seed loop {min(loop):.2f}s, ratio {ratio:.1f}x")
    assert ratio >= 5.0
