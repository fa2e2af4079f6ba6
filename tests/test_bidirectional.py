"""kn.bidirectional: whole-word masking, masked QA and bio-value rows, a smoke MLM pretrain -> finetune
run with its learning curves, an interrupted run resumed to the same result; kn.bidirectional_search:
the pre-registered grid, selection on the validation slice only, the stop rule, test_people scored once
on the chosen run, a search that resumes.   Run: OMP_NUM_THREADS=1 pytest tests/test_bidirectional.py
"""
from dataclasses import replace

import numpy as np
import pytest

from kn import bidirectional_search as bs
from kn.bidirectional import (BidirectionalConfig, mask_words, qa_mask_rows, run_bidirectional, value_mask_rows,
                              word_starts)
from kn.data.dataset import BiosConfig, build_bios
from kn.data.records import ATTRIBUTES
from kn.errors import DataError
from kn.models import ModelConfig
from kn.results import read_json, write_json
from kn.train import Interrupted


@pytest.fixture(scope="module")
def ds():
    return build_bios(BiosConfig(n=30, vocab_size=500))


def test_masks_whole_words(ds):
    tok = ds.tokenizer
    starts = word_starts(tok)
    ids = np.array([ds.bios_tokens.doc(i)[:40] for i in range(5)])
    masked, labels = mask_words(ids, starts, 0.3, tok.mask_token_id, np.random.default_rng(0))
    assert (masked == tok.mask_token_id).any() and ((labels != -100) == (masked == tok.mask_token_id)).all()
    for row, lab in zip(ids, labels):
        word = np.cumsum(starts[row])
        for w in np.unique(word):             # a word is masked entirely or not at all
            assert len(set((lab[word == w] != -100).tolist())) == 1


def test_qa_rows_mask_exactly_the_answer(ds):
    tok = ds.tokenizer
    ids, labels = qa_mask_rows(ds.qa_tokens, tok.pad_token_id, tok.mask_token_id)
    for i in range(12):
        s, e = ds.qa_tokens.spans["answer"][i, 0]
        assert (ids[i, s:e] == tok.mask_token_id).all() and list(labels[i, s:e]) == list(ds.qa_tokens.doc(i)[s:e])
        assert tok.decode(labels[i, s:e]).strip() == ds.qa[i]["answer"]


def test_bio_rows_mask_exactly_each_value(ds):
    tok = ds.tokenizer
    ids, labels, attribute = value_mask_rows(ds.bios_tokens.take(np.arange(3)), tok.pad_token_id, tok.mask_token_id)
    assert len(ids) == 3 * len(ATTRIBUTES) and sorted(set(attribute.tolist())) == list(range(len(ATTRIBUTES)))
    for i, (row, lab, k) in enumerate(zip(ids, labels, attribute)):   # rows: attribute-major, bios 0-2
        assert (row == tok.mask_token_id).sum() == (lab != -100).sum() > 0
        assert tok.decode(lab[lab != -100]).strip() == ds.bios[i % 3]["attributes"][ATTRIBUTES[k]]


def small(**kw):
    return BidirectionalConfig(data=BiosConfig(n=40, augment="multi2", vocab_size=500, valid_fraction=0.2),
                               model=ModelConfig(arch="bert", n_layer=2, n_head=2, n_embd=64, context=64),
                               exposures=4, window=64, batch_size=8, finetune_exposures=2, device="cpu",
                               curve_points=2, **kw)


