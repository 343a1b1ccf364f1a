"""The verdict framework: every claim quotes its paper; checks have a kind; the outcome follows the verdict checks only;
the four outcomes; what would decide an open verdict."""

from __future__ import annotations

import numpy as np
import pytest

from suite.analysis import check, observation, split_seeds
from suite.claims import Check, Claim, Knob, Verdict, headline
from suite.questions import CLAIMS

CLAIM = Claim("X1", "A beats B.", "[PMPO] §5.1", "rule", quote="PMPO learns from accepted and rejected samples alike.")


def test_every_claim_quotes_its_source_sentence_and_every_empirical_claim_declares_its_knob():
    for cid, (_, c) in CLAIMS.items():
        assert len(c.quote.split()) >= 4, f"{cid} has no quoted source sentence"
        assert "§" in c.source or "App." in c.source or "Table" in c.source, f"{cid}: source names no section: {c.source}"
        assert "papers/" not in c.source and "SPEC" not in c.source, f"{cid} cites a file the repository does not carry"
        if c.empirical:
            assert c.knob is not None and len(c.knob.values) >= 3, f"{cid} declares no open knob with ≥ 3 values"


def test_a_check_without_a_kind_or_a_verdict_check_without_words_is_refused():
    with pytest.raises(ValueError, match="kind"):
        Check("x", "decisive", "supported", words="accepted")
    with pytest.raises(ValueError, match="names no words"):
        Check("x", "verdict", "supported")
    Check("x", "observation", "KL 0.01")  # an observation needs no words


def test_a_verdict_check_must_test_words_of_the_quote():
    with pytest.raises(ValueError, match="not in the claim's quoted sentence"):
        Verdict(CLAIM, None, "s", checks=[Check("extremes fail", "verdict", "supported", words="the extremes fail")])
    v = Verdict(CLAIM, None, "s", checks=[Check("learns", "verdict", "supported", words="learns from  accepted")])
    assert v.outcome == "supported"


def test_observations_never_move_the_verdict():
    checks = [Check("learns", "verdict", "supported", words="learns"), observation("KL", "not supported")]
    assert Verdict(CLAIM, None, "s", checks=checks).outcome == "supported"
    with pytest.raises(ValueError, match="differs"):
        Verdict(CLAIM, "not supported", "s", checks=checks)


def test_headline_over_knob_values_gives_the_fourth_outcome_only_on_definite_disagreement():
    assert headline(["supported"] * 3) == "supported"
    assert headline(["not supported"] * 3) == "not supported"
    assert headline(["supported", "not supported", "inconclusive"]) == "depends on"
    assert headline(["supported", "inconclusive", "supported"]) == "inconclusive"
    checks = [Check("c", "verdict", o, words="learns", group=f"β={b}") for b, o in ((0.1, "not supported"), (1, "supported"), (5, "supported"))]
    v = Verdict(CLAIM, None, "s", checks=checks, by="DPO β")
    assert v.outcome == "depends on" and v.label == "depends on DPO β" and v.decide


def test_an_open_verdict_says_what_would_decide_it():
    rng = np.random.default_rng(0)
    x = np.array([-0.5, 1.2, 0.1, 0.8, -0.3, 0.6, 0.2, -0.1])  # mean 0.25, sd 0.56: the CI straddles 0
    c = check("learns", "learns", x, rng, test="above", threshold=0.0)
    assert c.outcome == "inconclusive" and "seeds per cell at 80% power (now 8)" in c.decide
    v = Verdict(CLAIM, None, "s", checks=[c])
    assert v.outcome == "inconclusive" and v.budget_limited and "seeds per cell" in v.decide
    clear = check("learns", "learns", x + 10, rng, test="above", threshold=0.0)
    assert clear.outcome == "supported" and clear.decide == ""


def test_knob_needs_three_values_and_split_seeds_halves_them():
    with pytest.raises(ValueError, match="at least 3"):
        Knob("β", (0.1, 1.0), "not given")
    import pandas as pd

    a, b = split_seeds(pd.DataFrame({"seed": [0, 1, 2, 3, 4, 5, 0, 1]}))
    assert a == {0, 2, 4} and b == {1, 3, 5}


def test_no_code_or_doc_cites_a_file_the_repository_does_not_carry():
    """Citations use the keys of REFERENCES.md; `SPEC` and `papers/*.txt` live outside the repository."""
    import re
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    files = subprocess.run(["git", "ls-files", "*.py", "*.md"], cwd=root, capture_output=True, text=True, check=True).stdout.split()
    pattern = re.compile(r"\bSPEC\b|papers/|\b00[0-4]_[0-9a-f]{16}\.txt")
    offenders = [f"{f}:{i}" for f in files if f != "tests/test_claims.py"
                 for i, line in enumerate((root / f).read_text().splitlines(), 1) if pattern.search(line)]
    assert not offenders, f"cite by REFERENCES.md key, not SPEC or papers/: {offenders}"
