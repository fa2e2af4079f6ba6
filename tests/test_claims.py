"""kn.claims: verdicts from result files, the largest profile wins, missing results read "not run".
Run: pytest tests/test_claims.py
"""
import json

from kn.claims import claims_table, latest_profile
from kn.data.records import ATTRIBUTES


def result(test_mean, mem=1.0):
    return {"qa": {"test": {"mean": test_mean}}, "memorization": {"mean": mem}}


def write(root, chapter, profile, name, data):
    path = root / chapter / profile / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def test_verdicts_from_result_files(tmp_path, monkeypatch):
    monkeypatch.setenv("KN_RESULTS_ROOT", str(tmp_path))
    write(tmp_path, "augmentation", "smoke", "single", result(0.9))       # smoke says R2 fails ...
    write(tmp_path, "augmentation", "cpu", "single", result(0.05))        # ... but cpu, the larger profile, wins
    write(tmp_path, "augmentation", "cpu", "multi5+permute", result(0.5))
    write(tmp_path, "mixed_training", "cpu", "single", result(0.01))
    rows = {r["source"]: r for r in claims_table()}
    assert latest_profile("augmentation") == "cpu"
    assert rows["Part 3.1, R2"]["verdict"] == "reproduced" and rows["Part 3.1, R2"]["profile"] == "cpu"
    assert rows["Part 3.1, R3"]["verdict"] == "partly"
    assert rows["Part 3.1, R1"]["verdict"] == "not reproduced"
    assert rows["Part 3.1, R3 (LoRA)"]["verdict"] == "not run"            # its result file is missing
    assert rows["Part 3.1, R6"]["verdict"] == "not run" and rows["Part 3.1, R6"]["profile"] is None


def test_q_probe_claim(tmp_path, monkeypatch):
    monkeypatch.setenv("KN_RESULTS_ROOT", str(tmp_path))
    write(tmp_path, "probing", "cpu", "single", {"q": {"whole": {a: 0.01 for a in ATTRIBUTES}}})
    write(tmp_path, "probing", "cpu", "multi5+permute", {"q": {"whole": {a: 0.9 for a in ATTRIBUTES}}})
    row = next(r for r in claims_table() if r["source"] == "Part 3.1, R5")
    assert row["verdict"] == "reproduced" and "1.0%" in row["ours"]
