"""The augmentation chapter's runs (papers.md, Part 3.1, Results 2-3): the augmentations on kn's bioS
and the single / multi5+permute pair again on harder bioS variants (kn.data.bios.VARIANTS), so that
Result 3 does not rest on one generator's text (issue 22).

`augmentation_configs(profile, seed)`: name -> ExtractionConfig, from the profile's "augmentation"
table (kn.profiles): each augmentation on kn's bioS (named by it), multi5+permute with LoRA
finetuning ("multi5+permute LoRA"), VARIANT_AUGMENTS on each variant ("<augment> <variant>"), and
ATTRIBUTION_AUGMENT on kn's data and each variant at the table's variant_seeds ("<augment> seed<k>",
"<augment> <variant> seed<k>": other people and init, for the attribution).
`study(profile, seed)`: those runs (kn.extraction.run_suite), what the page shows.
`variant_table(results)`: per variant, held-out accuracy of the pair with intervals over people.
`attribution(profile, seed)`: the attribution's runs, from ATTRIBUTION_PROFILE's committed results where
the profile runs none (the cpu page shows the class runs); `attribution_table`: per variant, ATTRIBUTION_RULE's
verdict over seeds.
"""
from __future__ import annotations

from kn.data.bios import STYLE, VARIANTS, variant_style
from kn.extraction import ExtractionConfig, from_profile, run_suite
from kn.intervals import held_out_accuracy, seed_mean
from kn.profiles import settings
from kn.results import done, results_dir

CHAPTER = "augmentation"
VARIANT_AUGMENTS = ("single", "multi5+permute")      # Result 2's and Result 3's runs
ATTRIBUTION_AUGMENT = "multi5+permute"               # single sits near 0% on every variant: nothing to attribute
# Written before the seeded runs (issue 22, item 8). Which bioS property makes kn's data easier: per variant, the
# test_people accuracy of multi5+permute minus kn's at the same seed (same people and init, other wording), the
# mean over the chapter's seed and variant_seeds with its 95% t interval over seeds. The property makes
# extraction harder (kn's data easier) where the whole interval is below 0; easier where it is above; else the
# seeds show no difference. With 3 seeds the interval is wide (t = 4.30): it decides large effects only.
ATTRIBUTION_PROFILE = "class"                        # where it runs (kn.profiles "augmentation" variant_seeds)
ATTRIBUTION_RULE = "variant - kn, paired by seed: harder if the 95% t interval over seeds is below 0, easier if above"
LORA = {"lora_rank": 8, "lora_embed_rank": 32, "finetune_lr_grid": [3e-4, 1e-3, 3e-3]}


def augmentation_configs(profile: str, seed: int = 0) -> dict[str, ExtractionConfig]:
    """The chapter's runs at `profile`, kn's data first (the pretraining LoRA shares comes before it)."""
    table = settings("augmentation", profile)
    run = lambda augment, k=seed, **kw: from_profile(profile, setting="pretrain_finetune", augment=augment,  # noqa: E731
                                                     seed=k, **kw)
    configs = {a: run(a) for a in table["augments"]}
    configs["multi5+permute LoRA"] = run("multi5+permute", **LORA)
    for variant in table["variants"]:
        configs |= {f"{a} {variant}": run(a, **variant_style(variant)) for a in VARIANT_AUGMENTS}
    for k in table["variant_seeds"]:
        a = ATTRIBUTION_AUGMENT
        configs |= {seeded(a, k, seed): run(a, k)} | {seeded(f"{a} {v}", k, seed): run(a, k, **variant_style(v))
                                                      for v in table["variants"]}
    return configs


def _changes(variant: str) -> str:
    """A variant's style options that differ from kn's, as 'option=value'."""
    return ", ".join(f"{k}={v}" for k, v in VARIANTS[variant].items() if v != STYLE[k][0]) or "kn's bioS"


