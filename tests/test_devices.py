"""`--device` and `train.device` (`suite.devices`): parsing, which runs move, the run identity of a device, and a
CUDA run refused at config time where there is no CUDA. (The CUDA training paths themselves need a GPU.)"""

from __future__ import annotations

import dataclasses

import pytest

from algorithms.config import ConfigError
from suite import devices
from suite.questions import get_question
from suite.runner import run_id, spec_payload


def test_devices_parse_and_malformed_ones_are_refused_with_what_is_allowed():
    assert devices.parse("cpu") == ("cpu", None) and devices.parse("auto") == ("auto", None)
    assert devices.parse("cuda") == ("cuda", None) and devices.parse("cuda:1") == ("cuda", 1)
    for bad in ("gpu", "cuda:", "cuda:x", "cpu:0", "CUDA", ""):
        with pytest.raises(ConfigError, match="allowed are auto, cpu, cuda and cuda:N"):
            devices.parse(bad)


def test_auto_is_the_cpu_on_a_machine_without_cuda():
    import torch

    assert devices.resolve("auto", "process") == ("cuda" if torch.cuda.is_available() else "cpu")


def _with_device(points, kind):
    """The points with `train.device` set directly, as `--set train.device=…` would (bypassing any CUDA check)."""
    return [dataclasses.replace(p, spec=dataclasses.replace(p.spec, train_config=dataclasses.replace(p.spec.train_config, device=kind)))
            for p in points]


def test_only_the_cpu_is_left_out_of_a_runs_identity():
    grid = get_question("control-pmpo").grid("smoke")
    cpu, cuda = grid[0].spec, _with_device(grid[:1], "cuda")[0].spec
    assert cpu.train_config.device == "cpu"
    assert "device" not in spec_payload(cpu)["train_config"]  # runs stored before loops had a device keep their ids
    assert spec_payload(cuda)["train_config"]["device"] == "cuda"
    assert run_id(cpu) != run_id(cuda)
    assert run_id(dataclasses.replace(cuda, train_config=dataclasses.replace(cuda.train_config, device="cpu"))) == run_id(cpu)


def test_a_device_moves_the_loops_that_have_one_and_cuda_is_refused_for_a_grid_without_any():
    control = get_question("control-pmpo").grid("smoke")
    moved = devices.apply(control, "cuda")
    assert {p.spec.train_config.device for p in moved} == {"cuda"}
    assert devices.apply(control, "cpu") == control
    bandits = get_question("bandits-kl").grid("smoke")
    assert devices.apply(bandits, "cuda", require=False) == bandits  # reproduce: bandits stay on the CPU
    with pytest.raises(ConfigError, match="no run of this grid can train on a GPU"):
        devices.apply(bandits, "cuda")


def test_cuda_runs_are_refused_where_torch_has_no_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cuda = _with_device(get_question("control-pmpo").grid("smoke"), "cuda")
    with pytest.raises(ConfigError, match="this machine has no CUDA device"):
        devices.check_local(cuda, None)
    devices.check_local(get_question("control-pmpo").grid("smoke"), None)  # CPU runs: nothing to check


@pytest.mark.parametrize("argv, message", [
    (["--device", "gpu"], "--device 'gpu' is malformed"),
    (["--device", "cuda:1", "--backend", "ray"], "Ray chooses each task's GPU"),
    (["--address", "10.0.0.1:6379"], "--address is for --backend ray"),
    (["--device", "cuda"], "no CUDA device"),
    (["--set", "train.device=cuda"], "no CUDA device"),
    (["--set", "train.device=tpu"], "unknown value for ActorCriticConfig.device 'tpu'"),
])
def test_the_cli_refuses_bad_devices_and_backends_with_exit_2_and_writes_nothing(dirs, cli, argv, message):
    import torch

    if torch.cuda.is_available() and "CUDA" in message:
        pytest.skip("this machine has CUDA")
    result = cli(*dirs.options(), "run", "control-pmpo", "--profile", "smoke", "--no-report", *argv)
    assert result.rc == 2 and message in result.err, result.err
    assert not dirs.results.exists() or not any(dirs.results.rglob("*.json"))
