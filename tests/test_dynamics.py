"""kn.dynamics and its parts (kn.dynamics_config, kn.trajectories, kn.forgetting, kn.dynamics_summary;
Chang et al.): t_LAM, effectivity and retainability on hand-made trajectories; the three
forgetting laws told apart by AIC on data drawn from each (linear and exponential data that a log fit
fits with r² > 0.8 are not called a power law); injected minus control on a built case; the bootstrap
over seeds and paragraphs (covers the truth, narrows with more paragraphs, resamples paragraphs rather
than steps); injections landing at the requested steps and rows, controls never injected; each seed on
its own stretch of the stream, the larger batch on the same rows; config validation before any
training; a smoke run end to end (two seeds, about a minute) and an interrupted continued run resumed
to the same trajectories:

    OMP_NUM_THREADS=1 pytest tests/test_dynamics.py
"""
import csv
import json
from dataclasses import asdict, replace

import numpy as np
import pytest

import kn.dynamics
from kn.data.dataset import BiosConfig
from kn.data.injection import PROBE_KINDS, load_injection
from kn.dynamics import (InjectedStream, Injection, background, compare_batch_sizes, make_stream, prepare_data,
                         run_dynamics, scaled, stream_start, study)
from kn.dynamics_config import CONTROL, SCENARIOS, DynamicsConfig, injection_steps, seed_records
from kn.dynamics_claims import claim_intervals
from kn.dynamics_summary import (Pool, bootstrap, bootstrap_draws, edge_peaks, effectivity_table, forgetting_table, interval,
                                 interval_text, make_pools, summarize, summarize_pool)
from kn.errors import DataError
from kn.forgetting import effectivity, fit_forgetting, fit_log, local_max, predict, retainability
from kn.models import ModelConfig
from kn.results import results_dir, write_json
from kn.tokenize import load_tokenizer
from kn.trajectories import COLUMNS, Trajectories, load_trajectories, mean_curves

TINY = ModelConfig(n_layer=2, n_head=2, n_embd=64, context=320)
# Paragraphs are 12 sentences, ~230-280 tokens at this vocabulary: the window must hold one plus EOS.
SMOKE = dict(data=BiosConfig(n=200, vocab_size=1000), model=TINY, n_paragraphs=2, n_probes=3, n_seeds=2,
             pretrain_exposures=4, pretrain_lr=3e-3, batch_size=8, window=320, lr=1e-2, n_steps=40, t0=4,
             n_injections=3, gap=4, lam_window=4, stages=("late",), device="cpu", n_boot=200)
N_BOOT = SMOKE["n_boot"]


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


# ----------------------------------------------------------------------------- forgetting laws

LAWS = {"log": lambda t: 0.9 - 0.15 * np.log(t), "linear": lambda t: 0.9 - 0.01 * t,
        "exp": lambda t: 0.3 + 0.6 * np.exp(-t / 8)}


@pytest.mark.parametrize("law", list(LAWS))
def test_aic_tells_the_law_that_made_the_data(law):
    """60 steps, noise 0.03, 20 noise draws. The exponential law with its offset holds the line as a
    limit (tau -> infinity), so on linear data it wins now and then by fitting the noise; neither
    linear nor exponential data are ever called a power law, though a log fit explains most of their
    variance (the old rule, r² >= 0.5, accepted them)."""
    t = np.arange(1, 61)
    fits = [fit_forgetting(t, LAWS[law](t) + np.random.default_rng(s).normal(0, 0.03, len(t))) for s in range(20)]
    best = [f["best"] for f in fits]
    if law == "linear":
        assert best.count("linear") >= 12 and set(best) <= {"linear", "exp"}
    else:
        assert best == [law] * 20 and min(f["delta_aic"] for f in fits) >= 2
    assert all(f["power_law"] == (law == "log") for f in fits)
    clean = LAWS[law](t)
    r2 = 1 - fit_log(t, clean)["rss"] / np.sum((clean - clean.mean()) ** 2)
    assert r2 > 0.8
    f = fit_forgetting(t, clean)
    np.testing.assert_allclose(predict(law, f["fits"][law], t), clean, atol=1e-4)   # the planted law, recovered


