"""kn.bound, kn.capacity and bioD training (kn.batches, kn.train): the Theorem 3.2 bounds on hand-computed cases, the
full bound at zero loss and ~0 bits at chance, quantization round-trips, a bioD folder re-rendered
per epoch (no double EOS, junk ratio, bit-exact resume), a two-point sweep end to end and the law's
fit with its interval.   Run: OMP_NUM_THREADS=1 pytest tests/test_capacity.py
"""
import json
import math

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from kn.batches import Batches
from kn.bound import (N0_BIOS, S0_BIOS, attribute_of_tokens, biod_bound, bios_bound, bios_max_bits, dequantize,
                      max_bits, quantize_model, quantize_tensor, run_bound, stores_values)
from kn.capacity import (batch_for, best_lr, capacity_point, capacity_sweep, fit_all, fit_capacity, grid_points,
                         model_params, normalise_point, profile_points, run_folder, train_grid)
from kn.data.biod import ATTR0, DOMAIN, EOS, JUNK_PERSON, BioDConfig, bound_inputs, generate_biod, render, write_biod
from kn.errors import DataError
from kn.models import ModelConfig, build_model
from kn.profiles import settings
from kn.sweep import holding, read_rows
from kn.train import curve_stops, train
from kn.train_config import TrainConfig

SIZES = {"N0": 100, "N": 10, "K": 2, "C": 2, "D": 4, "L": 2, "T": 5}
TINY_BIOD = dict(n=40, k=2, c=1, d=4, l=1, t=8, n_first=10, n_middle=10, n_last=10)
TINY = ModelConfig(n_layer=1, n_head=2, n_embd=16, context=32)


def losses(name, value, value1):
    return {"loss_name": name, "loss_value": value, "loss_value1": value1}


# ---- bounds ----------------------------------------------------------------------------------


def test_biod_bound_by_hand():
    b = biod_bound(SIZES, losses(1.0, 0.5, 0.2))
    name = 10 * math.log2(90 / math.e ** 1.0)
    value = 10 * 2 * math.log2(4 ** 2 / math.e ** 0.5)
    diversity = 2 * 4 * math.log2((5 ** 2 - 4) / (4 * math.e ** 0.2))
    assert b["bits_name"] == pytest.approx(name) and b["bits_value"] == pytest.approx(value)
    assert b["bits_diversity"] == pytest.approx(diversity)
    assert b["bits"] == pytest.approx(name + value + diversity)
    clipped = biod_bound(SIZES, losses(10.0, 0.5, 0.2))       # 90 / e^10 < 1: the name term is clipped
    assert clipped["bits_name"] == 0 and clipped["bits"] == pytest.approx(value + diversity)


def test_zero_loss_gives_the_full_bound():
    full = 10 * math.log2(90) + 10 * 2 * 2 * math.log2(4) + 2 * 4 * math.log2((5 ** 2 - 4) / 4)
    assert biod_bound(SIZES, losses(0, 0, 0))["bits"] == pytest.approx(full)


def test_max_bits_counts_names_at_their_best_loss():
    """A perfect model still draws a name uniformly from the N that exist: loss ln N, not 0."""
    assert max_bits(SIZES) == pytest.approx(biod_bound(SIZES, losses(math.log(10), 0, 0))["bits"])
    assert biod_bound(SIZES, losses(0, 0, 0))["bits"] - max_bits(SIZES) == pytest.approx(10 * math.log2(10))
    assert max_bits({**SIZES, "N0": 15}) == pytest.approx(10 * 2 * 2 * 2 + 2 * 4 * math.log2(21 / 4))  # N0 - N < N
    assert bios_max_bits(30) == pytest.approx(bios_bound(30, math.log(30), 0.0)["bits"])


