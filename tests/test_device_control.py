"""The control loops' `device`: the CPU by default, a CPU run unchanged by it, and no loop tensor made without one.

There is no GPU here, so device-correctness is checked on the CPU with `tests/device_leaks.py` (what it can and cannot
see is in its docstring); the test of that recorder itself, for every test file that uses it, is here too.
"""

import dataclasses
import sys

import pytest
import torch
from device_leaks import device_leaks
from torch import nn

import tasks
import tasks.control_offline as offline
from algorithms.config import ConfigError
from algorithms.mpo import MPOConfig
from algorithms.pmpo import PMPOConfig
from algorithms.ppo import PPOConfig
from algorithms.virel import VIRELConfig
from algorithms.vmpo import VMPOConfig
from tasks import RunSpec, control_ac, control_onpolicy, dmc
from tasks.control_ac import ActorCriticConfig, Replay
from tasks.control_offline import BEHAVIOUR_DEFAULT, OfflineConfig, dataset_key
from tasks.control_onpolicy import OnPolicyConfig
from tasks.dmc import ControlConfig, PolicyConfig, SeedStatus, Stacked, StackedNorm, make_policy

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TASK = "cartpole-swingup"
SHORT = ControlConfig(time_limit=0.1)  # 10-step episodes: every rollout and replay holds truncations
ONPOLICY = OnPolicyConfig(total_steps=64, num_envs=2, rollout=32, minibatches=2, epochs=1, eval_every=64, eval_episodes=1)
AC = ActorCriticConfig(total_steps=40, eval_every=40, eval_episodes=1, hidden=(8, 8), batch_size=8, learning_starts=10,
                       updates_per_step=0.25, log_every=20, replay_size=100, samples=4, target_period=2)
OFFLINE = OfflineConfig(steps=4, batch_size=8, hidden=(8, 8), eval_every=4, eval_episodes=1, log_every=2, random_episodes=1,
                        final_episodes=1, value_rounds=1, value_epochs=1, value_hidden=(8, 8), label_fraction=0.5,
                        behaviour=dataclasses.replace(AC, samples=20))

RUNS = [
    ("ppo", PPOConfig(), ONPOLICY),
    ("ppo", PPOConfig(), dataclasses.replace(ONPOLICY, policy="binned")),
    ("vmpo", VMPOConfig(), dataclasses.replace(ONPOLICY, returns="nstep", unroll=8, target_period=1)),
    ("mpo", MPOConfig(), AC),
    ("pmpo", PMPOConfig(), dataclasses.replace(AC, policy="binned")),
    ("virel", VIRELConfig(actor_estimator="score_function"), AC),
    ("pmpo", PMPOConfig(alpha=0.5, beta=1.0), OFFLINE),
]
IDS = ["onpolicy-ppo", "onpolicy-ppo-binned", "onpolicy-vmpo", "ac-mpo", "ac-pmpo-binned", "ac-virel", "offline-pmpo"]


def _train(algo, algo_cfg, loop):
    return tasks.TASKS[TASK].family.train([RunSpec(TASK, SHORT, algo, algo_cfg, loop, s) for s in (0, 1)])


@pytest.fixture
def results(tmp_path, monkeypatch):
    """A fresh results root, so the offline runs build their dataset (on the loop's device) rather than load it."""
    monkeypatch.setenv("EMRL_RESULTS", str(tmp_path))


# ------------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize("cls", [OnPolicyConfig, ActorCriticConfig, OfflineConfig])
def test_each_loop_config_ends_with_a_device_that_defaults_to_the_cpu_and_refuses_others(cls):
    assert dataclasses.fields(cls)[-1].name == "device" and cls().device == "cpu"
    assert cls(device="cuda").device == "cuda"  # a config, not this machine: the runner refuses CUDA where there is none
    for bad in ("gpu", "cuda:0", "meta", "CPU"):
        with pytest.raises(ConfigError, match=rf"{cls.__name__}\.device"):
            cls(device=bad)


def test_the_offline_dataset_is_built_on_the_loops_device_and_cpu_datasets_keep_their_keys(monkeypatch):
    with pytest.raises(ConfigError, match=r"OfflineConfig\.behaviour\.device"):
        OfflineConfig(behaviour=dataclasses.replace(BEHAVIOUR_DEFAULT, device="cuda"))
    # the default dataset's key at commit 384cf2e, before the loops had a device
    assert dataset_key(TASK, ControlConfig(), OfflineConfig()) == "e2516f49ce01704f"
    assert dataset_key(TASK, ControlConfig(), OfflineConfig(device="cuda")) != "e2516f49ce01704f"

    class Stop(Exception):
        pass

    def behaviour_run(specs, keep):
        raise Stop(specs[0].train_config.device)

    monkeypatch.setattr(offline, "train_actor_critic", behaviour_run)
    with pytest.raises(Stop, match="^cuda$"):  # the behaviour run is handed the offline loop's device
        offline.build_dataset(TASK, SHORT, dataclasses.replace(OFFLINE, random_episodes=0, device="cuda"))


