"""kn.regime: R1's regime search is pre-registered (space, budget, criterion) and each setting runs
resumably at its tiny (smoke) equivalent, scoring train_people and the validation slice only.
Run: pytest tests/test_regime.py
"""
import pytest

from kn.cli import main
from kn.errors import DataError
from kn.claims.part31 import mixed_extraction
from kn.regime import (BUDGET_HOURS, CONFIRM_SEEDS, MIN_STEPS, SETTINGS, _parallel, confirm, confirmation_path,
                       confirmation_table, expected_hours, plot_search, result_path, run_all, run_setting, search_config,
                       search_rows, search_table, selected)
from kn.results import results_dir, write_json
from kn.train import Interrupted


def test_every_setting_keeps_to_the_pre_registered_space_and_budget():
    for name, s in SETTINGS.items():
        assert s["steps"] >= MIN_STEPS and s["n"] >= 1000, name
        assert 0 < expected_hours(name) <= BUDGET_HOURS, name
    assert any(s.get("warmup_people") for s in SETTINGS.values())       # the curriculum is searched
    assert len({s["n"] for s in SETTINGS.values()}) >= 3                 # people: the first axis
    # the reference: the committed cpu mixed run, 5,500 steps of 16 x 256 tokens in 0.92 h at 6,829 tokens/s
    assert expected_hours("n1k") == pytest.approx(60_000 * 4 * 256 / 6_829 / 3600)


def test_a_setting_runs_exactly_its_steps_scores_no_test_people_and_resumes(roots, sigterm_at_step):
    cfg, _ = search_config("n4k-qa0.5-warmup", "smoke")
    assert (cfg.qa_fraction, cfg.warmup_people, cfg.data.valid_fraction) == (0.5, 0.25, 0.2)
    sigterm_at_step(12)
    with pytest.raises(Interrupted):
        run_setting("n4k-qa0.5-warmup", "smoke")
    sigterm_at_step(10 ** 9)
    row = run_setting("n4k-qa0.5-warmup", "smoke")                      # resumed from the checkpoint
    assert row["steps"] == 30 and row["within_budget"] and row["n_valid"] > 0
    from kn.results import read_json
    saved = read_json(result_path("n4k-qa0.5-warmup", "smoke"))
    assert set(saved["qa"]) == {"train", "n_train", "valid", "n_valid"}   # test_people never scored
    assert [p["step"] for p in saved["curves"]["mixed"]][-1] == 30
    assert search_rows("smoke") == [row] and selected("smoke") == "n4k-qa0.5-warmup"
    stamp = result_path("n4k-qa0.5-warmup", "smoke").stat().st_mtime_ns
    assert run_setting("n4k-qa0.5-warmup", "smoke") == row                 # done: read, not run again
    assert result_path("n4k-qa0.5-warmup", "smoke").stat().st_mtime_ns == stamp
    assert "**chosen**" in search_table("smoke")[1][list(SETTINGS).index("n4k-qa0.5-warmup")][0]


def test_selection_is_the_best_validation_accuracy_within_budget(roots):
    rows = {"n1k": (0.30, True), "n2k": (0.45, False), "n4k-qa0.5": (0.40, True), "n2k-wd1": (0.40, True)}
    for name, (valid, ok) in rows.items():
        write_json(result_path(name, "cpu"), config={"setting": name}, row={"setting": name, "valid_qa": valid,
                                                                            "within_budget": ok})
    assert selected("cpu") == "n4k-qa0.5"          # n2k is better but over budget; ties go to the earlier setting


def test_unknown_setting_or_profile_is_one_line(roots, capsys):
    assert main(["search", "r1", "n9k", "--profile", "smoke"]) == 2
    assert capsys.readouterr().err.startswith("kn: error: setting: got 'n9k'; allowed: n1k, n2k")
    with pytest.raises(DataError, match="^profile: got 'gpu'; allowed for the R1 search: smoke, cpu"):
        search_config("n1k", "gpu")
    assert main(["search", "r2"]) == 2


