"""Profiles: one name picks the scale of every experiment.

smoke  CI, seconds on a CPU          class  a lesson: <= 10 min a chapter on 2 cores (not a test)
cpu    the smallest scale where each claim's test has power, <= 60 min a chapter on 2 cores
gpu    one H100, one command <= 8 min  paper  the paper's scale
A profile is a small table of overrides per experiment; `settings(experiment, profile, **overrides)`
returns it with a chapter's overrides. KEYS lists the settings each experiment takes (its config's
fields, checked against them in tests/test_profiles.py): a key that is not there, in a table or an
override, is a DataError naming it and the allowed ones, not a TypeError from a config class.
"""
from __future__ import annotations

from kn.errors import DataError

PROFILES = ("smoke", "class", "cpu", "gpu", "paper")

MODEL_KEYS = ("arch", "n_layer", "n_head", "n_embd", "mlp_ratio", "vocab_size", "context", "tie_embeddings")  # ModelConfig
_PEOPLE = ("n", "vocab_size")   # the dataset's size and tokenizer (kn.data.dataset.BiosConfig)
KEYS = {
    "data": ("n", "n_biod", "n_paragraphs"),
    "extraction": (*_PEOPLE, "kind", "augment", "n_celebrity", "celebrity_augment", "train_fraction",   # BiosConfig
                   "valid_fraction", "value_position", "pronouns", "length", "setting", "model", "exposures", "qa_fraction", "batch_size", "window", "lr",
                   "weight_decay", "warmup_people", "warmup_people_steps", "curve_points", "curve_people",
                   "mixed_exposures", "finetune_exposures", "finetune_lr", "finetune_lr_grid", "finetune_batch_size",
                   "lora_rank", "lora_embed_rank", "seed", "data_dir"),
    "mixed_training": ("augments", "fractions"),
    "augmentation": ("augments", "variants", "variant_seeds"),
    "probing": ("steps", "augments", "n", "ranks"),
    "bidirectional": ("n", "exposures", "finetune_exposures", "finetune_lr", "augments", "search", "curve_points"),
    "celebrity": ("n", "at_r1_choice"),
    "capacity": ("data", "window", "min_steps", "weight_decay", "data_bits_per_param", "lr_grid", "grid_exposures",
                 "arms", "seeds", "curve"),
    "dynamics": (*_PEOPLE, "model", "scenarios", "n_paragraphs", "n_probes", "n_seeds", "pretrain_exposures",
                 "pretrain_lr", "early_fraction", "stages", "batch_size", "batch_factor", "window", "lr", "n_steps", "t0",
                 "n_injections", "gap", "eval_every", "lam_window", "n_boot", "device", "compile", "seed"),
    "onelayer": ("arch", "multiplicity", "train_fraction", "finetune", "augment_extra", "n", "n_embd", "n_head",
                 "vocab_size", "window", "batch_size", "lr", "exposures", "curve", "finetune_exposures", "finetune_lr",
                 "finetune_batch_size", "lora_lr", "valid_fraction", "finetune_lr_grid", "lora_lr_grid",
                 "seed"),                                              # kn.onelayer's point keys but runs_dir
}

_CLAIMS = ["single", "multi5+permute"]                                   # Results 2-3's pair
_PROBED = ["single", "fullname", "permute", "multi5", "multi5+permute"]   # Results 4-5's order: the pair at its ends
_RANKS = [2, 4, 8, 16, 32]                                               # kn.probe_select.RANKS

