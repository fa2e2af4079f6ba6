"""Biography records and their JSONL files.

One record is one biography (papers.md, Part 3.1). The schema, shared by bioS, bioR and files made
elsewhere:

    {"person": 17,                      # person id, shared by all biographies of one person
     "name": "Anya Briar Forger",
     "pronoun": "she",                  # "he" | "she" (optional in loaded files)
     "group": "plain",                  # population: "plain" | "celebrity" | "minority"
     "attributes": {"birth_date": "October 2, 1996", "birth_city": "Princeton, NJ",
                    "university": "...", "major": "...", "company_name": "...",
                    "company_city": "..."},
     "text": "Anya Briar Forger was born on October 2, 1996. She ...",
     "spans": {"name": [[0, 17]], "birth_date": [[30, 45]], ...}}

`spans[key]` lists the [start, end) character offsets of every place the name or the attribute value
is written in `text`. In bioS, text[start:end] equals the value; in bioR it may be another surface
form of it ("2nd October 1996", "MIT"). Entry points: `write_jsonl`, `read_jsonl`, `load_bios`
(accepts the authors' generator records: name + six attributes + text, spans found by search).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator

ATTRIBUTES = ("birth_date", "birth_city", "university", "major", "company_name", "company_city")

# Keys used by other generators for the same six attributes (e.g. the authors' public code).
ATTRIBUTE_ALIASES = {
    "birthday": "birth_date", "birthdate": "birth_date", "b_date": "birth_date",
    "birthcity": "birth_city", "b_city": "birth_city",
    "univ": "university", "field": "major",
    "company": "company_name", "company1name": "company_name", "employer": "company_name",
    "c_name": "company_name", "company1city": "company_city", "c_city": "company_city",
}


class DataError(ValueError):
    """A data file or parameter is not what kn accepts; the message says what is allowed."""


def write_jsonl(records: Iterable[dict], path: str | Path) -> int:
    """Write records one per line (compact, key order kept); returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False, separators=(",", ":")))
            f.write("\n")
            n += 1
    return n


def read_jsonl(path: str | Path) -> Iterator[dict]:
    """Yield the records of a JSONL file, with the line number in any error."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"path: no such JSONL file {str(path)!r}")
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg}); expected one JSON object per line") from None
            if not isinstance(rec, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
            yield rec


def find_spans(text: str, value: str) -> list[list[int]]:
    """Every non-overlapping [start, end) at which `value` occurs in `text`."""
    spans, start = [], text.find(value)
    while start >= 0 and value:
        spans.append([start, start + len(value)])
        start = text.find(value, start + len(value))
    return spans


def normalize_record(rec: dict, where: str = "record") -> dict:
    """Return `rec` in kn's schema: aliases renamed, spans found where missing, all checked."""
    attrs = rec.get("attributes")
    if attrs is None:  # flat records: name + six attributes + text
        attrs = {ATTRIBUTE_ALIASES.get(k, k): v for k, v in rec.items() if ATTRIBUTE_ALIASES.get(k, k) in ATTRIBUTES}
    else:
        attrs = {ATTRIBUTE_ALIASES.get(k, k): v for k, v in attrs.items()}
    missing = [a for a in ATTRIBUTES if a not in attrs]
    for key in ("name", "text"):
        if not isinstance(rec.get(key), str):
            raise DataError(f"{where}: field {key!r} must be a string; a biography record needs name, text and the six attributes {ATTRIBUTES}")
    if missing:
        raise DataError(f"{where}: missing attributes {missing}; expected {ATTRIBUTES} (or the aliases {sorted(ATTRIBUTE_ALIASES)})")
    text = rec["text"]
    spans = rec.get("spans") or {}
    spans = {ATTRIBUTE_ALIASES.get(k, k): v for k, v in spans.items()}
    for key, value in [("name", rec["name"])] + [(a, attrs[a]) for a in ATTRIBUTES]:
        if key not in spans:
            spans[key] = find_spans(text, str(value))
        if not spans[key]:
            raise DataError(f"{where}: {key} {value!r} does not occur in the text and no span was given")
        for s, e in spans[key]:
            if not (0 <= s < e <= len(text)):
                raise DataError(f"{where}: span {key} [{s}, {e}] lies outside the text (length {len(text)})")
    out = {"person": rec.get("person"), "name": rec["name"], "pronoun": rec.get("pronoun"),
           "group": rec.get("group", "plain"), "attributes": {a: str(attrs[a]) for a in ATTRIBUTES},
           "text": text, "spans": {k: spans[k] for k in ("name",) + ATTRIBUTES}}
    return out


def load_bios(path: str | Path) -> list[dict]:
    """Read a biography JSONL (kn's or a flat name + attributes + text one) into kn's schema.

    Records without a person id are numbered by first appearance of their name.
    """
    records, ids = [], {}
    for i, rec in enumerate(read_jsonl(path)):
        rec = normalize_record(rec, where=f"{path}: record {i + 1}")
        if rec["person"] is None:
            rec["person"] = ids.setdefault(rec["name"], len(ids))
        records.append(rec)
    if not records:
        raise DataError(f"path: {str(path)!r} holds no records")
    return records
