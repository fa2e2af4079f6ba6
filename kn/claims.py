"""The claims table: every claim of book/papers.md beside our measured number and one verdict.

Each claim states its test before any run, in code: a `Rule` (the effect it needs: at least, at
most, or near a value), the guards its measurement must pass (`Check`: e.g. the finetuned model
answers >= 80% of its own train_people, the bios are >= 90% memorized) and the ceiling (the best
the method could score, e.g. the share of held-out values a probe ever saw in training). A
measurement (`Evidence`) carries the estimate with its 95% interval, resampled over people (or the
paper's unit: paragraphs, models). `verdict` is the only function that turns them into a word:

  inconclusive    a guard failed, the ceiling is below what the rule needs, there is no interval,
                  or the interval straddles the rule's threshold: the run could not pass or fail
  reproduced      the whole interval is on the claim's side of the threshold (near: an equivalence
                  test, the whole interval inside the band threshold * (1 +- tolerance); within: the
                  same with the absolute band threshold +- tolerance, e.g. a gap of 0 +- 10 points)
  not reproduced  the whole interval is on the other side (near: wholly outside the band)
  not run         no result file at any profile

Every augmentation, rank and arm is reported, never the best of them. For each chapter the largest
profile with results is used (paper > gpu > cpu > class > smoke), and the table says which.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from kn import dynamics_claims, paper
from kn.bound import stores_values
from kn.capacity import capacity_rows
from kn.data.records import ATTRIBUTES
from kn.display import markdown_table
from kn.guards import GUARD_MEMORIZED, GUARD_TRAIN_QA
from kn.intervals import Interval, accuracy_gap, bootstrap, mean_accuracy, paired_gap, person_table
from kn.profiles import PROFILES
from kn.results import read_json, results_dir
from kn.sweep import read_rows


@dataclass(frozen=True)
class Check:
    """A guard: `value` must be >= `needed` for the measurement to test the claim."""
    name: str
    value: float
    needed: float
    unit: str = "%"

    @property
    def ok(self) -> bool:
        return bool(self.value >= self.needed)

    def text(self) -> str:
        return f"{self.name} {self.value:.1f}{self.unit} (>= {self.needed:g}){'' if self.ok else ' FAILED'}"


KINDS = ("at_least", "at_most", "near", "within", "meets")


def band(rule: "Rule") -> tuple[float, float]:
    """The band an equivalence rule (near, within, meets) needs the interval in."""
    t = rule.threshold
    if rule.kind == "within":
        return t - rule.tolerance, t + rule.tolerance
    return t * (1 - rule.tolerance), t * (1 + rule.tolerance)


@dataclass(frozen=True)
class Rule:
    """The effect a claim needs: the interval above (at_least) or below (at_most) `threshold`, or
    inside the band threshold * (1 +- tolerance) (near, an equivalence test), or inside threshold
    +- tolerance in the rule's unit (within: equivalence with an absolute margin). `meets` (the
    interval touches the band) is the near rule used until 2026-12-04, kept for the rule history only."""
    kind: str
    threshold: float
    unit: str = "%"
    tolerance: float = 0.0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind: got {self.kind!r}; allowed: {', '.join(KINDS)}")

    def text(self) -> str:
        if self.kind == "meets":
            return f"interval meets {self.threshold:g}{self.unit} +- {100 * self.tolerance:.0f}%"
        if self.kind == "near":
            return f"interval inside {self.threshold:g}{self.unit} +- {100 * self.tolerance:.0f}%"
        if self.kind == "within":
            return f"interval inside {self.threshold:+g} +- {self.tolerance:g}{self.unit}"
        return f"interval {'>=' if self.kind == 'at_least' else '<='} {self.threshold:g}{self.unit}"


@dataclass(frozen=True)
class Evidence:
    estimate: Interval | None              # None: no interval could be formed (text says why)
    text: str
    guards: tuple[Check, ...] = ()
    ceiling: float | None = None           # the highest estimate the method could reach, if capped
    ceiling_text: str = "-"


def verdict(e: Evidence, rule: Rule) -> tuple[str, str]:
    """(verdict, why) of evidence under a rule; see the module docstring."""
    failed = [g.text() for g in e.guards if not g.ok]
    if failed:
        return "inconclusive", "guard failed: " + "; ".join(failed)
    if e.estimate is None or not all(map(math.isfinite, (e.estimate.low, e.estimate.high))):
        return "inconclusive", "no interval at this profile"
    if rule.kind == "at_least" and e.ceiling is not None and e.ceiling < rule.threshold:
        return "inconclusive", f"ceiling {e.ceiling:.1f}{rule.unit} is below the {rule.threshold:g}{rule.unit} the rule needs"
    low, high, t = e.estimate.low, e.estimate.high, rule.threshold
    if rule.kind == "meets":
        band_low, band_high = band(rule)
        touches = high >= band_low and low <= band_high
        return ("reproduced", "interval meets the band") if touches else ("not reproduced", "interval misses the band")
    if rule.kind in ("near", "within"):
        band_low, band_high = band(rule)
        if band_low <= low and high <= band_high:
            return "reproduced", "interval inside the band"
        if high < band_low or low > band_high:
            return "not reproduced", "interval outside the band"
        return "inconclusive", "interval crosses the band's edge"
    above, below = low >= t, high < t
    if rule.kind == "at_most":
        above, below = high <= t, low > t
    if above:
        return "reproduced", "interval on the claim's side"
    if below:
        return "not reproduced", "interval on the other side"
    return "inconclusive", "interval straddles the threshold"


@dataclass(frozen=True)
class Claim:
    source: str                                  # paper and result
    statement: str
    paper_value: str
    chapter: str
    measure: Callable[[Path], Evidence]          # results folder -> evidence
    rule: Rule


def latest_profile(chapter: str) -> str | None:
    """The largest profile whose results folder for `chapter` exists."""
    for profile in reversed(PROFILES):
        folder = results_dir(chapter, profile)
        if folder.is_dir() and any(folder.iterdir()):
            return profile
    return None


def _load(folder: Path, name: str) -> dict:
    """A result file through kn.results.read_json: a damaged or edited one is refused, not read."""
    return read_json(folder / f"{name}.json")


# ----------------------------------------------------------------------------- intervals over people


def _items(r: dict, name: str) -> np.ndarray:
    if "items" not in r["qa"]:
        raise _NoInterval(f"{name}: no per-person answers in its result (made before intervals): re-run the chapter")
    return person_table(r["qa"]["items"])


class _NoInterval(Exception):
    """A result without what an interval needs: the claim's row is inconclusive."""


