"""95% intervals resampled over people (or any rows): the uncertainty every verdict reads (kn.claims).

A Part 3.1 result keeps each test person's six answers (kn.extraction `items`); `person_table`
turns them into a [people, attributes] 0/1 table, `mean_accuracy` is the paper's average (over
attributes of each attribute's accuracy), and `bootstrap` resamples the people of one or more
tables, each on its own, for a percentile interval of any statistic of them.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from kn.data.records import ATTRIBUTES

N_BOOT = 2000


class Interval(NamedTuple):
    """A measured number with its 95% interval."""
    value: float
    low: float
    high: float


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


def accuracy_gap(a: np.ndarray, b: np.ndarray) -> Interval:
    """mean_accuracy(a) - mean_accuracy(b) in points, each table's people resampled on their own."""
    return bootstrap([a, b], lambda x, y: mean_accuracy(x) - mean_accuracy(y))


def held_out_accuracy(result: dict) -> Interval:
    """test_people accuracy (%) of a Part 3.1 result with its interval over people."""
    return bootstrap([person_table(result["qa"]["items"])], mean_accuracy)