def variant_table(results: dict) -> tuple[list[str], list[list[str]]]:
    """(header, rows) for kn.display.markdown_table: per data variant with both runs in `results`
    (kn's bioS first), test_people accuracy of single and multi5+permute [95% interval] and the share
    of multi5+permute's bios memorized."""
    rows = []
    for variant in VARIANTS:
        names = [a if variant == "kn" else f"{a} {variant}" for a in VARIANT_AUGMENTS]
        if not all(n in results for n in names):
            continue
        tests = [held_out_accuracy(results[n]) for n in names]
        rows.append([variant, _changes(variant), *(f"{t.value:.1f}% [{t.low:.1f}, {t.high:.1f}]" for t in tests),
                     f"{100 * results[names[1]]['memorization']['mean']:.1f}%"])
    return ["data", "style options", "single: test_people [95%]", "multi5+permute: test_people [95%]",
            "multi5+permute bios memorized"], rows


def seeded(name: str, seed: int, chapter_seed: int = 0) -> str:
    """The run name of `name` at `seed` (the chapter's own seed: the name itself)."""
    return name if seed == chapter_seed else f"{name} seed{seed}"


def attribution(profile: str, seed: int = 0) -> tuple[str, dict, list[int]]:
    """(the profile of the attribution's runs, name -> result, the seeds beside `seed`): `profile`'s own when
    its table has variant_seeds (run by `study`), else ATTRIBUTION_PROFILE's published results that record
    their configs (read, never trained; missing ones left out)."""
    src = profile if settings(CHAPTER, profile)["variant_seeds"] else ATTRIBUTION_PROFILE
    a, configs = ATTRIBUTION_AUGMENT, augmentation_configs(src, seed)
    names = [n for n in configs if n.split(" seed")[0] in (a, *(f"{a} {v}" for v in VARIANTS))]
    found = {n: done(results_dir(CHAPTER, src) / f"{n}.json", configs[n]) for n in names}
    return src, {n: r for n, r in found.items() if r is not None}, settings(CHAPTER, src)["variant_seeds"]


def attribution_table(results: dict, seeds: list[int], chapter_seed: int = 0) -> tuple[list[str], list[list[str]]]:
    """(header, rows) for kn.display.markdown_table: per variant with every seed's run and kn's in `results`,
    multi5+permute's test_people accuracy at each seed, the paired difference from kn's data (mean and 95%
    t interval over seeds) and ATTRIBUTION_RULE's verdict."""
    a, seeds, rows = ATTRIBUTION_AUGMENT, list(dict.fromkeys([chapter_seed, *seeds])), []
    kn = [results.get(seeded(a, k, chapter_seed)) for k in seeds]
    for variant in [v for v in VARIANTS if v != "kn"]:
        runs = [results.get(seeded(f"{a} {variant}", k, chapter_seed)) for k in seeds]
        if len(seeds) < 2 or any(r is None for r in runs + kn):
            continue
        acc = [held_out_accuracy(r).value for r in runs]
        gap = seed_mean([v - held_out_accuracy(r).value for v, r in zip(acc, kn)])
        verdict = "harder" if gap.high < 0 else "easier" if gap.low > 0 else "no difference shown"
        rows.append([variant, _changes(variant), ", ".join(f"{v:.1f}%" for v in acc),
                     f"{gap.value:+.1f} [{gap.low:+.1f}, {gap.high:+.1f}]", verdict])
    if rows:
        rows.insert(0, ["kn", _changes("kn"), ", ".join(f"{held_out_accuracy(r).value:.1f}%" for r in kn), "", ""])
    return ["data", "style options", f"{a}: test_people, seeds {', '.join(map(str, seeds))}",
            "minus kn's, paired by seed [95% t]", "verdict"], rows


def study(profile: str, seed: int = 0) -> dict:
    """Run (or read back, kn.extraction.run_suite) the chapter's runs. Returns configs and results (name -> each)."""
    configs = augmentation_configs(profile, seed)
    return {"configs": configs, "results": run_suite(CHAPTER, profile, configs, progress=False)}
