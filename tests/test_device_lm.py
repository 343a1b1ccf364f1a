"""The LM loops' `device` (RLHF and the L8 SFT check): "cpu" by default and on its own unchanged, anything but a
device type refused, every tensor and generator the loops and the artifact stages create placed on the run's device
and no `.numpy()` of a tensor left off the CPU (recorded by `tests/device_leaks.py`), and a stage trained off the CPU
cached under a key of its own while the CPU's keys stay what they were.
"""

import dataclasses

import pytest
import torch
from device_leaks import device_leaks

from algorithms import REGISTRY
from algorithms.config import ConfigError
from tasks import RunSpec
from tasks.lm import language as lm_language, models as lm_models, rlhf as lm_rlhf, sft_check as lm_sft_check, tokens as lm_tokens
from tasks.lm.models import artifact_key, read_metadata
from tasks.lm.rlhf import TINY_STAGES, LMRLHFConfig, LMTaskConfig, train
from tasks.lm.sft_check import LMSFTCheckConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TASK = LMTaskConfig(stages="tiny", eval_prompts=4, train_prompts=64, final_prompts=6, final_samples=2)
LOOP = LMRLHFConfig(updates=1, prompts_per_update=4, eval_every=1, epochs=2, minibatches=2, dropout=0.1)
CHECK = LMSFTCheckConfig(steps=2, batch_size=8)
HOST = ("collate", "encode_prompts", "_right_padded")
"""Builders of host tensors from Python lists (token ids of a batch); their callers move the result to the device."""


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """Runs under the recorder in a fresh artifact cache, so it also builds the stages: pretraining, SFT, the reward
    model's comparisons and training; then RLHF with a critic and dropout, ReMax's greedy baseline, the proxy reward,
    both evaluations, and the L8 check. Yields (cache root, device leaks, {algo: result}). One torch thread, as the
    tests that compare with these runs have (`one_torch_thread` is set up after a module's fixtures)."""
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("artifacts")
    mp.setenv("EMRL_ARTIFACTS", str(root))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with device_leaks([lm_rlhf, lm_models, lm_tokens, lm_sft_check, lm_language], host=HOST) as found:
            results = {algo: _run(algo, CHECK if algo == "sft" else LOOP) for algo in ("ppo", "remax", "sft")}
    finally:
        torch.set_num_threads(threads)
    yield root, found, results
    mp.undo()


def _run(algo, loop, seed=0):
    return train([RunSpec("lm-grammar", TASK, algo, REGISTRY[algo].Config(), loop, seed)])[0]


@pytest.mark.parametrize("config", [LOOP, CHECK])
def test_device_defaults_to_cpu_and_only_a_device_type_is_accepted(config):
    assert type(config)().device == "cpu" and dataclasses.fields(config)[-1].name == "device"
    assert dataclasses.replace(config, device="cuda").device == "cuda"  # building the config needs no GPU
    for bad in ("cuda:0", "gpu", "mps", "CPU"):  # which GPU is the runner's choice, never the config's
        with pytest.raises(ConfigError, match="device"):
            dataclasses.replace(config, device=bad)


def test_the_loops_and_stages_place_every_tensor_and_generator_on_their_device(recorded):
    _, found, results = recorded
    assert all(r.status == "ok" for r in results.values())
    assert sorted(set(found)) == []


@pytest.mark.parametrize("algo,loop", [("ppo", LOOP), ("sft", CHECK)])
def test_a_run_with_device_cpu_equals_the_default_configs(recorded, algo, loop):
    default = recorded[2][algo]
    explicit = _run(algo, dataclasses.replace(loop, device="cpu"))
    assert explicit.status == "ok" and explicit.rows == default.rows
    assert all(type(v) is float for _, _, v in explicit.rows)


def test_a_stage_trained_off_the_cpu_has_a_key_of_its_own_and_cpu_keys_stay(recorded):
    sft, rm = TINY_STAGES
    for cfg in (sft.pretrain, sft, rm):
        assert artifact_key(cfg, "cpu") == artifact_key(cfg)  # "<kind>-<16 hex digits>", as before devices
        assert artifact_key(cfg, "cuda") == artifact_key(cfg) + "-cuda"
        assert read_metadata(recorded[0] / artifact_key(cfg))["device"] == "cpu"  # the runs built them under it
