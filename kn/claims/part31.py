"""Measures of Part 3.1's claims (Results 1-7): held-out QA accuracy and its gains with intervals
over people, each beside the guards of the runs it compares (kn.guards); LoRA's gap, the probes'
gaps and the masked model's gap.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from kn.bidirectional_search import PROFILES as SEARCH_PROFILES, recipe as search_recipe, selected, stop_state
from kn.claims.rules import Check, Evidence, NoInterval, load
from kn.data.records import ATTRIBUTES
from kn.guards import GUARD_MEMORIZED, GUARD_PROBE_FIT, GUARD_PROBE_VALID, GUARD_TRAIN_QA
from kn.intervals import accuracy_gap, bootstrap, mean_accuracy, paired_gap, person_table
from kn.probing_study import model_name


def _items(r: dict, name: str) -> np.ndarray:
    if "items" not in r["qa"]:
        raise NoInterval(f"{name}: no per-person answers in its result (made before intervals): re-run the chapter")
    return person_table(r["qa"]["items"])


def fit_guards(name: str, train_qa: float, memorized: float) -> tuple[Check, ...]:
    """The guards of every extraction verdict, from fractions: the run answers its own train_people,
    its pretraining memorized the bios."""
    return (Check(f"{name}: train_people QA", 100 * train_qa, GUARD_TRAIN_QA),
            Check(f"{name}: bios memorized", 100 * memorized, GUARD_MEMORIZED))


def _qa_guards(r: dict, name: str) -> tuple[Check, ...]:
    return fit_guards(name, r["qa"]["train"]["mean"], r["memorization"]["mean"])


ANY_VALUE = "100% (any value can be generated)"


def test_accuracy(name: str) -> Callable[[Path], Evidence]:
    def measure(folder):
        r = load(folder, name)
        est = bootstrap([_items(r, name)], mean_accuracy)
        return Evidence(est, f"{est.value:.1f}% test_people [{est.low:.1f}, {est.high:.1f}] ({name})",
                        _qa_guards(r, name), 100.0, ANY_VALUE)
    return measure


def mixed_extraction(folder: Path) -> Evidence:
    """R1: test_people accuracy of the regime search's confirmation (kn.regime: the chosen setting on
    fresh seeds, the seeds' mean, each seed's people resampled on their own) with every seed's guards;
    before a confirmation exists, the chapter's own bioS single run."""
    if not (folder / "r1-confirmation.json").is_file():
        return test_accuracy("single")(folder)
    r = load(folder, "r1-confirmation")
    tables = [person_table(s["qa"]["items"]) for s in r["seeds"].values()]
    est = bootstrap(tables, lambda *ts: float(np.mean([mean_accuracy(t) for t in ts])))
    guards = tuple(g for seed, s in r["seeds"].items()
                   for g in fit_guards(f"{r['setting']} seed {seed}", s["row"]["train_qa"], s["row"]["memorized"]))
    return Evidence(est, f"{est.value:.1f}% test_people [{est.low:.1f}, {est.high:.1f}] (search's choice "
                         f"{r['setting']}, mean of seeds {', '.join(r['seeds'])})", guards, 100.0, ANY_VALUE)


def gain(name_with: str, name_without: str, what: str) -> Callable[[Path], Evidence]:
    """test accuracy of `name_with` minus `name_without`, in points, with both runs' guards."""
    def measure(folder):
        a, b = load(folder, name_with), load(folder, name_without)
        est = accuracy_gap(_items(a, name_with), _items(b, name_without))
        ta, tb = (100 * r["qa"]["test"]["mean"] for r in (a, b))
        return Evidence(est, f"{what}: {tb:.1f}% -> {ta:.1f}%, gain {est.value:+.1f} points [{est.low:+.1f}, {est.high:+.1f}]",
                        _qa_guards(a, name_with) + _qa_guards(b, name_without), 100.0 - tb, f"{100 - tb:.1f} points")
    return measure


LORA_MARGIN = 10.0     # points: LoRA "about as good as" full finetuning (Part 3.1, R3) means a gap within this


def lora_gap(folder):
    """Held-out accuracy of LoRA minus full finetuning, multi5+permute (the same pretrained model and
    test_people: resampled over people, paired), with both runs' guards."""
    lora, full = load(folder, "multi5+permute LoRA"), load(folder, "multi5+permute")
    a, b = _items(lora, "LoRA"), _items(full, "full finetune")
    same = lora["qa"]["items"]["person"] == full["qa"]["items"]["person"]
    est = paired_gap(a, b) if same else accuracy_gap(a, b)
    return Evidence(est, f"LoRA {mean_accuracy(a):.1f}% vs full {mean_accuracy(b):.1f}% test_people: gap "
                         f"{est.value:+.1f} points [{est.low:+.1f}, {est.high:+.1f}] ({'paired' if same else 'unpaired'})",
                    _qa_guards(lora, "LoRA") + _qa_guards(full, "full finetune"))


def _probe_runs(folder, key: str) -> dict:
    """The P- ("p") or Q-probe ("q") results of single and multi5+permute, made by kn.probe_select."""
    runs = {a: load(folder, a)[key] for a in ("multi5+permute", "single")}
    if any("selection" not in r for r in runs.values()):
        raise NoInterval("probe results from before the validation-slice probes (kn.probe_select): "
                         "re-run the probing chapter")
    return runs


