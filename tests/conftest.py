"""Shared fixtures: throwaway results/reports folders and helpers to run the CLI in- or out-of-process.

Tests never touch the repository's `results/` or `reports/`: every CLI call gets `--results` and
`--reports` under pytest's tmp_path, and as a safety net the defaults (`EMRL_RESULTS`,
`EMRL_REPORTS`) point at a throwaway folder before `suite.cli` is first imported; so does the CLI's
catalogue cache (`EMRL_CACHE`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

os.environ.setdefault("MUJOCO_GL", "disable")
_SAFETY = Path(tempfile.gettempdir()) / f"emrl-tests-{os.getpid()}"  # not created unless something writes there
os.environ.setdefault("EMRL_RESULTS", str(_SAFETY / "results"))
os.environ.setdefault("EMRL_REPORTS", str(_SAFETY / "reports"))
os.environ.setdefault("EMRL_CACHE", str(_SAFETY / "cache"))  # the CLI's catalogue (suite/catalogue.py), built once per session


@dataclass
class Dirs:
    """A results store and a reports folder that do not exist until something writes them."""

    results: Path
    reports: Path

    def options(self) -> list[str]:
        return ["--results", str(self.results), "--reports", str(self.reports)]


@dataclass
class CliResult:
    rc: int
    out: str
    err: str


@pytest.fixture
def dirs(tmp_path: Path) -> Dirs:
    return Dirs(tmp_path / "results", tmp_path / "reports")


def snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under `root` (relative path -> (mtime_ns, content)); {} when `root` is absent."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def restore_torch_threads():
    """`suite.runner.train_group` sets torch's thread count; put it back for the tests that follow."""
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture
def cli(capsys, restore_torch_threads):
    """Run `emrl <args>` in this process (no interpreter start-up): returns exit code, stdout, stderr."""
    from suite.cli import main

    def run(*args: str) -> CliResult:
        capsys.readouterr()  # drop anything printed before
        try:
            rc = main([str(a) for a in args])
        except SystemExit as exc:  # argparse's --help and its usage errors
            rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(rc, captured.out, captured.err)

    return run


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["MUJOCO_GL"] = "disable"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def cli_command(dirs: Dirs, *args: str) -> list[str]:
    return [sys.executable, "-m", "suite", *dirs.options(), *map(str, args)]


def run_cli_subprocess(dirs: Dirs, *args: str, timeout: float = 300, cwd: Path | None = None) -> CliResult:
    """Run `python -m suite <args>` in a fresh interpreter, as a user would, from a throwaway cwd."""
    proc = subprocess.run(cli_command(dirs, *args), cwd=cwd or dirs.results.parent, env=subprocess_env(),
                          capture_output=True, text=True, timeout=timeout)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture(scope="module")
def module_artifacts(tmp_path_factory):
    """`EMRL_ARTIFACTS` pointed at a folder of the test module's own while it runs: the LM family's tiny stages build
    there once per module, never in the repository's results/. Use with `pytest.mark.usefixtures("module_artifacts")`."""
    mp = pytest.MonkeyPatch()
    mp.setenv("EMRL_ARTIFACTS", str(tmp_path_factory.mktemp("artifacts")))
    yield
    mp.undo()


@pytest.fixture
def one_torch_thread():
    """Torch on one CPU thread for the test, as the runner pins each worker (and tiny ops are faster there than on a
    contended pool); the previous count is restored afterwards. Use with `pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def assert_readable_figures(figures: dict) -> None:
    """The report's figure rules: no legend inside an axes (legends go below the panels), every panel titled, at most
    `plotting.MAX_SERIES` labelled series per axes. Closes the figures."""
    import matplotlib.pyplot as plt

    from suite import plotting

    for name, fig in figures.items():
        for ax in fig.axes:
            assert ax.get_legend() is None and ax.get_title(), f"{name}: legends go below the panels; every panel is titled"
            labels = [h for h in ax.get_legend_handles_labels()[1] if not h.startswith("_")]
            assert len(labels) <= plotting.MAX_SERIES, f"{name}: {len(labels)} series on one axes"
        plt.close(fig)


@pytest.fixture
def no_network(monkeypatch):
    """Refuse every socket connection inside the test (the corpus, the lexicon and the models load offline)."""
    import socket

    def refuse(*args, **kwargs):
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
