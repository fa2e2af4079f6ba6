"""The celebrity chapter's runs (papers.md, Part 3.1, Result 6): minority people (one bioS
biography each) pretrained alone and beside as many celebrities (multi5+permute); with
celebrities, finetuning sees celebrities only and every minority person is tested.

`celebrity_configs(profile, seed)`: the two runs, at the profile's "celebrity" table's n (kn.profiles).
`study(profile, seed)`: those runs (kn.extraction.run_suite), what the page shows.
"""
from __future__ import annotations

from kn.extraction import ExtractionConfig, from_profile, run_suite
from kn.profiles import settings

CHAPTER = "celebrity"


def celebrity_configs(profile: str, seed: int = 0) -> dict[str, ExtractionConfig]:
    """{"minority alone", "minority + celebrities"} at `profile`."""
    n = settings(CHAPTER, profile)["n"]
    run = lambda **kw: from_profile(profile, setting="pretrain_finetune", augment="single", n=n, seed=seed, **kw)  # noqa: E731
    return {"minority alone": run(), "minority + celebrities": run(n_celebrity=n)}


def study(profile: str, seed: int = 0) -> dict:
    """Run (or read back, kn.extraction.run_suite) the two runs. Returns configs and results (name -> each)."""
    configs = celebrity_configs(profile, seed)
    return {"configs": configs, "results": run_suite(CHAPTER, profile, configs, progress=False)}
