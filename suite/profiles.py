"""The budget profiles every question defines, kept apart from the questions so the CLI checks a name at once."""

from __future__ import annotations

from algorithms.config import unknown

PROFILES = ("smoke", "quick", "paper")
PROFILE_DOC = {
    "smoke": "a plumbing check of each question at a tiny budget (10-15 s per question with start-up; 81 s for all), used by the tests; not evidence",
    "quick": "every question at reduced budget on a 2-core laptop (the default of `make reproduce`)",
    "paper": "the papers' budgets, meant for a cluster",
}


def check_profile(profile: str) -> str:
    if profile not in PROFILES:
        raise unknown("profile", profile, PROFILES)
    return profile
