"""The Atari loop's `device`: "cpu" by default and on its own unchanged, anything but a device type refused, and every
tensor and generator the loop creates placed on the loop's device, and no `.numpy()` of a tensor left off the CPU
(checked on the CPU with `tests/device_leaks.py`: no GPU is needed to see a factory call that names no device, which on
a CUDA run would land on the CPU).
"""

from __future__ import annotations

import dataclasses

import pytest
from device_leaks import device_leaks

import tasks
from algorithms.config import ConfigError
from algorithms.ppo import PPOConfig
from algorithms.vmpo import VMPOConfig
from tasks import RunSpec, atari, atari_onpolicy, cores
from tasks.atari import AtariTaskConfig
from tasks.atari_onpolicy import AtariOnPolicyConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = AtariOnPolicyConfig(total_steps=64, num_envs=2, unroll=8, unrolls=2, minibatches=2, epochs=1, eval_episodes=2,
                           eval_max_steps=30, core_memory=4, core_hidden=16, torso_dim=16, eval_every=10**9)
TMAZE = AtariTaskConfig(tmaze_length=3, tmaze_max_steps=5)  # a short cap: truncations bootstrap from V(final obs)


def run(algo_cfg, train, task="tmaze-memory", task_cfg=TMAZE, seed=0):
    algo = {PPOConfig: "ppo", VMPOConfig: "vmpo"}[type(algo_cfg)]
    return tasks.TASKS[task].family.train([RunSpec(task, task_cfg, algo, algo_cfg, train, seed)])[0]


def test_device_defaults_to_cpu_and_only_a_device_type_is_accepted():
    assert AtariOnPolicyConfig().device == "cpu" and dataclasses.fields(AtariOnPolicyConfig)[-1].name == "device"
    assert dataclasses.replace(TINY, device="cuda").device == "cuda"  # building the config needs no GPU
    for bad in ("cuda:0", "gpu", "mps", "CPU"):  # which GPU is the runner's choice, never the config's
        with pytest.raises(ConfigError, match="device"):
            dataclasses.replace(TINY, device=bad)


def test_a_run_with_device_cpu_equals_the_default_configs():
    cfg = dataclasses.replace(TINY, core="lstm")
    a, b = run(PPOConfig(ent_coef=0.01), cfg), run(PPOConfig(ent_coef=0.01), dataclasses.replace(cfg, device="cpu"))
    assert a.status == b.status == "ok" and a.rows == b.rows
    assert all(type(v) is float for _, _, v in a.rows)


@pytest.mark.parametrize("core", ["lstm", "gtrxl"])
def test_the_loop_places_every_tensor_and_generator_on_its_device(core):
    """Rollout, truncation bootstrap, learner and evaluation, through the torso, the core and the MinAtar path."""
    with device_leaks([atari_onpolicy, atari, cores]) as found:
        for algo_cfg in (PPOConfig(ent_coef=0.01), VMPOConfig()):
            assert run(algo_cfg, dataclasses.replace(TINY, core=core)).status == "ok"
        assert run(PPOConfig(), TINY, task="minatar-breakout", task_cfg=AtariTaskConfig(max_frames=20)).status == "ok"
    assert sorted(set(found)) == []