def test_chance_gives_zero_and_never_negative():
    chance = losses(math.log(90), 2 * math.log(4), math.log(21 / 4))
    assert biod_bound(SIZES, chance)["bits"] == pytest.approx(0, abs=1e-9)
    huge = {"N0": 10 ** 12, "N": 10 ** 6, "K": 8, "C": 10, "D": 10 ** 6, "L": 50, "T": 1000}   # T^L = 1e150
    assert biod_bound(huge, losses(1e6, 1e6, 1e6))["bits"] == 0
    assert max_bits(huge) == pytest.approx(1e6 * math.log2((10 ** 12 - 10 ** 6) / 1e6) + 8e7 * math.log2(1e6)
                                           + 8e6 * (150 * math.log2(10) - math.log2(1e6)), rel=1e-12)
    assert biod_bound({**SIZES, "D": 25}, losses(0, 0, 0))["bits_diversity"] == 0   # D = T^L: nothing to learn
    with pytest.raises(DataError, match="^loss_value"):
        biod_bound(SIZES, losses(1.0, -1.0, 0.0))


def test_bios_bound():
    assert S0_BIOS == 2 * 67200 * 200 * 300 * 100 * 263 and N0_BIOS == 160_000_000
    b = bios_bound(100, 3.0, 20.0)                            # no pronoun loss: S0 / 2
    by_hand = 100 * math.log2(N0_BIOS / math.e ** 3) + 100 * math.log2(S0_BIOS / 2 / math.e ** 20)
    assert b["bits"] == pytest.approx(by_hand)
    with_pronoun = bios_bound(100, 3.0, 20.0, loss_pronoun=0.0)
    assert with_pronoun["bits"] == pytest.approx(b["bits"] + 100)   # the pronoun adds 1 bit per person
    assert bios_bound(100, 1e9, 1e9)["bits"] == 0


# ---- quantization ----------------------------------------------------------------------------


def test_quantize_round_trip():
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(0))
    errs = {}
    for bits in (8, 4):
        q, scale = quantize_tensor(w, bits)
        assert q.dtype == torch.int8 and int(q.abs().max()) == 2 ** (bits - 1) - 1
        err = (dequantize(q, scale) - w).abs()
        assert torch.all(err.amax(dim=1) <= scale / 2 + 1e-7)
        errs[bits] = float(torch.linalg.norm(dequantize(q, scale) - w) / torch.linalg.norm(w))
    assert errs[8] < 1e-2 and errs[8] < errs[4] < 0.2
    with pytest.raises(DataError, match="^bits"):
        quantize_tensor(w, 16)


def test_quantized_model_forward_is_close_for_int8():
    model = build_model(ModelConfig(n_layer=2, n_head=2, n_embd=32, vocab_size=50, context=32)).eval()
    q8, q4 = quantize_model(model, 8), quantize_model(model, 4)
    x = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, l8, l4 = (m(input_ids=x).logits for m in (model, q8, q4))
    assert (l8 - ref).abs().max() < 0.05 * ref.abs().max() and (l8 - ref).abs().max() < (l4 - ref).abs().max()
    w = q8.gpt_neox.layers[0].mlp.dense_h_to_4h.weight
    _, scale = quantize_tensor(w, 8)
    assert torch.allclose(w / scale[:, None], torch.round(w / scale[:, None]), atol=1e-3)    # on the int8 grid
    assert not torch.equal(w, model.gpt_neox.layers[0].mlp.dense_h_to_4h.weight)            # the original is kept
    assert torch.equal(q8.gpt_neox.final_layer_norm.weight, model.gpt_neox.final_layer_norm.weight)
    keep = quantize_model(model, 4, embeddings=False)
    assert torch.equal(keep.get_input_embeddings().weight, model.get_input_embeddings().weight)


# ---- training on a bioD folder ---------------------------------------------------------------


@pytest.fixture(scope="module")
def biod_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("biod")
    plain = write_biod(BioDConfig(**TINY_BIOD), root / "plain")
    junk = write_biod(BioDConfig(**TINY_BIOD, domain_token=True), root / "junk", junk_ratio=3.0)
    return str(plain), str(junk)


def cfg(data, out, **kw):
    base = dict(data=data, out=str(out), model=TINY, window=32, batch_size=4, passes=2, lr=3e-3, log_every=5)
    return TrainConfig(**(base | kw))


