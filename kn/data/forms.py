"""The surface forms bioR writes a value in: a birth date's four formats, the short forms of
universities and employers (pools/abbreviations.tsv). kn.data.bior writes them; kn.data.records
finds a span written in any of them."""
from __future__ import annotations

import re
from functools import lru_cache

from kn.data.pools import ATTRIBUTES, MONTHS, POOL_DIR
from kn.errors import DataError

_DATE = re.compile(r"^(\w+) (\d{1,2}), (\d{4})$")


def ordinal(day: int) -> str:
    """2 -> '2nd', 11 -> '11th', 23 -> '23rd'."""
    suffix = "th" if 10 <= day % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


def date_forms(month: int, day: int, year: int) -> list[str]:
    """The four ways a birth date is written; index 0 is the canonical bioS form."""
    m = MONTHS[month]
    return [f"{m} {day}, {year}", f"{day} {m} {year}", f"{ordinal(day)} {m} {year}", f"{m} {ordinal(day)}, {year}"]


@lru_cache(maxsize=1)
def load_abbreviations() -> dict:
    """attribute -> {canonical value: [short forms]} from pools/abbreviations.tsv."""
    out: dict = {}
    for line in (POOL_DIR / "abbreviations.tsv").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            attr, value, short = line.split("\t")
            out.setdefault(attr, {}).setdefault(value, []).append(short)
    return out


def surface_forms(attribute: str, value: str) -> list[str]:
    """Every way bioR may write the canonical `value` of `attribute`; the canonical form first."""
    if attribute not in ATTRIBUTES:
        raise DataError(f"attribute: got {attribute!r}; allowed: {ATTRIBUTES}")
    if attribute == "birth_date":
        m = _DATE.match(value)
        if not m or m.group(1) not in MONTHS:
            raise DataError(f"birth_date: {value!r} is not a canonical date like 'October 2, 1996'")
        return date_forms(MONTHS.index(m.group(1)), int(m.group(2)), int(m.group(3)))
    return [value] + load_abbreviations().get(attribute, {}).get(value, [])
