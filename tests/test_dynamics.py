"""kn.dynamics (Chang et al.): t_LAM, effectivity and retainability on hand-made trajectories, the
power-law fit on a planted slope, injections landing at the requested steps and rows, config
validation before any training, a smoke run of all three scenarios end to end (about 15 s), and an
interrupted continued run resumed to the same trajectories:

    pytest tests/test_dynamics.py
"""
import csv
import json

import numpy as np
import pytest

from kn.data.dataset import BiosConfig
from kn.errors import DataError
from kn.dynamics import (COLUMNS, SCENARIOS, DynamicsConfig, InjectedStream, Injection, compare_batch_sizes,
                         Trajectories, effectivity, fit_forgetting, injection_steps, load_trajectories, local_max,
                         make_stream, mean_curves, retainability, run_dynamics, scaled)
from kn.models import ModelConfig
from kn.tokenize import load_tokenizer
from kn.train import Batches

TINY = ModelConfig(n_layer=2, n_head=2, n_embd=64, context=320)
# Paragraphs are 12 sentences, ~230-280 tokens at this vocabulary: the window must hold one plus EOS.
SMOKE = dict(data=BiosConfig(n=50, vocab_size=600), model=TINY, n_paragraphs=2, n_probes=3, pretrain_exposures=6,
             pretrain_lr=3e-3, batch_size=8, window=320, lr=1e-2, n_steps=30, t0=4, n_injections=3, gap=6,
             lam_window=4, stages=("late",), device="cpu")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("dynamics")
    cfg = DynamicsConfig(**SMOKE)
    return cfg, out, run_dynamics(cfg, out, progress=False)


# ----------------------------------------------------------------------------- metrics


def hand_made():
    """Two probes: flat at -5, injection at step 5, peak at step 8 (-2 and -3), then decay;
    a higher value at step 15 lies outside the window."""
    steps = np.arange(20)
    l = np.full((20, 2), -5.0)
    l[6:10, 0] = [-4.0, -3.0, -2.0, -3.5]
    l[6:10, 1] = [-4.5, -4.0, -3.0, -4.0]
    l[10:, 0], l[10:, 1] = -4.0, -4.5
    l[15] = -1.0
    return steps, l


def test_t_lam_and_effectivity_inside_the_window():
    steps, l = hand_made()
    assert local_max(steps, l, 5, 4).tolist() == [8, 8]
    assert effectivity(steps, l, 5, 4).tolist() == [3.0, 2.0]
    assert local_max(steps, l, 5, 10).tolist() == [15, 15]   # a longer window reaches the late spike
    assert effectivity(steps, l[:, 0], 5, 2) == pytest.approx(2.0)   # 1-D, window (5, 7]: t_LAM = 7


def test_retainability_known_values():
    steps, l = hand_made()
    t, R = retainability(steps, l, np.array([8, 8]), 5, 3)
    assert t.tolist() == [1, 2, 3]
    # probe 0: gain 3; l(9) = -3.5 -> 0.5, l(10) = l(11) = -4 -> 1/3; probe 1: gain 2; -4 -> 0.5, -4.5 -> 0.25
    np.testing.assert_allclose(R, [[0.5, 0.5], [1 / 3, 0.25], [1 / 3, 0.25]])
    _, R_flat = retainability(steps, np.full((20, 1), -5.0), np.array([8]), 5, 3)
    assert np.isnan(R_flat).all()   # no acquisition, no retainability


def test_power_law_fit_recovers_a_planted_slope():
    t = np.arange(1, 301)
    R = 0.9 - 0.1 * np.log(t) + np.random.default_rng(0).normal(0, 0.01, len(t))
    fit = fit_forgetting(t, R)
    assert fit["slope"] == pytest.approx(-0.1, abs=0.005) and fit["a"] == pytest.approx(0.9, abs=0.02)
    assert fit["slope_ci"][0] < -0.1 < fit["slope_ci"][1]
    assert fit["x_intercept"] == pytest.approx(np.exp(9), rel=0.25)
    with pytest.raises(DataError, match="R:"):
        fit_forgetting([1, 2], [0.5, np.nan])
    flat = fit_forgetting(t, 0.9 - 1e-4 * np.log(t))          # t* = e^9000: no forgetting within reach
    assert flat["b"] > 0 and flat["x_intercept"] is None


