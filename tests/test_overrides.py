"""`--set section.field=value` (`suite.overrides`) and typed value parsing (`suite.configs.parse_value`).

The grid used is bandits-pmpo at the smoke profile: 3 functions × 5 variants (PMPO-AR α=.5 β=.5,
PMPO-A α=1 β=0, PMPO-R α=0 β=2, DPO β=0.1, MPO) × 2 seeds = 30 runs.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from dataclasses import dataclass
from typing import Literal, Optional

import pytest

from algorithms.config import ConfigError
from suite import overrides
from algorithms.ppo import PPOConfig
from suite.configs import MAX_STEPS, content_hash, parse_value
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


@pytest.mark.parametrize("items, first, second", [
    (["algo.beta=1", "algo.beta=2"], "1", "2"),
    (["pmpo.beta=1.0", "train.steps=5", " pmpo.beta = 1.0 "], "1.0", "1.0"),  # the same value twice is refused too
])
def test_parse_refuses_a_field_given_twice_naming_both_values(grid, items, first, second):
    field = items[0].split("=")[0]
    expected = rf"override {field} is given twice \('{first}' and '{second}'\): give it once"
    with pytest.raises(ConfigError, match=expected):
        overrides.parse(items)
    with pytest.raises(ConfigError, match=expected):
        overrides.apply(grid, items)


def test_importing_overrides_imports_neither_torch_nor_the_registries():
    """So that the CLI refuses a malformed override at once."""
    code = ("import sys, suite.overrides, suite.configs, algorithms.config; "
            "print(sorted(m for m in ('torch', 'tasks', 'suite.questions') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


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
    ("pmpo.alpha=nan", r"PMPOConfig\.alpha = 'nan' is invalid: must be a finite number \(NaN and ±inf cannot be stored"),
    ("pmpo.beta=inf", r"PMPOConfig\.beta = 'inf' is invalid: must be a finite number"),
    ("algo.beta=-Infinity", r"PMPOConfig\.beta = '-Infinity' is invalid: must be a finite number"),
    ("train.lr=1e999", r"BanditLoopConfig\.lr = '1e999' is invalid: must be a finite number"),  # overflows to inf
    ("train.steps=10000000000", r"BanditLoopConfig\.steps = 10000000000 is invalid: a step count must be at most 1000000000"),
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
    cap: float | None = None
    count: int | None = 3
    total_steps: int = 10
    xs: tuple[float, ...] = (1.0,)
    sizes: tuple[int, ...] = (1,)
    other: dict = dataclasses.field(default_factory=dict)


@pytest.mark.parametrize("field, raw, value", [
    ("n", "7", 7), ("n", "-3", -3), ("x", "2.5", 2.5), ("x", "1e-3", 1e-3), ("x", "3", 3.0),
    ("on", "true", True), ("on", "Yes", True), ("on", "0", False), ("on", "off", False),
    ("name", "hello", "hello"), ("mode", "fixed", "fixed"), ("maybe", "none", None), ("maybe", "0.5", 0.5),
    ("sizes", "64,64", (64, 64)), ("sizes", "(32, 16)", (32, 16)), ("sizes", "[8]", (8,)),
    ("cap", "0.25", 0.25), ("cap", "none", None), ("cap", "null", None), ("count", "7", 7), ("count", "None", None),
    ("total_steps", str(MAX_STEPS), MAX_STEPS), ("n", str(10 * MAX_STEPS), 10 * MAX_STEPS),  # only step counts are capped
    ("xs", "0.5, 2", (0.5, 2.0)),
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
    ("x", "nan", r"Toy\.x = 'nan' is invalid: must be a finite number"),
    ("cap", "inf", r"Toy\.cap = 'inf' is invalid: must be a finite number"),
    ("xs", "1,nan", r"Toy\.xs = '1,nan' is invalid: must be a finite number"),
    ("cap", "lots", r"Toy\.cap = 'lots' is malformed: expected a value of type float"),
    ("count", "1.5", r"Toy\.count = '1\.5' is malformed: expected a value of type int"),
    ("total_steps", str(MAX_STEPS + 1), r"Toy\.total_steps = 1000000001 is invalid: a step count must be at most 1000000000"),
])
def test_parse_value_refuses_what_does_not_parse(field, raw, expected):
    with pytest.raises(ConfigError, match=expected):
        parse_value(Toy, field, raw)


def test_none_able_fields_of_real_configs_can_be_set():
    # `float | None` is a types.UnionType, not a typing.Union: these fields were unreachable from --set
    assert parse_value(PPOConfig, "value_clip", "0.1") == 0.1
    assert parse_value(PPOConfig, "value_clip", "none") is None
    assert dataclasses.replace(PPOConfig(), value_clip=parse_value(PPOConfig, "value_clip", "none")).value_clip is None


def test_content_hash_is_stable_and_order_free():
    a = content_hash({"x": 1, "y": [1, 2]})
    assert a == content_hash({"y": [1, 2], "x": 1})
    assert len(a) == 16 and int(a, 16) >= 0
    assert a != content_hash({"x": 1, "y": [2, 1]})
    assert a != content_hash({"x": 1.5, "y": [1, 2]})
