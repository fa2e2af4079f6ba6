"""The number each Chang et al. claim is tested on (book/papers.md), defined once: kn.claims' rows and the
dynamics page both read it here, from the chapter's result files; and the seeds a claim needs.

Every number is for the memorization probes, resampled over seeds and paragraphs (kn.dynamics_summary).
Where a claim is about several scenarios, the rule was decided here before the re-run that tests it
(2026-12-04), and is either pooled (one mean over the scenarios) or needs both of FAMILY (the evidence is
the less favourable of the two: its interval has the smaller ends, for a rule that asks for a large value):
  bump        pooled over once, duplicated, paraphrased: effectivity minus never-injected controls, late
              base (the claim is about an exposure, whichever scenario holds it)
  stage_gain  pooled likewise: the same quantity, late base minus early base
  power_law   both duplicated and paraphrased: AIC of the best other law minus the log law's, on the
              retainability of injected minus control after the last injection (the paper fits
              forgetting after repeated exposures, per scenario); guard: the log law's decay b > 0 in both
  duplicated_forgets_faster  one comparison: decay b (log law) duplicated minus paraphrased, late base
  batch       both duplicated and paraphrased: decay b of batch B minus batch_factor x B (the paper
              reports the batch comparison per scenario)
`claim_intervals` computes the pooled numbers at run time (dynamics.json "claims"); `bump`, `stage_gain`,
`power_law`, `duplicated_forgets_faster` and `batch_forgets_slower` read each claim's number from a results
folder ((interval, text); ValueError where it is undefined); `seeds_needed` is the power estimate that
kn.claims' power table and the cpu profile use.
"""
from __future__ import annotations

import math
from pathlib import Path

from kn.dynamics_config import SCENARIOS
from kn.dynamics_summary import N_BOOT, bootstrap, pooled, pooled_difference
from kn.intervals import Interval, sample_factor
from kn.results import read_json

KIND = "memorization"
FAMILY = ("duplicated", "paraphrased")
SEEDS_AND_PARAGRAPHS = "resampled over seeds and paragraphs"


def claim_intervals(pools: dict, n_boot: int = N_BOOT) -> dict:
    """dynamics.json's "claims" from stage -> (scenario, kind) -> Pool: bump, stage_gain (with both
    bases) and aic_lead per FAMILY scenario (late base), each {"value", "low", "high"}."""
    late = pools["late"]
    scenarios = tuple(s for s in SCENARIOS if (s, KIND) in late)
    out = {"bump": pooled(late, KIND, scenarios, "effectivity_minus_control", n_boot), "scenarios": list(scenarios)}
    if "early" in pools:
        out["stage_gain"] = pooled_difference(pools["early"], late, KIND, scenarios, "effectivity_minus_control", n_boot)
    out["aic_lead"] = {s: bootstrap((late[s, KIND],), "aic_lead_minus_control", n_boot)[0]
                       for s in FAMILY if (s, KIND) in late}
    return out


def _interval(d: dict | None, what: str) -> Interval:
    if d is None or d.get("value") is None or d.get("low") is None:
        raise ValueError(f"{what}: the estimate is undefined (too few retained points or no fit)")
    return Interval(d["value"], d["low"], d["high"])


def _claims(folder: Path) -> dict:
    r = read_json(Path(folder) / "dynamics.json")
    if "claims" not in r:
        raise FileNotFoundError("dynamics.json predates the claims' pooled numbers: re-run the chapter")
    return r["claims"]


def _worst(ivs: dict[str, Interval]) -> Interval:
    """The less favourable of a family for a rule asking for a large value: the smaller ends."""
    return Interval(*(min(iv[i] for iv in ivs.values()) for i in range(3)))


def _each(ivs: dict[str, Interval], fmt: str) -> str:
    return ", ".join(f"{s} {iv.value:{fmt}} [{iv.low:{fmt}}, {iv.high:{fmt}}]" for s, iv in ivs.items())


def bump(folder) -> tuple[Interval, str]:
    c = _claims(folder)
    e = _interval(c["bump"], "bump")
    return e, (f"effectivity minus never-injected controls {e.value:+.3f} nats [{e.low:+.3f}, {e.high:+.3f}], mean over "
               f"{', '.join(c['scenarios'])} (late base; {SEEDS_AND_PARAGRAPHS})")


def stage_gain(folder) -> tuple[Interval, str]:
    d = _interval(_claims(folder).get("stage_gain"), "stage_gain")
    return d, (f"late minus early base, effectivity minus controls (mean over the scenarios) {d.value:+.3f} nats "
               f"[{d.low:+.3f}, {d.high:+.3f}] ({SEEDS_AND_PARAGRAPHS})")


def power_law(folder) -> tuple[Interval, str, float]:
    """(the smaller AIC lead of FAMILY, text, the smaller lower end of their decay b intervals)."""
    leads = {s: _interval(v, f"aic_lead {s}") for s, v in _claims(folder)["aic_lead"].items()}
    late = read_json(Path(folder) / "dynamics.json")["stages"]["late"]
    decay = {s: _interval((late[s][KIND]["forgetting_minus_control"] or {}).get("decay_b"), f"decay b {s}") for s in leads}
    worst = _worst(leads)
    return worst, (f"AIC of the best other law minus the log law's (injected minus control, after the last injection): "
                   f"{_each(leads, '+.1f')}; the smaller {worst.value:+.1f} [{worst.low:+.1f}, {worst.high:+.1f}]; "
                   f"decay b {_each(decay, '.3f')} ({SEEDS_AND_PARAGRAPHS})"), min(d.low for d in decay.values())


def duplicated_forgets_faster(folder) -> tuple[Interval, str]:
    d = read_json(Path(folder) / "dynamics.json")["duplicated_minus_paraphrased"]["late"][KIND]["forgetting"]
    d = _interval(d, "duplicated minus paraphrased")
    return d, (f"decay b (duplicated) minus decay b (paraphrased) {d.value:+.3f} [{d.low:+.3f}, {d.high:+.3f}] "
               f"({SEEDS_AND_PARAGRAPHS})")


def batch_forgets_slower(folder) -> tuple[Interval, str]:
    r = read_json(Path(folder) / "batch_sizes.json")
    small, large = sorted(r["batch_sizes"])
    ivs = {s: _interval(r["small_minus_large"][s][KIND]["forgetting"], f"batch {s}") for s in FAMILY}
    worst = _worst(ivs)
    return worst, (f"decay b (batch {small}) minus decay b (batch {large}): {_each(ivs, '+.3f')}; the smaller "
                   f"{worst.value:+.3f} [{worst.low:+.3f}, {worst.high:+.3f}] ({SEEDS_AND_PARAGRAPHS})")


def seeds_needed(estimate: Interval, threshold: float, n_seeds: int) -> int | None:
    """Seeds for the 95% interval to stop reaching the threshold, at the same paragraphs per seed
    (kn.intervals.sample_factor), rounded up (at least 1); None when the estimate sits on it."""
    factor = sample_factor(estimate, (threshold,))
    return None if factor is None else max(1, math.ceil(n_seeds * factor - 1e-9))