def test_power_law_needs_a_lead_of_two():
    """Data half log, half linear: whichever law wins, power_law is set only with a lead >= 2."""
    t = np.arange(1, 41)
    for w in np.linspace(0, 1, 11):
        f = fit_forgetting(t, w * LAWS["log"](t) + (1 - w) * LAWS["linear"](t))
        assert f["power_law"] == (f["best"] == "log" and f["delta_aic"] >= 2)
    assert fit_forgetting(t, LAWS["log"](t))["power_law"] and not fit_forgetting(t, LAWS["linear"](t))["power_law"]
    rising = fit_forgetting(t, 0.5 + 0.1 * np.log(t))                # the log law, but nothing is forgotten
    assert rising["best"] == "log" and rising["delta_aic"] >= 2 and not rising["power_law"]


def test_fit_edge_cases():
    with pytest.raises(DataError, match="^R: 4 finite points; the fits need at least 5"):
        fit_forgetting([1, 2, 3, 4, 5], [0.9, 0.8, np.nan, 0.7, 0.6])
    t = np.arange(1, 301)
    flat = fit_log(t, 0.9 - 1e-4 * np.log(t))          # t* = e^9000: no forgetting within reach
    assert flat["b"] > 0 and flat["x_intercept"] is None
    assert fit_log(t, 0.9 - 0.1 * np.log(t))["x_intercept"] == pytest.approx(np.exp(9), rel=1e-6)


# ----------------------------------------------------------------------------- controls and intervals


def built_runs(heights=(0.8, 1.2), t0=5, n_steps=30):
    """Two seeds; per seed two injected ("once") and two control paragraphs, two probes of each kind.
    Everything drifts up 0.05 nats a step; an injected paragraph also gets a bump of its height h,
    peaking 2 steps after t0, then decaying to h / 2 with tau = 2 steps: E = 0.1 + h, E of a control =
    0.25 (its maximum in a 5-step window is at the window's end)."""
    steps = np.arange(n_steps + 1)
    after = np.exp(-np.maximum(steps - t0 - 2, 0) / 2)
    shape = np.where(steps <= t0, 0, np.where(steps <= t0 + 2, (steps - t0) / 2, 0.5 + 0.5 * after))
    trajs = {}
    for seed in (0, 1):
        cols, meta = [], []
        for p, group in enumerate(["once", "once", CONTROL, CONTROL]):
            for kind in PROBE_KINDS:
                for probe in range(2):
                    extra = heights[p] * shape if group == "once" else 0.0
                    cols.append(-5.0 - 0.3 * p + 0.05 * steps + extra)
                    meta.append((10 * seed + p, group, kind, probe))
        para, group, kind, probe = (np.array(c) for c in zip(*meta))
        trajs[seed] = Trajectories(steps, np.stack(cols, axis=1), para, group, kind, probe)
    cfg = DynamicsConfig(scenarios=("once",), n_paragraphs=2, n_seeds=2, batch_size=4, batch_factor=1, n_steps=n_steps,
                         t0=t0, lam_window=5, window=64, model=ModelConfig(context=64))
    return make_pools(trajs, cfg)


