"""Individuals of the bioS world (papers.md, Part 3.1): unique names and six independent attributes.

`sample_people(n, seed)` draws N people with distinct (first, middle, last) names and uniform,
independent attribute values (company city follows the employer). Everything is integer arrays
drawn with numpy; strings are looked up on demand. `populations(...)` splits a draw into the
celebrity and minority groups of Result 6 (disjoint names by construction).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kn.data.pools import DAYS, MONTHS, YEARS, Pools, format_date, load_pools
from kn.data.records import ATTRIBUTES
from kn.errors import check_count

PRONOUNS = ("he", "she")


@dataclass(frozen=True)
class People:
    """N people as index arrays into the pools. All arrays have length N."""
    first: np.ndarray
    middle: np.ndarray
    last: np.ndarray
    pronoun: np.ndarray      # 0 he, 1 she
    month: np.ndarray        # 0-11
    day: np.ndarray          # 1-28
    year: np.ndarray         # 1900-2099
    birth_city: np.ndarray
    university: np.ndarray
    major: np.ndarray
    company: np.ndarray      # company_name and company_city both index this
    ids: np.ndarray          # person ids, written into every record

    def __len__(self) -> int:
        return len(self.first)

    def subset(self, idx) -> "People":
        return People(**{f: getattr(self, f)[idx] for f in self.__dataclass_fields__})

    def names(self, pools: Pools | None = None) -> list[str]:
        p = pools or load_pools()
        return [f"{p.first_names[a]} {p.middle_names[b]} {p.last_names[c]}"
                for a, b, c in zip(self.first.tolist(), self.middle.tolist(), self.last.tolist())]

    def values(self, attribute: str, pools: Pools | None = None) -> list[str]:
        """The attribute's value for every person, as written in bioS."""
        p = pools or load_pools()
        if attribute == "birth_date":
            return [format_date(m, d, y) for m, d, y in zip(self.month.tolist(), self.day.tolist(), self.year.tolist())]
        table, idx = {
            "birth_city": (p.birth_cities, self.birth_city), "university": (p.universities, self.university),
            "major": (p.majors, self.major), "company_name": (p.companies, self.company),
            "company_city": (p.company_cities, self.company),
        }[attribute]
        return [table[i] for i in idx.tolist()]

    def value_index(self, attribute: str) -> np.ndarray:
        """The attribute as a class index (for probes and frequency tests)."""
        if attribute == "birth_date":
            return (self.year - YEARS[0]) * 12 * 28 + self.month * 28 + (self.day - 1)
        return {"birth_city": self.birth_city, "university": self.university, "major": self.major,
                "company_name": self.company, "company_city": self.company}[attribute]

    def attributes(self, pools: Pools | None = None) -> list[dict]:
        cols = {a: self.values(a, pools) for a in ATTRIBUTES}
        return [{a: cols[a][i] for a in ATTRIBUTES} for i in range(len(self))]


def unique_draw(rng: np.random.Generator, n: int, space: int) -> np.ndarray:
    """n distinct integers from [0, space), in random order, without materialising the space."""
    out = np.empty(0, dtype=np.int64)
    while len(out) < n:
        extra = rng.integers(0, space, size=int((n - len(out)) * 1.1) + 16)
        merged = np.concatenate([out, extra])
        _, first = np.unique(merged, return_index=True)
        out = merged[np.sort(first)]  # keep first occurrences, in draw order
    return out[:n]


def sample_people(n: int, seed: int = 0, pools: Pools | None = None, id_offset: int = 0) -> People:
    """Draw n people with unique names and uniform independent attributes."""
    p = pools or load_pools()
    n = check_count("n", n, 1, p.n_names)
    check_count("seed", seed)
    rng = np.random.default_rng(seed)
    nf, nm, nl = len(p.first_names), len(p.middle_names), len(p.last_names)
    code = unique_draw(rng, n, p.n_names)
    draw = lambda k: rng.integers(0, k, size=n)  # noqa: E731 - one uniform column per attribute
    return People(
        first=code // (nm * nl), middle=(code // nl) % nm, last=code % nl,
        pronoun=draw(2), month=draw(len(MONTHS)), day=draw(len(DAYS)) + 1, year=draw(len(YEARS)) + YEARS[0],
        birth_city=draw(len(p.birth_cities)), university=draw(len(p.universities)),
        major=draw(len(p.majors)), company=draw(len(p.companies)),
        ids=np.arange(id_offset, id_offset + n),
    )


def populations(n_celebrity: int, n_minority: int, seed: int = 0) -> tuple[People, People]:
    """Result 6: disjoint celebrity and minority groups from one draw of unique names."""
    n_celebrity = check_count("n_celebrity", n_celebrity, 1)
    n_minority = check_count("n_minority", n_minority, 1)
    people = sample_people(n_celebrity + n_minority, seed)
    return people.subset(slice(0, n_celebrity)), people.subset(slice(n_celebrity, None))
