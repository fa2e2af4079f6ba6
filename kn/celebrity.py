"""The celebrity chapter's runs (papers.md, Part 3.1, Result 6): minority people (one bioS
biography each) pretrained alone and beside as many celebrities (multi5+permute); with
celebrities, finetuning sees celebrities only and every minority person is tested.

`celebrity_configs(profile, seed)`: the two runs, at the profile's "celebrity" table's n (kn.profiles);
where the table sets `at_r1_choice`, at R1's chosen setting instead (issue 22: `r1_choice_configs`).
`study(profile, seed)`: those runs (kn.extraction.run_suite), what the page shows.
"""
from __future__ import annotations

from dataclasses import replace

from kn.extraction import ExtractionConfig, from_profile, prepare_dataset, run_suite
from kn.models import ModelConfig
from kn.profiles import settings
from kn.regime import at_steps, chosen_setting
from kn.results import read_json, results_dir, runs_dir

CHAPTER = "celebrity"


def celebrity_configs(profile: str, seed: int = 0) -> dict[str, ExtractionConfig]:
    """{"minority alone", "minority + celebrities"} at `profile`."""
    if settings(CHAPTER, profile).get("at_r1_choice"):
        return r1_choice_configs(profile, seed)
    n = settings(CHAPTER, profile)["n"]
    run = lambda **kw: from_profile(profile, setting="pretrain_finetune", augment="single", n=n, seed=seed, **kw)  # noqa: E731
    return {"minority alone": run(), "minority + celebrities": run(n_celebrity=n)}


def r1_choice_configs(profile: str, seed: int = 0) -> dict[str, ExtractionConfig]:
    """The two runs at R1's chosen setting (kn.regime.chosen_setting): its people (as many celebrities),
    model, batch, window, lr and weight decay; the pretraining beside the celebrities takes the setting's
    optimizer steps, and the minority alone gets the same exposures per person (equal exposures: its
    smaller corpus takes fewer steps). The dataset that counts the steps is made under
    runs/celebrity/<profile>/r1-choice-steps/."""
    _, s = chosen_setting(profile)
    kw = {k: s[k] for k in ("batch_size", "window", "lr", "weight_decay")} | {"model": ModelConfig(**s["model"])}
    run = lambda **more: from_profile(profile, setting="pretrain_finetune", augment="single", n=s["n"], seed=seed,  # noqa: E731
                                      **kw, **more)
    both = run(n_celebrity=s["n"])
    data = runs_dir(CHAPTER, profile) / "r1-choice-steps" / f"seed{seed}" / "data"
    prepare_dataset(both, data)
    both = at_steps(both, data, "pretrain", s["steps"])
    return {"minority alone": replace(run(), exposures=both.exposures), "minority + celebrities": both}


FIRST = "first-300 "    # at cpu, the first run's files (300 + 300 people, the extraction profile's model), kept beside


def study(profile: str, seed: int = 0) -> dict:
    """Run (or read back, kn.extraction.run_suite) the two runs. Returns configs, results (name -> each)
    and first (name -> the first run's result, where its FIRST files exist)."""
    configs = celebrity_configs(profile, seed)
    folder = results_dir(CHAPTER, profile)
    first = {n: read_json(folder / f"{FIRST}{n}.json") for n in configs if (folder / f"{FIRST}{n}.json").is_file()}
    return {"configs": configs, "results": run_suite(CHAPTER, profile, configs, progress=False), "first": first}
