"""kn.onelayer (Xu & Chen): attention-only points have no MLP, the rank-1 share of a planted rank-1
update is 1 and of a random one well below, point validation names the key, and the smoke grid
runs end to end with pretraining shared between points that differ only in finetuning, the finetune
lr chosen on a validation slice and memorization measured along pretraining (about 20 s):

    OMP_NUM_THREADS=1 pytest tests/test_onelayer.py
"""
import math
import os

import numpy as np
import pytest
import torch

from kn.errors import DataError
from kn.extraction import chosen_lr, finetuned_model
from kn.models import build_model, formula_params, n_params
from kn.onelayer import (DEFAULTS, MATRICES, check_point, grid_rows, lora_rank, matrix_shares, onelayer_point,
                         onelayer_points, onelayer_sweep, point_config, point_dirs, random_rank1_share, rank1_share,
                         update_spectrum)
from kn.profiles import TABLES
from kn.results import read_json
from kn.sweep import read_rows, run_sweep
from kn.train import curve_stops

TINY = {"n_embd": 32, "n_head": 2, "vocab_size": 64, "window": 16, "runs_dir": "unused"}


def tiny_model(arch):
    return build_model(point_config(TINY | {"arch": arch}).model)


def pretrainings(runs) -> list[str]:
    return sorted(p.name for p in (runs / "pretrain").iterdir() if p.is_dir())


def mlp_params(model) -> int:
    """Trainable MLP parameters (attn_only keeps zero-width MLP layers and a frozen zero bias)."""
    return sum(p.numel() for n, p in model.named_parameters() if ".mlp." in n and p.requires_grad)


# ----------------------------------------------------------------------------- points


def test_attn_only_has_no_mlp(one_thread):
    with_mlp, without = tiny_model("attn_mlp"), tiny_model("attn_only")
    d = TINY["n_embd"]
    assert mlp_params(without) == 0
    assert mlp_params(with_mlp) == 2 * d * 4 * d + 4 * d + d       # h -> 4h and 4h -> h, weights and biases
    assert n_params(with_mlp)["all"] - n_params(without)["all"] == mlp_params(with_mlp)
    assert point_config(TINY | {"arch": "attn_only"}).model.n_layer == 1


@pytest.mark.parametrize("bad, key", [({"width": 3}, "point"), ({"arch": "mlp_only"}, "arch"),
                                      ({"finetune": "lora0"}, "finetune"), ({"finetune": "foo"}, "finetune"),
                                      ({"multiplicity": 0}, "multiplicity"), ({"multiplicity": 2.0}, "multiplicity"),
                                      ({"runs_dir": None}, "runs_dir"), ({"curve": -1}, "curve"),
                                      ({"finetune_lr_grid": 1e-3}, "finetune_lr_grid"), ({"lora_lr_grid": "x"}, "lora_lr_grid")])
def test_check_point_names_the_key(bad, key):
    with pytest.raises(DataError, match=f"^{key}"):
        check_point(TINY | bad)


def test_lora_rank_and_defaults():
    assert (lora_rank("full"), lora_rank("lora1"), lora_rank("lora16")) == (0, 1, 16)
    p = check_point({"runs_dir": "r"})
    assert p["arch"] == "attn_mlp" and p["multiplicity"] == 1
    assert point_config(p | {"multiplicity": 5}).data.augment == "multi5"


def test_points_differing_in_finetuning_share_pretraining(tmp_path):
    a = check_point(TINY | {"runs_dir": str(tmp_path)})
    b = a | {"train_fraction": 0.25, "finetune": "lora2", "finetune_lr": 1e-2, "valid_fraction": 0.2,
             "lora_lr_grid": [1e-2, 3e-2]}
    c, d = a | {"multiplicity": 2}, a | {"curve": 3}                   # a curve trains in segments: its own folder
    assert point_dirs(a)[0] == point_dirs(b)[0] and point_dirs(a)[1] != point_dirs(b)[1]
    assert point_dirs(a)[0] != point_dirs(c)[0] and point_dirs(a)[0] != point_dirs(d)[0]