def test_injected_minus_control_on_a_built_case():
    pool = built_runs()["once", "memorization"]
    s = summarize_pool(pool, n_boot=N_BOOT)
    assert s["effectivity"]["value"] == pytest.approx(1.1)            # 0.1 drift + mean height 1.0
    assert s["control_effectivity"]["value"] == pytest.approx(0.25)   # the drift alone, over the window
    e = s["effectivity_minus_control"]
    assert e["value"] == pytest.approx(0.85)
    assert 0.65 - 1e-9 <= e["low"] < 0.85 < e["high"] <= 1.05 + 1e-9   # heights 0.8 or 1.2 in every resample
    # the drift outweighs the decay: raw R rises (no forgetting seen); minus the controls it decays to 1/2
    assert s["forgetting"]["decay_b"]["value"] < 0
    f = s["forgetting_minus_control"]
    assert f["best"] == "exp" and not f["power_law"] and f["valid"] == 1.0
    exp = f["fits"]["exp"]
    assert (exp["c"], exp["a"], exp["tau"]) == (pytest.approx(0.5, abs=1e-4), pytest.approx(0.5, abs=1e-4),
                                                pytest.approx(2, rel=1e-3))
    assert f["decay_b"]["value"] > 0


def test_bump_peaking_at_the_window_edge_is_named():
    """A bump that peaks 2 steps after its injection sits inside a 5-step window; a curve that only
    drifts up peaks at the window's last step, which edge_peaks names (lam_window too short)."""
    inside = summarize(built_runs(), n_boot=20)
    assert inside["once"]["memorization"]["t_lam"]["mean_curve"] == [2] and edge_peaks(inside) == []
    flat = summarize(built_runs(heights=(0.0, 0.0)), n_boot=20)
    assert flat["once"]["memorization"]["t_lam"]["mean_curve"] == [5]
    assert edge_peaks(flat) == [f"once/{k}/injection 0" for k in PROBE_KINDS]
    assert flat["once"]["memorization"]["t_lam"]["at_edge"] == 1.0


def test_claim_numbers_pool_the_scenarios():
    """The bump pooled over one scenario is that scenario's; a base against itself gains exactly 0."""
    pools = built_runs()
    c = claim_intervals({"early": pools, "late": pools}, n_boot=50)
    e = summarize_pool(pools["once", "memorization"], n_boot=50)["effectivity_minus_control"]
    assert c["bump"]["value"] == pytest.approx(e["value"]) and c["scenarios"] == ["once"]
    assert c["stage_gain"] == {"value": 0.0, "low": 0.0, "high": 0.0} and c["aic_lead"] == {}


def test_tables_show_the_intervals_and_the_laws():
    summary = summarize(built_runs(), n_boot=50)
    f = summary["once"]["memorization"]["forgetting_minus_control"]
    text = forgetting_table({"built": summary}, "forgetting_minus_control", ("once",)).data
    assert f"exp by {f['delta_aic']:.1f}" in text and interval_text(f["decay_b"]) in text
    assert len(text.splitlines()) == 2 + len(PROBE_KINDS)
    e = summary["once"]["semantic"]["effectivity_minus_control"]
    assert f"{e['value']:.3g} [{e['low']:.3g}, {e['high']:.3g}]" in effectivity_table({"late": summary}, ("once",)).data
    assert interval_text(None) == "" and interval_text({"value": 1.0, "low": None, "high": None}) == "1"
    assert interval(float("nan"), [1.0, 2.0]) == {"value": None, "low": None, "high": None}


def values_pool(E: np.ndarray, seed: np.ndarray) -> Pool:
    """A pool whose only content is one effectivity per paragraph (controls at 0)."""
    z = np.zeros((3, len(E)))
    return Pool(np.arange(3), (0,), 1, 1, z, E[None, :], seed, z, np.zeros((1, len(E))), seed, np.zeros(1))