def test_the_confirmation_scores_the_selected_setting_once_on_test_people_for_three_seeds(roots, capsys):
    with pytest.raises(DataError, match="^profile: no setting of the R1 search has a result at 'smoke'"):
        confirm("smoke")
    run_setting("n1k", "smoke")                                           # the search so far: n1k alone
    lines = []
    _parallel([("n1k", 1)], "smoke", 1, lines.append)                    # seed 1 in its own process (python -m kn)
    assert lines == ["r1 n1k seed 1: done"] and result_path("n1k", "smoke", 1).is_file()
    record = confirm("smoke")                        # trains seeds 2 and 3, scores the three (never seed 0)
    assert record["setting"] == "n1k" and set(record["seeds"]) == {str(s) for s in CONFIRM_SEEDS}
    for seed, r in record["seeds"].items():
        assert set(r["qa"]) == {"test", "n_test", "items"} and r["row"]["steps"] == 30, seed
    assert record["seeds"]["1"]["row"] == run_setting("n1k", "smoke", seed=1)
    stamp = confirmation_path("smoke").stat().st_mtime_ns
    assert main(["search", "r1", "confirm", "--profile", "smoke"]) == 0    # done: read, not scored again
    assert confirmation_path("smoke").stat().st_mtime_ns == stamp
    assert '"setting": "n1k"' in capsys.readouterr().out
    with pytest.raises(DataError, match="^jobs: got 0; allowed: an integer >= 1"):
        run_all("smoke", 0)
    header, rows = confirmation_table("smoke")                           # the page's table and R1's evidence
    assert [r[0] for r in rows] == ["1", "2", "3"] and header[-1].startswith("test_people")
    evidence = mixed_extraction(results_dir("mixed_training", "smoke"))
    assert "n1k, mean of seeds 1, 2, 3" in evidence.text and len(evidence.guards) == 2 * len(CONFIRM_SEEDS)
    tests = [100 * r["qa"]["test"]["mean"] for r in record["seeds"].values()]
    assert evidence.estimate.value == pytest.approx(sum(tests) / 3)


def test_the_search_plot_draws_one_line_per_setting_run(roots):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    curve = [{"step": s, "train_qa": 1.0, "memorized": 1.0, "valid_qa": v} for s, v in ((10, 0.1), (20, 0.2))]
    for name, valid in (("n1k", 0.2), ("n2k", 0.3)):
        write_json(result_path(name, "cpu"), config={"setting": name}, curves={"mixed": curve},
                   row={"setting": name, "valid_qa": valid, "within_budget": True})
    ax = plot_search(plt.figure().gca(), "cpu")
    assert [line.get_label() for line in ax.get_lines()] == ["n1k", "n2k (chosen)"]
    assert list(ax.get_lines()[0].get_ydata()) == [10.0, 20.0]


def test_result_6_at_the_chosen_setting_takes_its_steps_with_equal_exposures(roots, monkeypatch):
    from kn import profiles
    from kn.celebrity import celebrity_configs
    from kn.extraction import stage_config
    from kn.regime import at_steps, chosen_setting
    monkeypatch.setitem(profiles.TABLES["celebrity"], "smoke", {"n": 60, "at_r1_choice": True})
    with pytest.raises(DataError, match="^profile: no setting of the R1 search has a result at 'smoke'"):
        celebrity_configs("smoke")
    write_json(result_path("n1k-4x128", "smoke"), config={"setting": "n1k-4x128"},
               row={"setting": "n1k-4x128", "valid_qa": 0.1, "within_budget": True})
    configs = celebrity_configs("smoke")
    alone, both = configs["minority alone"], configs["minority + celebrities"]
    name, chosen = chosen_setting("smoke")                                             # the setting at smoke scale
    assert name == "n1k-4x128" and (both.data.n, both.data.n_celebrity, alone.data.n_celebrity) == (40, 40, 0)
    for cfg in (alone, both):
        assert (cfg.model.n_layer, cfg.batch_size, cfg.window, cfg.lr, cfg.weight_decay) == (
            chosen["model"]["n_layer"], chosen["batch_size"], chosen["window"], chosen["lr"], chosen["weight_decay"])
    assert alone.exposures == both.exposures                                          # equal exposures per person
    data = roots / "runs" / "celebrity" / "smoke" / "r1-choice-steps" / "seed0" / "data"
    from kn.batches import Batches
    from kn.tokenize import load_tokenizer
    tok = load_tokenizer(data / "tokenizer")
    tc = stage_config(both, data, roots / "out", "pretrain")
    assert Batches(tc, tok.eos_token_id, tok.pad_token_id).steps_per_epoch * tc.passes == pytest.approx(30)
    assert at_steps(both, data, "pretrain", 60).exposures == pytest.approx(2 * both.exposures)
