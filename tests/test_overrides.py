"""`--set section.field=value` (`suite.overrides`) and typed value parsing (`suite.configs.parse_value`).

The grid used is bandits-pmpo at the smoke profile: 3 functions × 5 variants (PMPO-AR α=.5 β=.5,
PMPO-A α=1 β=0, PMPO-R α=0 β=2, DPO β=0.1, MPO) × 2 seeds = 30 runs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, Optional

import pytest

from algorithms.config import ConfigError
from suite import overrides
from suite.configs import content_hash, parse_value
from suite.questions import get_question
from suite.runner import run_id, spec_payload


@pytest.fixture(scope="module")
def grid():
    points = get_question("bandits-pmpo").grid("smoke")
    assert len(points) == 30
    return points


def ids(points) -> list[str]:
    return [run_id(p.spec) for p in points]


# ------------------------------------------------------------------------------------------ parse


def test_parse_splits_section_field_value_and_strips_spaces():
    assert overrides.parse(["algo.beta=1.0", " train.steps = 500 ", "task.x=a=b"]) == [
        ("algo", "beta", "1.0"), ("train", "steps", "500"), ("task", "x", "a=b")]  # only the first '=' splits
    assert overrides.parse([]) == []


@pytest.mark.parametrize("item", ["algo.beta", "beta=1", ".beta=1", "algo.=1", "algo.beta=", "=1", ""])
def test_parse_refuses_malformed_items(item):
    with pytest.raises(ConfigError, match=r"malformed override .*expected section\.field=value") as info:
        overrides.parse([item])
    assert repr(item) in str(info.value)
    assert "sections: task, train, algo" in str(info.value)


# ------------------------------------------------------------------------------------------ apply


def test_scoped_override_changes_only_that_algorithms_runs(grid):
    new = overrides.apply(grid, ["pmpo.beta=1.5"])
    assert len(new) == len(grid)
    assert [p.variant for p in new] == [p.variant for p in grid]
    for old, p in zip(grid, new):
        if p.spec.algo == "pmpo":
            assert p.spec.algo_config.beta == 1.5
            assert p.spec.algo_config.alpha == old.spec.algo_config.alpha
            assert run_id(p.spec) != run_id(old.spec)
        else:
            assert p.spec == old.spec  # DPO has a beta too, but the override is scoped to pmpo
            assert run_id(p.spec) == run_id(old.spec)
    assert sum(p.spec.algo == "pmpo" for p in new) == 18


def test_algo_override_changes_every_algorithm_that_has_the_field(grid):
    new = overrides.apply(grid, ["algo.beta=0.25"])
    changed = {p.spec.algo for old, p in zip(grid, new) if p.spec != old.spec}
    assert changed == {"pmpo", "dpo"}  # MPOConfig has no beta
    for old, p in zip(grid, new):
        if p.spec.algo in ("pmpo", "dpo"):
            assert p.spec.algo_config.beta == 0.25
        else:
            assert p.spec == old.spec


def test_train_override_changes_every_run_and_is_typed(grid):
    new = overrides.apply(grid, ["train.steps=100"])
    assert all(p.spec.train_config.steps == 100 and type(p.spec.train_config.steps) is int for p in new)
    assert all(p.spec.train_config.log_every == old.spec.train_config.log_every for old, p in zip(grid, new))
    assert not set(ids(new)) & set(ids(grid))  # every run is a new run
    assert len(set(ids(new))) == len(grid)  # and they are still distinct


def test_task_override_changes_every_task_config(grid):
    new = overrides.apply(grid, ["task.dim=3"])
    assert {p.spec.task_config.dim for p in new} == {3}
    # the rest of each task's config is kept (rosenbrock starts in [-2, 2], the others in [-5, 5])
    assert [(p.spec.task_config.init_low, p.spec.task_config.init_high) for p in new] == \
           [(p.spec.task_config.init_low, p.spec.task_config.init_high) for p in grid]


def test_run_id_is_the_content_hash_of_the_resolved_config(grid):
    new = overrides.apply(grid, ["pmpo.alpha=0.5"])  # PMPO-AR already has α = 0.5: same config, same run
    for old, p in zip(grid, new):
        assert run_id(p.spec) == content_hash(spec_payload(p.spec))
        same = p.variant == "PMPO-AR" or p.spec.algo != "pmpo"
        assert (run_id(p.spec) == run_id(old.spec)) == same, p.variant
    # spelling of the value does not matter, only the parsed value: 0.50 == 5e-1 == 0.5
    assert ids(overrides.apply(grid, ["pmpo.beta=0.50"])) == ids(overrides.apply(grid, ["pmpo.beta=5e-1"]))
    # the seed is part of the identity
    assert len(set(ids(grid))) == len(grid)


def test_overrides_apply_in_order_and_leave_the_input_alone(grid):
    before = [p.spec for p in grid]
    new = overrides.apply(grid, ["algo.beta=1.0", "pmpo.beta=2.0"])
    assert [p.spec for p in grid] == before
    assert {p.spec.algo_config.beta for p in new if p.spec.algo == "pmpo"} == {2.0}
    assert {p.spec.algo_config.beta for p in new if p.spec.algo == "dpo"} == {1.0}
    assert overrides.apply(grid, []) == grid


def test_unknown_section_lists_sections_and_grid_algorithms_closest_first(grid):
    with pytest.raises(ConfigError) as info:
        overrides.apply(grid, ["trian.steps=3"])
    msg = str(info.value)
    assert "unknown override section 'trian'" in msg and "Did you mean 'train'?" in msg
    assert "Allowed: train, " in msg
    assert all(s in msg for s in ("task", "algo", "pmpo", "dpo", "mpo"))
    with pytest.raises(ConfigError, match="unknown override section 'ppo'"):
        overrides.apply(grid, ["ppo.clip=0.2"])  # an algorithm, but not one in this grid


def test_unknown_field_names_section_and_closest_field(grid):
    with pytest.raises(ConfigError) as info:
        overrides.apply(grid, ["task.dimm=3"])
    msg = str(info.value)
    assert "'dimm'" in msg and "Did you mean 'dim'?" in msg and "Allowed: dim, " in msg
    with pytest.raises(ConfigError) as info:
        overrides.apply(grid, ["pmpo.gamma=3"])
    assert "'gamma'" in str(info.value) and "Allowed: alpha, beta" in str(info.value)


@pytest.mark.parametrize("item, expected", [
    ("pmpo.beta=-1", r"PMPOConfig\.beta = -1\.0 is invalid: must be >= 0"),
    ("algo.alpha=2", r"PMPOConfig\.alpha = 2\.0 is invalid: must lie in \[0\.0, 1\.0\]"),
    ("train.steps=0", r"BanditLoopConfig\.steps = 0 is invalid: must be > 0"),
    ("train.steps=abc", r"BanditLoopConfig\.steps = 'abc' is malformed: expected a value of type int"),
    ("train.steps=1.5", r"BanditLoopConfig\.steps = '1\.5' is malformed: expected a value of type int"),
    ("pmpo.beta=lots", r"PMPOConfig\.beta = 'lots' is malformed: expected a value of type float"),
    ("mpo.temperature=fixd", r"unknown value for MPOConfig\.temperature 'fixd'\. Did you mean 'fixed'\?"),
    ("task.dim=1", r"BanditConfig\.dim = 1 is invalid: must be >= 2"),
])
def test_invalid_values_are_refused_naming_field_and_allowed(grid, item, expected):
    with pytest.raises(ConfigError, match=expected):
        overrides.apply(grid, [item])


# ------------------------------------------------------------------------------------------ parse_value


@dataclass(frozen=True)
class Toy:
    n: int = 1
    x: float = 1.0
    on: bool = False
    name: str = "a"
    mode: Literal["dual", "fixed"] = "dual"
    maybe: Optional[float] = None
    sizes: tuple[int, ...] = (1,)
    other: dict = dataclasses.field(default_factory=dict)


@pytest.mark.parametrize("field, raw, value", [
    ("n", "7", 7), ("n", "-3", -3), ("x", "2.5", 2.5), ("x", "1e-3", 1e-3), ("x", "3", 3.0),
    ("on", "true", True), ("on", "Yes", True), ("on", "0", False), ("on", "off", False),
    ("name", "hello", "hello"), ("mode", "fixed", "fixed"), ("maybe", "none", None), ("maybe", "0.5", 0.5),
    ("sizes", "64,64", (64, 64)), ("sizes", "(32, 16)", (32, 16)), ("sizes", "[8]", (8,)),
])
def test_parse_value_by_declared_type(field, raw, value):
    got = parse_value(Toy, field, raw)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("field, raw, expected", [
    ("n", "1.0", r"Toy\.n = '1\.0' is malformed: expected a value of type int"),
    ("on", "maybe", r"Toy\.on = 'maybe' is malformed: expected a value of type bool"),
    ("mode", "Dual", r"unknown value for Toy\.mode 'Dual'\. Did you mean 'dual'\? Allowed: dual, fixed"),
    ("sizes", "1,x", r"Toy\.sizes = '1,x' is malformed"),
    ("other", "{}", r"Toy\.other has type .* which cannot be set from the command line"),
])
def test_parse_value_refuses_what_does_not_parse(field, raw, expected):
    with pytest.raises(ConfigError, match=expected):
        parse_value(Toy, field, raw)


def test_content_hash_is_stable_and_order_free():
    a = content_hash({"x": 1, "y": [1, 2]})
    assert a == content_hash({"y": [1, 2], "x": 1})
    assert len(a) == 16 and int(a, 16) >= 0
    assert a != content_hash({"x": 1, "y": [2, 1]})
    assert a != content_hash({"x": 1.5, "y": [1, 2]})
