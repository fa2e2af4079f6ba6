"""Errors and parameter checks shared by every kn module.

`DataError` is the one error kn raises for bad input: a data file or a parameter that is not what kn
accepts. Its message is one line that names the parameter, what it got and what is allowed; the CLI
turns it into exit code 2. The checks below write that message for the common cases.
"""
from __future__ import annotations

import math
from numbers import Integral, Real


class DataError(ValueError):
    """A data file or parameter is not what kn accepts; the message says what is allowed."""


def check_count(name: str, n, low: int = 0, high: int | None = None) -> int:
    """An integer in [low, high] (numpy integers too, not bool), as int; else DataError naming `name`."""
    allowed = f"an integer >= {low}" + ("" if high is None else f" and <= {high:,}")
    if isinstance(n, bool) or not isinstance(n, Integral) or n < low or (high is not None and n > high):
        raise DataError(f"{name}: got {n!r}; allowed: {allowed}")
    return int(n)


def check_number(name: str, v, low: float = 0.0, strict: bool = False, unit: str = "") -> float:
    """A finite number >= low (> low when strict), as float; `unit` is said in the error."""
    if isinstance(v, bool) or not isinstance(v, Real) or not math.isfinite(v) or v < low or (strict and v == low):
        unit = f" ({unit})" if unit else ""
        raise DataError(f"{name}: got {v!r}; allowed: a number {'>' if strict else '>='} {low:g}{unit}")
    return float(v)
