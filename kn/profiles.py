"""Profiles: one name picks the scale of every experiment.

smoke  CI, seconds on a CPU          cpu    a classroom laptop, minutes on 2 cores
gpu    one H100, one command <= 8 min  paper  the paper's scale
A profile is a small table of overrides per experiment; `settings(experiment, profile)` returns it.
"""
from __future__ import annotations

from kn.data.records import DataError

PROFILES = ("smoke", "cpu", "gpu", "paper")

TABLES = {
    # the data chapter: how many people to generate and show
    "data": {
        "smoke": {"n": 200, "n_biod": 200, "n_paragraphs": 4},
        "cpu": {"n": 2000, "n_biod": 2000, "n_paragraphs": 20},
        "gpu": {"n": 20000, "n_biod": 20000, "n_paragraphs": 120},
        "paper": {"n": 100000, "n_biod": 100000, "n_paragraphs": 120},
    },
}


def check_profile(profile: str) -> str:
    if profile not in PROFILES:
        raise DataError(f"profile: got {profile!r}; allowed: {', '.join(PROFILES)}")
    return profile


def settings(experiment: str, profile: str) -> dict:
    """The overrides of `experiment` at `profile`."""
    if experiment not in TABLES:
        raise DataError(f"experiment: got {experiment!r}; allowed: {', '.join(sorted(TABLES))}")
    return dict(TABLES[experiment][check_profile(profile)])