def test_batches_rerender_every_epoch(biod_data, tmp_path):
    b = Batches(cfg(biod_data[0], tmp_path), EOS, 1)
    d0, d1 = b.docs(0), b.docs(1)
    assert len(d0) == TINY_BIOD["n"] and sorted(d0.person) == sorted(d1.person)
    by_person = [{p: sorted(d.doc(i)) for i, p in enumerate(d.person)} for d in (d0, d1)]
    assert by_person[0] == by_person[1]                                   # same tokens per biography
    assert any(not np.array_equal(d0.doc(i), d1.doc(list(d1.person).index(p))) for i, p in enumerate(d0.person))
    r0, r1 = b.epoch_rows(0)[0], b.epoch_rows(1)[0]
    assert r0.shape == r1.shape and not np.array_equal(r0, r1)
    for rows in (r0, r1):
        stream = rows.ravel()
        assert not np.any((stream[1:] == EOS) & (stream[:-1] == EOS))    # no double EOS
    assert b.total_steps == 2 * b.steps_per_epoch                         # one epoch = one exposure


def test_junk_ratio_and_domain_token(biod_data, tmp_path):
    b = Batches(cfg(biod_data[1], tmp_path), EOS, 1)
    d0, d1 = b.docs(0), b.docs(1)
    junk = d0.person == JUNK_PERSON
    lengths = d0.lengths() + 1                                            # + the EOS pack puts back
    ratio = lengths[junk].sum() / lengths[~junk].sum()
    assert abs(ratio - 3.0) < lengths.max() / lengths[~junk].sum()       # to within one document
    assert np.all(d0.ids[d0.offsets[:-1][~junk]] == DOMAIN) and not np.any(d0.ids[d0.offsets[:-1][junk]] == DOMAIN)
    j0 = sorted(tuple(d0.doc(i)) for i in np.nonzero(junk)[0])
    j1 = sorted(tuple(d1.doc(i)) for i in np.nonzero(d1.person == JUNK_PERSON)[0])
    assert j0 != j1                                                       # junk re-drawn every epoch
    with pytest.raises(DataError, match="^mode"):
        Batches(cfg(biod_data[1], tmp_path, mode="mixed"), EOS, 1)