def _fit_guards(name: str, train_qa: float, memorized: float) -> tuple[Check, ...]:
    """The guards of every extraction verdict, from fractions: the run answers its own train_people,
    its pretraining memorized the bios."""
    return (Check(f"{name}: train_people QA", 100 * train_qa, GUARD_TRAIN_QA),
            Check(f"{name}: bios memorized", 100 * memorized, GUARD_MEMORIZED))


def _qa_guards(r: dict, name: str) -> tuple[Check, ...]:
    return _fit_guards(name, r["qa"]["train"]["mean"], r["memorization"]["mean"])


ANY_VALUE = "100% (any value can be generated)"


def _test_accuracy(name: str) -> Callable[[Path], Evidence]:
    def measure(folder):
        r = _load(folder, name)
        est = bootstrap([_items(r, name)], mean_accuracy)
        return Evidence(est, f"{est.value:.1f}% test_people [{est.low:.1f}, {est.high:.1f}] ({name})",
                        _qa_guards(r, name), 100.0, ANY_VALUE)
    return measure


def _gain(name_with: str, name_without: str, what: str) -> Callable[[Path], Evidence]:
    """test accuracy of `name_with` minus `name_without`, in points, with both runs' guards."""
    def measure(folder):
        a, b = _load(folder, name_with), _load(folder, name_without)
        est = accuracy_gap(_items(a, name_with), _items(b, name_without))
        ta, tb = (100 * r["qa"]["test"]["mean"] for r in (a, b))
        return Evidence(est, f"{what}: {tb:.1f}% -> {ta:.1f}%, gain {est.value:+.1f} points [{est.low:+.1f}, {est.high:+.1f}]",
                        _qa_guards(a, name_with) + _qa_guards(b, name_without), 100.0 - tb, f"{100 - tb:.1f} points")
    return measure


LORA_MARGIN = 10.0     # points: LoRA "about as good as" full finetuning (Part 3.1, R3) means a gap within this


def _lora_gap(folder):
    """Held-out accuracy of LoRA minus full finetuning, multi5+permute (the same pretrained model and
    test_people: resampled over people, paired), with both runs' guards."""
    lora, full = _load(folder, "multi5+permute LoRA"), _load(folder, "multi5+permute")
    a, b = _items(lora, "LoRA"), _items(full, "full finetune")
    same = lora["qa"]["items"]["person"] == full["qa"]["items"]["person"]
    est = paired_gap(a, b) if same else accuracy_gap(a, b)
    return Evidence(est, f"LoRA {mean_accuracy(a):.1f}% vs full {mean_accuracy(b):.1f}% test_people: gap "
                         f"{est.value:+.1f} points [{est.low:+.1f}, {est.high:+.1f}] ({'paired' if same else 'unpaired'})",
                    _qa_guards(lora, "LoRA") + _qa_guards(full, "full finetune"))


def _p_probe_ahead(folder):
    """P-probe (first token) at the positions before a value that single bios have not yet written
    (position j < attribute k): multi5+permute minus single, resampled over test people, with the
    ceiling of what a probe trained on train_people can name."""
    aug = results_dir("augmentation", folder.name)
    runs = {a: _load(folder, a)["p"] for a in ("multi5+permute", "single")}
    if any("items_ahead" not in p for p in runs.values()):
        raise _NoInterval("P-probe results without per-person items ahead of the value: re-run the probing chapter")
    tables = [np.array([[np.nan if v is None else v for v in cell] for cell in p["items_ahead"]["first"]], float).T
              for p in runs.values()]
    est = accuracy_gap(*tables)
    multi = runs["multi5+permute"]
    ceiling = 100 * float(np.mean([multi["ceiling"]["first"][ATTRIBUTES[k]] for _, k in multi["items_ahead"]["cells"]]))
    single = mean_accuracy(tables[1])
    guards = tuple(Check(f"{a}: bios memorized", 100 * _load(aug, a)["memorization"]["mean"], GUARD_MEMORIZED)
                   for a in runs if (aug / f"{a}.json").is_file())
    return Evidence(est, f"P-probe before the value is written: {single:.1f}% (single) vs {mean_accuracy(tables[0]):.1f}% "
                         f"(multi5+permute), first token: gap {est.value:+.1f} points [{est.low:+.1f}, {est.high:+.1f}]",
                    guards, ceiling - single, f"{ceiling:.1f}% of test first tokens seen in probe training")


