"""95% intervals resampled over people (or any rows): the uncertainty every verdict reads (kn.claims).

A Part 3.1 result keeps each test person's six answers (kn.extraction `items`); `person_table`
turns them into a [people, attributes] 0/1 table, `mean_accuracy` is the paper's average (over
attributes of each attribute's accuracy), and `bootstrap` resamples the people of one or more
tables, each on its own, for a percentile interval of any statistic of them. `check_values`
refuses a result file whose per-person answers could not have been measured (kn.results.read_json
calls it on every file it reads).
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np

from kn.data.records import ATTRIBUTES
from kn.errors import DataError

N_BOOT = 2000


class Interval(NamedTuple):
    """A measured number with its 95% interval."""
    value: float
    low: float
    high: float


ANSWERS = (0, 1, -1)              # a QA item: wrong, right, no QA of that attribute
PROBE_ANSWERS = (0, 1, None)      # a probe item: wrong, right, no label
MEAN_TOLERANCE = 1e-9             # a stored mean and the mean of its items differ by float rounding only


def check_values(record: dict, path) -> None:
    """DataError naming `path` and the field unless a result's per-person items are one per person
    and allowed values (qa.items: ANSWERS; a probe's q.items: PROBE_ANSWERS) and qa.test.mean is the
    mean of qa.items (both NaN without test people)."""
    qa, probe = record.get("qa"), record.get("q")
    if isinstance(qa, dict) and isinstance(qa.get("items"), dict):
        items = qa["items"]
        _check_items({f"qa.items.{a}": items.get(a) for a in ATTRIBUTES}, items, ANSWERS, path)
        stored, mean = (qa.get("test") or {}).get("mean"), mean_accuracy(person_table(items)) / 100
        if not _same(stored, mean):
            raise DataError(f"result: {str(path)!r}: qa.test.mean is {stored!r} but its items give {mean!r}; "
                            "restore the file or run its experiment again")
    if isinstance(probe, dict) and isinstance(probe.get("items"), dict):
        items = probe["items"]
        columns = {f"q.items.{kind}.{a}.correct": (by_attr.get(a) or {}).get("correct")
                   for kind, by_attr in items.items() if kind != "person" for a in ATTRIBUTES}
        _check_items(columns, items, PROBE_ANSWERS, path)


def _same(stored, mean: float) -> bool:
    """`stored` is a number equal to `mean` up to rounding (or both are NaN: no test people)."""
    if isinstance(stored, bool) or not isinstance(stored, (int, float)):
        return False
    return abs(stored - mean) <= MEAN_TOLERANCE or (math.isnan(stored) and math.isnan(mean))


def _check_items(columns: dict, items: dict, allowed: tuple, path) -> None:
    """DataError unless each of `columns` ({field: values}) holds one allowed value per items["person"]."""
    n = len(items.get("person") or [])
    for field, values in columns.items():
        if not isinstance(values, list) or len(values) != n:
            raise DataError(f"result: {str(path)!r}: {field} is not a list of {n} items (one per person)")
        bad = next((i for i, v in enumerate(values) if not (v is None or type(v) is int) or v not in allowed), None)
        if bad is not None:
            raise DataError(f"result: {str(path)!r}: {field}[{bad}] is {values[bad]!r}; allowed: "
                            f"{', '.join(map(str, allowed))}")


def person_table(items: dict) -> np.ndarray:
    """[people, attributes] 0/1 (NaN where absent, stored as -1) from a result's per-person items."""
    return np.array([[np.nan if v < 0 else v for v in items[a]] for a in ATTRIBUTES], dtype=float).T


def mean_accuracy(table: np.ndarray) -> float:
    """% correct: the mean over attributes of each attribute's mean over people (the paper's average)."""
    return 100 * float(np.nanmean(np.nanmean(table, axis=0)))


def bootstrap(tables: list[np.ndarray], stat: Callable[..., float], n: int = N_BOOT, seed: int = 0) -> Interval:
    """stat(*tables) with a 95% percentile interval, each table's rows resampled on their own."""
    rng = np.random.default_rng(seed)
    draws = [stat(*(t[rng.integers(0, len(t), len(t))] for t in tables)) for _ in range(n)]
    return Interval(stat(*tables), *np.nanpercentile(draws, [2.5, 97.5]))


def sample_factor(estimate: Interval, edges: tuple[float, ...]) -> float | None:
    """How many times its sample an interval needs so that it no longer reaches the nearest of
    `edges`, if the estimate held and the half-width shrank as 1/sqrt(sample): (half-width toward
    that edge / the estimate's distance from it)^2; None when the estimate sits on an edge."""
    edge = min(edges, key=lambda e: abs(estimate.value - e))
    distance = abs(estimate.value - edge)
    if distance == 0 or not math.isfinite(distance):
        return None
    half = estimate.value - estimate.low if estimate.value > edge else estimate.high - estimate.value
    return (half / distance) ** 2


def accuracy_gap(a: np.ndarray, b: np.ndarray) -> Interval:
    """mean_accuracy(a) - mean_accuracy(b) in points, each table's people resampled on their own."""
    return bootstrap([a, b], lambda x, y: mean_accuracy(x) - mean_accuracy(y))


def paired_gap(a: np.ndarray, b: np.ndarray) -> Interval:
    """mean_accuracy(a) - mean_accuracy(b) in points for two tables of the same people in the same
    order (two models scored on one test set): the people are resampled together."""
    if a.shape != b.shape:
        raise DataError(f"tables: a paired gap needs the same people; got shapes {a.shape} and {b.shape}")
    k = a.shape[1]
    return bootstrap([np.hstack([a, b])], lambda t: mean_accuracy(t[:, :k]) - mean_accuracy(t[:, k:]))


def seed_mean(values: list[float]) -> Interval:
    """The mean of per-seed values with its 95% Student-t interval over the seeds (at least two)."""
    from scipy.stats import t
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        raise DataError(f"values: a t interval over seeds needs at least 2; got {len(v)}")
    half = t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
    return Interval(float(v.mean()), float(v.mean() - half), float(v.mean() + half))


def held_out_accuracy(result: dict) -> Interval:
    """test_people accuracy (%) of a Part 3.1 result with its interval over people."""
    return bootstrap([person_table(result["qa"]["items"])], mean_accuracy)
