"""The claims table: every claim of book/papers.md beside our measured number, its scale and a verdict.

Each claim names the chapter whose result files hold our measurement, a function that reads the
number from them, and a rule that turns (ours, paper's) into a verdict: "reproduced", "partly",
"not reproduced", "inconclusive" where the measurement cannot test the claim (the text says why), or
"not run" where no result file exists yet. For each chapter the largest
profile with results is used (paper > gpu > cpu > smoke), and the table says which.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from kn import paper
from kn.data.records import ATTRIBUTES
from kn.display import markdown_table
from kn.profiles import PROFILES
from kn.results import results_dir


class Interval(NamedTuple):
    """A measured number with its 95% interval: the verdicts that take one read the interval."""
    value: float
    low: float
    high: float


@dataclass(frozen=True)
class Claim:
    source: str                                  # paper and result
    statement: str
    paper_value: str
    chapter: str
    measure: Callable[[Path], tuple[float, str]]  # results folder -> (number, how it reads)
    verdict: Callable[[float], str]


def latest_profile(chapter: str) -> str | None:
    """The largest profile whose results folder for `chapter` exists."""
    for profile in reversed(PROFILES):
        folder = results_dir(chapter, profile)
        if folder.is_dir() and any(folder.iterdir()):
            return profile
    return None


def _load(folder: Path, name: str) -> dict:
    return json.loads((folder / f"{name}.json").read_text())


def _test_mean(name: str) -> Callable[[Path], tuple[float, str]]:
    def measure(folder):
        r = _load(folder, name)
        return 100 * r["qa"]["test"]["mean"], (f"{100 * r['qa']['test']['mean']:.1f}% test_people "
                                               f"({100 * r['memorization']['mean']:.0f}% of bios memorized)")
    return measure


def _bidirectional(folder):
    r = _load(folder, "multi5+permute")["qa"]
    test, train = 100 * r["test"]["mean"], 100 * r["train"]["mean"]
    text = f"{test:.1f}% test_people, {train:.1f}% train_people"
    if train < 50:   # finetuning could not even fit the people it saw: nothing was stored to extract
        return float("nan"), text + " (the masked model did not learn the biographies: not a test)"
    return test, text


def _at_least(good: float, some: float) -> Callable[[float], str]:
    return lambda x: "reproduced" if x >= good else "partly" if x >= some else "not reproduced"


def _at_most(good: float, some: float) -> Callable[[float], str]:
    return lambda x: "reproduced" if x <= good else "partly" if x <= some else "not reproduced"


def _celebrity_gain(folder):
    alone = 100 * _load(folder, "minority alone")["qa"]["test"]["mean"]
    helped = 100 * _load(folder, "minority + celebrities")["qa"]["test"]["mean"]
    return helped - alone, f"{alone:.1f}% -> {helped:.1f}% minority accuracy"


def _q_probe_gap(folder):
    def q(a):
        return 100 * float(np.nanmean([_load(folder, a)["q"]["whole"][k] for k in ATTRIBUTES]))
    return q("multi5+permute") - q("single"), f"Q-probe {q('single'):.1f}% (single) vs {q('multi5+permute'):.1f}% (multi5+permute)"


MIN_CAPACITY_POINTS = {100: 4, 1000: 3}   # value-storing, capacity-bound models a fit needs to count


def _fit(folder: Path, key: str) -> dict:
    fit = _load(folder, "fit")["fits"].get(key)
    if fit is None:
        raise FileNotFoundError(f"{key} not run at this profile")
    if "ratio" not in fit:
        raise FileNotFoundError(fit.get("error", "no fit"))
    return fit


def _fit_text(fit: dict) -> str:
    stored = f", {fit['n_storing_values']} of {fit['n_rows']} store values" if "n_rows" in fit else ""
    return (f"{fit['ratio']:.2f} bits/param (95% CI {fit['ci_low']:.2f}-{fit['ci_high']:.2f}, "
            f"{fit['n_points']} models fitted{stored})")


def _capacity_ratio(exposures: int) -> Callable[[Path], tuple[float, str]]:
    """The fitted ratio, or NaN (inconclusive) when fewer than MIN_CAPACITY_POINTS models stored values."""
    def measure(folder):
        fit = _fit(folder, f"bits@{exposures}")
        if fit["n_points"] < MIN_CAPACITY_POINTS[exposures]:
            return float("nan"), _fit_text(fit) + f": fewer than {MIN_CAPACITY_POINTS[exposures]}, not a test"
        return Interval(fit["ratio"], fit["ci_low"], fit["ci_high"]), _fit_text(fit)
    return measure


def _near(target: float, tolerance: float = 0.3) -> Callable[[Interval], str]:
    """'reproduced' when the interval meets target +- tolerance (relative), else 'not reproduced'."""
    def verdict(x: Interval) -> str:
        low, high = target * (1 - tolerance), target * (1 + tolerance)
        return "reproduced" if x.high >= low and x.low <= high else "not reproduced"
    return verdict


def _quantized_kept(bits: int) -> Callable[[Path], tuple[float, str]]:
    """% of the full-precision bits/param kept after int`bits`, at the first exposures with a fit."""
    def measure(folder):
        fits = _load(folder, "fit")["fits"]
        key = next((k for k in sorted(fits) if k.startswith("bits@") and "ratio" in fits[k]), None)
        quantized = fits.get(f"bits_int{bits}@{key.removeprefix('bits@')}", {}) if key else {}
        if "ratio" not in quantized:
            raise FileNotFoundError(f"no int{bits} fit")
        full, q = fits[key]["ratio"], quantized["ratio"]
        kept = 100 * q / full if full > 0 else float("nan")
        return kept, f"{q:.2f} of {full:.2f} bits/param kept by int{bits} ({kept:.0f}%)"
    return measure


def _gated_gap(folder):
    """GPT-2's 100-exposure fit over the gated (LLaMA) one's; NaN when the intervals overlap."""
    gpt2, gated = _fit(folder, "bits@100"), _fit(folder, "llama:bits@100")
    text = f"GPT-2 {_fit_text(gpt2)} vs LLaMA {_fit_text(gated)}"
    apart = gpt2["ci_low"] > gated["ci_high"] or gated["ci_low"] > gpt2["ci_high"]
    return (gpt2["ratio"] / gated["ratio"] if apart else float("nan")), text + ("" if apart else ": intervals overlap")


def _not_run(what: str) -> Callable[[Path], tuple[float, str]]:
    def measure(folder):
        raise FileNotFoundError(f"{what}: not run at any profile yet")
    return measure


def _dynamics(folder, stage="late"):
    return _load(folder, "dynamics")["stages"][stage]


def _bump(folder):
    e = _dynamics(folder)["once"]["memorization"]["effectivity"]["mean"]
    return e, f"effectivity {e:+.3f} nats (memorization probes, injected once)"


def _effectivity_stage_ratio(folder):
    e = {s: float(np.mean([k["effectivity"]["mean"] for sc in _dynamics(folder, s).values() for k in sc.values()]))
         for s in ("early", "late")}
    ratio = e["late"] / e["early"] if e["early"] > 0 else float("nan")
    return ratio, f"effectivity {e['early']:.3f} (early base) vs {e['late']:.3f} (late base): ratio {ratio:.2f}"


def _power_law(folder):
    fit = _dynamics(folder)["once"]["memorization"]["retainability"]["fit"]
    if fit is None:
        return float("nan"), "no fit (too few retained points)"
    return fit["r2"] if fit["slope_ci"][1] < 0 else 0.0, (f"slope {fit['slope']:.3f} per log-step "
                                                          f"(CI {fit['slope_ci'][0]:.3f} to {fit['slope_ci'][1]:.3f}), R^2 {fit['r2']:.2f}")


def _faster_decay(fast: dict | None, slow: dict | None, names: tuple[str, str]) -> tuple[float, str]:
    """2 if `fast` decays faster with disjoint 95% intervals, 1 if only its estimate is larger, else 0."""
    if fast is None or slow is None:
        return float("nan"), "no forgetting fit for one of them"
    b = [-f["slope_ci"][::-1][k] for f in (fast, slow) for k in (0, 1)]      # decay b intervals, low to high
    score = 2.0 if b[0] > b[3] else 1.0 if fast["b"] > slow["b"] else 0.0
    return score, (f"decay b {fast['b']:.3f} [{b[0]:.3f}, {b[1]:.3f}] ({names[0]}) vs {slow['b']:.3f} "
                   f"[{b[2]:.3f}, {b[3]:.3f}] ({names[1]})" + (", intervals overlap" if score == 1 else ""))


def _duplicated_forgets_faster(folder):
    d = {s: _dynamics(folder)[s]["memorization"]["retainability"]["fit"] for s in ("duplicated", "paraphrased")}
    return _faster_decay(d["duplicated"], d["paraphrased"], ("duplicated", "paraphrased"))


def _batch_forgets_slower(folder):
    fits = _load(folder, "batch_sizes")["fits"]
    small, big = sorted(fits, key=int)
    return _faster_decay(fits[small]["once"]["memorization"], fits[big]["once"]["memorization"],
                         (f"batch {small}", f"batch {big}"))


def _onelayer_rows(folder):
    from kn.sweep import read_rows
    return read_rows(folder / "sweep.csv")


def _onelayer_mean(rows, **match):
    sel = [float(r["acc_test"]) for r in rows if all(r[k] == v for k, v in match.items())]
    return 100 * float(np.mean(sel)) if sel else float("nan")


def _mlp_gap(folder):
    rows = _onelayer_rows(folder)
    best = {"multiplicity": max(r["multiplicity"] for r in rows), "train_fraction": max(r["train_fraction"] for r in rows),
            "finetune": "full"}
    mlp, att = _onelayer_mean(rows, arch="attn_mlp", **best), _onelayer_mean(rows, arch="attn_only", **best)
    return mlp - att, f"{mlp:.1f}% (attention+MLP) vs {att:.1f}% (attention only), held-out"


def _low_rank_gap(folder):
    rows = _onelayer_rows(folder)
    best = {"arch": "attn_mlp", "multiplicity": max(r["multiplicity"] for r in rows),
            "train_fraction": max(r["train_fraction"] for r in rows)}
    lora = sorted({r["finetune"] for r in rows} - {"full"})
    if not lora:
        raise FileNotFoundError("no low-rank points")
    full = _onelayer_mean(rows, finetune="full", **best)
    low, rank = max((_onelayer_mean(rows, finetune=r, **best), r) for r in lora)   # the best low rank
    return low - full, f"{low:.1f}% ({rank}, the best of {', '.join(lora)}) vs {full:.1f}% (full), held-out"


def _rank1(folder):
    rows = [r for r in _onelayer_rows(folder) if r["finetune"] == "full" and r["arch"] == "attn_mlp"]
    share = 100 * float(np.nanmean([float(r["rank1_qkv"]) for r in rows]))
    return share, f"top direction holds {share:.0f}% of the attention (qkv) update's squared norm"


CLAIMS = [
    Claim("Part 3.1, R1", "Mixed training extracts knowledge of held-out people (bioS single)",
          f"{paper.PART31_MEAN['R1 mixed, bioS single']}%", "mixed_training", _test_mean("single"), _at_least(70, 20)),
    Claim("Part 3.1, R2", "Pretrain on bioS single, then QA finetune: held-out people mostly fail",
          f"{paper.PART31_MEAN['R2 pretrain + finetune, bioS single']}%", "augmentation", _test_mean("single"),
          _at_most(20, 35)),
    Claim("Part 3.1, R3", "Knowledge augmentation (multi5+permute) makes it extractable after finetuning",
          f"{paper.PART31_MEAN['R3 multi5+permute, pretrain + finetune']}%", "augmentation",
          _test_mean("multi5+permute"), _at_least(80, 25)),
    Claim("Part 3.1, R3 (LoRA)", "The same holds with LoRA finetuning", "similar to full finetune",
          "augmentation", _test_mean("multi5+permute LoRA"), _at_least(80, 25)),
    Claim("Part 3.1, R5", "Q-probing from the name: near chance for single, high for multi5+permute",
          "0.2% vs 73-99.7%", "probing", _q_probe_gap, _at_least(50, 10)),
    Claim("Part 3.1, R7", "A bidirectional (masked-LM) model extracts poorly even with multi5+permute",
          "<= ~40%", "bidirectional", _bidirectional, _at_most(40, 60)),
    Claim("Part 3.1, R6", "Celebrities with augmented bios lift a plain minority",
          f"{paper.CELEBRITY['single'][0]}% -> {paper.CELEBRITY['single'][1]}%", "celebrity", _celebrity_gain,
          _at_least(30, 10)),
    Claim("Part 3.3, R4", "At 100 exposures GPT-2 stores about 1 bit per parameter",
          f"~{paper.BITS_PER_PARAM[100]:g} bits/param", "capacity", _capacity_ratio(100), _near(paper.BITS_PER_PARAM[100])),
    Claim("Part 3.3, R1", "At 1000 exposures GPT-2 stores about 2 bits per parameter",
          f"~{paper.BITS_PER_PARAM[1000]:g} bits/param", "capacity", _capacity_ratio(1000),
          _near(paper.BITS_PER_PARAM[1000])),
    Claim("Part 3.3, R5", "At 1000 exposures every architecture (LLaMA, Mistral, small MLP) reaches ~2",
          "~2 bits/param each", "capacity", _not_run("other architectures at 1000 exposures"), _at_least(1.5, 0.7)),
    Claim("Part 3.3, R6-7", "At 100 exposures the gated MLP (LLaMA) stores 1.3x less than GPT-2", "1.3x",
          "capacity", _gated_gap, _at_least(1.15, 1.0)),
    Claim("Part 3.3, R8", "int8 quantization keeps the stored bits", "2 of 2 bits/param", "capacity",
          _quantized_kept(8), _at_least(90, 60)),
    Claim("Part 3.3, R8", "int4 quantization loses most of them", f"~{paper.INT4_BITS_PER_PARAM:g} of 2 bits/param",
          "capacity", _quantized_kept(4), lambda x: "reproduced" if 15 <= x <= 55 else "partly" if x < 80 else "not reproduced"),
    Claim("Part 3.3, R10-11", "Junk data (7 junk : 1 useful token) cuts capacity ~20x at 100 exposures", "~20x",
          "capacity", _not_run("junk data"), _at_least(5, 2)),
    Claim("Part 3.3, R12", "A domain token before useful data recovers most of it", "20x -> 2x",
          "capacity", _not_run("the domain token"), _at_least(5, 2)),
    Claim("Chang et al.", "Each exposure to a fact gives a bump in its log-probability", "bump, then decay",
          "dynamics", _bump, _at_least(0.05, 0.0)),
    Claim("Chang et al.", "More pretraining does not raise effectivity (late vs early base)", "no increase",
          "dynamics", _effectivity_stage_ratio, _at_most(1.2, 1.5)),
    Claim("Chang et al.", "Forgetting follows a power law: retainability falls linearly in log t",
          "R ~ -a log t", "dynamics", _power_law, _at_least(0.5, 0.2)),
    Claim("Chang et al.", "Duplicated injection is forgotten faster than paraphrased", "faster decay",
          "dynamics", _duplicated_forgets_faster, _at_least(2, 1)),
    Claim("Chang et al.", "Larger batches forget more slowly", "batch 2048 vs 128",
          "dynamics", _batch_forgets_slower, _at_least(2, 1)),
    Claim("Xu & Chen", "One layer of attention + MLP extracts held-out facts; attention alone does not",
          "MLP needed", "onelayer", _mlp_gap, _at_least(20, 5)),
    Claim("Xu & Chen", "Low-rank finetuning extracts about as well as full finetuning", "holds for both",
          "onelayer", _low_rank_gap, lambda x: "reproduced" if x >= -10 else "partly" if x >= -30 else "not reproduced"),
    Claim("Xu & Chen", "The finetuning update is dominated by one direction", "rank-1 dominated",
          "onelayer", _rank1, _at_least(50, 25)),
]


def claims_table() -> list[dict]:
    """One row per claim: source, statement, paper, ours, profile, verdict."""
    rows = []
    for c in CLAIMS:
        profile = latest_profile(c.chapter)
        row = {"source": c.source, "claim": c.statement, "paper": c.paper_value, "chapter": c.chapter,
               "profile": profile, "ours": "", "verdict": "not run"}
        if profile is not None:
            try:
                value, text = c.measure(results_dir(c.chapter, profile))
                finite = np.isfinite(value.value if isinstance(value, Interval) else value)
                row.update(ours=text, verdict=c.verdict(value) if finite else "inconclusive")
            except (FileNotFoundError, KeyError) as err:   # result file or entry missing at this profile
                row["ours"] = f"not measured: {err}"
        rows.append(row)
    return rows


def claims_markdown(rows: list[dict]):
    """The claims table as Markdown for a notebook to display (rendered as a table in the book)."""
    return markdown_table(["source", "claim", "paper", "ours", "profile", "verdict"],
                          [[r["source"], r["claim"], r["paper"], r["ours"] or "-", r["profile"] or "-",
                            f"**{r['verdict']}**"] for r in rows])
