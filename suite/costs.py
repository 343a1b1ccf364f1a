"""What a sweep will cost, before it starts: `emrl run <q> --dry-run` and `emrl reproduce --dry-run`.

A run's cost is its budget (the first of `BUDGET_KEYS` its training-loop config has: environment steps,
bandit steps, RLHF updates, ...) times the CPU-seconds one unit of it took, measured per task family on
the 2-core development machine in the `quick` reproduce of 2026-12-03 (1,575 runs, fresh clone, commit
e16d714): the family's summed run times (each run's share of its vectorised group's wall time, scaled by
the 0.68 of a core its worker had while other work shared the machine) over its summed units. The
interquartile range of single runs is given beside each value: an estimate is good to about a factor of two,
and the `paper` profile's larger networks (bigger LMs) cost more per unit than measured here, so read its
estimate as a lower bound. The Atari family's runs differ by two orders of magnitude per step (a MinAtar
network to a deep transformer, or the Nature CNN on ALE frames), so it is priced per run from the game and
the core (`atari_cpu_seconds`, the same model its reports quote).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict

from suite.devices import on_gpu

BUDGET_KEYS = ("total_steps", "steps", "updates", "pairs")
"""Training-config fields that measure a run's budget, in the order they are looked for."""

SECONDS_PER_UNIT: dict[tuple[str, str], float] = {
    # (family, budget field): CPU-seconds per unit over the 2026-12-03 quick reproduce (total CPU / total units, so the
    # quick sweep's own estimate is its measured 1.83 CPU-hours), with the per-run interquartile range beside it
    ("bandit", "steps"): 2.0e-4,  # [1.6e-4, 2.3e-4] per step of a 10-seed vectorised group
    ("control", "total_steps"): 6.4e-4,  # [4.8e-4, 2.0e-3] per environment step, on-policy (PPO, V-MPO, GEMPI, DAR)
    ("control", "steps"): 4.3e-3,  # [3.8e-3, 4.9e-3] per learner step, actor-critic and offline (MPO, PMPO, AWR, VIREL)
    # the LM family on the real-English task, from its own quick sweep of 2026-12-04 (145 runs, 2 workers, alone on the
    # machine): run wall time, its evaluations included, over updates
    ("lm", "updates"): 0.422,  # [0.385, 0.441] per RLHF update (generation, scoring, learning, the fixed score set)
    ("lm", "steps"): 0.496,  # per step of L8's two SFT copies
    ("theory", "run"): 0.091,  # [0.012, 0.055] per exact-enumeration instance (a few are slow)
}
MEASURED_ON = "the 2-core development machine, 2026-12-03"

ATARI_SECONDS_PER_STEP = {"minatar": 2.2e-4, "ale": 4.7e-3, "ff": 1.2e-4, "lstm": 4.0e-4, "transformer_layer": 4.0e-4}
"""The Atari family's CPU-seconds per agent step, by what dominates it, measured on the same machine on 2026-12-03 (one
torch thread, two runs at once). From the family's `quick` sweep at 76ee99d (66 runs): MinAtar Breakout with the MinAtar
network, PPO or V-MPO, 0.22 ms; on the T-maze at width 64 (unroll 16–32, memory 32) the feed-forward core 0.12 ms, the
LSTM 0.38–0.43 ms, a 2-layer GTrXL 0.71–0.79 ms (TrXL 0.47, TrXL-I 0.58), so 0.4 ms per transformer layer; a 6-layer
GTrXL measured 2.4 ms alone. ALE Breakout with PPO and the Nature CNN (8 envs, 4 epochs × 4 minibatches): 4.7 ms."""


def atari_cpu_seconds(task: str, cfg) -> float:
    """Estimated CPU-seconds of one Atari-family run (`ATARI_SECONDS_PER_STEP`). The per-step rate depends on the game
    and the core: a transformer's scales with its layers, its width over 64 and its attention span (unroll + memory)
    over 64 — a lower bound for wide cores, whose matrix products then dominate."""
    if cfg.random_baseline:
        return 0.0
    if task.startswith(("ale-", "minatar-")):
        return cfg.total_steps * ATARI_SECONDS_PER_STEP["ale" if task.startswith("ale-") else "minatar"]
    if cfg.core in ("ff", "lstm"):
        return cfg.total_steps * ATARI_SECONDS_PER_STEP[cfg.core]
    return cfg.total_steps * ATARI_SECONDS_PER_STEP["transformer_layer"] * cfg.core_layers \
        * max(1.0, cfg.core_hidden / 64) * max(1.0, (cfg.unroll + cfg.core_memory) / 64)


FAMILY_COST = {"atari": atari_cpu_seconds}
"""Families whose runs differ too much per unit for one rate: a function (task, train config) -> CPU-seconds."""


def budget(train_config) -> tuple[int, str]:
    """(units, field) of a run's training budget; a loop with no budget field is one pass: (1, "run")."""
    fields = {f.name for f in dataclasses.fields(train_config)}
    key = next((k for k in BUDGET_KEYS if k in fields), None)
    return (1, "run") if key is None else (int(getattr(train_config, key)), key)


@dataclasses.dataclass
class FamilyCost:
    runs: int = 0
    stored: int = 0
    cpu_s: float = 0.0
    unpriced: int = 0
    """Runs to train whose (family, budget field) has no measured cost."""
    on_gpu: int = 0
    """Runs to train on a GPU (`train.device = cuda`), priced at their CPU cost: no GPU cost is measured yet."""


def estimate(specs_to_train: list, stored_by_family: dict[str, int], family_of) -> dict[str, FamilyCost]:
    """Per family: runs in the grid, how many are stored, and the CPU-seconds the rest will take."""
    out: dict[str, FamilyCost] = defaultdict(FamilyCost)
    for family, n in stored_by_family.items():
        out[family].runs += n
        out[family].stored += n
    for spec in specs_to_train:
        family = family_of(spec.task)
        units, unit = budget(spec.train_config)
        cost = out[family]
        cost.runs += 1
        cost.on_gpu += on_gpu(spec)
        if family in FAMILY_COST:
            cost.cpu_s += FAMILY_COST[family](spec.task, spec.train_config)
        elif (family, unit) in SECONDS_PER_UNIT:
            cost.cpu_s += units * SECONDS_PER_UNIT[(family, unit)]
        else:
            cost.unpriced += 1
    return dict(sorted(out.items()))


def render(costs: dict[str, FamilyCost], workers: int) -> str:
    rows = [("family", "runs", "stored", "to train", "CPU-hours (est.)")]
    for family, c in costs.items():
        hours = f"{c.cpu_s / 3600:.2f}" + (f" + {c.unpriced} unpriced" if c.unpriced else "")
        rows.append((family, str(c.runs), str(c.stored), str(c.runs - c.stored), hours))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))) for r in rows]
    total = sum(c.cpu_s for c in costs.values()) / 3600
    lines.append(f"about {total:.2f} CPU-hours to train, ≈ {total / workers:.2f} h wall on {workers} worker(s) "
                 f"(costs measured on {MEASURED_ON}, suite/costs.py; good to about a factor of two). Nothing was trained.")
    if gpu := sum(c.on_gpu for c in costs.values()):
        lines.append(f"{gpu} of the runs to train are on a GPU (--device cuda): no GPU cost has been measured yet (the "
                     "development machine has none), so they are priced at what they take on the CPU.")
    return "\n".join(lines)
