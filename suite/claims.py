"""Claims, their verdicts, and the verdict rules shared by questions.

A claim has a stable ID (`B3`, `C6`, `L2`), the paper's sentence it tests (quoted, with its section),
a verdict rule written down in code before any data exists, the open knob that most moves it, and a
table of deviations from the paper. What makes its verdict one a reviewer would sign:

- Every check is a `Check` of one of two kinds. A **verdict check** names the words of the quoted
  sentence it tests (they must occur in the quote; `Verdict` refuses anything else). An
  **observation** (KL per update, spread, ESS, the extremes of a sweep) is reported and never moves
  the verdict.
- The outcome is computed from the verdict checks, never set beside them: `combine` within a group,
  `headline` across groups. A group is one value of the claim's open knob (sensitivity: the verdict at
  each pre-registered value) or one of several things the sentence makes separate claims about (C8's
  variants). Where groups disagree definitively the outcome is the fourth one, `depends on <what>`.
- An `inconclusive` check carries what would decide it (`suite.stats.seeds_to_decide`), and an
  inconclusive verdict says so in `decide`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

Outcome = Literal["supported", "not supported", "inconclusive", "depends on"]
OUTCOMES: tuple[Outcome, ...] = ("supported", "not supported", "inconclusive", "depends on")
CHECK_OUTCOMES: tuple[str, ...] = ("supported", "not supported", "inconclusive")
CheckKind = Literal["verdict", "observation"]
CHECK_KINDS: tuple[CheckKind, ...] = ("verdict", "observation")
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
class Knob:
    """The open knob that most moves a claim, with its pre-registered values (fixed here, before any data)."""

    name: str
    values: tuple
    paper: str
    """The paper's value, or "not given"."""
    run_at: tuple[str, ...] = ()
    """Profiles whose grid runs every value (elsewhere the report says the sensitivity was not run)."""

    def __post_init__(self):
        if len(self.values) < 3:
            raise ValueError(f"Knob {self.name!r}: {len(self.values)} values; a sensitivity needs at least 3 pre-registered values")


@dataclass(frozen=True)
class Claim:
    id: str
    statement: str
    """The suite's one-line reading of the claim (the index's short form)."""
    source: str
    """Where the sentence is: reference keys of REFERENCES.md and sections, e.g. `[PMPO] §5.1, Figure 1`."""
    rule: str
    """The verdict rule in words, exactly as the analysis code applies it."""
    deviations: tuple[Deviation, ...] = ()
    quote: str = ""
    """The paper's sentence this claim tests, verbatim (elisions marked "…"); verdict checks cite words of it."""
    knob: Knob | None = None
    """The open knob that most moves the verdict (every empirical claim has one)."""
    decides: str = "paper"
    """The profile planned to decide the claim where `quick` cannot."""

    @property
    def empirical(self) -> bool:
        """Theory checks (T…) are exact identities; every other claim is decided by training runs."""
        return not self.id.startswith("T")


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace("‑", "-")).strip().lower()


@dataclass
class Check:
    """One check of a claim: a verdict check (tests `words` of the quoted sentence) or an observation."""

    name: str
    kind: CheckKind
    outcome: str
    """Verdict checks: supported / not supported / inconclusive. Observations: any short finding."""
    statistic: str = ""
    words: str = ""
    """Verdict checks: the words of the claim's quote this check tests."""
    group: str = ""
    """The knob value or sub-claim this check belongs to ('' when the claim has one group)."""
    decide: str = ""
    """For an inconclusive verdict check: what would decide it (seeds at 80% power, or a budget)."""

    def __post_init__(self):
        if self.kind not in CHECK_KINDS:
            raise ValueError(f"check {self.name!r}: kind {self.kind!r} not in {CHECK_KINDS}")
        if self.kind == "verdict":
            if self.outcome not in CHECK_OUTCOMES:
                raise ValueError(f"verdict check {self.name!r}: outcome {self.outcome!r} not in {CHECK_OUTCOMES}")
            if not self.words.strip():
                raise ValueError(f"verdict check {self.name!r} names no words of the claim's sentence; make it an observation")

    def row(self) -> dict:
        r = {"check": self.name, "kind": self.kind, "tests the words": f"“{self.words}”" if self.words else "—"}
        if self.group:
            r["at"] = self.group
        r.update({"statistic [95% CI]": self.statistic, "outcome": self.outcome,
                  "what would decide it": self.decide or ("—" if self.kind == "verdict" else "")})
        return r


