"""kn.extraction: the Part 3.1 pipelines end to end on CPU; a tiny mixed-training run extracts
knowledge of held-out people far above the majority guess.   Run: pytest tests/test_extraction.py
"""
import json

import pytest

from kn.data.records import ATTRIBUTES, DataError
from kn.extraction import ExtractionConfig, from_profile, run_extraction
from kn.models import ModelConfig


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


def test_mixed_training_extracts_held_out_people(tmp_path):
    """Result 1 in miniature: test_people's answers were never trained on, yet come out."""
    cfg = from_profile("smoke", setting="mixed", augment="multi5+permute", exposures=60, lr=3e-3,
                       model=ModelConfig(n_layer=2, n_head=4, n_embd=128, context=128), qa_fraction=0.5)
    cfg = cfg.__class__(**{**cfg.__dict__, "data": cfg.data.__class__(**{**cfg.data.__dict__, "n": 100})})
    r = run_extraction(cfg, tmp_path, progress=False)
    test, base = r["qa"]["test"]["per_attribute"], r["majority_baseline"]
    assert r["qa"]["train"]["mean"] > 0.5
    assert r["qa"]["test"]["mean"] > 3 * sum(base.values()) / len(base)
    assert sum(test[a] > base[a] for a in ATTRIBUTES) >= 4


def test_bad_setting():
    with pytest.raises(DataError, match="^setting"):
        ExtractionConfig(setting="zero_shot")