def _q_probe_gap(folder):
    """Q-probe whole-value accuracy, multi5+permute minus single, with the ceiling of what a probe
    trained on train_people can name (the share of test values seen in probe training)."""
    aug = results_dir("augmentation", folder.name)
    runs = {a: _load(folder, a) for a in ("multi5+permute", "single")}
    if any("items" not in r["q"] for r in runs.values()):
        raise _NoInterval("probe results without per-person items: re-run the probing chapter")
    tables = [np.array([r["q"]["items"]["whole"][a]["correct"] for a in ATTRIBUTES], float).T for r in runs.values()]
    est = accuracy_gap(*tables)
    ceiling = 100 * float(np.mean([runs["multi5+permute"]["q"]["ceiling"]["whole"][a] for a in ATTRIBUTES]))
    single = mean_accuracy(tables[1])
    guards = tuple(Check(f"{a}: bios memorized", 100 * _load(aug, a)["memorization"]["mean"], GUARD_MEMORIZED)
                   for a in runs if (aug / f"{a}.json").is_file())
    return Evidence(est, f"Q-probe {single:.1f}% (single) vs {mean_accuracy(tables[0]):.1f}% (multi5+permute): "
                         f"gap {est.value:+.1f} points [{est.low:+.1f}, {est.high:+.1f}]",
                    guards, ceiling - single, f"{ceiling:.1f}% of test values seen in probe training")


TWIN_KEYS = ("exposures", "window", "batch_size", "lr", "finetune_exposures", "finetune_lr")


def _bidirectional(folder):
    """GPT-2 twin minus the masked model (kn.bidirectional.twins), multi5+permute, held-out accuracy."""
    bert, gpt2 = _load(folder, "multi5+permute"), _load(folder, "GPT-2 multi5+permute")
    cfg_b, cfg_g = bert["provenance"]["config"], gpt2["provenance"]["config"]
    same = all(cfg_b.get(k) == cfg_g.get(k) for k in TWIN_KEYS) and cfg_b["data"] == cfg_g["data"]
    guards = (Check("masked model: train_people QA", 100 * bert["qa"]["train"]["mean"], GUARD_TRAIN_QA),
              *_qa_guards(gpt2, "GPT-2"),
              Check("same people, exposures, window, batch, lr and finetuning as GPT-2", float(same), 1.0, ""))
    est = accuracy_gap(_items(gpt2, "GPT-2"), _items(bert, "masked model"))
    return Evidence(est, f"GPT-2 {100 * gpt2['qa']['test']['mean']:.1f}% vs masked {100 * bert['qa']['test']['mean']:.1f}% "
                         f"test_people: gap {est.value:+.1f} points [{est.low:+.1f}, {est.high:+.1f}]", guards, 100.0, ANY_VALUE)


# ----------------------------------------------------------------------------- Part 3.3


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


def _as_interval(fit: dict) -> Interval:
    return Interval(fit["ratio"], fit["ci_low"], fit["ci_high"])


def _capacity_ratio(exposures: int) -> Callable[[Path], Evidence]:
    def measure(folder):
        fit = _fit(folder, f"bits@{exposures}")
        guard = Check("value-storing models fitted", fit["n_points"], MIN_CAPACITY_POINTS[exposures], "")
        return Evidence(_as_interval(fit), _fit_text(fit), (guard,))
    return measure


def _ratio(num: Interval, den: Interval, scale: float = 1.0) -> Interval:
    """num / den with the interval of its endpoints (conservative; infinite when den's reaches 0)."""
    high = num.high / den.low if den.low > 0 else math.inf
    return Interval(scale * num.value / den.value, scale * num.low / den.high, scale * high)


QUANT_EXPOSURES = 1000   # Result 8 quantizes the models trained to capacity: the 1000-exposure fit


def _quantized_kept(bits: int) -> Callable[[Path], Evidence]:
    """% of the full-precision bits kept after int`bits`, summed over the models of the GPT-2 fit at
    QUANT_EXPOSURES, with an interval resampled over those models."""
    def measure(folder):
        fits = _load(folder, "fit")["fits"]
        key = f"bits@{QUANT_EXPOSURES}"
        if "ratio" not in fits.get(key, {}) or "ratio" not in fits.get(f"bits_int{bits}@{QUANT_EXPOSURES}", {}):
            raise FileNotFoundError(f"no int{bits} fit at {QUANT_EXPOSURES} exposures")
        rows = capacity_rows(read_rows(folder / "sweep.csv"), QUANT_EXPOSURES, bits=f"bits_int{bits}", arch="gpt2")
        table = np.array([[float(r[f"bits_int{bits}"]), float(r["bits"])] for r in rows])
        kept = bootstrap([table], lambda t: 100 * t[:, 0].sum() / t[:, 1].sum())
        return Evidence(kept, f"int{bits} keeps {kept.value:.0f}% of the bits [{kept.low:.0f}, {kept.high:.0f}] "
                              f"({len(rows)} models of the {key} fit, resampled over models)",
                        (Check("models", len(rows), 3, ""),))
    return measure


