"""`--device auto|cpu|cuda|cuda:N`: where the control, Atari and LM loops train (`train.device` of their configs).

The device *type* is part of a run's identity (a CUDA run is another run than the CPU one, and numbers are
promised equal per device type only); the index N is placement, which the process pool applies
(`torch.cuda.set_device`) and Ray decides for itself. The bandit and theory families train on the CPU
whatever is asked: their runs are not changed. `auto` is `cuda` where the machine (or the Ray cluster) has
a GPU and `cpu` otherwise; the default leaves each run as configured (the CPU, or `--set train.device=…`),
so a plain `emrl run` on a machine with a GPU still reproduces the committed CPU numbers.
"""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING

from algorithms.config import ConfigError

if TYPE_CHECKING:
    from suite.questions.base import GridPoint
    from tasks.base import RunSpec

PATTERN = re.compile(r"auto|cpu|cuda(?::(\d+))?")


def on_gpu(spec: RunSpec) -> bool:
    """Whether the run trains on CUDA (a loop without a device trains on the CPU)."""
    return getattr(spec.train_config, "device", "cpu") == "cuda"


def parse(text: str) -> tuple[str, int | None]:
    """`"cuda:1"` -> `("cuda", 1)`; `auto` stays `auto` (see `resolve`). A malformed device is refused."""
    match = PATTERN.fullmatch(text.strip())
    if not match:
        raise ConfigError(f"--device {text!r} is malformed: allowed are auto, cpu, cuda and cuda:N (N a GPU index, e.g. cuda:1).")
    kind = match.group(0).split(":")[0]
    return kind, int(match.group(1)) if match.group(1) is not None else None


def resolve(kind: str, backend: str, address: str | None = None, workers: int | None = None) -> str:
    """`auto` -> `cuda` where a GPU can be used, else `cpu`: this machine's for the process pool, the cluster's on Ray
    (which connects to it, or starts the local instance, here)."""
    if kind != "auto":
        return kind
    if backend == "ray":
        from suite import ray_backend

        ray_backend.connect(address, workers)
        return "cuda" if ray_backend.gpus() else "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def apply(points: list[GridPoint], kind: str, require: bool = True) -> list[GridPoint]:
    """Every run whose training loop has a device, moved to `kind`; other runs unchanged.

    With `require`, asking for CUDA for a grid none of whose loops has a device is refused rather than silently run
    on the CPU (`emrl run`; `reproduce` moves the families that can move)."""
    movable = [hasattr(p.spec.train_config, "device") for p in points]
    if require and kind == "cuda" and points and not any(movable):
        families = sorted({type(p.spec.train_config).__name__ for p in points})
        raise ConfigError(f"--device cuda: no run of this grid can train on a GPU (its loops, {', '.join(families)}, "
                          "train on the CPU; the control, Atari and LM families have a device). Leave --device out.")
    return [dataclasses.replace(p, spec=dataclasses.replace(p.spec, train_config=dataclasses.replace(p.spec.train_config, device=kind)))
            if move and p.spec.train_config.device != kind else p for p, move in zip(points, movable)]


def check_local(points: list[GridPoint], index: int | None) -> None:
    """Refuse `cuda` runs on a machine without CUDA (or without GPU `index`) before anything trains."""
    if not any(on_gpu(p.spec) for p in points):
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError("--device cuda (train.device = 'cuda'): this machine has no CUDA device "
                          f"(torch {torch.__version__}, torch.cuda.is_available() is False). Use --device cpu or auto, "
                          "or run on a machine or Ray cluster with a GPU.")
    if index is not None and index >= torch.cuda.device_count():
        raise ConfigError(f"--device cuda:{index}: this machine has {torch.cuda.device_count()} CUDA devices "
                          f"(indices 0 to {torch.cuda.device_count() - 1}).")