def test_lr_grid_by_finetuning_kind():
    """Full points take finetune_lr_grid, LoRA points lora_lr_grid (kn.extraction chooses among it)."""
    p = TINY | {"valid_fraction": 0.2, "finetune_lr_grid": [1e-4, 1e-3], "lora_lr_grid": [1e-2]}
    full, lora = point_config(p), point_config(p | {"finetune": "lora1"})
    assert full.finetune_lr_grid == (1e-4, 1e-3) and lora.finetune_lr_grid == (1e-2,)
    assert full.data.valid_fraction == 0.2 and lora.lora_rank == 1


# ----------------------------------------------------------------------------- update spectrum


def test_rank1_share_on_singular_values():
    assert rank1_share([3.0, 0.0, 0.0]) == 1.0
    assert rank1_share([1.0, 1.0, 1.0, 1.0]) == pytest.approx(0.25)
    assert math.isnan(rank1_share([0.0, 0.0]))


def saved_pair(tmp_path, arch, update):
    """Two saved tiny models: the second is the first plus update(weight) on attention.dense."""
    model = tiny_model(arch)
    model.save_pretrained(tmp_path / "pre")
    w = model.gpt_neox.layers[0].attention.dense.weight
    with torch.no_grad():
        w += update(w)
    model.save_pretrained(tmp_path / "ft")
    return update_spectrum(tmp_path / "pre", tmp_path / "ft")


def test_planted_rank1_update(tmp_path, one_thread):
    g = torch.Generator().manual_seed(0)
    spectrum = saved_pair(tmp_path, "attn_mlp", lambda w: torch.outer(torch.randn(w.shape[0], generator=g),
                                                                       torch.randn(w.shape[1], generator=g)))
    shares = matrix_shares(spectrum)
    assert set(shares) == {f"rank1_{m}" for m in MATRICES}
    assert shares["rank1_attn_out"] == pytest.approx(1.0, abs=1e-6)
    assert all(math.isnan(v) for k, v in shares.items() if k != "rank1_attn_out")   # nothing else moved


def test_random_update_is_not_rank1(tmp_path, one_thread):
    g = torch.Generator().manual_seed(0)
    spectrum = saved_pair(tmp_path, "attn_mlp", lambda w: torch.randn(w.shape, generator=g))
    s = next(v for k, v in spectrum.items() if MATRICES["attn_out"] in k)
    assert len(s) == TINY["n_embd"] and np.all(s > 0)                # full rank
    assert rank1_share(s) < 0.3


def test_attn_only_mlp_shares_are_nan(tmp_path, one_thread):
    spectrum = saved_pair(tmp_path, "attn_only", lambda w: torch.ones_like(w))
    assert not any("mlp" in k for k in spectrum)                    # empty matrices are left out
    shares = matrix_shares(spectrum)
    assert math.isnan(shares["rank1_mlp_in"]) and math.isnan(shares["rank1_mlp_out"])
    assert shares["rank1_attn_out"] == pytest.approx(1.0)


def test_update_spectrum_refuses_other_shapes(tmp_path, one_thread):
    tiny_model("attn_mlp").save_pretrained(tmp_path / "a")
    tiny_model("attn_only").save_pretrained(tmp_path / "b")
    with pytest.raises(DataError, match="^finetuned_dir"):
        update_spectrum(tmp_path / "a", tmp_path / "b")


# ----------------------------------------------------------------------------- the smoke sweep


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("onelayer")
    csv, runs = root / "sweep.csv", root / "runs"
    return csv, runs, onelayer_sweep("smoke", csv, runs_dir=runs)


def test_smoke_sweep_rows(smoke):
    csv, runs, written = smoke
    rows = read_rows(csv)
    grid = TABLES["onelayer"]["smoke"]
    assert len(written) == len(rows) == len(grid["arch"]) * len(grid["multiplicity"]) == 4
    assert {(r["arch"], r["multiplicity"]) for r in rows} == {(a, m) for a in grid["arch"] for m in grid["multiplicity"]}
    for r in rows:
        assert 0 <= r["acc_test"] <= 1 and 0 <= r["acc_train"] <= 1 and 0 < r["majority_baseline"] <= 1
        assert all(f"rank1_{m}" in r for m in MATRICES)
        assert 0 < r["rank1_qkv"] <= 1 and 0 < r["rank1_embed"] <= 1
        model = point_config({k: r[k] for k in DEFAULTS}).model
        assert r["n_params_non_embedding"] == formula_params(model)["non_embedding"]   # two ways
        mlp = [float(r["rank1_mlp_in"]), float(r["rank1_mlp_out"])]   # the CSV holds NaN as "nan"
        assert all(math.isnan(v) for v in mlp) if r["arch"] == "attn_only" else all(0 < v <= 1 for v in mlp)
    assert len(pretrainings(runs)) == 4                                 # one per (arch, multiplicity)