def _capacity_slope(folder):
    """The log-log slope of bits on parameters at 1000 exposures: 1 if bits grow in proportion."""
    fit = _fit(folder, "bits@1000")
    est = Interval(fit["slope"], fit["slope_low"], fit["slope_high"])
    if not math.isfinite(est.value):
        raise _NoInterval("fewer than 3 models or 2 sizes fitted")
    return Evidence(est, f"slope {est.value:.2f} [{est.low:.2f}, {est.high:.2f}] over {fit['n_points']} models "
                         f"({fit.get('n_sizes', '?')} sizes)",
                    (Check("sizes fitted", fit.get("n_sizes", 0), MIN_CAPACITY_POINTS[1000], ""),))


def _gated_gap(folder):
    """GPT-2's 100-exposure fit over the gated (LLaMA) one's."""
    gpt2, gated = _fit(folder, "bits@100"), _fit(folder, "llama:bits@100")
    est = _ratio(_as_interval(gpt2), _as_interval(gated))
    return Evidence(est, f"GPT-2 {_fit_text(gpt2)} vs LLaMA {_fit_text(gated)}: {est.value:.2f}x",
                    (Check("LLaMA value-storing models fitted", gated["n_points"], 3, ""),))


def _llama_law(folder):
    """LLaMA's 1000-exposure fit: Result 5 says every architecture stores ~2 bits/param there."""
    fit = _fit(folder, "llama:bits@1000")
    return Evidence(_as_interval(fit), "LLaMA " + _fit_text(fit),
                    (Check("LLaMA value-storing models fitted", fit["n_points"], MIN_CAPACITY_POINTS[1000], ""),))


def _variant_ratio(num: dict, den: dict, what: str) -> Callable[[Path], Evidence]:
    """Bits of the `num` rows over bits of the `den` rows, size by size (GPT-2, 100 exposures, seed 0).
    With a handful of sizes there is no resampling to do: the interval is the range over sizes, so a
    rule on it needs every size to pass. Guards: >= 2 sizes, and the clean models store values."""
    def measure(folder):
        rows = [r for r in read_rows(folder / "sweep.csv") if float(r["exposures"]) == 100 and r.get("arch") == "gpt2"
                and int(r.get("seed", 0)) == 0]
        def pick(r, sel):
            return float(r.get("junk_ratio", 0) or 0) == sel["junk_ratio"] and \
                str(r.get("domain_token")) == str(sel["domain_token"])
        by = {}
        for r in rows:
            for name, sel in (("num", num), ("den", den), ("clean", CLEAN)):
                if pick(r, sel):
                    by.setdefault(int(r["n_embd"]), {})[name] = r
        pairs = {d: v for d, v in sorted(by.items()) if "num" in v and "den" in v}
        if not pairs:
            raise FileNotFoundError(f"{what}: not run at this recipe")
        ratios = [float(v["num"]["bits"]) / max(float(v["den"]["bits"]), 1.0) for v in pairs.values()]
        est = Interval(float(np.median(ratios)), min(ratios), max(ratios))
        clean = [v["clean"] for v in pairs.values() if "clean" in v]
        each = ", ".join(f"{int(v['num']['n_params']):,} params: {float(v['num']['bits']):,.0f} / "
                         f"{float(v['den']['bits']):,.0f} bits = {x:.1f}x" for v, x in zip(pairs.values(), ratios))
        return Evidence(est, f"{what} {est.value:.1f}x (range over {len(ratios)} sizes {est.low:.1f}-{est.high:.1f}x: {each})",
                        (Check("sizes", len(ratios), 2, ""),
                         Check("clean models storing values", sum(map(stores_values, clean)), len(ratios), "")))
    return measure


CLEAN, JUNK, DOMAIN = ({"junk_ratio": j, "domain_token": d} for j, d in ((0.0, False), (7.0, False), (7.0, True)))


# ----------------------------------------------------------------------------- Chang et al.


def _late(folder, scenario="once", kind="memorization") -> dict:
    return _load(folder, "dynamics")["stages"]["late"][scenario][kind]


def _interval_of(d: dict | None) -> Interval:
    if d is None or d.get("value") is None:
        raise _NoInterval("the estimate is undefined (too few retained points or no fit)")
    return Interval(d["value"], d["low"], d["high"])


def _dynamics(number: Callable) -> Callable[[Path], Evidence]:
    """A claim's number from kn.dynamics_claims (the one the dynamics page shows) as evidence."""
    def measure(folder):
        try:
            estimate, text = number(folder)
        except ValueError as err:
            raise _NoInterval(str(err)) from None
        return Evidence(estimate, text)
    return measure


def _power_law(folder):
    """The smaller AIC lead of duplicated and paraphrased; the log law must decay in both."""
    try:
        estimate, text, decay_low = dynamics_claims.power_law(folder)
    except ValueError as err:
        raise _NoInterval(str(err)) from None
    return Evidence(estimate, text, (Check("decay b, lower end of its interval (both)", decay_low, 1e-9, ""),))


# The tests of these claims before 2026-12-04 (once scenario only), kept for the rule history


SEEDS_AND_PARAGRAPHS = dynamics_claims.SEEDS_AND_PARAGRAPHS


def _bump_once(folder):
    e = _interval_of(_late(folder)["effectivity_minus_control"])
    return Evidence(e, f"effectivity minus never-injected controls {e.value:+.3f} nats [{e.low:+.3f}, {e.high:+.3f}] "
                       f"(memorization probes, injected once, late base; {SEEDS_AND_PARAGRAPHS})")


