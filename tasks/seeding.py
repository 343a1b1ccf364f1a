"""Explicit, named random streams: the task instance, the run and evaluation never share a generator."""

from __future__ import annotations

import zlib

import numpy as np
import torch


def stream_seed(seed: int, stream: str) -> int:
    """A 63-bit seed for the named stream ("instance", "run", "eval", ...) of run seed `seed`."""
    ss = np.random.SeedSequence([int(seed), zlib.crc32(stream.encode())])
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def generator(seed: int, stream: str, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator for the named stream of `seed`, on `device`, where the tensors it draws live. A CUDA generator
    draws other numbers than the CPU one of the same seed (runs are equal per device type)."""
    return torch.Generator(device).manual_seed(stream_seed(seed, stream))