@pytest.mark.heavy
def test_smoke_run(tmp_path):
    cfg = small()
    r = run_bidirectional(cfg, tmp_path)
    assert set(r["qa"]["test"]["per_attribute"]) == set(ATTRIBUTES)
    assert 0 <= r["qa"]["train"]["mean"] <= 1 and np.isfinite(r["pretrain_loss"])
    assert (tmp_path / "result.json").is_file() and set(r["qa"]) == {"train", "valid", "test", "items"}
    for stage in ("pretrain", "finetune"):                  # curves: steps 0 .. total, three fields each
        steps = [p["step"] for p in r["curves"][stage]]
        assert steps[0] == 0 and steps[-1] == r["training"][stage]["steps"] and len(steps) >= 3
        assert all(0 <= p[f] <= 1 for p in r["curves"][stage] for f in ("train_qa", "memorized", "valid_qa"))
    assert r["curves"]["finetune"][-1]["valid_qa"] == pytest.approx(r["qa"]["valid"]["mean"], abs=1e-9)
    stamp = (tmp_path / "pretrain" / "pretrain.json").stat().st_mtime_ns
    again = run_bidirectional(replace(cfg, finetune_exposures=1), tmp_path)   # only finetuning changed
    assert again["pretrain_loss"] == r["pretrain_loss"]
    assert (tmp_path / "pretrain" / "pretrain.json").stat().st_mtime_ns == stamp
    other = run_bidirectional(replace(cfg, lr=3e-3), tmp_path)                 # pretraining changed: retrained
    assert (tmp_path / "pretrain" / "pretrain.json").stat().st_mtime_ns != stamp and np.isfinite(other["pretrain_loss"])


def test_a_given_data_folder_of_another_config_is_refused_not_rebuilt(tmp_path):
    from kn.data.dataset import make_dataset
    make_dataset(replace(small().data, n=20), tmp_path / "theirs")
    before = (tmp_path / "theirs" / "meta.json").read_text()
    with pytest.raises(DataError, match="^data: .* does not hold this run's dataset"):
        run_bidirectional(small(), tmp_path / "run", data=tmp_path / "theirs")
    assert (tmp_path / "theirs" / "meta.json").read_text() == before and not (tmp_path / "run").exists()


def test_needs_bert_and_a_known_device():
    with pytest.raises(DataError, match="^model"):
        BidirectionalConfig(model=ModelConfig(arch="gpt2"))
    with pytest.raises(DataError, match="^device: got 'tpu'"):
        replace(small(), device="tpu")


@pytest.mark.heavy
def test_interrupted_run_resumes_to_the_same_result(tmp_path, monkeypatch, sigterm_at_step):
    """A SIGTERM during pretraining stops the run after a checkpoint (kn.train.fit); running it again
    resumes, and losses and exact match equal those of an uninterrupted run."""
    import kn.train
    full = run_bidirectional(small(), tmp_path / "full")
    sigterm_at_step(3)
    with pytest.raises(kn.train.Interrupted, match="step 3 of"):
        run_bidirectional(small(), tmp_path / "cut")
    monkeypatch.undo()
    assert not (tmp_path / "cut" / "pretrain" / "pretrain.json").exists()
    again = run_bidirectional(small(), tmp_path / "cut")
    assert (again["pretrain_loss"], again["finetune_loss"]) == (full["pretrain_loss"], full["finetune_loss"])
    assert again["qa"] == full["qa"]


# ----------------------------------------------------------------------------- kn.bidirectional_search


def test_the_grid_is_pre_registered_and_within_budget():
    assert {(r["lr"], r["exposures"]) for r in bs.SETTINGS.values()} == {(lr, x) for lr in (3e-4, 1e-3, 3e-3)
                                                                        for x in (500, 2000)}
    assert {r["lr"] for r in bs.LONGER.values()} == {r["lr"] for r in bs.SETTINGS.values()}
    assert all(r["exposures"] > max(g["exposures"] for g in bs.SETTINGS.values()) for r in bs.LONGER.values())
    assert all(0 < bs.expected_minutes(n) <= bs.BUDGET_MINUTES for n in bs.ALL)
    # the reference: 800 + 450 steps of the committed cpu run in 494.5 s, 30 finetuning passes
    x500 = bs.expected_minutes("lr3e-3-x500") - 70 * 15 * 23.6 / 450 / 60
    assert x500 * 60 == pytest.approx(494.5)
    cfg = bs.recipe_config("lr1e-3-x2000", "cpu")           # the twin's people, model, window and batch; the recipe
    assert (cfg.lr, cfg.exposures, cfg.finetune_exposures, cfg.data.n, cfg.data.valid_fraction) == (1e-3, 2000, 100, 100, 0.2)
    with pytest.raises(DataError, match="^setting: got 'lr1-x1'; allowed: lr3e-4-x500, "):
        bs.recipe("lr1-x1", "cpu")
    with pytest.raises(DataError, match="^profile: got 'gpu'; allowed for the R7 search: smoke, cpu$"):
        bs.recipe("lr3e-4-x500", "gpu")