def test_smoke_rows_choose_the_lr_on_the_validation_slice(smoke):
    """Each point's finetune lr is one of the grid's, picked on its validation slice, and the update
    spectrum is that of the chosen lr's model."""
    csv, runs, _ = smoke
    grid = TABLES["onelayer"]["smoke"]["finetune_lr_grid"]
    for r in read_rows(csv):
        assert r["finetune_lr_chosen"] in grid and 0 <= r["acc_valid"] <= 1
        point = {k: r[k] for k in DEFAULTS if k != "runs_dir"} | {"runs_dir": str(runs)}
        result = read_json(point_dirs(point)[1] / "result.json")
        assert [c["finetune_lr"] for c in result["recipes"]] == grid
        assert chosen_lr(result) == r["finetune_lr_chosen"]
        assert finetuned_model(point_dirs(point)[1], result).parent.name == f"lr{r['finetune_lr_chosen']:g}"


def test_smoke_rows_keep_the_memorization_curve(smoke):
    """The curve holds memorization at log-spaced pretraining steps, ending at the run's last step with
    the row's own memorization."""
    csv, _, _ = smoke
    stops = TABLES["onelayer"]["smoke"]["curve"]
    for r in read_rows(csv):
        curve = r["memorization_curve"]                                 # read_rows parses JSON
        steps = [s for s, _ in curve]
        assert len(curve) == stops and steps == curve_stops(steps[-1], stops)
        assert curve[-1][1] == r["memorization"] and all(0 <= m <= 1 for _, m in curve)


def test_grid_rows_are_this_grids_and_all_of_them(smoke):
    """The chapter's rows: one per point of the profile's grid; rows of another grid (here another
    seed's) do not count, so a grid missing points is a DataError naming the counts, not a page
    drawn from part of it."""
    csv, runs, _ = smoke
    assert [r["key"] for r in grid_rows("smoke", csv, runs)] == [r["key"] for r in read_rows(csv)]   # NaN != NaN
    with pytest.raises(DataError, match=r"^results: .* holds 0 rows of the 4 points of the smoke grid"):
        grid_rows("smoke", csv, runs, seed=1)                            # another seed: another grid


def test_random_share_is_far_from_rank1():
    share = random_rank1_share(16, seed=0)
    assert share == random_rank1_share(16, seed=0) and 0 < share < 0.3


def test_second_sweep_skips_done_points(smoke):
    csv, runs, _ = smoke
    assert onelayer_sweep("smoke", csv, runs_dir=runs) == []
    assert len(read_rows(csv)) == 4


def test_finetuning_variants_reuse_the_pretraining(smoke):
    """A smoke point's pretraining serves other train_fractions and LoRA: no new pretraining folder,
    the points' pretrain links resolve to it, and a rank-1 LoRA on qkv is a rank-1 update of qkv only."""
    csv, runs, _ = smoke
    before = pretrainings(runs)
    points = onelayer_points("smoke", runs, arch="attn_mlp", multiplicity=1, train_fraction=[0.5, 0.25],
                             finetune=["full", "lora1"])
    rows = run_sweep(points, onelayer_point, csv)
    assert len(rows) == 3                                               # (0.5, full) was done
    assert pretrainings(runs) == before
    shared = {os.path.realpath(point_dirs(p)[1] / "pretrain") for p in points}
    assert shared == {os.path.realpath(point_dirs(points[0])[0] / "pretrain")}
    lora = [r for r in rows if r["finetune"] == "lora1"]
    assert len(lora) == 2
    for r in lora:
        assert r["finetune_trainable_params"] < r["n_params"]
        assert r["rank1_qkv"] == pytest.approx(1.0, abs=1e-4)
        assert all(math.isnan(r[f"rank1_{m}"]) for m in MATRICES if m != "qkv")
