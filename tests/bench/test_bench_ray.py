"""`make bench`: the Ray backend's overhead against the local process pool, on the same grid, as a user waits for it.

Each round runs `emrl run bandits-kl --profile smoke --set train.steps=1200 --no-report` (90 runs in 45 groups
of two seeds at the quick profile's bandit budget, ~1.3 s a group) into a fresh store in a fresh interpreter,
once per backend, interleaved: the whole command, so Ray's start-up and shut-down of a local instance (about
4 s on the 2-core development machine) and the pool's (spawned workers importing torch) are both counted.
The machine drifts by 20-40% within minutes, so the figure is the ratio of the best times. Target: Ray within
10% of the process pool; it is reported, not asserted, since on this sweep the fixed start-up alone is about 8%
and the noise is larger than the margin (the assertion catches a per-group cost: Ray at most 1.5x). Scaling with cores needs a larger machine than the 2-core one this was written on;
run this benchmark there to measure it (both backends use every core).
"""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import subprocess_env

pytestmark = pytest.mark.bench
ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 2
GRID = ["run", "bandits-kl", "--profile", "smoke", "--set", "train.steps=1200", "--no-report", "--quiet"]
BACKENDS = {"process pool": [], "ray (local instance)": ["--backend", "ray"]}


def sweep_seconds(extra: list[str]) -> float:
    env = {k: v for k, v in subprocess_env().items() if k != "RAY_ADDRESS"}
    with tempfile.TemporaryDirectory() as results:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "suite", "--results", results, *GRID, *extra], cwd=ROOT, env=env,
                              capture_output=True, text=True)
        seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "90 runs, 0 already stored" in proc.stdout, proc.stdout
    return seconds


def test_ray_backend_overhead_against_the_process_pool(benchmark):
    best = {name: float("inf") for name in BACKENDS}
    for _ in range(ROUNDS):
        for name, extra in BACKENDS.items():
            best[name] = min(best[name], sweep_seconds(extra))
    ratio = best["ray (local instance)"] / best["process pool"]
    print(f"\n  90 bandit runs (45 groups) on {os.cpu_count()} cores, best of {ROUNDS} interleaved rounds:")
    for name, s in best.items():
        print(f"  {name:<22} {s:6.1f} s")
    print(f"  ray / process pool     {ratio:6.2f}x  (target: at most 1.10x); Ray's extra: "
          f"{best['ray (local instance)'] - best['process pool']:.1f} s")
    benchmark.extra_info.update({f"{name} s": round(s, 2) for name, s in best.items()} | {"ray / process": round(ratio, 3)})
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    assert ratio <= 1.5, best