@dataclass
class Verdict:
    claim: Claim
    outcome: Outcome | None
    """None: computed from the verdict checks. Given with checks: must equal what the checks compute."""
    summary: str
    """One sentence: why this outcome, with the deciding numbers."""
    table: list[dict] = field(default_factory=list)
    """More numbers behind the verdict, one dict per row (rendered as a Markdown table)."""
    paper: str | None = None
    """The paper's own number(s) for the same quantity, where it gives them."""
    checks: list[Check] = field(default_factory=list)
    by: str = ""
    """What the check groups vary (the knob's name, or e.g. 'variant'); names the `depends on` outcome."""
    sensitivity: str = ""
    """How the claim's knob was treated at this profile (run at its values, or not run and where it is planned)."""
    decide: str = ""
    """For an inconclusive (or knob-dependent) verdict: what would decide it."""

    def __post_init__(self):
        quote = _norm(self.claim.quote)
        for c in self.checks:
            if not isinstance(c, Check):
                raise TypeError(f"{self.claim.id}: checks must be Check objects, got {type(c).__name__}")
            if c.kind == "verdict" and quote and _norm(c.words) not in quote:
                raise ValueError(f"{self.claim.id}: verdict check {c.name!r} tests the words {c.words!r}, which are not in the "
                                 f"claim's quoted sentence; make it an observation or quote the sentence that contains them")
        computed = self.computed()
        if self.outcome is None:
            if computed is None:
                raise ValueError(f"{self.claim.id}: no outcome and no verdict checks to compute one from")
            self.outcome = computed
        elif computed is not None and computed != self.outcome:
            raise ValueError(f"{self.claim.id}: outcome {self.outcome!r} differs from {computed!r}, which its verdict checks give")
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome {self.outcome!r} not in {OUTCOMES}")
        if self.outcome == "depends on" and not self.by:
            raise ValueError(f"{self.claim.id}: a 'depends on' verdict must say on what (`by`)")
        if self.outcome in ("inconclusive", "depends on") and not self.decide:
            self.decide = self._decide_from_checks()

    def computed(self) -> Outcome | None:
        """The outcome the verdict checks give: `combine` within each group, `headline` across groups."""
        groups: dict[str, list[str]] = {}
        for c in self.checks:
            if c.kind == "verdict":
                groups.setdefault(c.group, []).append(c.outcome)
        if not groups:
            return None
        return headline([combine(parts) for parts in groups.values()])

    @property
    def label(self) -> str:
        return f"depends on {self.by}" if self.outcome == "depends on" else str(self.outcome)

    @property
    def budget_limited(self) -> bool:
        """True where a verdict check is open and its CI would shrink with more seeds or steps."""
        return self.outcome in ("inconclusive", "depends on") and any(
            c.kind == "verdict" and c.outcome == "inconclusive" for c in self.checks)

    def _decide_from_checks(self) -> str:
        """Each distinct note of the open verdict checks once, with the checks it is for, and the planned profile."""
        notes: dict[str, list[str]] = {}
        for c in self.checks:
            if c.kind == "verdict" and c.outcome == "inconclusive" and c.decide:
                notes.setdefault(c.decide, []).append(f"{c.name}{f' at {c.group}' if c.group else ''}")
        plan = f"planned at the `{self.claim.decides}` profile"
        if len(notes) == 1:
            return f"{next(iter(notes))} ({plan})."
        if notes:
            return "; ".join(f"{', '.join(names)}: {note}" for note, names in notes.items()) + f" ({plan})."
        if self.outcome == "depends on":
            return f"the verdict differs between values of {self.by}; the paper's setting decides which one the sentence means ({plan})."
        return f"a budget or setup the family's own issue sets; {plan}."


def tally(checks: list[Check]) -> str:
    """Per group, how many verdict checks hold and how many are contradicted (a summary's counts, from the checks)."""
    per: dict[str, list[str]] = {}
    for c in checks:
        if c.kind == "verdict":
            per.setdefault(c.group, []).append(c.outcome)
    return "; ".join(f"{g + ': ' if g else ''}{os.count('supported')} of {len(os)} checks supported, "
                     f"{os.count('not supported')} contradicted" for g, os in per.items())


def combine(parts: list[str]) -> Outcome:
    """A conjunction of sub-checks: any `not supported` decides; else all `supported` or `inconclusive`."""
    if any(p == "not supported" for p in parts):
        return "not supported"
    if parts and all(p == "supported" for p in parts):
        return "supported"
    return "inconclusive"


def headline(parts: list[str]) -> Outcome:
    """The verdict across knob values (or sub-claims): `supported` / `not supported` only where all agree; `depends on`
    where some are supported and some not; otherwise (some open) `inconclusive`."""
    if parts and all(p == parts[0] for p in parts) and parts[0] in ("supported", "not supported"):
        return parts[0]
    if "supported" in parts and "not supported" in parts:
        return "depends on"
    return "inconclusive"


def below(ci: tuple[float, float, float], threshold: float) -> Outcome:
    """`supported` if the whole CI lies below `threshold`, `not supported` if it lies above, else inconclusive."""
    _, lo, hi = ci
    if hi < threshold:
        return "supported"
    if lo > threshold:
        return "not supported"
    return "inconclusive"


def above(ci: tuple[float, float, float], threshold: float) -> Outcome:
    """`supported` if the whole CI lies above `threshold`, `not supported` if it lies below, else inconclusive."""
    _, lo, hi = ci
    if lo > threshold:
        return "supported"
    if hi < threshold:
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
                       f"the data alone would say '{verdict.label}': {verdict.summary}")
    verdict.outcome = "inconclusive"
    verdict.decide = verdict.decide or (f"at least {MIN_SEEDS} seeds per cell (the `quick` profile runs them; "
                                        f"planned at `{verdict.claim.decides}`).")
    return verdict