def _stage_gain_once(folder):
    d = _interval_of(_load(folder, "dynamics")["early_vs_late"]["once"]["memorization"]["effectivity_minus_control"]
                     ["late_minus_early"])
    return Evidence(d, f"late minus early base, effectivity minus controls {d.value:+.3f} nats [{d.low:+.3f}, {d.high:+.3f}] "
                       f"(injected once; {SEEDS_AND_PARAGRAPHS})")


def _power_law_once(folder):
    """AIC of the best other law minus the log-t law's (> 0: the power law fits best), on the
    retainability of injected minus control probes; the decay must be above 0."""
    f = _late(folder)["forgetting_minus_control"]
    if f is None:
        raise _NoInterval("no forgetting fit of injected minus control (too few retained points)")
    aic = {k: v["aic"] for k, v in f["fits"].items() if v and v.get("aic") is not None}
    if "log" not in aic or len(aic) < 2:
        raise _NoInterval("too few forgetting fits to compare")
    d = min(v for k, v in aic.items() if k != "log") - aic["log"]
    b = _interval_of(f["decay_b"])
    return Evidence(Interval(d, d, d), "AIC " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(aic.items())) +
                    f": log-t better by {d:.1f} (a point: AIC has no interval here); decay b {b.value:.3f} "
                    f"[{b.low:.3f}, {b.high:.3f}] (injected minus control, once, late base)",
                    (Check("decay b, lower end of its interval", b.low, 1e-9, ""),))


def _batch_once(folder):
    r = _load(folder, "batch_sizes")
    small, large = sorted(r["batch_sizes"])[0], sorted(r["batch_sizes"])[-1]
    d = _interval_of(r["small_minus_large"]["once"]["memorization"]["forgetting"])
    return Evidence(d, f"decay b (batch {small}) minus decay b (batch {large}) {d.value:+.3f} [{d.low:+.3f}, "
                       f"{d.high:+.3f}] ({SEEDS_AND_PARAGRAPHS})")


# ----------------------------------------------------------------------------- Xu & Chen


def _onelayer_rows(folder):
    return read_rows(folder / "sweep.csv")


def _row(rows, **match) -> dict:
    sel = [r for r in rows if all(r[k] == v for k, v in match.items())]
    if len(sel) != 1:
        raise FileNotFoundError(f"{len(sel)} sweep points match {match}")
    return sel[0]


def _point(rows, **match) -> Interval:
    """Held-out accuracy (%) of the one sweep point matching `match`, with its interval over test_people."""
    r = _row(rows, **match)
    if r.get("acc_test_low") in (None, ""):
        raise _NoInterval("sweep.csv has no interval columns (made before intervals): re-run the chapter")
    return Interval(*(100 * float(r[k]) for k in ("acc_test", "acc_test_low", "acc_test_high")))


def _learned(rows, label: str, **match) -> tuple[Check, ...]:
    """The extraction guards of one sweep point."""
    r = _row(rows, **match)
    return _fit_guards(label, float(r["acc_train"]), float(r["memorization"]))


def _gap(a: Interval, b: Interval) -> Interval:
    """a - b with the conservative interval of two independent intervals' ends."""
    return Interval(a.value - b.value, a.low - b.high, a.high - b.low)


def _largest(rows) -> dict:
    return {"multiplicity": max(r["multiplicity"] for r in rows), "train_fraction": max(r["train_fraction"] for r in rows)}


def _mlp_gap(folder):
    rows = _onelayer_rows(folder)
    at = _largest(rows) | {"finetune": "full"}
    mlp, att = _point(rows, arch="attn_mlp", **at), _point(rows, arch="attn_only", **at)
    gap = _gap(mlp, att)
    return Evidence(gap, f"{mlp.value:.1f}% [{mlp.low:.1f}, {mlp.high:.1f}] (attention+MLP) vs {att.value:.1f}% "
                         f"[{att.low:.1f}, {att.high:.1f}] (attention only), held-out: gap {gap.value:+.1f} "
                         f"[{gap.low:+.1f}, {gap.high:+.1f}]", _learned(rows, "attention+MLP", arch="attn_mlp", **at),
                    ceiling=100.0, ceiling_text=ANY_VALUE)


def _low_rank_gap(folder):
    """Every rank's held-out accuracy minus full finetuning's; the claim needs each of them, so the
    evidence is the smallest gap (its interval: the smallest ends)."""
    rows = _onelayer_rows(folder)
    at = _largest(rows) | {"arch": "attn_mlp"}
    lora = sorted({r["finetune"] for r in rows} - {"full"})
    if not lora:
        raise FileNotFoundError("no low-rank points")
    full = _point(rows, finetune="full", **at)
    gaps = {r: _gap(_point(rows, finetune=r, **at), full) for r in lora}
    worst = Interval(*(min(g[i] for g in gaps.values()) for i in range(3)))
    every = ", ".join(f"{r} {g.value:+.1f} [{g.low:+.1f}, {g.high:+.1f}]" for r, g in gaps.items())
    return Evidence(worst, f"full {full.value:.1f}%; each rank minus full: {every} (held-out, every rank)",
                    _learned(rows, "full finetune", finetune="full", **at))