# ----------------------------------------------------------------------------- config and injection


@pytest.mark.parametrize("kw, field", [
    (dict(n_steps=20, t0=4, gap=10, n_injections=3, lam_window=5), "n_steps"),        # last injection at 24
    (dict(n_steps=200, t0=10, gap=20, lam_window=30), "lam_window"),                  # window longer than the gap
    (dict(scenarios=("once", "forgotten")), "scenarios"),
    (dict(stages=("middle",)), "stages"),
    (dict(eval_every=3, t0=10, gap=20, n_steps=300), "eval_every"),
    (dict(batch_size=4, n_paragraphs=2), "batch_size"),                               # 6 rows at t0
])
def test_bad_settings_raise_before_training(kw, field):
    base = dict(n_steps=300, t0=10, gap=20, n_injections=3, lam_window=10, batch_size=16, n_paragraphs=2)
    with pytest.raises(DataError, match=f"^{field}:"):
        DynamicsConfig(**(base | kw))


def test_window_shorter_than_a_paragraph_fails_before_pretraining(tmp_path):
    cfg = DynamicsConfig(**(SMOKE | dict(window=64, model=ModelConfig(n_layer=2, n_head=2, n_embd=64, context=64))))
    with pytest.raises(DataError, match="^window:"):
        run_dynamics(cfg, tmp_path, progress=False)
    assert not (tmp_path / "base").exists()


def test_inject_replaces_the_start_of_its_row():
    plan = [Injection(2, 1, 0, "once", "original", np.array([7, 8, 9])),
            Injection(2, 3, 1, "duplicated", "original", np.array([5]))]
    stream = InjectedStream(lambda s: np.full((4, 10), 100 + s), plan, eos_id=0)
    ids, items = stream(2)
    assert ids[1].tolist() == [7, 8, 9, 0] + [102] * 6 and ids[3].tolist() == [5, 0] + [102] * 8
    assert (ids[[0, 2]] == 102).all() and items == plan
    assert (stream(3)[0] == 103).all() and stream(3)[1] == []


def test_injections_land_at_the_requested_steps_and_rows(smoke):
    cfg, out, result = smoke
    schedule, steps = result["schedule"], injection_steps(cfg)
    per_paragraph = {}
    for r in schedule:
        per_paragraph.setdefault((r["paragraph"], r["scenario"]), []).append(r["step"])
    assert len(per_paragraph) == cfg.n_paragraphs * len(SCENARIOS)
    assert all(ts == list(steps[s]) for (_, s), ts in per_paragraph.items())
    for t in {r["step"] for r in schedule}:   # distinct rows 0, 1, ... at each step
        assert sorted(r["row"] for r in schedule if r["step"] == t) == list(range(sum(r["step"] == t for r in schedule)))
    # the batches themselves: paragraph tokens then EOS at the recorded rows, background elsewhere
    tok = load_tokenizer(out / "data" / "tokenizer")
    from kn.data.injection import load_injection
    records = {r["paragraph"]: r for r in load_injection(out / "data" / "injection")}
    stream = make_stream(cfg, out / "data", list(records.values()), tok)
    background = Batches(stream_config(cfg, out), tok.eos_token_id, tok.pad_token_id)
    for t in sorted({r["step"] for r in schedule}):
        ids, _ = stream(t)
        here = [r for r in schedule if r["step"] == t]
        for r in here:
            rec = records[r["paragraph"]]
            text = rec["text"] if r["text"] == "original" else rec["paraphrases"][int(r["text"].split()[1]) - 1]
            want = tok(text, add_special_tokens=False)["input_ids"]
            assert ids[r["row"], :len(want)].tolist() == want and ids[r["row"], len(want)] == tok.eos_token_id
        untouched = sorted(set(range(cfg.batch_size)) - {r["row"] for r in here})
        assert (ids[untouched] == background(t)[0][untouched]).all()
    assert {r["text"] for r in schedule if r["scenario"] == "paraphrased"} == {"original", "paraphrase 1", "paraphrase 2"}


def stream_config(cfg, out):
    from kn.dynamics import stage_config
    return stage_config(cfg, out / "data", out)


# ----------------------------------------------------------------------------- smoke run


