"""Claims, their verdicts, and the verdict rules shared by questions.

A claim has a stable ID (`B3`, `C6`, `L2`), the sentence being tested, its source (paper file and
section), a verdict rule written down in code before any data exists, and a table of deviations
from the paper. Its verdict is `supported`, `not supported` or `inconclusive`, always with the
numbers behind it. Where the evidence is weak the rule returns `inconclusive`, never `supported`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Outcome = Literal["supported", "not supported", "inconclusive"]
OUTCOMES: tuple[Outcome, ...] = ("supported", "not supported", "inconclusive")
MIN_SEEDS = 5
"""Fewer seeds than this in any cell of a claim's grid makes its verdict `inconclusive`, whatever the data say."""


@dataclass(frozen=True)
class Deviation:
    """Where the suite departs from the paper: the knob, the paper's value, ours, and why."""

    knob: str
    paper: str
    ours: str
    why: str


@dataclass(frozen=True)
class Claim:
    id: str
    statement: str
    source: str
    rule: str
    """The verdict rule in words, exactly as the analysis code applies it."""
    deviations: tuple[Deviation, ...] = ()


@dataclass
class Verdict:
    claim: Claim
    outcome: Outcome
    summary: str
    """One sentence: why this outcome, with the deciding numbers."""
    table: list[dict] = field(default_factory=list)
    """The numbers behind the verdict, one dict per row (rendered as a Markdown table)."""
    paper: str | None = None
    """The paper's own number(s) for the same quantity, where it gives them."""

    def __post_init__(self):
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome {self.outcome!r} not in {OUTCOMES}")


def combine(parts: list[Outcome]) -> Outcome:
    """A conjunction of sub-checks: any `not supported` decides; else all `supported` or `inconclusive`."""
    if any(p == "not supported" for p in parts):
        return "not supported"
    if parts and all(p == "supported" for p in parts):
        return "supported"
    return "inconclusive"


def below(ci: tuple[float, float, float], threshold: float) -> Outcome:
    """`supported` if the whole CI lies below `threshold`, `not supported` if it lies above, else inconclusive."""
    _, lo, hi = ci
    if hi < threshold:
        return "supported"
    if lo > threshold:
        return "not supported"
    return "inconclusive"


def within(ci: tuple[float, float, float], margin: float) -> Outcome:
    """Equivalence: `supported` if the CI lies inside ±margin, `not supported` if it lies wholly outside it."""
    _, lo, hi = ci
    if -margin < lo and hi < margin:
        return "supported"
    if lo > margin or hi < -margin:
        return "not supported"
    return "inconclusive"


def require_seeds(verdict: Verdict, min_seeds_per_cell: int) -> Verdict:
    """The seed-count rule applied to every verdict: below `MIN_SEEDS` per cell the outcome is `inconclusive`."""
    if min_seeds_per_cell >= MIN_SEEDS or verdict.outcome == "inconclusive":
        return verdict
    verdict.summary = (f"only {min_seeds_per_cell} seeds per cell (at least {MIN_SEEDS} are needed for a verdict); "
                       f"the data alone would say '{verdict.outcome}': {verdict.summary}")
    verdict.outcome = "inconclusive"
    return verdict
