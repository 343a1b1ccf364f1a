"""What a sweep shows while it trains: a live bar on a terminal, one plain line per finished group otherwise.

A group (one grid cell's seeds) trains as one vectorised batch in one worker, so the parent learns that
runs finished a whole group at a time: the count advances per group, not per run, and the bar names the
cells in flight so that a long group is visibly at work rather than a stuck "0/180". Output that is not a
terminal (a log file, CI) gets one flushed line per finished group instead, since a redirected bar leaves
only its last frame. The ETA is the remaining runs at the mean rate of the runs finished so far.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column

from suite.store import STATUSES


def hms(seconds: float) -> str:
    return str(dt.timedelta(seconds=round(seconds)))


def cell_name(task: str, algo: str, variant: str, runs: int) -> str:
    """A short name for a group, e.g. "cartpole-swingup vmpo GTrXL lr=0.0003 ×5 seeds" (the algorithm is
    left out when the variant label already says it, as in "V-MPO lr=1e-4")."""
    plain = lambda s: s.lower().replace("-", "").replace("_", "")  # noqa: E731
    what = variant if variant and plain(algo) in plain(variant) else f"{algo} {variant}".strip()
    return f"{task} {what} ×{runs} seed{'s' * (runs != 1)}"


class SweepProgress:
    """`start` a group when it is handed to a worker, `finish` it with its statuses, or say why it `stopped`."""

    def __init__(self, label: str, total: int, enabled: bool = True, stream: TextIO | None = None):
        self.stream = stream or sys.stdout
        self.mode = "bar" if enabled and self.stream.isatty() else "lines" if enabled else "off"
        self.label, self.total, self.done = label, total, 0
        self.running: dict[int, str] = {}
        self.t0 = time.monotonic()

    def __enter__(self):
        if self.mode == "bar":
            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("runs"),
                                TimeElapsedColumn(), TextColumn("ETA {task.fields[eta]}"),
                                TextColumn("{task.fields[running]}", table_column=Column(no_wrap=True, overflow="ellipsis")),
                                console=Console(file=self.stream))
            self.bar.__enter__()
            self.task = self.bar.add_task(self.label, total=self.total, eta="…", running="")
        return self

    def __exit__(self, *exc):
        if self.mode == "bar":
            self.bar.__exit__(*exc)
        return False

    def eta(self) -> str:
        if not self.done:
            return "…"
        return hms((time.monotonic() - self.t0) * (self.total - self.done) / self.done)

    def start(self, key: int, cell: str) -> None:
        self.running[key] = cell
        self._refresh()

    def finish(self, key: int, cell: str, statuses: list[str], seconds: float) -> None:
        self.running.pop(key, None)
        self.done += len(statuses)
        if self.mode == "lines":
            counts = ", ".join(f"{s} {statuses.count(s)}" for s in STATUSES if s in statuses)
            self.note(f"[{self.done}/{self.total} runs] done: {cell} ({len(statuses)} runs, {counts}) in {seconds:.1f} s; "
                      f"elapsed {hms(time.monotonic() - self.t0)}, ETA {self.eta()}")
        self._refresh()

    def stopped(self, keys: list[int], text: str) -> None:
        """Groups that ended without finishing (their worker died); `text` says what happens next."""
        for key in keys:
            self.running.pop(key)
        self.note(text)
        self._refresh()

    def note(self, text: str) -> None:
        if self.mode == "bar":
            self.bar.console.print(text)
        elif self.mode == "lines":
            print(text, file=self.stream, flush=True)

    def _refresh(self) -> None:
        if self.mode == "bar":
            self.bar.update(self.task, completed=self.done, eta=self.eta(),
                            running="running: " + " | ".join(self.running.values()) if self.running else "")
