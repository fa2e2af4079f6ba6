"""The probing chapter's runs (papers.md, Part 3.1, Results 4-5): P- and Q-probes (kn.probe_select)
of the augmentation chapter's pretrained models, which it shares (kn.augmentation: the same configs,
the same run folders).

`study(profile, seed)`: the profile's "probing" table (kn.profiles) names the models (`augments`,
each one of the augmentation chapter's at that profile) and each probe fit's `steps`; the models
are run or read back (kn.extraction.run_suite), then probed, results/probing/<profile>/<augment>.json.
"""
from __future__ import annotations

from kn.augmentation import augmentation_configs
from kn.errors import DataError
from kn.extraction import run_suite
from kn.probe_select import run_probes
from kn.profiles import settings
from kn.results import results_dir, runs_dir

SOURCE = "augmentation"          # the chapter whose models are probed


def probed_configs(profile: str, seed: int = 0) -> dict:
    """augment -> the augmentation chapter's ExtractionConfig of each model the table probes."""
    every, augments = augmentation_configs(profile, seed), settings("probing", profile)["augments"]
    if missing := [a for a in augments if a not in every]:
        raise DataError(f"augments: {missing} not run by the augmentation chapter at {profile}; allowed: "
                        f"{', '.join(every)}")
    return {a: every[a] for a in augments}


def study(profile: str, seed: int = 0) -> dict:
    """The models and their probes. Returns configs, qa (augment -> kn.extraction result), probes
    (augment -> run_probes' record), augments and steps."""
    s, configs = settings("probing", profile), probed_configs(profile, seed)
    qa = run_suite(SOURCE, profile, configs, progress=False)
    probes = {a: run_probes(runs_dir(SOURCE, profile) / a, results_dir("probing", profile) / f"{a}.json",
                            steps=s["steps"], seed=seed) for a in configs}   # skipped where the result file is finished
    return {"configs": configs, "qa": qa, "probes": probes} | s
