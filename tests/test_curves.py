"""kn.curves: learning curves along a Part 3.1 run (train_people QA, bios memorized, validation-slice
QA on fixed samples), kept through a resume and shown for old results without one.
Run: pytest tests/test_curves.py
"""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from kn.curves import FIELDS, curve_every, curve_note, plot_curves  # noqa: E402
from kn.extraction import from_profile, run_extraction  # noqa: E402
from kn.train import Interrupted, train  # noqa: E402


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """A mixed run of 40 people long enough to answer its own train_people (about 15 s)."""
    out = tmp_path_factory.mktemp("mixed")
    cfg = from_profile("smoke", setting="mixed", n=40, exposures=30, curve_points=4)
    return cfg, out, run_extraction(cfg, out, progress=False)


@pytest.mark.heavy
def test_curve_points_are_spread_over_the_run_and_end_at_the_final_model(mixed):
    cfg, out, r = mixed
    curve, steps = r["curves"]["mixed"], r["training"]["mixed"]["steps"]
    every = curve_every(steps, cfg.curve_points)
    assert [p["step"] for p in curve] == sorted({*range(0, steps, every), steps})
    assert all(set(p) == {"step", *FIELDS} for p in curve)
    # the samples hold every train_people and validation person at this size: the last point is the
    # final model's full evaluation, computed a second way
    assert curve[-1]["train_qa"] == pytest.approx(r["qa"]["train"]["mean"])
    assert curve[-1]["valid_qa"] == pytest.approx(r["qa"]["valid"]["mean"])
    assert curve[0]["train_qa"] < 0.1 < curve[-1]["train_qa"]          # it learned along the way
    assert curve[-1]["memorized"] > curve[0]["memorized"]


@pytest.mark.heavy
def test_curve_survives_a_resume(mixed, tmp_path, sigterm_at_step):
    """A run stopped by a signal and resumed has the same curve as the uninterrupted one."""
    from kn.extraction import stage_config
    cfg, out, r = mixed
    tc = stage_config(cfg, out / "data", tmp_path / "run", "mixed")
    sigterm_at_step(100)
    with pytest.raises(Interrupted):
        from kn.train import stop_if_interrupted
        stop_if_interrupted(train(tc, progress=False), tc.out)
    sigterm_at_step(10 ** 9)
    resumed = train(tc, resume=True, progress=False)
    assert resumed["curve"] == r["curves"]["mixed"]


def test_old_result_without_a_curve_shows_a_note():
    fig, ax = plt.subplots()
    old = {"qa": {}, "memorization": {}}
    assert "no learning curve was kept" in curve_note(old)
    plot_curves(ax, old)
    assert "no learning curve was kept" in ax.texts[0].get_text() and not ax.lines
    new = {"curves": {"mixed": [{"step": s, "train_qa": 0.5, "memorized": 0.9, "valid_qa": None} for s in (0, 10)]}}
    fig, ax = plt.subplots()
    plot_curves(ax, new)
    assert curve_note(new) is None and len(ax.lines) == 3
    assert np.isnan(ax.lines[2].get_ydata()).all()                   # no validation slice: NaN, not 0
    plt.close("all")


def test_curve_every():
    assert curve_every(1000, 0) == 0 and curve_every(1000, 30) == 33 and curve_every(10, 30) == 1


@pytest.mark.heavy
def test_a_trimmed_vocabulary_scores_its_curve_through_the_tokenizer_ids(mixed, tmp_path):
    """trim_vocab: the curve scores the full-vocabulary copy, so its last point is the saved model's."""
    from transformers import AutoModelForCausalLM
    from kn.curves import curve_evaluator
    from kn.extraction import stage_config
    from kn.tokenize import load_tokenizer
    cfg, out, _ = mixed
    tc = stage_config(cfg, out / "data", tmp_path / "run", "mixed", trim_vocab=True, precision="fp32", attention="sdpa")
    s = train(tc, progress=False)
    tok = load_tokenizer(out / "data" / "tokenizer")
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model")
    again = curve_evaluator(out / "data", tc.curve_people, tok.eos_token_id, tok.pad_token_id, tc.seed)(saved)
    assert s["vocab"]["trimmed"] and s["curve"][-1]["train_qa"] > 0.1
    assert [s["curve"][-1][f] for f in FIELDS] == pytest.approx(again.tolist(), nan_ok=True)
