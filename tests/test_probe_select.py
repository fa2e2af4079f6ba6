"""kn.probe_select: on synthetic features a low-rank head chosen on the validation slice generalizes
to new people where the features hold the class and stays near chance on noise; the grid reads only
the validation people and test people are predicted once, by the refit; the choice does not depend
on test labels; ties go to the smaller rank, then the stronger decay; the people split; P and Q
probes run end to end on a tiny trained model (run_probes writes, skips a finished file and
re-renders without the run), and its selection table; bad parameters raise DataError naming them.

Run: pytest tests/test_probe_select.py
"""
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from kn import probe_select
from kn.data.dataset import BiosConfig, make_dataset
from kn.data.records import ATTRIBUTES
from kn.errors import DataError
from kn.models import ModelConfig
from kn.probe_select import (RANKS, WEIGHT_DECAYS, probe, probe_people, run_probes, select_probe,
                             selection_table)
from kn.probing import load_probe_data, probe_data
from kn.results import write_json
from kn.train import train
from kn.train_config import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def synthetic(n=400, classes=8, width=32, signal=True, seed=0):
    """Features [n, 1, d] (class prototype + noise, or noise alone), labels [n, 1] and the people:
    fit 0..199, validation 200..259, test the rest."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.normal(size=(n, width)) + (2.0 * rng.normal(size=(classes, width))[y] if signal else 0)
    people = np.arange(n)
    return torch.tensor(x, dtype=torch.float32)[:, None], y[:, None], people < 200, (people >= 200) & (people < 260)


def choose(feats, labels, fit, valid, steps=60):
    return select_probe(feats, np.array([0]), labels, [int(labels.max()) + 1], {"all": np.array([0])}, fit, valid, steps)


def test_informative_features_generalize_and_noise_stays_near_chance():
    for signal in (True, False):
        feats, labels, fit, valid = synthetic(signal=signal)
        pred, info = choose(feats, labels, fit, valid)
        test = ~(fit | valid)
        acc, chance = (pred[test, 0] == labels[test, 0]).mean(), 1 / 8
        assert acc > 0.9 if signal else acc < chance + 0.1
        assert info["all"]["rank"] in RANKS and info["all"]["weight_decay"] in WEIGHT_DECAYS
        assert len(info["all"]["grid"]) == len(RANKS) * len(WEIGHT_DECAYS)


def test_grid_reads_validation_people_and_test_people_are_predicted_once(monkeypatch):
    feats, labels, fit, valid = synthetic()
    calls, real = [], probe_select.predict

    def spy(heads, feats, cols, labels, fitted, idx):
        calls.append((np.asarray(idx).copy(), fitted.copy()))
        return real(heads, feats, cols, labels, fitted, idx)
    monkeypatch.setattr(probe_select, "predict", spy)
    _, info = choose(feats, labels, fit, valid, steps=5)
    test = np.flatnonzero(~(fit | valid))
    grid, final = calls[:-1], calls[-1]
    assert len(grid) == len(RANKS) * len(WEIGHT_DECAYS)
    assert [[r, wd] for r, wd, _ in info["all"]["grid"]] == [[r, wd] for r in RANKS for wd in WEIGHT_DECAYS]
    assert all(set(idx) == set(np.flatnonzero(valid)) and (f == fit).all() for idx, f in grid)
    assert sum(np.isin(test, idx).all() for idx, _ in calls) == 1 and np.isin(test, final[0]).all()
    assert (final[1] == (fit | valid)).all()                                  # the refit: train + validation
    _, other = select_probe(feats, np.array([0]), labels, [int(labels.max()) + 1], {"all": np.array([0])}, fit, valid,
                            5, ranks=(3, 64))
    assert [r for r, _, _ in other["all"]["grid"]] == [r for r in (3, 64) for _ in WEIGHT_DECAYS]


def test_choice_ignores_test_labels_and_follows_validation_labels():
    feats, labels, fit, valid = synthetic()
    _, info = choose(feats, labels, fit, valid)
    shuffled = labels.copy()
    test = ~(fit | valid)
    shuffled[test] = np.random.default_rng(1).permutation(labels[test])
    np.testing.assert_equal(choose(feats, shuffled, fit, valid)[1], info)
    noisy = labels.copy()
    noisy[valid] = np.random.default_rng(2).permutation(labels[valid])      # validation labels decide the scores
    assert choose(feats, noisy, fit, valid)[1]["all"]["grid"] != info["all"]["grid"]


def test_ties_go_to_the_smaller_rank_then_the_stronger_decay(monkeypatch):
    feats, labels, fit, valid = synthetic()
    monkeypatch.setattr(probe_select, "_valid_score", lambda pred, labels: 0.5)
    _, info = choose(feats, labels, fit, valid, steps=2)
    assert (info["all"]["rank"], info["all"]["weight_decay"]) == (min(RANKS), max(WEIGHT_DECAYS))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A kn.extraction-style run with a validation slice: data/ and pretrain/."""
    run = tmp_path_factory.mktemp("run")
    make_dataset(BiosConfig(n=60, augment="multi2+permute", vocab_size=500, valid_fraction=0.25), run / "data")
    cfg = TrainConfig(data=str(run / "data"), out=str(run / "pretrain"), window=64, batch_size=8, passes=2, lr=3e-3,
                      model=ModelConfig(n_layer=2, n_head=2, n_embd=32, context=64), log_every=10, device="cpu")
    train(cfg, progress=False)
    return run