def test_biod_resume_is_bit_exact(biod_data, tmp_path):
    full = train(cfg(biod_data[1], tmp_path / "a", checkpoint_every=3), progress=False)
    train(cfg(biod_data[1], tmp_path / "b", checkpoint_every=3, max_steps=4), progress=False)
    rest = train(cfg(biod_data[1], tmp_path / "b", checkpoint_every=3), resume=True, progress=False)
    assert rest["steps"] == full["steps"] > 6
    a, b = (AutoModelForCausalLM.from_pretrained(str(tmp_path / r / "model")).state_dict() for r in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---- sweep and the law -----------------------------------------------------------------------


def test_two_point_sweep_and_fit(tmp_path):
    base = dict(TINY_BIOD, n_layer=1, n_head=2, exposures=3, window=32, batch_size=4, lr=3e-3, quantize=True)
    points = [dict(base, n_embd=16), dict(base, n_embd=32)]
    csv, runs = tmp_path / "capacity.csv", tmp_path / "runs"
    rows = capacity_sweep(points, csv, runs_dir=runs)
    assert len(rows) == 2 and capacity_sweep(points, csv, runs_dir=runs) == []
    table = read_rows(csv)
    for r in table:
        assert 0 <= r["bits"] <= r["max_bits"] and r["n_params_non_embedding"] < r["n_params"]
        assert r["ratio"] == pytest.approx(r["bits"] / r["n_params"]) and r["tokens_per_s"] > 0
        assert r["loss_name"] > 0 and r["loss_value1"] <= r["loss_value"]
        assert np.mean(r["loss_value_by_attribute"]) == pytest.approx(r["loss_value"])   # K = 2 attributes
        assert r["chance_value"] == pytest.approx(math.log(4))                          # C ln D
        assert (r["stores_values"] == "True") == (0 < r["bits_value"] >= 0.5 * r["bits"])
    again = run_bound(run_folder(points[0], runs) / "run", bits=8)
    assert again["bits"] == pytest.approx(next(r for r in table if r["n_embd"] == 16)["bits_int8"], rel=1e-6)
    with pytest.raises(DataError, match="^rows"):   # 3 exposures store no values: nothing to fit
        fit_capacity(table, exposures=3, max_fraction=1.0)
    planted = [dict(r, bits=r["n_params"] / 1e3, bits_value=r["n_params"] / 1e3) for r in table]   # the fit alone
    fit = fit_capacity(planted, exposures=3, max_fraction=1.0)
    assert fit["n_points"] == 2 and fit["ci_low"] <= fit["ratio"] <= fit["ci_high"]


def test_train_grid_groups_each_size_and_leaves_held_points(tmp_path):
    """Each size's lrs train as one group (kn.group) ahead of the sweep, which measures them; a size another
    sweep holds is left to the sweep, which trains its runs one by one."""
    base = dict(TINY_BIOD, n_layer=1, n_head=2, exposures=3, window=32, batch_size=4)
    points = [dict(base, n_embd=w, lr=lr) for w in (16, 32) for lr in (3e-3, 1e-2)]
    csv, runs = tmp_path / "grid.csv", tmp_path / "runs"
    with holding([normalise_point(p) for p in points[2:]], csv):            # another sweep holds width 32
        train_grid(points, csv, runs)
    record = {i: run_folder(p, runs) / "run" / "train.json" for i, p in enumerate(points)}
    assert [i for i, r in record.items() if r.is_file()] == [0, 1]
    assert all(json.loads(record[i].read_text())["group"]["lrs"] == [3e-3, 1e-2] for i in (0, 1))
    mtime = record[0].stat().st_mtime_ns
    assert len(capacity_sweep(points, csv, runs_dir=runs)) == 4
    assert record[0].stat().st_mtime_ns == mtime and "group" not in json.loads(record[2].read_text())


def test_bios_point(tmp_path):
    point = dict(data="bioS", n=30, augment="single", vocab_size=400, n_layer=1, n_head=2, n_embd=16,
                 exposures=1, window=32, batch_size=4)
    r = capacity_point(point, runs_dir=tmp_path)
    assert r["max_bits"] == pytest.approx(bios_max_bits(30)) and 0 <= r["bits"] <= r["max_bits"]
    assert r["loss_name"] > 0 and r["loss_value"] > r["loss_name"] and math.isnan(r["loss_value1"])
    again = capacity_point(point, runs_dir=tmp_path)                      # a finished run is not retrained
    assert again["steps"] == r["steps"] and again["bits"] == pytest.approx(r["bits"])
    with pytest.raises(DataError, match="^junk_ratio"):
        capacity_point(dict(point, junk_ratio=1.0))
    with pytest.raises(DataError, match="^point"):
        capacity_point(dict(point, layers=3))


def test_fit_capacity_recovers_a_planted_ratio():
    rng = np.random.default_rng(0)
    params = np.geomspace(1e4, 1e6, 12)
    rows = [{"exposures": 1000, "n_params": p, "bits": 2 * p * (1 + 0.03 * rng.standard_normal()), "max_bits": 8 * p}
            for p in params]
    rows += [{"exposures": 1000, "n_params": 1e7, "bits": 1e6, "max_bits": 1e6},      # plateau: not capacity-bound
             {"exposures": 100, "n_params": 1e5, "bits": 1e5, "max_bits": 1e7}]       # other exposures
    rows = [dict(r, bits_value=0.9 * r["bits"]) for r in rows]                        # values: most of the bits
    fit = fit_capacity(rows, exposures=1000)
    assert fit["n_points"] == 12 and fit["ci_low"] < 2 < fit["ci_high"] and fit["ci_high"] - fit["ci_low"] < 0.1
    assert fit["slope_low"] < 1 < fit["slope_high"] and fit["slope_high"] - fit["slope_low"] < 0.05 and fit["n_sizes"] == 12
    sub = [dict(r, bits=r["bits"] ** 0.8) for r in rows[:12]]                         # bits ~ params^0.8: slope 0.8
    assert fit_capacity(sub, exposures=1000)["slope"] == pytest.approx(0.8, abs=0.02)
    at_chance = [{"exposures": 1000, "n_params": p, "bits": 0.3 * p, "max_bits": 8 * p, "bits_value": 0.1 * p}
                 for p in (2e4, 5e4)]                                     # mostly names: flagged, left out
    fit = fit_capacity(rows + at_chance, exposures=1000)
    assert fit["n_points"] == 12 and fit["n_rows"] == 15 and fit["n_storing_values"] == 13
    fits = fit_all(rows + [dict(r, arch="llama") for r in rows[:3]])
    assert fits["bits@1000"]["n_points"] == 12 and "llama:bits@1000" in fits and "error" in fits["bits@100"]
    with pytest.raises(DataError, match="^rows"):
        fit_capacity(rows, exposures=300)


def test_attribute_of_tokens_follows_each_sentence():
    cfg = BioDConfig(**TINY_BIOD, domain_token=True)
    biod = generate_biod(cfg)
    docs = render(biod, epoch=1).ids.reshape(cfg.n, -1)
    attr = attribute_of_tokens(cfg, docs)
    s = cfg.sentence_length
    assert (attr[:, 0] == -1).all() and (attr[:, -1] == -1).all()          # <domain>, <eos>
    for j in range(cfg.k):                                                   # word 5 of sentence j names it
        assert (attr[:, 1 + j * s: 1 + (j + 1) * s] == (docs[:, 1 + j * s + 5] - ATTR0)[:, None]).all()
    assert sorted(np.unique(attr[:, 1:-1])) == list(range(cfg.k))


@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_profile_points_follow_the_recipe(profile):
    """Part 3.3's recipe: every point reaches >= min_steps optimizer steps (Batches' own count on the
    point's data), its data hold >= 2x the value bits of its model at 2 bits/param (so the fit's
    half-of-max limit never cuts a model at 2), embeddings a minority; the lr is its size's."""
    from kn.profiles import settings
    s = settings("capacity", profile)
    sizes = {(p["arch"], p["n_layer"], p["n_head"], p["n_embd"]) for p in grid_points(profile)}
    lrs = {size: 1e-3 * (i + 1) for i, size in enumerate(sorted(sizes))}
    points = profile_points(profile, lrs)
    assert len(points) >= len(sizes) and len(grid_points(profile)) == len(sizes) * len(s["lr_grid"])
    for p in points:
        cfg = BioDConfig(**{k: p[k] for k in ("n", "k", "c", "d", "l", "t", "n_first", "n_middle", "n_last",
                                              "domain_token")})
        size = (p["n_layer"], p["n_head"], p["n_embd"])
        params = model_params(s, size, p["arch"])
        assert p["n"] * cfg.k * cfg.c * math.log2(cfg.d) >= 4 * params, p
        assert p["lr"] == lrs[(p["arch"], *size)]
        if profile == "cpu":                                  # render the data: count windows as Batches does
            rows = int(render(generate_biod(cfg)).n_tokens * (1 + p["junk_ratio"])) // p["window"]   # + junk
            assert round(p["exposures"] * (rows // p["batch_size"])) >= s["min_steps"], p
    if profile == "cpu":
        params = sorted(model_params(s, size) for _, *size in sizes)
        assert len(params) >= 6 and params[-1] >= 10 * params[0]            # >= 6 sizes over >= 10x


def test_batch_for_reaches_min_steps_or_falls_to_one():
    p = normalise_point(dict(TINY_BIOD, window=16, exposures=10))
    rows = BioDConfig(**TINY_BIOD).doc_length() * TINY_BIOD["n"] // 16
    for min_steps in (1, 50, 10 * rows // 3, 10 * rows):
        b = batch_for(p, min_steps)
        assert 10 * (rows // b) >= min_steps and 10 * (rows // (b + 1)) < min_steps     # the largest such batch
    assert batch_for(p, 100 * rows) == 1                                    # cannot reach: batch 1, steps say so


def test_curve_stops_are_log_spaced_and_end_at_the_run():
    assert curve_stops(50_000, 4) == [6250, 12500, 25000, 50000]
    assert curve_stops(3, 5) == [1, 2, 3]


def test_curve_point_trains_in_segments_bit_identical(tmp_path):
    """A point measured along training (curve) trains in segments that resume: the same model and bits
    as one uninterrupted run, and bits at each stop."""
    base = dict(TINY_BIOD, n_layer=1, n_head=2, n_embd=16, exposures=4, window=32, batch_size=4, lr=3e-3)
    one = capacity_point(base, runs_dir=tmp_path / "a")
    seg = capacity_point(dict(base, curve=3), runs_dir=tmp_path / "b")
    assert seg["bits"] == one["bits"] and seg["loss_value"] == one["loss_value"] and seg["steps"] == one["steps"]
    a, b = (AutoModelForCausalLM.from_pretrained(str(run_folder(point, tmp_path / r) / "run" / "model")).state_dict()
            for point, r in ((base, "a"), (dict(base, curve=3), "b")))
    assert all(torch.equal(a[k], b[k]) for k in a)
    import json
    curve = json.loads(seg["curve"])
    assert [s for s, _ in curve] == curve_stops(one["steps"], 3) and curve[-1][1] == seg["bits"]
    assert json.loads(one["curve"]) == [[one["steps"], one["bits"]]]


def test_stores_values_means_value_bits_are_most_of_the_bits():
    assert stores_values({"bits": 100.0, "bits_value": 60.0}) and not stores_values({"bits": 100.0, "bits_value": 40.0})
    assert not stores_values({"bits": 0.0, "bits_value": 0.0})


def test_best_lr_picks_the_most_bits_per_size():
    rows = [{"arch": "gpt2", "n_layer": 2, "n_head": 2, "n_embd": 16, "lr": 1e-3, "bits": 5.0},
            {"arch": "gpt2", "n_layer": 2, "n_head": 2, "n_embd": 16, "lr": 1e-2, "bits": 9.0},
            {"arch": "gpt2", "n_layer": 2, "n_head": 2, "n_embd": 32, "lr": 1e-3, "bits": 7.0},
            {"arch": "gpt2", "n_layer": 2, "n_head": 2, "n_embd": 32, "lr": 3e-2, "bits": 1.0}]
    assert best_lr(rows) == {("gpt2", 2, 2, 16): 1e-2, ("gpt2", 2, 2, 32): 1e-3}
    grid = grid_points("cpu")                                      # 6 GPT-2 and 3 LLaMA sizes, 3 lrs each
    assert len(grid) == 27 and len({(p["arch"], p["n_embd"]) for p in grid}) == 9 and not any(p["junk_ratio"] for p in grid)


@pytest.mark.heavy
def test_kn_sweep_trains_the_profile_and_refuses_other_chapters(tmp_path, monkeypatch, capsys):
    """`kn sweep capacity` runs the study into the chapter's results folder, each size's lr grid trained as
    one group (kn.group; a second call trains nothing: every point is done); another chapter is one line, exit 2."""
    from kn.cli import main
    monkeypatch.setenv("KN_RESULTS_ROOT", str(tmp_path / "results"))
    monkeypatch.setenv("KN_RUNS_ROOT", str(tmp_path / "runs"))
    assert main(["sweep", "capacity", "--profile", "smoke"]) == 0
    rows = read_rows(tmp_path / "results" / "capacity" / "smoke" / "sweep.csv")
    assert len(rows) == 2 and all(r["steps"] >= 40 for r in rows)
    grid = read_rows(tmp_path / "results" / "capacity" / "smoke" / "grid.csv")
    runs = [json.loads(p.read_text()) for p in (tmp_path / "runs").rglob("train.json")]
    lrs = settings("capacity", "smoke")["lr_grid"]
    assert len(grid) == 2 * len(lrs) and sum(r.get("group", {}).get("lrs") == lrs for r in runs) == len(grid)
    mtime = (tmp_path / "results" / "capacity" / "smoke" / "sweep.csv").stat().st_mtime_ns
    assert main(["sweep", "capacity", "--profile", "smoke"]) == 0
    assert (tmp_path / "results" / "capacity" / "smoke" / "sweep.csv").stat().st_mtime_ns == mtime
    assert main(["sweep", "onelayer", "--profile", "smoke"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("kn: error: chapter: got 'onelayer'")
