"""The augmentation chapter's runs (papers.md, Part 3.1, Results 2-3): the augmentations on kn's bioS
and the single / multi5+permute pair again on harder bioS variants (kn.data.bios.VARIANTS), so that
Result 3 does not rest on one generator's text (issue 22).

`augmentation_configs(profile, seed)`: name -> ExtractionConfig, from the profile's "augmentation"
table (kn.profiles): each augmentation on kn's bioS (named by it), multi5+permute with LoRA
finetuning ("multi5+permute LoRA"), and VARIANT_AUGMENTS on each variant ("<augment> <variant>").
`study(profile, seed)`: those runs (kn.extraction.run_suite), what the page shows.
`variant_table(results)`: per variant, held-out accuracy of the pair with intervals over people.
"""
from __future__ import annotations

from kn.data.bios import STYLE, VARIANTS, variant_style
from kn.extraction import ExtractionConfig, from_profile, run_suite
from kn.intervals import held_out_accuracy
from kn.profiles import settings

VARIANT_AUGMENTS = ("single", "multi5+permute")      # Result 2's and Result 3's runs
LORA = {"lora_rank": 8, "lora_embed_rank": 32, "finetune_lr_grid": [3e-4, 1e-3, 3e-3]}


def augmentation_configs(profile: str, seed: int = 0) -> dict[str, ExtractionConfig]:
    """The chapter's runs at `profile`, kn's data first (the pretraining LoRA shares comes before it)."""
    table = settings("augmentation", profile)
    run = lambda augment, **kw: from_profile(profile, setting="pretrain_finetune", augment=augment, seed=seed, **kw)  # noqa: E731
    configs = {a: run(a) for a in table["augments"]}
    configs["multi5+permute LoRA"] = run("multi5+permute", **LORA)
    for variant in table["variants"]:
        configs |= {f"{a} {variant}": run(a, **variant_style(variant)) for a in VARIANT_AUGMENTS}
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


def study(profile: str, seed: int = 0) -> dict:
    """Run (or read back, kn.extraction.run_suite) the chapter's runs. Returns configs and results (name -> each)."""
    configs = augmentation_configs(profile, seed)
    return {"configs": configs, "results": run_suite("augmentation", profile, configs, progress=False)}