# ------------------------------------------------------------------------------------------------ runs


@pytest.mark.parametrize("algo,algo_cfg,loop", [RUNS[0], RUNS[3], RUNS[-1]], ids=["onpolicy", "ac", "offline"])
def test_device_cpu_gives_the_rows_of_the_default_config_as_plain_numbers(results, algo, algo_cfg, loop):
    default = _train(algo, algo_cfg, loop)
    explicit = _train(algo, algo_cfg, dataclasses.replace(loop, device="cpu"))
    assert [r.status for r in default] == ["ok", "ok"]
    assert [r.rows for r in explicit] == [r.rows for r in default]
    for r in default:
        assert all(type(step) is int and type(metric) is str and type(value) is float for step, metric, value in r.rows)


CONTROL = [control_onpolicy, control_ac, offline, dmc]
"""The files whose calls are recorded: the loops and the lockstep pieces they share."""


# ------------------------------------------------------------------------------------------------ the recorder


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("b", torch.zeros(1))  # exempt: moves with the module's .to


class _Plain:
    def __init__(self):
        self.t = torch.zeros(1)  # not a module: recorded


def _host_rows():
    return torch.tensor([[1, 2]])  # exempt only where named in host=


def _calls():
    torch.zeros(2)
    torch.zeros(2, device=None)
    torch.Generator()
    torch.ones(2, device="cpu").numpy()
    torch.ones(2, device="cpu").cpu().numpy()
    torch.Generator("cpu"), torch.Generator(device="cpu"), torch.arange(3, device="cpu")
    _Net(), _Plain(), _host_rows()


def test_device_leaks_sees_factories_and_generators_without_a_device_and_numpy_without_cpu():
    with device_leaks([]) as found:  # only calls made from a watched file count
        _calls()
    assert found == []
    with device_leaks([sys.modules[__name__]], host=("_host_rows",)) as found:
        _calls()
    assert [(f.split()[1], f.split(": ", 1)[1]) for f in found] == [
        ("_calls:", "torch.zeros without device="), ("_calls:", "torch.zeros without device="),
        ("_calls:", "torch.Generator without device="), ("_calls:", ".numpy() of a tensor not brought to the CPU"),
        ("__init__:", "torch.zeros without device=")]  # _Plain's
    with device_leaks([__file__]) as found:  # a path watches as its module does
        _calls()
    assert [f.split()[1] for f in found] == ["_calls:"] * 4 + ["__init__:", "_host_rows:"]
    assert torch.Generator is torch._C.Generator  # put back after the block


# ------------------------------------------------------------------------------------------------ the loops


@pytest.mark.parametrize("algo,algo_cfg,loop", RUNS, ids=IDS)
def test_the_control_loops_make_no_tensor_without_a_device(results, algo, algo_cfg, loop):
    with device_leaks(CONTROL) as found:
        out = _train(algo, algo_cfg, loop)
    assert [r.status for r in out] == ["ok", "ok"]
    assert found == []


def test_the_lockstep_pieces_put_every_tensor_on_the_device_they_are_given():
    # "meta" stands in for a GPU: a tensor left on the CPU, or a CPU tensor mixed in, shows here without one
    seeds, meta = [0, 1], torch.device("meta")
    for kind in ("gaussian", "binned"):
        actor = Stacked(lambda: make_policy(3, 2, PolicyConfig(kind=kind, hidden=(4,))), seeds, "meta")
        tensors = [*actor.params.values(), *actor.template.parameters(), *actor.template.buffers(),
                   *actor.module_of(1).parameters(), *actor.copy_params().values()]
        assert {t.device for t in tensors} == {meta}
    norm = StackedNorm(2, 3, 10.0, device="meta")
    assert {t.device for t in (norm.mean, norm.var, norm.count, *norm.to_running_norm(0).buffers())} == {meta}
    assert SeedStatus(2, "meta").alive.device == meta
    replay = Replay(2, 8, 3, 2, device="meta")
    assert {t.device for t in vars(replay).values() if isinstance(t, torch.Tensor)} == {meta}
