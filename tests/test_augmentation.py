"""kn.augmentation: the chapter's runs per profile (kn's data, LoRA, the bioS variants), the table of
Results 2-3 per variant, and the claims row of Result 3 on the hard variant.

Run: pytest tests/test_augmentation.py
"""
import json

import numpy as np
import pytest

from kn.augmentation import LORA, VARIANT_AUGMENTS, attribution_table, augmentation_configs, variant_table
from kn.claims import claims_table
from kn.data.bios import STYLE, VARIANTS
from kn.data.records import ATTRIBUTES
from kn.extraction import from_profile
from kn.intervals import seed_mean
from kn.results import as_recorded, same_config

KN = {k: v[0] for k, v in STYLE.items()}


def test_configs_run_kns_data_then_each_variant():
    configs = augmentation_configs("smoke")
    assert list(configs) == ["single", "multi5+permute", "multi5+permute LoRA", "single hard", "multi5+permute hard"]
    assert list(augmentation_configs("gpu"))[:5] == ["single", "multi5+permute", "permute", "multi5", "fullname"]
    assert all(c.data.style == KN for n, c in configs.items() if " hard" not in n)
    assert configs["multi5+permute hard"].data.style == VARIANTS["hard"]
    assert configs["multi5+permute hard"].data.augment == "multi5+permute"
    # the LoRA run the notebook built before kn.augmentation: its committed results still match
    before = from_profile("smoke", setting="pretrain_finetune", augment="multi5+permute", seed=0, **LORA)
    assert same_config(as_recorded(before), configs["multi5+permute LoRA"])


def test_class_ablates_one_property_at_a_time():
    configs = augmentation_configs("class")
    for variant in ("mid", "they", "long"):
        for a in VARIANT_AUGMENTS:
            style = configs[f"{a} {variant}"].data.style
            assert sum(style[k] != KN[k] for k in STYLE) == 1 and style == KN | VARIANTS[variant]
    assert set(augmentation_configs("cpu")) == {"single", "multi5+permute", "multi5+permute LoRA", "single hard",
                                               "multi5+permute hard"}


def test_class_repeats_multi5_permute_at_other_seeds_on_each_data():
    configs = augmentation_configs("class")
    for k in (1, 2):
        assert configs[f"multi5+permute seed{k}"].data.style == KN
        for variant in ("hard", "mid", "they", "long"):
            c = configs[f"multi5+permute {variant} seed{k}"]
            assert (c.seed, c.data.seed, c.data.style) == (k, k, KN | VARIANTS[variant])
            assert c.model == configs["multi5+permute"].model and c.exposures == configs["multi5+permute"].exposures


def result(share, n=200, seed=0, mem=1.0, train=1.0):
    table = (np.random.default_rng(seed).random((n, len(ATTRIBUTES))) < share).astype(int)
    items = {"person": list(range(n))} | {a: table[:, k].tolist() for k, a in enumerate(ATTRIBUTES)}
    return {"qa": {"test": {"mean": float(table.mean())}, "train": {"mean": train}, "items": items},
            "memorization": {"mean": mem}, "provenance": {"config": {}}}


def test_variant_table_rows_are_the_variants_with_both_runs():
    results = {"single": result(0.02), "multi5+permute": result(0.6, seed=1), "single hard": result(0.01, seed=2),
               "multi5+permute hard": result(0.1, seed=3, mem=0.95), "single mid": result(0.0, seed=4)}
    header, rows = variant_table(results)
    assert [r[0] for r in rows] == ["kn", "hard"] and len(header) == len(rows[0])
    assert rows[1][1] == "value_position=mid, pronouns=mixed, length=long" and rows[1][4] == "95.0%"
    assert float(rows[0][3].split("%")[0]) > 50 > float(rows[1][3].split("%")[0])


def test_r3_on_the_hard_variant_is_its_own_row(tmp_path, monkeypatch):
    monkeypatch.setenv("KN_RESULTS_ROOT", str(tmp_path))
    row = lambda: next(r for r in claims_table("augmentation") if r["source"] == "Part 3.1, R3 (hard bios)")  # noqa: E731
    assert row()["verdict"] == "not run"
    folder = tmp_path / "augmentation" / "cpu"
    folder.mkdir(parents=True)
    (folder / "multi5+permute.json").write_text(json.dumps(result(0.8)))
    (folder / "multi5+permute hard.json").write_text(json.dumps(result(0.1)))
    assert row()["verdict"] == "not reproduced" and row()["rule"] == "interval >= 50%"
    assert next(r for r in claims_table("augmentation") if r["source"] == "Part 3.1, R3")["verdict"] == "reproduced"
    (folder / "multi5+permute hard.json").write_text(json.dumps(result(0.1, train=0.3)))
    assert row()["verdict"] == "inconclusive"                        # its finetune did not fit train_people


def test_seed_mean_is_a_t_interval():
    m = seed_mean([1.0, 2.0, 3.0])
    assert m.value == 2.0 and m.low == pytest.approx(2.0 - 4.303 / 3 ** 0.5, abs=1e-3) and m.high > 4.4


def test_attribution_pairs_each_variant_with_kns_data_by_seed():
    """mid loses ~30 points at every seed: harder; they moves by noise only: no difference shown."""
    results = {}
    for k, name in ((0, "{}"), (1, "{} seed1"), (2, "{} seed2")):
        results[name.format("multi5+permute")] = result(0.5 + 0.05 * k, seed=10 + k)
        results[name.format("multi5+permute mid")] = result(0.2 + 0.05 * k, seed=20 + k)
        results[name.format("multi5+permute they")] = result(0.5 + 0.05 * k, seed=30 + k)
    header, rows = attribution_table(results, [1, 2])
    assert [r[0] for r in rows] == ["kn", "mid", "they"] and all(len(r) == len(header) for r in rows)
    assert rows[1][4] == "harder" and rows[2][4] == "no difference shown"
    assert attribution_table(results, [])[1] == []                       # one seed: no interval, no rows
    assert attribution_table(results, [0, 1, 2]) == (header, rows)       # the chapter's seed counted once
    del results["multi5+permute they seed2"]
    assert [r[0] for r in attribution_table(results, [1, 2])[1]] == ["kn", "mid"]
