"""The value pools of bioS (papers.md, Part 3.1, "bioS"), read from the data files beside this module.

400 first, 400 middle and 1000 last names; 200 birth cities; 300 universities; 100 majors; 263
employers, each with its headquarters city (13.7% in New York, NY). Birth dates are 12 months x
28 days x 200 years (1900-2099). bios_style.json holds the sentences of kn.data.bios' harder styles
(written for kn): templates with the value mid-sentence or possessive, and filler sentences.
Entry point: `load_pools()` (cached).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

POOL_DIR = Path(__file__).parent / "pools"
ATTRIBUTES = ("birth_date", "birth_city", "university", "major", "company_name", "company_city")   # a person's six
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December")
YEARS = range(1900, 2100)
DAYS = range(1, 29)


@dataclass(frozen=True)
class Pools:
    first_names: tuple[str, ...]
    middle_names: tuple[str, ...]
    last_names: tuple[str, ...]
    birth_cities: tuple[str, ...]
    universities: tuple[str, ...]
    majors: tuple[str, ...]
    companies: tuple[str, ...]
    company_cities: tuple[str, ...]   # headquarters of companies[i]
    templates: dict                   # attribute -> tuple of bioS sentence templates
    mid_templates: dict               # attribute -> templates with the value mid-sentence (value_position="mid")
    fillers: tuple[str, ...]          # sentences without a person or a value (length="long")

    @property
    def n_names(self) -> int:
        """N0: how many distinct full names the pools can make."""
        return len(self.first_names) * len(self.middle_names) * len(self.last_names)


def _lines(name: str) -> tuple[str, ...]:
    return tuple(line.strip() for line in (POOL_DIR / name).read_text(encoding="utf-8").splitlines() if line.strip())


@lru_cache(maxsize=1)
def load_pools() -> Pools:
    companies = [line.split("\t") for line in _lines("companies.tsv")]
    templates = json.loads((POOL_DIR / "bios_templates.json").read_text(encoding="utf-8"))
    style = json.loads((POOL_DIR / "bios_style.json").read_text(encoding="utf-8"))
    return Pools(
        first_names=_lines("first_names.txt"), middle_names=_lines("middle_names.txt"),
        last_names=_lines("last_names.txt"), birth_cities=_lines("birth_cities.txt"),
        universities=_lines("universities.txt"), majors=_lines("majors.txt"),
        companies=tuple(c[0] for c in companies), company_cities=tuple(c[1] for c in companies),
        templates={a: tuple(t) for a, t in templates.items()},
        mid_templates={a: tuple(t) for a, t in style["mid"].items()}, fillers=tuple(style["fillers"]),
    )


def format_date(month: int, day: int, year: int) -> str:
    """bioS date format: month index 0-11, day 1-28 -> 'October 2, 1996'."""
    return f"{MONTHS[month]} {day}, {year}"