TABLES = {
    # the data chapter: how many people to generate and show
    "data": {
        "smoke": {"n": 200, "n_biod": 200, "n_paragraphs": 4},
        "class": {"n": 500, "n_biod": 500, "n_paragraphs": 10},
        "cpu": {"n": 2000, "n_biod": 2000, "n_paragraphs": 20},
        "gpu": {"n": 20000, "n_biod": 20000, "n_paragraphs": 120},
        "paper": {"n": 100000, "n_biod": 100000, "n_paragraphs": 120},
    },
    # Part 3.1 experiments (Results 1-3, 6): people, model, training budget
    "extraction": {
        "smoke": {"n": 60, "vocab_size": 600, "model": {"n_layer": 2, "n_head": 2, "n_embd": 64, "context": 128},
                  "window": 128, "batch_size": 8, "exposures": 4, "lr": 3e-3, "finetune_exposures": 2,
                  "valid_fraction": 0.2, "finetune_lr_grid": [1e-3, 3e-3], "curve_points": 4},   # 4: a curve's code
        # class and cpu: windows of 256 hold whole biographies (kn.data.summary: ~60-90 tokens); a fifth
        # of train_people is the validation slice that picks the finetune lr; QA fraction 0.8 (paper)
        # class: 100 people at batch 8, enough optimizer steps to memorize (200 people at 60 exposures and batch
        # 16, 222 steps, memorized 3-28% of the values and showed nothing; this memorizes multi5+permute 99%)
        "class": {"n": 100, "vocab_size": 2048, "model": {"n_layer": 2, "n_head": 4, "n_embd": 128, "context": 256},
                  "window": 256, "batch_size": 8, "exposures": 200, "mixed_exposures": 30, "lr": 3e-3, "qa_fraction": 0.8,
                  "valid_fraction": 0.2, "finetune_exposures": 10, "finetune_lr_grid": [1e-4, 3e-4, 1e-3]},
        # 600 people: 300 test_people give intervals of about +-4 points; at 100 (the old cpu scale)
        # the 50 finetuned people could neither pass nor fail a claim
        # multi5+permute needs 200 exposures to memorize its bios (100 gave 64%, the guard wants 90%); a
        # mixed run at QA fraction 0.8 costs 5x per exposure, and single bios are memorized at 100
        "cpu": {"n": 600, "vocab_size": 2048, "model": {"n_layer": 2, "n_head": 4, "n_embd": 128, "context": 256},
                "window": 256, "batch_size": 16, "exposures": 200, "mixed_exposures": 100, "lr": 3e-3, "qa_fraction": 0.8,
                "valid_fraction": 0.2, "finetune_exposures": 10, "finetune_lr_grid": [1e-4, 3e-4, 1e-3]},
        "gpu": {"n": 5000, "vocab_size": 4096, "model": {"n_layer": 8, "n_head": 8, "n_embd": 512, "context": 512},
                "window": 512, "batch_size": 64, "exposures": 200, "lr": 1e-3, "finetune_exposures": 20},
        "paper": {"n": 100000, "vocab_size": 8192, "model": {"n_layer": 12, "n_head": 12, "n_embd": 768, "context": 512},
                  "window": 512, "batch_size": 96, "exposures": 540, "lr": 1e-3, "finetune_exposures": 20},
    },
    # Part 3.1 Result 1, the mixed-training chapter (kn.mixed_training): the augmentations at the extraction
    # table's QA fraction, and multi5+permute at each of `fractions`. At cpu one mixed run is ~60 min on 2 cores,
    # at class ~10: only the paper's setting (single, QA fraction 0.8) runs there
    "mixed_training": {
        "smoke": {"augments": ["single", "multi5+permute"], "fractions": [0.1, 0.6]},   # a curve's two ends
        "class": {"augments": ["single"], "fractions": []},
        "cpu": {"augments": ["single"], "fractions": []},
        "gpu": {"augments": ["single", "multi5+permute"], "fractions": [0.1, 0.3, 0.6]},
        "paper": {"augments": ["single", "multi5+permute"], "fractions": [0.1, 0.3, 0.6]},
    },
    # Part 3.1 Results 2-3, the augmentation chapter (kn.augmentation): the augmentations run on kn's bioS,
    # and the bioS variants (kn.data.bios.VARIANTS) on which single and multi5+permute run again. At cpu each
    # pretraining is ~15 min on 2 cores (hard's bios are ~1/4 longer): the claims' pair and the LoRA finetune on
    # kn's data, the pair on "hard" (Result 3 on harder bios, issue 22). class runs the pair on each property
    # alone as well (mid, they, long: which one makes kn's data easier), ~30 min, above class's 10 min, and
    # multi5+permute on kn's data and on each variant again at variant_seeds (other people, other init: the
    # attribution, kn.augmentation.ATTRIBUTION_RULE; ~2 min a run at class, ~25 min).
    "augmentation": {
        "smoke": {"augments": ["single", "multi5+permute"], "variants": ["hard"], "variant_seeds": []},   # the code paths
        "class": {"augments": ["single", "multi5+permute"], "variants": ["hard", "mid", "they", "long"],
                  "variant_seeds": [1, 2]},
        "cpu": {"augments": ["single", "multi5+permute"], "variants": ["hard"], "variant_seeds": []},
        "gpu": {"augments": ["single", "multi5+permute", "permute", "multi5", "fullname"], "variants": ["hard"],
                "variant_seeds": []},
        "paper": {"augments": ["single", "multi5+permute", "permute", "multi5", "fullname"], "variants": ["hard"],
                  "variant_seeds": []},
    },
    # Part 3.1 Results 4-5: optimizer steps of each probe fit (kn.probe_select: a low-rank head chosen on
    # the validation slice), which of the augmentation chapter's configs it trains (kn.probing_study, its own
    # runs) and probes (below gpu the claims' two), and `n`, the people of those models where they differ from
    # the augmentation chapter's (None: its own). At cpu the probes read 2,500 people: at 600 (300
    # train_people) every head, rank 0 or low-rank, fit its own people and read chance on test_people (issue
    # 22); 2,500 leave 1,000 train_people to fit on and 250 to choose with, ~60 min a model on one core (the
    # two side by side: ~60 min on 2 cores). `ranks`: the probe heads' rank grid (kn.probe_select); at cpu
    # up to 128 (full), since the fit on 2-32 chose 32, the grid's edge, for every P-probe
    "probing": {"smoke": {"steps": 20, "augments": _CLAIMS, "n": None, "ranks": _RANKS},
                "class": {"steps": 300, "augments": _CLAIMS, "n": None, "ranks": _RANKS},
                "cpu": {"steps": 300, "augments": _CLAIMS, "n": 2500, "ranks": [*_RANKS, 64, 128]},
                "gpu": {"steps": 1000, "augments": _PROBED, "n": None, "ranks": _RANKS},
                "paper": {"steps": 1000, "augments": _PROBED, "n": None, "ranks": _RANKS}},
    # Part 3.1 Result 7: the masked model and its GPT-2 twin (kn.bidirectional.twins), on the extraction
    # profile's model at these people and exposures (a masked model needs ~5x the autoregressive budget);
    # `search`: multi5+permute's twins take the recipe kn.bidirectional_search chose on the validation slice
    "bidirectional": {
        "smoke": {"n": 60, "exposures": 10, "finetune_exposures": 3, "finetune_lr": 1e-3,
                  "augments": ["single", "multi5+permute"], "search": True, "curve_points": 4},
        "class": {"n": 60, "exposures": 300, "finetune_exposures": 30, "finetune_lr": 1e-3,
                  "augments": ["multi5+permute"], "search": False, "curve_points": 30},
        "cpu": {"n": 100, "exposures": 500, "finetune_exposures": 30, "finetune_lr": 1e-3,
                "augments": ["multi5+permute"], "search": True, "curve_points": 30},    # the grid ran at cpu (2026-12-04, 75 CPU min)
        "gpu": {"n": 5000, "exposures": 1000, "finetune_exposures": 30, "finetune_lr": 1e-3,
                "augments": ["single", "multi5+permute"], "search": False, "curve_points": 30},
        "paper": {"n": 100000, "exposures": 2700, "finetune_exposures": 30, "finetune_lr": 1e-3,
                  "augments": ["single", "multi5+permute"], "search": False, "curve_points": 30},
    },
    # Part 3.1 Result 6: minority people (the extraction profile's model and budget), as many celebrities;
    # 300 + 300 at cpu: every minority person is tested, +-4 points. `at_r1_choice`: the two runs at R1's
    # chosen setting instead (kn.celebrity.r1_choice_configs, issue 22): at cpu, the pretraining beside the
    # celebrities takes the setting's 60K steps (~75 min on one core); the first cpu run (300 + 300 people,
    # the extraction profile's model) stays on the page, its files renamed "first-300 <name>.json"
    "celebrity": {"smoke": {"n": 60}, "class": {"n": 50}, "cpu": {"n": 300, "at_r1_choice": True}, "gpu": {"n": 5000},
                  "paper": {"n": 100000}},
    # Part 3.3: the capacity sweep (kn.capacity: the recipe, written before the runs). bioD with L=1,
    # C=4 (106 value bits in 61 tokens a person) and small name pools: values, not names, hold the bits
    # and the embedding table stays a minority of the parameters. Sizes are (n_layer, n_head, n_embd), N
    # then follows from data_bits_per_param (4: the data hold 2x the bits of a model at 2 bits/param, so
    # such a model fills half of them, the fit's limit) and min_steps; (n_layer, n_head, n_embd, N) fixes
    # N. The lr of each size comes from lr_grid at grid_exposures (most bits); `seeds` adds seeds at some
    # sizes, `curve` measures bits along training (log-spaced stops) at some sizes.
    "capacity": {
        "smoke": {"data": {"k": 2, "c": 1, "d": 20, "l": 1, "t": 50, "n_first": 10, "n_middle": 10, "n_last": 20},
                  "window": 64, "min_steps": 40, "weight_decay": 0.1, "data_bits_per_param": 4.0,
                  "lr_grid": [3e-3, 1e-2], "grid_exposures": 10,
                  "arms": [{"exposures": 10, "sizes": [(1, 2, 16, 200), (1, 2, 32, 200)]}],
                  "curve": {"sizes": [(1, 2, 16)], "exposures": 10, "stops": 3}},
        "class": {"data": {"k": 4, "c": 4, "d": 100, "l": 1, "t": 100, "n_first": 32, "n_middle": 32, "n_last": 32},
                  "window": 128, "min_steps": 5000, "weight_decay": 0.02, "data_bits_per_param": 4.0,
                  "lr_grid": [3e-3], "grid_exposures": 100,
                  "arms": [{"exposures": 100, "sizes": [(2, 2, 16, 300), (2, 2, 24, 600)]}]},
        # cpu: 6 GPT-2 sizes, 6.3k-67k parameters (10.6x), >= 50K steps each at both exposure levels
        "cpu": {"data": {"k": 4, "c": 4, "d": 100, "l": 1, "t": 100, "n_first": 32, "n_middle": 32, "n_last": 32},
                "window": 128, "min_steps": 50_000, "weight_decay": 0.02, "data_bits_per_param": 4.0,
                "lr_grid": [1e-3, 3e-3, 1e-2], "grid_exposures": 100,
                "arms": [*({"exposures": e, "sizes": [(2, 2, 12), (2, 2, 16), (2, 2, 24), (2, 2, 32), (2, 2, 40),
                                                     (2, 2, 48)]} for e in (100, 1000)),
                         # Results 5-7: the gated MLP (its own lr grid); Results 10-12: 7 junk tokens per useful
                         # one, without and with a domain token, on the clean arm's people and lr
                         *({"exposures": e, "arch": "llama", "sizes": [(2, 2, 12), (2, 2, 16), (2, 2, 24)]}
                           for e in (100, 1000)),
                         {"exposures": 100, "sizes": [(2, 2, 16), (2, 2, 24)], "junk_ratio": 7.0},
                         {"exposures": 100, "sizes": [(2, 2, 16), (2, 2, 24)], "junk_ratio": 7.0, "domain_token": True}],
                "seeds": {"sizes": [(2, 2, 16), (2, 2, 32)], "exposures": [100, 1000], "seeds": [1, 2]},
                "curve": {"sizes": [(2, 2, 16), (2, 2, 48)], "exposures": 1000, "stops": 8}},
        "gpu": {"data": {"k": 4, "c": 4, "d": 100, "l": 1, "t": 100, "n_first": 100, "n_middle": 100, "n_last": 100},
                "window": 512, "min_steps": 50_000, "weight_decay": 0.02, "data_bits_per_param": 4.0,
                "lr_grid": [1e-3, 3e-3, 1e-2], "grid_exposures": 100,
                "arms": [{"exposures": e, "sizes": [(2, 2, 64), (2, 2, 96), (2, 2, 128), (2, 4, 192), (2, 4, 256)]}
                         for e in (100, 1000)]},
        "paper": {"data": {"k": 4, "c": 1, "d": 100, "l": 2, "t": 100, "n_first": 400, "n_middle": 400, "n_last": 1000},
                  "window": 512, "min_steps": 50_000, "weight_decay": 0.02, "data_bits_per_param": 4.0,
                  "lr_grid": [1e-3], "grid_exposures": 100,
                  "arms": [{"exposures": e, "sizes": [(l, h, 64 * h, 10_000_000) for l, h in
                                                      [(2, 2), (4, 4), (6, 6), (8, 8), (12, 12), (16, 16), (20, 16)]]}
                           for e in (100, 1000)]},
    },
    # Chang et al.: background bioS, base model, continued pretraining with injections (kn.dynamics). Many
    # people, few passes: a pass is long (cpu: ~74 steps); the seeds share the data and the bases. With
    # 10,000 people the tokenizer splits the invented names finely: paragraphs take up to ~300 tokens.
    "dynamics": {
        "smoke": {"n": 200, "vocab_size": 1000, "model": {"n_layer": 2, "n_head": 2, "n_embd": 64, "context": 320},
                  "n_paragraphs": 2, "n_probes": 3, "n_seeds": 2, "pretrain_exposures": 4, "pretrain_lr": 3e-3,
                  "batch_size": 8, "window": 320, "lr": 1e-2, "n_steps": 40, "t0": 4, "n_injections": 3, "gap": 4,
                  "lam_window": 4, "n_boot": 200},   # intervals of a code test: fewer resamples
        "class": {"n": 3000, "vocab_size": 2048, "model": {"n_layer": 2, "n_head": 2, "n_embd": 64, "context": 320},
                  "n_paragraphs": 2, "n_probes": 5, "pretrain_exposures": 2, "pretrain_lr": 3e-3, "batch_size": 16,
                  "window": 320, "lr": 1e-3, "n_steps": 52, "t0": 8, "n_injections": 3, "gap": 8, "lam_window": 8,
                  "eval_every": 2},
        # cpu seeds, from the 3-seed run of 2026-12-01 and kn.dynamics_claims.seeds_needed (pooled intervals
        # bounded by the mean of the scenarios' half-widths): bump 3, batch size 2 (duplicated and paraphrased),
        # stage gain ~435 (+0.041 against <= 0.05), duplicated vs paraphrased ~163 (-0.004 against >= 0), power
        # law unknown (AIC leads of -23 and -8 against +2, points without intervals). 6 seeds is the cap a
        # 60-minute chapter allows (~8 min a seed beside ~4 min of data and base): it binds for two claims.
        # lam_window = gap: the 12-step window held the largest t_LAM (12) at its edge.
        "cpu": {"n": 10000, "vocab_size": 2048, "model": {"n_layer": 2, "n_head": 4, "n_embd": 128, "context": 320},
                "n_paragraphs": 4, "n_probes": 5, "n_seeds": 6, "pretrain_exposures": 2, "pretrain_lr": 3e-3,
                "batch_size": 32, "window": 320, "lr": 1e-3, "n_steps": 96, "t0": 16, "n_injections": 3, "gap": 16,
                "lam_window": 16, "eval_every": 2},
        "gpu": {"n": 50000, "vocab_size": 4096, "model": {"n_layer": 8, "n_head": 8, "n_embd": 512, "context": 512},
                "n_paragraphs": 20, "n_probes": 5, "pretrain_exposures": 4, "pretrain_lr": 1e-3, "batch_size": 96,
                "window": 512, "lr": 4e-4, "n_steps": 1600, "t0": 100, "n_injections": 10, "gap": 100, "lam_window": 48},
        "paper": {"n": 500000, "vocab_size": 8192, "model": {"n_layer": 12, "n_head": 12, "n_embd": 768, "context": 1024},
                  "n_paragraphs": 40, "n_probes": 5, "pretrain_exposures": 4, "pretrain_lr": 1e-3, "batch_size": 256,
                  "batch_factor": 5, "window": 1024, "lr": 4e-4, "n_steps": 2000, "t0": 100, "n_injections": 10,
                  "gap": 100, "lam_window": 50},
    },
    # Xu & Chen: one-layer models (kn.onelayer). Lists are the sweep's axes, values are fixed.
    "onelayer": {
        "smoke": {"arch": ["attn_mlp", "attn_only"], "multiplicity": [1, 2], "train_fraction": [0.5],
                  "finetune": ["full"], "n": 24, "n_embd": 32, "n_head": 2, "vocab_size": 400, "window": 64,
                  "batch_size": 8, "lr": 3e-3, "exposures": 2, "curve": 2, "finetune_exposures": 1,
                  "finetune_batch_size": 8, "valid_fraction": 0.25, "finetune_lr_grid": [1e-3, 3e-3]},
        "class": {"arch": ["attn_mlp", "attn_only"], "multiplicity": [5], "train_fraction": [0.75],
                  "finetune": ["full"], "augment_extra": "permute", "n": 200, "n_embd": 128, "n_head": 4,
                  "vocab_size": 2048, "window": 256, "batch_size": 16, "lr": 3e-3, "exposures": 60,
                  "finetune_exposures": 10, "finetune_lr": 1e-4},
        # cpu: 400 people at batch 16 and 100 exposures (780 steps) memorized 99% of M = 1's bios but 49% of
        # M = 5's, and a fixed finetune lr of 1e-4 fit <= 30% of train_people. Now 200 people at batch 8 and 200
        # exposures: the same tokens (the same time) in twice the steps (~1,560), each fact seen twice as often;
        # the curve shows memorization over those steps. A fifth of train_people is the validation slice that
        # picks the finetune lr among those that fit train_people (kn.extraction.finetune); the grids span 10x
        # around where the one-layer model fit best (full: 1e-4 too small; LoRA rank 1: 1e-2 fit 10%)
        "cpu": {"arch": ["attn_mlp", "attn_only"], "multiplicity": [1, 5], "train_fraction": [0.25, 0.75],
                "finetune": ["full", "lora1", "lora8"], "augment_extra": "permute", "n": 200, "n_embd": 128,
                "n_head": 4, "vocab_size": 2048, "window": 256, "batch_size": 8, "lr": 3e-3, "exposures": 200,
                "curve": 5, "finetune_exposures": 10, "valid_fraction": 0.2, "finetune_lr_grid": [3e-4, 1e-3, 3e-3],
                "lora_lr_grid": [3e-3, 1e-2, 3e-2]},
        "gpu": {"arch": ["attn_mlp", "attn_only"], "multiplicity": [1, 2, 5], "train_fraction": [0.1, 0.25, 0.5, 0.75],
                "finetune": ["full", "lora1", "lora2", "lora8"], "n": 2000, "n_embd": 256, "n_head": 4,
                "vocab_size": 4096, "window": 256, "batch_size": 64, "lr": 1e-3, "exposures": 200,
                "finetune_exposures": 20, "finetune_batch_size": 64},
        "paper": {"arch": ["attn_mlp", "attn_only"], "multiplicity": [1, 2, 5, 10], "train_fraction": [0.1, 0.25, 0.5, 0.75, 0.9],
                  "finetune": ["full", "lora1", "lora2", "lora8"], "n": 10000, "n_embd": 512, "n_head": 8,
                  "vocab_size": 8192, "window": 512, "batch_size": 96, "lr": 1e-3, "exposures": 540,
                  "finetune_exposures": 20, "finetune_batch_size": 64},
    },
}


def check_profile(profile: str) -> str:
    if profile not in PROFILES:
        raise DataError(f"profile: got {profile!r}; allowed: {', '.join(PROFILES)}")
    return profile


def check_keys(values: dict, allowed: tuple, where: str) -> dict:
    """`values`, or DataError naming its first key not in `allowed`, and the allowed ones."""
    for key in values:
        if key not in allowed:
            raise DataError(f"{key}: unknown setting for {where}; allowed: {', '.join(allowed)}")
    return values


def settings(experiment: str, profile: str, **overrides) -> dict:
    """The table of `experiment` at `profile` with `overrides` on top; every key (and every key of a
    `model` dict) checked against KEYS."""
    if experiment not in TABLES:
        raise DataError(f"experiment: got {experiment!r}; allowed: {', '.join(sorted(TABLES))}")
    s = check_keys(dict(TABLES[experiment][check_profile(profile)]) | overrides, KEYS[experiment], experiment)
    if isinstance(s.get("model"), dict):
        check_keys(s["model"], MODEL_KEYS, f"{experiment} model")
    return s