def _rank1(folder):
    rows = [r for r in _onelayer_rows(folder) if r["finetune"] == "full" and r["arch"] == "attn_mlp"]
    shares = np.array([[100 * float(r["rank1_qkv"])] for r in rows])
    est = bootstrap([shares], lambda t: float(t.mean()))
    learned = sum(100 * float(r["acc_train"]) >= GUARD_TRAIN_QA for r in rows)
    return Evidence(est, f"top direction holds {est.value:.0f}% [{est.low:.0f}, {est.high:.0f}] of the attention (qkv) "
                         f"update's squared norm ({len(rows)} full finetunes, resampled over them)",
                    (Check(f"full finetunes that learned train_people (>= {GUARD_TRAIN_QA:g}%)", learned, 3, ""),))


CLAIMS = [
    Claim("Part 3.1, R1", "Mixed training extracts knowledge of held-out people (bioS single)",
          f"{paper.PART31_MEAN['R1 mixed, bioS single']}%", "mixed_training", _test_accuracy("single"), Rule("at_least", 50)),
    Claim("Part 3.1, R2", "Pretrain on bioS single, then QA finetune: held-out people mostly fail",
          f"{paper.PART31_MEAN['R2 pretrain + finetune, bioS single']}%", "augmentation", _test_accuracy("single"),
          Rule("at_most", 20)),
    Claim("Part 3.1, R3", "Knowledge augmentation (multi5+permute) makes it extractable after finetuning",
          f"{paper.PART31_MEAN['R3 multi5+permute, pretrain + finetune']}%", "augmentation",
          _test_accuracy("multi5+permute"), Rule("at_least", 50)),
    Claim("Part 3.1, R3 (LoRA)", "LoRA finetuning extracts about as well as full finetuning (multi5+permute)",
          "similar to full finetune", "augmentation", _lora_gap, Rule("within", 0, " points", LORA_MARGIN)),
    Claim("Part 3.1, R4", "P-probing: multi5+permute stores every attribute before its value is written; single does not",
          "~100% at every position vs only at or after its own", "probing", _p_probe_ahead,
          Rule("at_least", 30, " points")),
    Claim("Part 3.1, R5", "Q-probing from the name: near chance for single, high for multi5+permute",
          "0.2% vs 73-99.7%", "probing", _q_probe_gap, Rule("at_least", 30, " points")),
    Claim("Part 3.1, R6", "Celebrities with augmented bios lift a plain minority",
          f"{paper.CELEBRITY['single'][0]}% -> {paper.CELEBRITY['single'][1]}%", "celebrity",
          _gain("minority + celebrities", "minority alone", "minority accuracy"), Rule("at_least", 30, " points")),
    Claim("Part 3.1, R7", "A bidirectional (masked-LM) model extracts far worse than GPT-2 at equal budget",
          "<= ~40% vs ~97%", "bidirectional", _bidirectional, Rule("at_least", 20, " points")),
    Claim("Part 3.3, R4", "At 100 exposures GPT-2 stores about 1 bit per parameter",
          f"~{paper.BITS_PER_PARAM[100]:g} bits/param", "capacity", _capacity_ratio(100),
          Rule("near", paper.BITS_PER_PARAM[100], " bits/param", 0.3)),
    Claim("Part 3.3, R1", "At 1000 exposures GPT-2 stores about 2 bits per parameter",
          f"~{paper.BITS_PER_PARAM[1000]:g} bits/param", "capacity", _capacity_ratio(1000),
          Rule("near", paper.BITS_PER_PARAM[1000], " bits/param", 0.3)),
    Claim("Part 3.3, R1", "Bits grow in proportion to parameters (log-log slope 1) at 1000 exposures",
          "bits = 2 x params", "capacity", _capacity_slope, Rule("near", 1.0, "", 0.2)),
    Claim("Part 3.3, R5", "At 1000 exposures the gated MLP (LLaMA) also stores ~2 bits per parameter",
          "~2 bits/param each", "capacity", _llama_law,
          Rule("near", 2, " bits/param", 0.3)),
    Claim("Part 3.3, R6-7", "At 100 exposures the gated MLP (LLaMA) stores 1.3x less than GPT-2", "1.3x",
          "capacity", _gated_gap, Rule("at_least", 1.15, "x")),
    Claim("Part 3.3, R8", "int8 quantization keeps the stored bits", "2 of 2 bits/param", "capacity",
          _quantized_kept(8), Rule("at_least", 90)),
    Claim("Part 3.3, R8", "int4 quantization loses most of them", f"~{paper.INT4_BITS_PER_PARAM:g} of 2 bits/param",
          "capacity", _quantized_kept(4), Rule("at_most", 50)),
    Claim("Part 3.3, R10-11", "Junk data (7 junk : 1 useful token) cuts capacity ~20x at 100 exposures", "~20x",
          "capacity", _variant_ratio(CLEAN, JUNK, "clean over junk bits"), Rule("at_least", 5, "x")),
    Claim("Part 3.3, R12", "A domain token before useful data recovers most of it", "20x -> 2x",
          "capacity", _variant_ratio(DOMAIN, JUNK, "domain token over junk bits"), Rule("at_least", 5, "x")),
    Claim("Chang et al.", "Each exposure to a fact lifts its log-probability above never-injected controls "
          "(mean over the scenarios)",
          "bump, then decay", "dynamics", _dynamics(dynamics_claims.bump), Rule("at_least", 0.0, " nats")),
    Claim("Chang et al.", "More pretraining does not raise effectivity (late vs early base, mean over the scenarios)",
          "no increase",
          "dynamics", _dynamics(dynamics_claims.stage_gain), Rule("at_most", 0.05, " nats")),
    Claim("Chang et al.", "Forgetting follows a power law (linear in log t), better than linear or exponential "
          "(duplicated and paraphrased, each)",
          "R ~ -a log t", "dynamics", _power_law, Rule("at_least", 2.0, " AIC")),
    Claim("Chang et al.", "Duplicated injection is forgotten faster than paraphrased", "faster decay",
          "dynamics", _dynamics(dynamics_claims.duplicated_forgets_faster), Rule("at_least", 0.0, "")),
    Claim("Chang et al.", "Larger batches forget more slowly (duplicated and paraphrased, each)", "batch 2048 vs 128",
          "dynamics", _dynamics(dynamics_claims.batch_forgets_slower), Rule("at_least", 0.0, "")),
    Claim("Xu & Chen", "One layer of attention + MLP extracts held-out facts; attention alone does not",
          "MLP needed", "onelayer", _mlp_gap, Rule("at_least", 20, " points")),
    Claim("Xu & Chen", "Low-rank finetuning extracts about as well as full finetuning (every rank)", "holds for both",
          "onelayer", _low_rank_gap, Rule("at_least", -10, " points")),
    Claim("Xu & Chen", "The finetuning update is dominated by one direction", "rank-1 dominated",
          "onelayer", _rank1, Rule("at_least", 50)),
]


