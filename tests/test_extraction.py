"""kn.extraction: the Part 3.1 pipelines end to end on CPU; a tiny mixed-training run extracts
knowledge of held-out people far above the majority guess.   Run: pytest tests/test_extraction.py
"""
import json
from dataclasses import replace

import pytest

from kn.data.records import ATTRIBUTES
from kn.errors import DataError
from kn.extraction import ExtractionConfig, from_profile, prepare_dataset, run_extraction, stage_config, train_stage


@pytest.mark.parametrize("setting", ["mixed", "pretrain_finetune"])
def test_smoke_pipeline_and_skipping_done_stages(setting, tmp_path):
    cfg = from_profile("smoke", setting=setting, augment="multi2+permute")
    r = run_extraction(cfg, tmp_path, progress=False)
    for split in ("train", "test"):
        assert set(r["qa"][split]["per_attribute"]) == set(ATTRIBUTES)
        assert 0 <= r["qa"][split]["mean"] <= 1
    assert set(r["memorization"]["per_attribute"]) == set(ATTRIBUTES)
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["provenance"]["config"]["setting"] == setting
    stamp = (tmp_path / "data" / "tokens.npz").stat().st_mtime_ns
    run_extraction(cfg, tmp_path, progress=False)                       # everything is reused
    assert (tmp_path / "data" / "tokens.npz").stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_mixed_training_extracts_held_out_people(tmp_path):
    """Result 1 in miniature (the cpu profile, ~2 min on 2 cores): test_people's answers were never
    trained on, yet come out once the biographies are memorized."""
    cfg = from_profile("cpu", setting="mixed", augment="multi5+permute")
    r = run_extraction(cfg, tmp_path, progress=False)
    test, base = r["qa"]["test"]["per_attribute"], r["majority_baseline"]
    assert r["qa"]["train"]["mean"] > 0.5 and r["memorization"]["mean"] > 0.9
    assert r["qa"]["test"]["mean"] > 3 * sum(base.values()) / len(base)
    assert sum(test[a] > base[a] for a in ATTRIBUTES) >= 4


def test_bad_setting():
    with pytest.raises(DataError, match="^setting"):
        ExtractionConfig(setting="zero_shot")


def test_train_stage_reads_its_own_run_and_replaces_another(tmp_path):
    cfg = from_profile("smoke", setting="mixed")
    prepare_dataset(cfg, tmp_path / "data")
    a = stage_config(cfg, tmp_path / "data", tmp_path / "run", "pretrain", exposures=1.0)
    first = train_stage(a, progress=False)
    model = (tmp_path / "run" / "model" / "model.safetensors").stat().st_mtime_ns
    assert train_stage(a, progress=False) == first                      # done: read, not trained again
    assert (tmp_path / "run" / "model" / "model.safetensors").stat().st_mtime_ns == model
    b = replace(a, lr=a.lr / 2)                                         # a finished run of other settings
    second = train_stage(b, progress=False)
    assert second["provenance"]["config"]["lr"] == b.lr != first["provenance"]["config"]["lr"]