def test_smoke_run_all_scenarios(smoke):
    cfg, out, result = smoke
    traj = result["trajectories"]["late"]
    with open(out / "trajectories_late.csv") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == COLUMNS and len(rows) == traj.logprob.size
    assert traj.steps.tolist() == list(range(cfg.n_steps + 1))
    assert np.isfinite(traj.logprob).all() and (traj.logprob < 0).all()
    assert set(traj.scenario) == set(SCENARIOS) and len(traj.paragraph) == 6 * 3 * cfg.n_probes
    np.testing.assert_allclose(load_trajectories(out / "trajectories_late.csv").logprob, traj.logprob, atol=1e-5)
    # each injection raises l of its memorization probes, on average, after one update
    bumps = [traj.logprob[t + 1, m] - traj.logprob[t, m] for s, ts in injection_steps(cfg).items() for t in ts
             for m in [(traj.scenario == s) & (traj.kind == "memorization")]]
    assert np.mean(np.concatenate(bumps)) > 0
    summary = result["stages"]["late"]
    for s in SCENARIOS:
        for k in ("memorization", "semantic", "compositional"):
            assert 1 <= summary[s][k]["t_lam"]["mean"] <= cfg.lam_window
            assert np.isfinite(summary[s][k]["effectivity"]["mean"])
    assert len(summary["duplicated"]["memorization"]["effectivity"]["per_injection"]) == cfg.n_injections
    assert (out / "dynamics.json").is_file() and {"early", "late"} <= set(result["bases"])


def test_compare_batch_sizes_at_equal_tokens(smoke):
    cfg, out, _ = smoke
    big = scaled(cfg, 2)
    assert (big.batch_size, big.n_steps, big.t0, big.gap) == (16, 15, 2, 3)
    assert big.batch_size * big.n_steps == cfg.batch_size * cfg.n_steps
    fits = compare_batch_sizes(cfg, out, progress=False)   # reuses the smoke run's data and base
    assert set(fits) == {8, 16} and set(fits[8]) == set(SCENARIOS)
    with pytest.raises(DataError, match="^t0:"):
        scaled(DynamicsConfig(**(SMOKE | dict(t0=5))), 2)


def test_mean_curves_average_each_scenario_and_kind():
    """Four probes in two scenarios and two kinds; the duplicated/semantic pair averages to -2."""
    traj = Trajectories(np.array([0, 2]), np.array([[-1.0, -3.0, -4.0, -5.0], [-0.5, -3.5, -2.0, -6.0]]),
                        paragraph=np.array([0, 1, 1, 0]), scenario=np.array(["duplicated", "duplicated", "once", "once"]),
                        kind=np.array(["semantic", "semantic", "memorization", "semantic"]), probe=np.zeros(4, int))
    curves = mean_curves(traj)
    assert list(curves) == ["once", "duplicated"]                      # SCENARIOS order, present ones only
    assert curves["duplicated"]["semantic"] == ([0, 2], [-2.0, -2.0])
    assert curves["once"]["memorization"] == ([0, 2], [-4.0, -2.0]) and curves["once"]["semantic"][1] == [-5.0, -6.0]
    assert list(curves["duplicated"]) == ["semantic"]                 # a kind without probes is left out


def test_interrupted_continued_pretraining_resumes_bit_exactly(smoke, tmp_path, monkeypatch, sigterm_at_step):
    """kn.train.fit's checkpoint and resume cover the continued run: a SIGTERM at step 11 stops it
    (Interrupted), running it again continues from the checkpoint to the same trajectories and schedule."""
    from kn.data.injection import load_injection
    from kn.dynamics import continue_pretraining
    from kn.train import Interrupted
    cfg, out, result = smoke
    records = load_injection(out / "data" / "injection")
    sigterm_at_step(11)
    with pytest.raises(Interrupted, match="step 11 of 30"):
        continue_pretraining(cfg, out / "data", result["bases"]["late"], records, tmp_path / "run", progress=False)
    monkeypatch.undo()
    traj, schedule = continue_pretraining(cfg, out / "data", result["bases"]["late"], records, tmp_path / "run",
                                          progress=False)
    want = result["trajectories"]["late"]
    assert traj.steps.tolist() == want.steps.tolist() and np.array_equal(traj.logprob, want.logprob)
    assert schedule == result["schedule"]
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == cfg.n_steps