@dataclass(frozen=True)
class RuleChange:
    """A rule, guard or threshold changed after a result of its claim existed: the claims page shows
    it with the verdict the current evidence gets under the old test."""
    source: str                      # Claim.source
    statement: str                   # the start of Claim.statement (several claims share a source)
    date: str
    change: str                      # old -> new, in words
    old_rule: Rule | None = None     # the rule before; None: the rule did not change
    had_guards: bool = True          # False: the guards were added by this change
    same_quantity: bool = True       # False: the old test measured another quantity (no verdict to compute)
    old_measure: Callable[[Path], Evidence] | None = None   # the old test's quantity, when it is still measured


INTERVALS = "point estimate -> 95% interval"        # 2026-12-01: every rule moved from estimates to intervals
OTHER = f"{INTERVALS}, and another quantity"

RULE_CHANGES = [
    RuleChange("Part 3.1, R1", "Mixed training", "2026-12-01", f"threshold 70% -> 50% ({INTERVALS})", Rule("at_least", 70)),
    RuleChange("Part 3.1, R3", "Knowledge augmentation", "2026-12-01", f"threshold 80% -> 50% ({INTERVALS})",
               Rule("at_least", 80)),
    RuleChange("Part 3.1, R3 (LoRA)", "LoRA finetuning", "2026-12-01", f"threshold 80% -> 50% ({INTERVALS})",
               Rule("at_least", 80), old_measure=_test_accuracy("multi5+permute LoRA")),
    RuleChange("Part 3.1, R3 (LoRA)", "LoRA finetuning", "2026-12-04",
               f"LoRA held-out >= 50% -> LoRA minus full finetuning inside 0 +- {LORA_MARGIN:g} points",
               Rule("at_least", 50), old_measure=_test_accuracy("multi5+permute LoRA")),
    RuleChange("Part 3.1, R5", "Q-probing", "2026-12-01", "threshold 50 -> 30 points", Rule("at_least", 50, " points")),
    *[RuleChange("Xu & Chen", start, "2026-12-01", "guards added (train_people QA >= 80%, bios memorized >= 90%)",
                 had_guards=False) for start in ("One layer", "Low-rank", "The finetuning")],
    RuleChange("Part 3.1, R7", "A bidirectional", "2026-12-01",
               f"masked model <= 40% -> GPT-2 minus masked >= 20 points ({OTHER})", same_quantity=False),
    RuleChange("Part 3.3, R8", "int4", "2026-12-01", f"15-55% kept -> <= 50% kept ({INTERVALS})", same_quantity=False),
    *[RuleChange("Chang et al.", start, "2026-12-01", f"{change} ({OTHER})", same_quantity=False) for start, change in
      (("Each exposure", "effectivity >= 0.05 nats -> minus never-injected controls >= 0"),
       ("More pretraining", "late / early effectivity <= 1.2 -> late - early <= 0.05 nats"),
       ("Forgetting", "R^2 of a decaying log-t line >= 0.5 -> AIC of log t over linear and exp by >= 2"),
       ("Duplicated", "disjoint decay intervals (score 2) -> decay difference >= 0"),
       ("Larger batches", "disjoint decay intervals (score 2) -> decay difference >= 0"))],
    *[RuleChange("Chang et al.", start, "2026-12-04", change, old_measure=measure) for start, change, measure in
      (("Each exposure", "the once scenario -> the mean over once, duplicated and paraphrased", _bump_once),
       ("More pretraining", "the once scenario -> the mean over once, duplicated and paraphrased", _stage_gain_once),
       ("Forgetting", "AIC lead of the once scenario (a point) -> the smaller of duplicated's and paraphrased's "
                      "(bootstrap intervals); decay b > 0 in both", _power_law_once),
       ("Larger batches", "the once scenario -> the smaller of duplicated's and paraphrased's", _batch_once))],
    RuleChange("Part 3.3, R4", "At 100", "2026-12-04", "near: interval meets the band -> interval inside the band",
               Rule("meets", paper.BITS_PER_PARAM[100], " bits/param", 0.3)),
    RuleChange("Part 3.3, R1", "At 1000", "2026-12-04", "near: interval meets the band -> interval inside the band",
               Rule("meets", paper.BITS_PER_PARAM[1000], " bits/param", 0.3)),
]


