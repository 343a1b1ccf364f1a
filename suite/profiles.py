"""The budget profiles every question defines, kept apart from the questions so the CLI checks a name at once."""

from __future__ import annotations

from algorithms.config import ConfigError, unknown

PROFILES = ("smoke", "quick", "standard", "paper")
PROFILE_DOC = {
    "smoke": "a plumbing check of each question at a tiny budget (10-15 s per question with start-up; 81 s for all), used by the tests; not evidence",
    "quick": "every question at reduced budget on a 2-core laptop (the default of `make reproduce`)",
    "standard": "the budgets and seeds at which open claims are expected to decide (hours to days of CPU: a workstation "
                "or a Ray cluster); defined by the families whose issues set it (bandits, control, Atari, theory so far)",
    "paper": "the papers' budgets, meant for a cluster",
}


def check_profile(profile: str) -> str:
    if profile not in PROFILES:
        raise unknown("profile", profile, PROFILES)
    return profile


def check_defined(question: str, profile: str, defined) -> str:
    """Refuse a profile a question does not define yet (a known profile; the question's family has not set its budget)."""
    if profile not in defined:
        raise ConfigError(f"question {question!r} defines no {profile!r} profile yet. Allowed for it: {', '.join(defined)}.")
    return profile