def test_people_use_the_datasets_validation_slice_else_carve_one(run_dir):
    data = load_probe_data(run_dir / "data")
    fit, valid = probe_people(data)
    assert valid.any() and (valid == data.is_valid).all() and (fit == data.is_train & ~data.is_valid).all()
    bare = probe_data(make_dataset(BiosConfig(n=60, vocab_size=500), run_dir / "bare"))
    fit, valid = probe_people(bare, seed=3)
    assert valid.sum() == round(0.2 * bare.is_train.sum()) and not (fit & valid).any()
    assert ((fit | valid) == bare.is_train).all() and (probe_people(bare, seed=3)[1] == valid).all()


def test_probes_end_to_end_write_skip_and_re_render(run_dir, tmp_path, monkeypatch):
    out = tmp_path / "probes.json"
    rec = run_probes(run_dir, out, steps=3)
    data = load_probe_data(run_dir / "data")
    for key in ("p", "q"):
        r = rec[key]
        assert set(r["selection"]) == {"first", "whole"} and r["n_valid"] == int(data.is_valid.sum())
        assert r["n_fit"] + r["n_valid"] == r["n_train"] and r["n_test"] == int((~data.is_train).sum())
        assert r["items"]["person"] == data.bios.person[~data.is_train].tolist()
    assert np.array(rec["p"]["whole"]).shape == (6, 6) and set(rec["q"]["whole"]) == set(ATTRIBUTES)
    header, rows = selection_table({"a": rec, "b": rec})
    assert len(rows) == 8 and all(len(r) == len(header) for r in rows)    # 2 runs x (Q, P) x (first, whole)
    own = [r for r in rows if r[:3] == ["a", "P, the value's own position", "whole"]][0]
    assert own[-1] == f"{100 * np.nanmean(np.diag(np.array(rec['p']['whole'], float))):.1f}%"
    assert own[3] == str(rec["p"]["selection"]["whole"]["rank"])
    model = AutoModelForCausalLM.from_pretrained(str(run_dir / "pretrain" / "model"))
    np.testing.assert_equal(probe(model, data, "Q", steps=3)["whole"], rec["q"]["whole"])   # deterministic

    def refuse(*args, **kwargs):
        raise AssertionError("probed again")
    monkeypatch.setattr(probe_select, "_probe", refuse)
    np.testing.assert_equal(run_probes(run_dir, out, steps=3), rec)
    for other in ({"steps": 4}, {"steps": 3, "ranks": (2, 64)}):            # another config: computed again
        with pytest.raises(AssertionError, match="probed again"):
            run_probes(run_dir, out, **other)
    assert run_probes(tmp_path / "gone" / run_dir.name, out, steps=3)["q"] == rec["q"]   # page re-rendered
    with pytest.raises(DataError, match="^run_dir:"):
        run_probes(tmp_path / "gone" / run_dir.name, out, steps=4)


def test_an_old_result_is_not_taken_for_a_new_one(tmp_path):
    """A result of the rank-0 probes (no method in its config) is computed again, not re-rendered."""
    out = tmp_path / "single.json"
    write_json(out, config={"run": "single", "model_written_at": "t", "rank_p": 0, "rank_q": 0, "epochs": 5, "seed": 0},
               p={}, q={})
    with pytest.raises(DataError, match="^run_dir"):
        run_probes(tmp_path / "gone" / "single", out, steps=300)


@pytest.mark.parametrize("args, name", [(("Q", 0), "steps"), (("X", 3), "which")])
def test_bad_parameters_name_themselves(args, name):
    with pytest.raises(DataError, match=f"^{name}:"):
        probe(torch.nn.Linear(2, 2), None, *args)