def _row(name, valid, train, ok=True):
    write_json(bs.result_path(name, "cpu"), config={"setting": name},
               row={"setting": name, "lr": bs.ALL[name]["lr"], "valid_qa": valid, "train_qa": train, "within_budget": ok},
               curves={"pretrain": [], "finetune": []})


def test_selection_reads_the_validation_slice_only_and_the_stop_rule(roots):
    _row("lr3e-4-x500", 0.10, 0.95)
    _row("lr1e-3-x500", 0.20, 0.30)                          # best validation: chosen, although it fits less
    _row("lr3e-3-x500", 0.40, 0.99, ok=False)                # over budget: never chosen
    assert bs.selected("cpu") == "lr1e-3-x500" and bs.stop_state("cpu") is None
    assert bs.next_settings("cpu") == ["lr3e-4-x2000", "lr1e-3-x2000", "lr3e-3-x2000"]   # the grid first
    _row("lr3e-4-x2000", 0.20, 0.50)                         # a tie on validation: the higher train fit wins
    _row("lr1e-3-x2000", 0.0, 0.0)
    _row("lr3e-3-x2000", 0.0, 0.0)
    assert bs.selected("cpu") == "lr3e-4-x2000" and bs.next_settings("cpu") == ["lr3e-4-x6000"]
    rising = [{"step": s, "train_qa": s / 100, "memorized": 0.5, "valid_qa": 0.1} for s in range(0, 101, 10)]
    write_json(bs.result_path("lr3e-4-x6000", "cpu"), config={}, curves={"pretrain": rising, "finetune": rising},
               row={"setting": "lr3e-4-x6000", "lr": 3e-4, "valid_qa": 0.1, "train_qa": 1.0, "within_budget": True})
    assert bs.selected("cpu") == "lr3e-4-x2000" and bs.stop_state("cpu") == "still rising at the budget"
    assert bs.next_settings("cpu") == []
    assert bs.flat({"pretrain": rising, "finetune": [p | {"train_qa": 0.5} for p in rising]})
    _row("lr3e-4-x2000", 0.20, 0.85)                         # the chosen fits its train_people: the guard
    assert bs.stop_state("cpu") == "guard met"


@pytest.mark.heavy
def test_search_scores_test_people_once_on_the_chosen_run_and_resumes(roots, sigterm_at_step):
    sigterm_at_step(5)
    with pytest.raises(Interrupted):
        bs.run_search("smoke")
    sigterm_at_step(10 ** 9)
    summary = bs.run_search("smoke")                          # resumes the interrupted setting, then the rest
    assert summary["stop"] is not None and summary["selected"] in bs.ALL
    ran = {r["setting"] for r in summary["rows"]}
    assert set(bs.grid("smoke")) <= ran and ran - set(bs.grid("smoke")) <= set(bs.LONGER)
    for name in ran:                                          # no setting scored test_people
        assert set(read_json(bs.result_path(name, "smoke"))["qa"]) == {"train", "valid"}
    stamps = {n: bs.result_path(n, "smoke").stat().st_mtime_ns for n in ran}
    assert bs.run_search("smoke")["rows"] == summary["rows"]  # done: read back, nothing trained again
    assert stamps == {n: bs.result_path(n, "smoke").stat().st_mtime_ns for n in ran}
    name = summary["selected"]
    folder = roots / "runs" / "bidirectional" / "smoke" / "r7-search" / name
    trained = {k: (folder / k / f"{k}.json").stat().st_mtime_ns for k in ("pretrain", "finetune")}
    final = run_bidirectional(bs.recipe_config(name, "smoke"), folder, data=folder.parent / "data")
    assert trained == {k: (folder / k / f"{k}.json").stat().st_mtime_ns for k in ("pretrain", "finetune")}
    row = next(r for r in summary["rows"] if r["setting"] == name)
    assert (final["qa"]["train"]["mean"], final["qa"]["valid"]["mean"]) == (row["train_qa"], row["valid_qa"])
    assert "test" in final["qa"] and "items" in final["qa"]
    assert [p.name for p in folder.parent.glob("*/result.json")] == ["result.json"]   # the chosen run alone