def _evidence(measure: Callable[[Path], Evidence], folder: Path) -> Evidence | None:
    try:
        return measure(folder)
    except (FileNotFoundError, KeyError, _NoInterval):
        return None


def rule_history() -> list[dict]:
    """One row per RULE_CHANGES entry: claim, date, change, the verdict now and under the old test,
    both on the claim's current evidence (its chapter's largest profile with results)."""
    rows = []
    for change in RULE_CHANGES:
        claim = next(c for c in CLAIMS if c.source == change.source and c.statement.startswith(change.statement))
        row = {"source": claim.source, "claim": claim.statement, "date": change.date, "change": change.change,
               "now": "not run", "before": "not run"}
        at = latest_profile(claim.chapter)
        e, old = (_measured(m, claim.chapter, at) for m in (claim.measure, change.old_measure or claim.measure))
        if e is not None:
            row["now"] = verdict(e, claim.rule)[0]
        if old is not None:
            old = old if change.had_guards else Evidence(old.estimate, old.text, (), old.ceiling, old.ceiling_text)
            row["before"] = verdict(old, change.old_rule or claim.rule)[0] if change.same_quantity else \
                "not comparable (another quantity)"
        rows.append(row)
    return rows


def _measured(measure, chapter: str, at: str | None) -> Evidence | None:
    """measure's evidence at profile `at`, or None (no measure, no profile, or not measurable there)."""
    if measure is None or at is None:
        return None
    try:
        return measure(results_dir(chapter, at))
    except (FileNotFoundError, KeyError, _NoInterval):
        return None


def history_markdown(rows: list[dict]):
    return markdown_table(["claim", "changed", "change", "verdict now", "under the old test"],
                          [[f"{r['source']}: {r['claim']}", r["date"], r["change"], f"**{r['now']}**", r["before"]]
                           for r in rows])


def claims_table(chapter: str | None = None, profile: str | None = None) -> list[dict]:
    """One row per claim (of `chapter`, or all): source, claim, paper, ours, rule, guards, ceiling,
    profile, verdict, why. Each chapter's largest profile with results, or `profile` when given
    (a chapter shows the verdicts of the run it just made)."""
    rows = []
    for c in CLAIMS:
        if chapter is not None and c.chapter != chapter:
            continue
        at = latest_profile(c.chapter) if profile is None else profile
        row = {"source": c.source, "claim": c.statement, "paper": c.paper_value, "chapter": c.chapter,
               "profile": at, "ours": "", "rule": c.rule.text(), "guards": "", "ceiling": "",
               "verdict": "not run", "why": "no result file"}
        if at is not None and results_dir(c.chapter, at).is_dir():
            try:
                e = c.measure(results_dir(c.chapter, at))
                row.update(ours=e.text, guards="; ".join(g.text() for g in e.guards) or "-", ceiling=e.ceiling_text)
                row["verdict"], row["why"] = verdict(e, c.rule)
            except _NoInterval as err:
                row.update(ours=f"no interval: {err}", verdict="inconclusive", why=str(err))
            except (FileNotFoundError, KeyError) as err:   # result file or entry missing at this profile
                row.update(ours=f"not measured: {err}", why=f"not measured: {err}")
        else:
            row["profile"] = None
        rows.append(row)
    return rows


def claims_markdown(rows: list[dict]):
    """The claims table as Markdown for a notebook to display: the verdict beside the claim, the test
    (rule, guards, ceiling, profile) in one last column, so that it reads at 1280 px without
    scrolling sideways."""
    return markdown_table(["claim", "verdict", "ours (95% interval); the paper", "test"],
                          [[f"{r['source']}: {r['claim']}", f"**{r['verdict']}** ({r['why']})",
                            f"{r['ours'] or '-'}; paper: {r['paper']}", f"rule: {r['rule']}; guards: {r['guards'] or '-'}; ceiling: {r['ceiling'] or '-'}; "
                                        f"profile: {r['profile'] or '-'}"] for r in rows])

def seeds_needed_table(profile: str | None = None):
    """Per Chang et al. claim (the dynamics chapter at `profile`, default its largest with results): our
    number, the rule's threshold, the seeds the run used and those its interval would need to clear the
    threshold (kn.dynamics_claims.seeds_needed), as Markdown."""
    at = profile or latest_profile("dynamics")
    folder = results_dir("dynamics", at)
    n_seeds = len(_load(folder, "dynamics")["seeds"])
    rows = []
    for c in (c for c in CLAIMS if c.chapter == "dynamics"):
        e = _evidence(c.measure, folder)
        need = None if e is None else dynamics_claims.seeds_needed(e.estimate, c.rule.threshold, n_seeds)
        number = "-" if e is None else f"{e.estimate.value:+.3g} [{e.estimate.low:+.3g}, {e.estimate.high:+.3g}]"
        rows.append([c.statement, number, c.rule.text(), str(n_seeds), "-" if need is None else str(need)])
    return markdown_table(["claim", "ours (95% interval)", "rule", "seeds run", "seeds needed"], rows)
