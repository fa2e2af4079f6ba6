"""Measures of Part 3.3's claims: the capacity ratio from the law's fit (kn.capacity.fit_all) with
its interval, quantization kept, the slope, and the variants (gated MLP, LLaMA, junk, domain token).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from kn.bound import stores_values
from kn.capacity import capacity_rows
from kn.claims.rules import Check, Evidence, NoInterval, load
from kn.intervals import Interval, bootstrap
from kn.sweep import read_rows


MIN_CAPACITY_POINTS = {100: 4, 1000: 3}   # value-storing, capacity-bound models a fit needs to count


def _fit(folder: Path, key: str) -> dict:
    fit = load(folder, "fit")["fits"].get(key)
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


def capacity_ratio(exposures: int) -> Callable[[Path], Evidence]:
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


def quantized_kept(bits: int) -> Callable[[Path], Evidence]:
    """% of the full-precision bits kept after int`bits`, summed over the models of the GPT-2 fit at
    QUANT_EXPOSURES, with an interval resampled over those models."""
    def measure(folder):
        fits = load(folder, "fit")["fits"]
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


def capacity_slope(folder):
    """The log-log slope of bits on parameters at 1000 exposures: 1 if bits grow in proportion."""
    fit = _fit(folder, "bits@1000")
    est = Interval(fit["slope"], fit["slope_low"], fit["slope_high"])
    if not math.isfinite(est.value):
        raise NoInterval("fewer than 3 models or 2 sizes fitted")
    return Evidence(est, f"slope {est.value:.2f} [{est.low:.2f}, {est.high:.2f}] over {fit['n_points']} models "
                         f"({fit.get('n_sizes', '?')} sizes)",
                    (Check("sizes fitted", fit.get("n_sizes", 0), MIN_CAPACITY_POINTS[1000], ""),))


def gated_gap(folder):
    """GPT-2's 100-exposure fit over the gated (LLaMA) one's."""
    gpt2, gated = _fit(folder, "bits@100"), _fit(folder, "llama:bits@100")
    est = _ratio(_as_interval(gpt2), _as_interval(gated))
    return Evidence(est, f"GPT-2 {_fit_text(gpt2)} vs LLaMA {_fit_text(gated)}: {est.value:.2f}x",
                    (Check("LLaMA value-storing models fitted", gated["n_points"], 3, ""),))


def llama_law(folder):
    """LLaMA's 1000-exposure fit: Result 5 says every architecture stores ~2 bits/param there."""
    fit = _fit(folder, "llama:bits@1000")
    return Evidence(_as_interval(fit), "LLaMA " + _fit_text(fit),
                    (Check("LLaMA value-storing models fitted", fit["n_points"], MIN_CAPACITY_POINTS[1000], ""),))


def variant_ratio(num: dict, den: dict, what: str) -> Callable[[Path], Evidence]:
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