def _probe_guards(folder, runs: dict, what: str) -> tuple[Check, ...]:
    """Each probed model memorized its bios (its QA result beside the probes, kn.probing_study, where
    present); each probe fit on >= GUARD_PROBE_FIT people and chose its rank and weight decay on
    >= GUARD_PROBE_VALID others."""
    memorized = tuple(Check(f"{a}: bios memorized", 100 * load(folder, model_name(a))["memorization"]["mean"],
                            GUARD_MEMORIZED) for a in runs if (folder / f"{model_name(a)}.json").is_file())
    people = tuple(c for a, r in runs.items() for c in (
        Check(f"{a}: {what} fit on", r["n_fit"], GUARD_PROBE_FIT, " people"),
        Check(f"{a}: {what} chosen on validation", r["n_valid"], GUARD_PROBE_VALID, " people")))
    return memorized + people


def own_position(p: dict, kind: str, attrs) -> float:
    """The probe's held-out accuracy (%) where the model holds the value: the P-probe at each value's
    own position (the diagonal; the token before the value, which a model that memorized its bios
    predicts), mean over the attribute indices attrs (kn.probe_select: Results 4-5's ceiling)."""
    return 100 * float(np.nanmean([p[kind][k][k] for k in attrs]))


def p_probe_ahead(folder):
    """P-probe (first token) at the positions before a value that single bios have not yet written
    (position j < attribute k): multi5+permute minus single, resampled over test people; ceiling: the
    same probe on multi5+permute at each value's own position."""
    runs = _probe_runs(folder, "p")
    tables = [np.array([[np.nan if v is None else v for v in cell] for cell in p["items_ahead"]["first"]], float).T
              for p in runs.values()]
    est = accuracy_gap(*tables)
    multi = runs["multi5+permute"]
    ceiling = own_position(multi, "first", [k for _, k in multi["items_ahead"]["cells"]])
    single = mean_accuracy(tables[1])
    return Evidence(est, f"P-probe before the value is written: {single:.1f}% (single) vs {mean_accuracy(tables[0]):.1f}% "
                         f"(multi5+permute), first token: gap {est.value:+.1f} points [{est.low:+.1f}, {est.high:+.1f}]",
                    _probe_guards(folder, runs, "P-probe"), ceiling - single,
                    f"{ceiling:.1f}%: the probe at the value's own position, multi5+permute test_people")


def q_probe_gap(folder):
    """Q-probe whole-value accuracy, multi5+permute minus single, resampled over test people; ceiling:
    the same probe on multi5+permute at each value's own position in the biography."""
    runs = _probe_runs(folder, "q")
    tables = [np.array([q["items"]["whole"][a]["correct"] for a in ATTRIBUTES], float).T for q in runs.values()]
    est = accuracy_gap(*tables)
    ceiling = own_position(load(folder, "multi5+permute")["p"], "whole", range(len(ATTRIBUTES)))
    single = mean_accuracy(tables[1])
    return Evidence(est, f"Q-probe {single:.1f}% (single) vs {mean_accuracy(tables[0]):.1f}% (multi5+permute): "
                         f"gap {est.value:+.1f} points [{est.low:+.1f}, {est.high:+.1f}]",
                    _probe_guards(folder, runs, "Q-probe"), ceiling - single,
                    f"{ceiling:.1f}%: the probe at the value's own position, multi5+permute test_people")


TWIN_KEYS = ("exposures", "window", "batch_size", "lr", "finetune_exposures", "finetune_lr")


def bidirectional_gap(folder):
    """GPT-2 twin minus the masked model (kn.bidirectional.twins), multi5+permute, held-out accuracy."""
    bert, gpt2 = load(folder, "multi5+permute"), load(folder, "GPT-2 multi5+permute")
    cfg_b, cfg_g = bert["provenance"]["config"], gpt2["provenance"]["config"]
    same = all(cfg_b.get(k) == cfg_g.get(k) for k in TWIN_KEYS) and cfg_b["data"] == cfg_g["data"]
    guards = (Check("masked model: train_people QA", 100 * bert["qa"]["train"]["mean"], GUARD_TRAIN_QA),
              *_qa_guards(gpt2, "GPT-2"),
              Check("same people, exposures, window, batch, lr and finetuning as GPT-2", float(same), 1.0, ""))
    est = accuracy_gap(_items(gpt2, "GPT-2"), _items(bert, "masked model"))
    return Evidence(est, f"GPT-2 {100 * gpt2['qa']['test']['mean']:.1f}% vs masked {100 * bert['qa']['test']['mean']:.1f}% "
                         f"test_people: gap {est.value:+.1f} points [{est.low:+.1f}, {est.high:+.1f}]"
                         + _recipe_note(folder.name, cfg_b), guards, 100.0, ANY_VALUE)


def _recipe_note(profile: str, cfg_b: dict) -> str:
    """Where the masked model's recipe was searched (kn.bidirectional_search): the setting chosen on
    the validation slice, whether the result is that setting's, and why the search stopped."""
    if profile not in SEARCH_PROFILES or (name := selected(profile)) is None:
        return ""
    ours = all(cfg_b.get(k) == v for k, v in search_recipe(name, profile).items())
    return (f"; masked recipe {name} chosen on the validation slice ({stop_state(profile) or 'search unfinished'})"
            + ("" if ours else "; this result is not that recipe's: re-run the chapter"))
