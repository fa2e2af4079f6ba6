"""A claim's test, fixed before its runs: the `Rule` (the effect it needs), the guards (`Check`) its
measurement must pass, the measurement (`Evidence`: an estimate with its 95% interval, a ceiling)
and `verdict`, the only function that turns them into a word (kn.claims' docstring lists them).
`load` reads a chapter's result file for a measure; `NoInterval` is a measure's way to say its
result lacks what an interval needs.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kn.intervals import Interval, sample_factor
from kn.results import read_json


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


def to_decide(e: Evidence, rule: Rule) -> str:
    """What would turn an inconclusive verdict into a decision: the failed guards to meet, a method
    with a higher ceiling, or (an interval across the rule's threshold or band edge) how many times
    its sample the interval would need if the estimate held (kn.intervals.sample_factor); "" otherwise."""
    decided, why = verdict(e, rule)
    if decided != "inconclusive":
        return ""
    if why.startswith("guard failed"):
        return "meet the failed guards first (" + "; ".join(g.name for g in e.guards if not g.ok) + ")"
    if why.startswith("ceiling"):
        return "a measure whose ceiling is above the rule's threshold"
    if e.estimate is None or not all(map(math.isfinite, (e.estimate.low, e.estimate.high))):
        return "a run that gives an interval"
    edges = band(rule) if rule.kind in ("near", "within") else (rule.threshold,)
    factor = sample_factor(e.estimate, edges)
    return ("none: the estimate sits on the threshold" if factor is None else
            f"about {max(factor, 1):.1f}x the sample it was resampled over, if the estimate held")


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


class NoInterval(Exception):
    """A result without what an interval needs: the claim's row is inconclusive."""


def load(folder: Path, name: str) -> dict:
    """A result file through kn.results.read_json: a damaged or edited one is refused, not read."""
    return read_json(folder / f"{name}.json")
