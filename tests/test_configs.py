"""The validation helpers of `algorithms.config`: NaN is refused everywhere, ±inf except where it means something."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

from algorithms.config import INFINITY_ALLOWED, ConfigError, check_positive, check_range
from algorithms.dar import DARConfig
from algorithms.pmpo import PMPOConfig
from tasks.bandits import BanditLoopConfig

NAN, INF = float("nan"), math.inf


@dataclass(frozen=True)
class Toy:
    lr: float = 1e-3
    frac: float = 0.5
    weight_clip: float = 20.0


@pytest.mark.parametrize("value", [NAN, INF, -INF])
def test_check_positive_refuses_nan_and_inf_naming_field_and_bound(value):
    with pytest.raises(ConfigError, match=rf"Toy\.lr = {value!r} is invalid: must be a finite number > 0\."):
        check_positive(Toy(lr=value), "lr")
    with pytest.raises(ConfigError, match=r"must be a finite number >= 0\."):
        check_positive(Toy(lr=value), "lr", strict=False)


@pytest.mark.parametrize("value", [NAN, INF, -INF])
def test_check_range_refuses_nan_and_inf(value):
    # NaN fails every comparison, so `v < lo or v > hi` alone let it through
    with pytest.raises(ConfigError, match=rf"Toy\.frac = {value!r} is invalid: must lie in \[0, 1\]\."):
        check_range(Toy(frac=value), "frac", 0, 1)


def test_an_infinite_clip_is_allowed_where_it_means_no_clip():
    assert "weight_clip" in INFINITY_ALLOWED
    check_positive(Toy(weight_clip=INF), "weight_clip")  # the theory checks lift DAR's clip this way
    assert DARConfig(weight_clip=INF).weight_clip == INF
    for bad in (NAN, -INF):
        with pytest.raises(ConfigError, match=r"DARConfig\.weight_clip = .* is invalid"):
            DARConfig(weight_clip=bad)


@pytest.mark.parametrize("make, expected", [
    (lambda: PMPOConfig(alpha=NAN), r"PMPOConfig\.alpha = nan is invalid: must lie in \[0\.0, 1\.0\]"),
    (lambda: PMPOConfig(beta=INF), r"PMPOConfig\.beta = inf is invalid: must be a finite number >= 0"),
    (lambda: BanditLoopConfig(lr=INF), r"BanditLoopConfig\.lr = inf is invalid: must be a finite number > 0"),
])
def test_real_configs_refuse_nan_and_inf(make, expected):
    with pytest.raises(ConfigError, match=expected):
        make()


def test_finite_values_and_ints_pass_unchanged():
    check_positive(Toy(lr=1e-300), "lr")
    check_range(Toy(frac=1.0), "frac", 0, 1)
    assert BanditLoopConfig(steps=10**9).steps == 10**9  # the override parser caps step counts, not the config
