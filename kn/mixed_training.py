"""The mixed-training chapter's runs (papers.md, Part 3.1, Result 1): biographies and QAs of
train_people in one training, test_people's QAs held out.

`mixed_configs(profile, seed)`: name -> ExtractionConfig (setting "mixed"), from the profile's
"mixed_training" table (kn.profiles): each of `augments` at the table's QA fraction (named by it),
then multi5+permute at each of `fractions` ("multi5+permute qa<f>").
`study(profile, seed)`: those runs (kn.extraction.run_suite), what the page shows.
"""
from __future__ import annotations

from kn.extraction import ExtractionConfig, from_profile, run_suite
from kn.profiles import settings

CHAPTER = "mixed_training"


def mixed_configs(profile: str, seed: int = 0) -> dict[str, ExtractionConfig]:
    """The chapter's runs at `profile`, the augmentations first."""
    table = settings(CHAPTER, profile)
    run = lambda augment, **kw: from_profile(profile, setting="mixed", augment=augment, seed=seed, **kw)  # noqa: E731
    configs = {a: run(a) for a in table["augments"]}
    return configs | {f"multi5+permute qa{f}": run("multi5+permute", qa_fraction=f) for f in table["fractions"]}


def study(profile: str, seed: int = 0) -> dict:
    """Run (or read back, kn.extraction.run_suite) the chapter's runs. Returns configs and results
    (name -> config, result) and the table's augments and fractions."""
    configs = mixed_configs(profile, seed)
    return {"configs": configs, "results": run_suite(CHAPTER, profile, configs, progress=False)} | settings(CHAPTER, profile)
