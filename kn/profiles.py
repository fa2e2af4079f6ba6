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
    # Part 3.1 experiments (Results 1-3, 6): people, model, training budget
    "extraction": {
        "smoke": {"n": 60, "vocab_size": 600, "model": {"n_layer": 2, "n_head": 2, "n_embd": 64, "context": 128},
                  "window": 128, "batch_size": 8, "exposures": 4, "lr": 3e-3, "finetune_exposures": 2},
        "cpu": {"n": 100, "vocab_size": 2048, "model": {"n_layer": 2, "n_head": 4, "n_embd": 128, "context": 128},
                "window": 128, "batch_size": 16, "exposures": 200, "lr": 3e-3, "finetune_exposures": 30,
                "qa_fraction": 0.3},
        "gpu": {"n": 5000, "vocab_size": 4096, "model": {"n_layer": 8, "n_head": 8, "n_embd": 512, "context": 512},
                "window": 512, "batch_size": 64, "exposures": 200, "lr": 1e-3, "finetune_exposures": 20},
        "paper": {"n": 100000, "vocab_size": 8192, "model": {"n_layer": 12, "n_head": 12, "n_embd": 768, "context": 512},
                  "window": 512, "batch_size": 96, "exposures": 540, "lr": 1e-3, "finetune_exposures": 20},
    },
    # Part 3.1 Results 4-5: probe settings (rank 0 = no embedding update: at a few hundred people the
    # paper's rank-2/16 updates memorize the train_people instead of reading the model)
    "probing": {
        "smoke": {"rank_p": 0, "rank_q": 0, "epochs": 5},
        "cpu": {"rank_p": 0, "rank_q": 0, "epochs": 40},
        "gpu": {"rank_p": 2, "rank_q": 16, "epochs": 20},
        "paper": {"rank_p": 2, "rank_q": 16, "epochs": 20},
    },
    # Part 3.3: the capacity sweep. sizes are (n_layer, n_head, n_embd); data are bioD settings
    # (small name pools at small scale, so that token embeddings do not dwarf the model)
    "capacity": {
        "smoke": {"sizes": [(1, 2, 16), (1, 2, 32)], "exposures": [10], "window": 64, "batch_size": 16, "lr": 3e-3,
                  "data": {"n": 200, "k": 2, "c": 1, "d": 20, "l": 1, "t": 50, "n_first": 10, "n_middle": 10, "n_last": 20}},
        "cpu": {"sizes": [(1, 2, 16), (1, 2, 24), (1, 2, 32), (1, 2, 48)], "exposures": [100], "window": 128,
                "batch_size": 32, "lr": 3e-3,
                "data": {"n": 4000, "k": 4, "c": 1, "d": 100, "l": 2, "t": 100, "n_first": 40, "n_middle": 40, "n_last": 100}},
        "gpu": {"sizes": [(2, 2, 128), (2, 4, 256), (4, 4, 256), (4, 6, 384), (6, 8, 512), (8, 8, 512)],
                "exposures": [100, 1000], "window": 512, "batch_size": 128, "lr": 1e-3,
                "data": {"n": 200000, "k": 4, "c": 1, "d": 100, "l": 2, "t": 100, "n_first": 400, "n_middle": 400, "n_last": 1000}},
        "paper": {"sizes": [(l, h, 64 * h) for l, h in [(2, 2), (4, 4), (6, 6), (8, 8), (12, 12), (16, 16), (20, 16)]],
                  "exposures": [100, 1000], "window": 512, "batch_size": 96, "lr": 1e-3,
                  "data": {"n": 10_000_000, "k": 4, "c": 1, "d": 100, "l": 2, "t": 100, "n_first": 400, "n_middle": 400, "n_last": 1000}},
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
