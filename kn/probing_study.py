"""The probing chapter's runs (papers.md, Part 3.1, Results 4-5): P- and Q-probes (kn.probe_select)
of pretrained models trained as the augmentation chapter trains its own (kn.augmentation: the same
configs, at the probing table's people `n` where it names them), in this chapter's folders.

`study(profile, seed)`: the profile's "probing" table (kn.profiles) names the models (`augments`, each
one of the augmentation chapter's configs at that profile), their people (`n`), each probe fit's
`steps` and the heads' rank grid (`ranks`); each model is run or read back (kn.extraction.run_suite:
runs/probing/<profile>/<augment> model/, its QA result results/probing/<profile>/<augment> model.json),
then probed: results/probing/<profile>/<augment>.json.
"""
from __future__ import annotations

from dataclasses import replace

from kn.augmentation import augmentation_configs
from kn.errors import DataError
from kn.extraction import run_suite
from kn.probe_select import run_probes
from kn.profiles import settings
from kn.results import results_dir, runs_dir

CHAPTER = "probing"


def model_name(augment: str) -> str:
    """The run (and QA result) name of the model an augmentation's probes read."""
    return f"{augment} model"


def probed_configs(profile: str, seed: int = 0) -> dict:
    """augment -> the augmentation chapter's ExtractionConfig of each model the table probes, at the
    table's people `n` where it names them."""
    every, s = augmentation_configs(profile, seed), settings(CHAPTER, profile)
    if missing := [a for a in s["augments"] if a not in every]:
        raise DataError(f"augments: {missing} not run by the augmentation chapter at {profile}; allowed: "
                        f"{', '.join(every)}")
    if s["n"] is None:
        return {a: every[a] for a in s["augments"]}
    return {a: replace(every[a], data=replace(every[a].data, n=s["n"])) for a in s["augments"]}


def study(profile: str, seed: int = 0) -> dict:
    """The models and their probes. Returns configs, qa (augment -> kn.extraction result), probes
    (augment -> run_probes' record), augments and steps."""
    s, configs = settings(CHAPTER, profile), probed_configs(profile, seed)
    runs = run_suite(CHAPTER, profile, {model_name(a): c for a, c in configs.items()}, progress=False)
    probes = {a: run_probes(runs_dir(CHAPTER, profile) / model_name(a), results_dir(CHAPTER, profile) / f"{a}.json",
                            steps=s["steps"], seed=seed, ranks=s["ranks"]) for a in configs}   # skipped where the result file is finished
    return {"configs": configs, "qa": {a: runs[model_name(a)] for a in configs}, "probes": probes} | s