def test_bootstrap_draws_resample_seeds_then_their_paragraphs():
    """Seeds of 3, 4 and 5 paragraphs: a resample draws 3 seeds with replacement, each bringing as many
    paragraphs as it has (drawn with replacement); controls follow the same seeds."""
    labels = np.repeat([0, 1, 2], [3, 4, 5])
    sizes, seen, repeats = np.bincount(labels), set(), 0
    for idx, ctrl in bootstrap_draws([labels, labels], 200):
        counts = np.bincount(labels[idx], minlength=3)
        assert (counts % sizes == 0).all() and (counts // sizes).sum() == 3
        assert np.array_equal(np.bincount(labels[ctrl], minlength=3), counts)
        seen.add(tuple(counts // sizes))
        repeats += len(set(idx.tolist())) < len(idx) if counts.max() == 5 and counts.sum() == 12 else 0
    assert len(seen) == 10 and repeats > 0        # every multiset of 3 seeds; paragraphs drawn with replacement
    a, b = bootstrap_draws([labels], 5), bootstrap_draws([labels], 5)
    assert all(np.array_equal(x[0], y[0]) for x, y in zip(a, b))   # same labels, same resamples


def test_bootstrap_covers_the_truth_and_narrows_with_paragraphs():
    """Three seeds, paragraphs' E ~ N(1, 1): the 95% interval of the mean holds 1 in most of 40
    experiments, and with 4x the paragraphs it is about half as wide."""
    widths, covered = {}, 0
    for n in (4, 16):
        w = []
        for rep in range(40):
            E = np.random.default_rng([n, rep]).normal(1.0, 1.0, 3 * n)
            iv, valid = bootstrap((values_pool(E, np.repeat([0, 1, 2], n)),), "effectivity", n_boot=300)
            w.append(iv["high"] - iv["low"])
            covered += n == 16 and iv["low"] < 1.0 < iv["high"]
            assert valid == 1.0 and iv["value"] == pytest.approx(E.mean())
        widths[n] = np.mean(w)
    assert covered >= 32                                   # >= 80% of 40 at a nominal 95%
    assert 0.35 < widths[16] / widths[4] < 0.7             # ~1/2 = sqrt(4 / 16)


def test_intervals_come_from_paragraphs_not_steps():
    """Paragraphs decay at their own rates, smoothly (no step noise): an interval built from the steps
    of one mean curve would have no width; resampling paragraphs gives the spread of their rates."""
    steps, t0 = np.arange(61), 5
    rates = np.random.default_rng(0).uniform(0.05, 0.25, 12)
    l = np.where(steps[:, None] <= t0, -5.0, -4.0 - rates[None, :] * np.log1p(np.maximum(steps[:, None] - t0 - 1, 0)))
    seed = np.repeat([0, 1, 2], 4)
    pool = Pool(steps, (t0,), 1, 1, l, np.ones((1, 12)), seed, np.full((61, 12), -5.0), np.zeros((1, 12)), seed,
                np.ones(12))
    iv, valid = bootstrap((pool,), "forgetting", n_boot=N_BOOT)
    assert valid == 1.0 and iv["low"] < iv["value"] < iv["high"]
    assert iv["high"] - iv["low"] > 0.5 * 2 * 1.96 * rates.std() / np.sqrt(12)


# ----------------------------------------------------------------------------- config and injection


@pytest.mark.parametrize("kw, field", [
    (dict(n_steps=20, t0=4, gap=10, n_injections=3, lam_window=5), "n_steps"),        # last injection at 24
    (dict(n_steps=200, t0=10, gap=20, lam_window=30), "lam_window"),                  # window longer than the gap
    (dict(scenarios=("once", "forgotten")), "scenarios"),
    (dict(scenarios=("once", CONTROL)), "scenarios"),                                 # controls are not a scenario
    (dict(stages=("middle",)), "stages"),
    (dict(eval_every=3, t0=10, gap=20, n_steps=300), "eval_every"),
    (dict(batch_size=4, n_paragraphs=2), "batch_size"),                               # 6 rows at t0
    (dict(batch_factor=4, lam_window=10), "batch_factor"),                            # 10 steps / 4
    (dict(n_seeds=0), "n_seeds"),
])
def test_bad_settings_raise_before_training(kw, field):
    base = dict(n_steps=300, t0=10, gap=20, n_injections=3, lam_window=10, batch_size=16, n_paragraphs=2, batch_factor=2)
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


@pytest.mark.heavy
def test_injections_land_at_the_requested_steps_and_rows(smoke):
    cfg, out, result = smoke
    schedule, steps = result["schedule"], injection_steps(cfg)
    tok = load_tokenizer(out / "data" / "tokenizer")
    records = load_injection(out / "data" / "injection")
    by_id = {r["paragraph"]: r for r in records}
    for seed in (0, 1):
        mine = [r for r in schedule if r["seed"] == seed]
        block = {r["paragraph"] for r in seed_records(cfg, records, seed)}
        per_paragraph = {}
        for r in mine:
            per_paragraph.setdefault((r["paragraph"], r["scenario"]), []).append(r["step"])
        assert len(per_paragraph) == cfg.n_paragraphs * len(SCENARIOS) and {p for p, _ in per_paragraph} < block
        assert all(ts == list(steps[s]) for (_, s), ts in per_paragraph.items())
        traj = result["trajectories"]["late"][seed]       # the controls: probed, never injected
        controls = set(traj.paragraph[traj.scenario == CONTROL].tolist())
        assert len(controls) == cfg.n_paragraphs and controls <= block and not controls & {p for p, _ in per_paragraph}
        stream = make_stream(cfg, out / "data", records, tok, seed)
        for t in sorted({r["step"] for r in mine}):       # paragraph tokens then EOS at the recorded rows
            ids, _ = stream(t)
            here = [r for r in mine if r["step"] == t]
            assert sorted(r["row"] for r in here) == list(range(len(here)))
            for r in here:
                rec = by_id[r["paragraph"]]
                text = rec["text"] if r["text"] == "original" else rec["paraphrases"][int(r["text"].split()[1]) - 1]
                want = tok(text, add_special_tokens=False)["input_ids"]
                assert ids[r["row"], :len(want)].tolist() == want and ids[r["row"], len(want)] == tok.eos_token_id
            untouched = sorted(set(range(cfg.batch_size)) - {r["row"] for r in here})
            assert (ids[untouched] == stream.background(t)[untouched]).all()
    assert {r["text"] for r in schedule if r["scenario"] == "paraphrased"} == {"original", "paraphrase 1", "paraphrase 2"}


def test_each_seed_reads_its_own_stretch_past_the_base(smoke):
    """Seed r starts r runs' worth of passes after the base's last pass; the batch_factor x batch run
    reads the same rows in the same order, batch_factor rows of steps at a time."""
    cfg, out, _ = smoke
    batches = background(cfg, out / "data")
    starts = [stream_start(cfg, batches, s) for s in (0, 1)]
    assert starts[0] >= batches.total_steps and starts[1] - starts[0] >= cfg.n_steps
    first = {s: make_stream(cfg, out / "data", load_injection(out / "data" / "injection"),
                            load_tokenizer(out / "data" / "tokenizer"), s).background for s in (0, 1)}
    assert not np.array_equal(first[0](0), first[1](0))
    big = scaled(cfg)
    big_first = make_stream(big, out / "data", load_injection(out / "data" / "injection"),
                            load_tokenizer(out / "data" / "tokenizer"), 1).background
    assert np.array_equal(big_first(0), np.concatenate([first[1](t) for t in range(cfg.batch_factor)]))
    with pytest.raises(DataError, match="^seed: got 5"):
        stream_start(cfg, batches, 5)


# ----------------------------------------------------------------------------- smoke run


def test_smoke_run_all_scenarios(smoke):
    cfg, out, result = smoke
    traj = result["trajectories"]["late"][1]
    with open(out / "trajectories_late_seed1.csv") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == COLUMNS and len(rows) == traj.logprob.size
    assert traj.steps.tolist() == list(range(cfg.n_steps + 1))
    assert np.isfinite(traj.logprob).all() and (traj.logprob < 0).all()
    assert set(traj.scenario) == {*SCENARIOS, CONTROL} and len(traj.paragraph) == 8 * 3 * cfg.n_probes
    np.testing.assert_allclose(load_trajectories(out / "trajectories_late_seed1.csv").logprob, traj.logprob, atol=1e-5)
    # each injection raises l of its memorization probes, on average, after one update
    bumps = [tr.logprob[t + 1, m] - tr.logprob[t, m] for tr in result["trajectories"]["late"].values()
             for s, ts in injection_steps(cfg).items() for t in ts for m in [(tr.scenario == s) & (tr.kind == "memorization")]]
    assert np.mean(np.concatenate(bumps)) > 0
    saved = json.loads((out / "dynamics.json").read_text())
    assert saved["seeds"] == [0, 1] and saved["scale"]["paragraphs_per_scenario"] == 4
    for s in SCENARIOS:
        for k in PROBE_KINDS:
            v = saved["stages"]["late"][s][k]
            assert 1 <= v["t_lam"]["mean"] <= cfg.lam_window
            for name in ("effectivity", "control_effectivity", "effectivity_minus_control"):
                assert v[name]["low"] <= v[name]["value"] <= v[name]["high"]
            assert v["effectivity_minus_control"]["value"] == pytest.approx(
                v["effectivity"]["value"] - v["control_effectivity"]["value"])
            for f in (v["forgetting"], v["forgetting_minus_control"]):
                assert f is None or (set(f["fits"]) == {"log", "linear", "exp"} and f["best"] in f["fits"])
    assert len(saved["stages"]["late"]["duplicated"]["memorization"]["per_injection"]) == cfg.n_injections
    assert "early_vs_late" not in saved                    # one stage only
    for k in PROBE_KINDS:
        d, late = saved["duplicated_minus_paraphrased"]["late"][k]["effectivity"], saved["stages"]["late"]
        assert d["value"] == pytest.approx(late["duplicated"][k]["effectivity"]["value"]
                                           - late["paraphrased"][k]["effectivity"]["value"])
        assert d["low"] < d["value"] < d["high"]
    claims = saved["claims"]                               # the claims' pooled numbers: the mean of the scenarios'
    assert claims["bump"]["value"] == pytest.approx(np.mean([saved["stages"]["late"][s]["memorization"]
                                                             ["effectivity_minus_control"]["value"] for s in SCENARIOS]))
    assert set(claims["aic_lead"]) == {"duplicated", "paraphrased"} and "stage_gain" not in claims
    curves = json.loads((out / "curves.json").read_text())["curves"]["late"]
    assert set(curves) == {*SCENARIOS, CONTROL} and len(curves["once"]["memorization"][1]) == cfg.n_steps + 1


def test_prepared_data_of_the_same_config_is_reused(smoke):
    """prepare_data skips the data kn.results.done finds written with the same config."""
    cfg, out, _ = smoke
    meta = out / "data" / "meta.json"
    stamp = meta.stat().st_mtime_ns
    assert prepare_data(cfg, out / "data") == load_injection(out / "data" / "injection")
    assert meta.stat().st_mtime_ns == stamp


@pytest.mark.heavy
def test_compare_batch_sizes_at_equal_tokens(smoke):
    cfg, out, _ = smoke
    big = scaled(cfg)
    assert (big.batch_size, big.n_steps, big.t0, big.gap, big.lam_window) == (32, 10, 1, 1, 1)
    assert big.batch_size * big.n_steps == cfg.batch_size * cfg.n_steps
    res = compare_batch_sizes(cfg, out, progress=False)   # reuses the smoke run's data, base, late runs
    assert res["batch_sizes"] == [8, 32] and set(res["batches"]) == {"8", "32"}
    saved = json.loads((out / "batch_sizes.json").read_text())
    for s in SCENARIOS:
        small, large = (saved["batches"][B][s]["memorization"]["forgetting"] for B in ("8", "32"))
        diff = saved["small_minus_large"][s]["memorization"]["forgetting"]
        if small and large:
            assert diff["value"] == pytest.approx(small["decay_b"]["value"] - large["decay_b"]["value"])
    with pytest.raises(DataError, match="^batch_factor: got 1"):
        scaled(DynamicsConfig(**(SMOKE | dict(batch_factor=1))))


def test_study_reads_back_published_files_without_a_run_folder(tmp_path, monkeypatch):
    """A page re-rendered from committed files: with no run folder, study returns the published results
    of the same config and trains nothing; files of another config are not read back."""
    cfg = DynamicsConfig(**SMOKE)
    monkeypatch.setenv("KN_RESULTS_ROOT", str(tmp_path / "results"))
    monkeypatch.setenv("KN_RUNS_ROOT", str(tmp_path / "runs"))
    folder = results_dir("dynamics", "smoke")
    for name, content in (("dynamics", {"stages": {"late": {"once": 1}}}), ("curves", {"curves": {"late": [1, 2]}}),
                          ("batch_sizes", {"factor": 4})):
        write_json(folder / f"{name}.json", config=asdict(cfg), seed=cfg.seed, **content)

    def trains(*args, **kwargs):
        raise AssertionError("trained")
    monkeypatch.setattr(kn.dynamics, "run_dynamics", trains)
    monkeypatch.setattr(kn.dynamics, "from_profile", lambda profile, seed=0: cfg)
    r = study("smoke")
    assert r["config"] == cfg and r["batch"]["factor"] == 4
    assert r["dynamics"]["stages"] == {"late": {"once": 1}} and r["dynamics"]["curves"] == {"late": [1, 2]}
    monkeypatch.setattr(kn.dynamics, "from_profile", lambda profile, seed=0: replace(cfg, n_boot=100))
    with pytest.raises(AssertionError, match="trained"):
        study("smoke")


def test_mean_curves_average_each_group_and_kind_over_runs():
    """Two runs of four probes; the duplicated/semantic probes of both average to -2."""
    meta = dict(paragraph=np.array([0, 1, 1, 0]), scenario=np.array(["duplicated", "duplicated", "once", CONTROL]),
                kind=np.array(["semantic", "semantic", "memorization", "semantic"]), probe=np.zeros(4, int))
    a = Trajectories(np.array([0, 2]), np.array([[-1.0, -3.0, -4.0, -5.0], [-0.5, -3.5, -2.0, -6.0]]), **meta)
    b = Trajectories(np.array([0, 2]), np.array([[-2.0, -2.0, -4.0, -7.0], [-2.0, -2.0, -4.0, -8.0]]), **meta)
    curves = mean_curves([a, b])
    assert list(curves) == ["once", "duplicated", CONTROL]            # SCENARIOS, then the controls; present only
    assert curves["duplicated"]["semantic"] == ([0, 2], [-2.0, -2.0])
    assert curves["once"]["memorization"] == ([0, 2], [-4.0, -3.0]) and curves[CONTROL]["semantic"][1] == [-6.0, -7.0]
    with pytest.raises(DataError, match="^trajectories:"):
        mean_curves([a, Trajectories(np.array([0, 3]), b.logprob, **meta)])


def test_interrupted_continued_pretraining_resumes_bit_exactly(smoke, tmp_path, monkeypatch, sigterm_at_step):
    """kn.train.fit's checkpoint and resume cover the continued run: a SIGTERM at step 11 stops it
    (Interrupted), running it again continues from the checkpoint to the same trajectories and schedule."""
    from kn.dynamics import continue_pretraining
    from kn.train import Interrupted
    cfg, out, result = smoke
    records = load_injection(out / "data" / "injection")
    sigterm_at_step(11)
    with pytest.raises(Interrupted, match="step 11 of 40"):
        continue_pretraining(cfg, out / "data", result["bases"]["late"], records, tmp_path / "run", 1, progress=False)
    monkeypatch.undo()
    traj, schedule = continue_pretraining(cfg, out / "data", result["bases"]["late"], records, tmp_path / "run", 1,
                                          progress=False)
    want = result["trajectories"]["late"][1]
    assert traj.steps.tolist() == want.steps.tolist() and np.array_equal(traj.logprob, want.logprob)
    assert schedule == [r for r in result["schedule"] if r["seed"] == 1]
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == cfg.n_steps
