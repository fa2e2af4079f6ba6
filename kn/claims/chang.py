"""Measures of Chang et al.'s claims: one number per claim from kn.dynamics_claims (the one the
dynamics page shows), as evidence with its interval over seeds and paragraphs.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from kn import dynamics_claims
from kn.claims.rules import Check, Evidence, NoInterval, load
from kn.intervals import Interval


def _late(folder, scenario="once", kind="memorization") -> dict:
    return load(folder, "dynamics")["stages"]["late"][scenario][kind]


def _interval_of(d: dict | None) -> Interval:
    if d is None or d.get("value") is None:
        raise NoInterval("the estimate is undefined (too few retained points or no fit)")
    return Interval(d["value"], d["low"], d["high"])


def dynamics(number: Callable) -> Callable[[Path], Evidence]:
    """A claim's number from kn.dynamics_claims (the one the dynamics page shows) as evidence."""
    def measure(folder):
        try:
            estimate, text = number(folder)
        except ValueError as err:
            raise NoInterval(str(err)) from None
        return Evidence(estimate, text)
    return measure


def power_law(folder):
    """The smaller AIC lead of duplicated and paraphrased; the log law must decay in both."""
    try:
        estimate, text, decay_low = dynamics_claims.power_law(folder)
    except ValueError as err:
        raise NoInterval(str(err)) from None
    return Evidence(estimate, text, (Check("decay b, lower end of its interval (both)", decay_low, 1e-9, ""),))


# The tests of these claims before 2026-12-04 (once scenario only), kept for the rule history


SEEDS_AND_PARAGRAPHS = dynamics_claims.SEEDS_AND_PARAGRAPHS


def bump_once(folder):
    e = _interval_of(_late(folder)["effectivity_minus_control"])
    return Evidence(e, f"effectivity minus never-injected controls {e.value:+.3f} nats [{e.low:+.3f}, {e.high:+.3f}] "
                       f"(memorization probes, injected once, late base; {SEEDS_AND_PARAGRAPHS})")


def stage_gain_once(folder):
    d = _interval_of(load(folder, "dynamics")["early_vs_late"]["once"]["memorization"]["effectivity_minus_control"]
                     ["late_minus_early"])
    return Evidence(d, f"late minus early base, effectivity minus controls {d.value:+.3f} nats [{d.low:+.3f}, {d.high:+.3f}] "
                       f"(injected once; {SEEDS_AND_PARAGRAPHS})")


def power_law_once(folder):
    """AIC of the best other law minus the log-t law's (> 0: the power law fits best), on the
    retainability of injected minus control probes; the decay must be above 0."""
    f = _late(folder)["forgetting_minus_control"]
    if f is None:
        raise NoInterval("no forgetting fit of injected minus control (too few retained points)")
    aic = {k: v["aic"] for k, v in f["fits"].items() if v and v.get("aic") is not None}
    if "log" not in aic or len(aic) < 2:
        raise NoInterval("too few forgetting fits to compare")
    d = min(v for k, v in aic.items() if k != "log") - aic["log"]
    b = _interval_of(f["decay_b"])
    return Evidence(Interval(d, d, d), "AIC " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(aic.items())) +
                    f": log-t better by {d:.1f} (a point: AIC has no interval here); decay b {b.value:.3f} "
                    f"[{b.low:.3f}, {b.high:.3f}] (injected minus control, once, late base)",
                    (Check("decay b, lower end of its interval", b.low, 1e-9, ""),))


def batch_once(folder):
    r = load(folder, "batch_sizes")
    small, large = sorted(r["batch_sizes"])[0], sorted(r["batch_sizes"])[-1]
    d = _interval_of(r["small_minus_large"]["once"]["memorization"]["forgetting"])
    return Evidence(d, f"decay b (batch {small}) minus decay b (batch {large}) {d.value:+.3f} [{d.low:+.3f}, "
                       f"{d.high:+.3f}] ({SEEDS_AND_PARAGRAPHS})")
