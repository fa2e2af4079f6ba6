"""Biography records and their JSONL files.

One record is one biography (papers.md, Part 3.1). The schema, shared by bioS, bioR and files made
elsewhere:

    {"person": 17,                      # person id, shared by all biographies of one person
     "name": "Anya Briar Forger",
     "pronoun": "she",                  # "he" | "she" | "they" (optional in loaded files)
     "group": "plain",                  # population: "plain" | "celebrity" | "minority"
     "attributes": {"birth_date": "October 2, 1996", "birth_city": "Princeton, NJ",
                    "university": "...", "major": "...", "company_name": "...",
                    "company_city": "..."},
     "text": "Anya Briar Forger was born on October 2, 1996. She ...",
     "spans": {"name": [[0, 17]], "birth_date": [[30, 45]], ...},
     "extra": {"source": "..."}}        # only in loaded files: their other keys, as strings

`spans[key]` lists the [start, end) character offsets of every place the name or the attribute value
is written in `text`. In bioS, text[start:end] equals the value; in bioR it may be another surface
form of it ("2nd October 1996", "MIT"). A span never ends in ".": a value such as "Acme Inc." ends
the sentence with its own full stop, and its span stops before it (kn.data.qa writes such an
answer the same way). Entry points: `write_jsonl`, `read_jsonl`, `read_bios` / `load_bios`, `Biographies`,
`JsonRecords` (generated records held as their lines).

`read_bios` also accepts records made by other generators: flat ones (name, the six attributes or
their aliases and a text), a nested person dict ({"person": {"name": ..., "birth_date": ...},
"texts": [...]}), several texts per record (each becomes one biography), spans given as [s, e] or
[[s, e], ...] or found by search, a pronoun in any case. A bad record is one line naming its line
number and field; lines are read as bytes and checked before they are parsed (UTF-8, at most
MAX_LINE_BYTES, JSON nested at most MAX_DEPTH deep), so no line can crash or exhaust a read.
`Biographies` holds a file's biographies as compact JSON (about the file's size in memory).
"""
from __future__ import annotations

import json
import logging
import re
import sys
from array import array
from collections.abc import Sequence
from itertools import islice
from json.encoder import encode_basestring as json_string  # a str as JSON, as `json_line` writes it
from pathlib import Path
from typing import Iterable, Iterator

from kn.data.forms import surface_forms
from kn.data.pools import ATTRIBUTES
from kn.errors import DataError

log = logging.getLogger(__name__)

# Keys used by other generators for the same six attributes (e.g. the authors' public code). An alias
# is read only when the attribute is not given under its own name (otherwise it is kept in "extra").
ATTRIBUTE_ALIASES = {
    "birthday": "birth_date", "birthdate": "birth_date", "b_date": "birth_date",
    "birthcity": "birth_city", "b_city": "birth_city",
    "univ": "university", "field": "major",
    "company": "company_name", "company1name": "company_name", "employer": "company_name",
    "c_name": "company_name", "company1city": "company_city", "c_city": "company_city",
}
PRONOUNS = ("he", "she", "they")
RECORD_KEYS = ("person", "person_id", "name", "pronoun", "group", "attributes", "text", "texts", "spans")
_YEAR = re.compile(r"\d{3,4}")   # a birth date names its year; a day-of-month field ("2") does not
MAX_LINE_BYTES = 1 << 20         # a longer line is a bad record, skipped unread (a 50 MB text would need GBs)
MAX_DEPTH = 64                   # arrays and objects nested deeper are a bad record (kn's own nest 4 deep)
INT64 = (-(1 << 63), (1 << 63) - 1)   # an integer person id becomes a numpy int64
_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")   # a \ud800-\udfff escape: half a pair, or alone


def json_line(rec: dict) -> str:
    """A record as one line of kn's JSONL: compact, key order kept, non-ASCII as is."""
    return json.dumps(rec, ensure_ascii=False, separators=(",", ":"))


class JsonRecords(Sequence):
    """Generated records held as their JSONL lines (`json_line`'s bytes) and decoded as they are read:
    a million biographies cost about their file's size in memory and no encoding to write."""

    def __init__(self, lines: Iterable[str]):
        self.lines = list(lines)

    @classmethod
    def of(cls, records: Iterable[dict]) -> "JsonRecords":
        return cls(map(json_line, records))

    def __len__(self) -> int:
        return len(self.lines)

    def __getitem__(self, i):
        return [json.loads(x) for x in self.lines[i]] if isinstance(i, slice) else json.loads(self.lines[i])

    def __iter__(self) -> Iterator[dict]:
        return map(json.loads, self.lines)

    def __eq__(self, other) -> bool:
        """Equal to JsonRecords with the same lines, or to a list of the same records."""
        if isinstance(other, JsonRecords):
            return self.lines == other.lines
        return isinstance(other, list) and list(self) == other

    __hash__ = None

    def __add__(self, other: "JsonRecords") -> "JsonRecords":
        return JsonRecords(self.lines + other.lines)

    def json_lines(self) -> list[str]:
        return self.lines


def write_jsonl(records: Iterable[dict], path: str | Path) -> int:
    """Write records one per line (`json_line`); returns the count. Records with a `json_lines()`
    method (JsonRecords, kn.data.importer.QARecords) give their lines already encoded."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = iter(records.json_lines() if hasattr(records, "json_lines") else map(json_line, records))
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        while chunk := list(islice(lines, 1 << 14)):
            f.write("\n".join(chunk) + "\n")
            n += len(chunk)
    return n


def _raw_lines(f, path) -> Iterator[tuple[int, bytes | DataError]]:
    """(line number, bytes) of a binary file; a line over MAX_LINE_BYTES is read past in chunks."""
    lineno = 0
    while line := f.readline(MAX_LINE_BYTES + 1):
        lineno += 1
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            size = len(line)
            while line and not line.endswith(b"\n"):
                line = f.readline(1 << 16)
                size += len(line)
            yield lineno, DataError(f"{path}:{lineno}: line of {size:,} bytes; allowed: at most {MAX_LINE_BYTES:,} "
                                    "bytes per line (kn.data.records.MAX_LINE_BYTES)")
        else:
            yield lineno, line


def _depth(value) -> int:
    """How deep arrays and objects nest in a parsed JSON value (1 for a flat object), without recursion."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        v, d = todo.pop()
        if isinstance(v, (dict, list)):
            deepest = max(deepest, d)
            todo += [(x, d + 1) for x in (v.values() if isinstance(v, dict) else v)]
    return deepest


def _unencodable(rec: dict) -> str | None:
    """The first key whose value (or the key itself) holds a lone surrogate, which UTF-8 cannot write."""
    for k, v in rec.items():
        try:
            json.dumps({k: v}, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            return k
    return None


def parse_line(raw: bytes, where: str) -> dict | DataError:
    """One JSONL line as a JSON object, or the DataError that says why it is not one."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return DataError(f"{where}: not valid UTF-8 (byte {e.start + 1} of the line is 0x{raw[e.start]:02x}); "
                         "expected UTF-8 text")
    nested = f"JSON nested deeper than {MAX_DEPTH} levels; allowed: at most {MAX_DEPTH} (kn.data.records.MAX_DEPTH)"
    try:
        rec = json.loads(line)
    except RecursionError:
        return DataError(f"{where}: {nested}")
    except ValueError as e:       # JSONDecodeError, or an integer of more digits than Python converts
        return DataError(f"{where}: not valid JSON ({getattr(e, 'msg', str(e).split(':')[0])}); "
                         "expected one JSON object per line")
    if not isinstance(rec, dict):
        return DataError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and _depth(rec) > MAX_DEPTH:
        return DataError(f"{where}: {nested}")
    if _SURROGATE.search(line) and (key := _unencodable(rec)) is not None:
        return DataError(f"{where}: field {key!r}: holds a lone surrogate escape (\\ud800-\\udfff); "
                         "allowed: text that UTF-8 can write (a surrogate pair only as a whole)")
    return rec


def jsonl_lines(path: str | Path) -> Iterator[tuple[int, dict | DataError]]:
    """(line number, record) of a JSONL file; an unreadable line gives a DataError instead."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"path: no such JSONL file {str(path)!r}")
    with open(path, "rb") as f:
        for lineno, raw in _raw_lines(f, path):
            if isinstance(raw, DataError):
                yield lineno, raw
            elif raw.strip():
                yield lineno, parse_line(raw, f"{path}:{lineno}")


def read_jsonl(path: str | Path) -> Iterator[dict]:
    """Yield the records of a JSONL file, with the line number in any error."""
    for _, rec in jsonl_lines(path):
        if isinstance(rec, DataError):
            raise rec
        yield rec


def find_spans(text: str, value: str) -> list[list[int]]:
    """Every non-overlapping [start, end) at which `value` occurs in `text`."""
    spans, start = [], text.find(value)
    while start >= 0 and value:
        spans.append([start, start + len(value)])
        start = text.find(value, start + len(value))
    return spans


def _short(value) -> str:
    s = repr(value)
    return s if len(s) <= 60 else s[:57] + "..."


def _bad(where: str, field: str, value, allowed: str) -> DataError:
    return DataError(f"{where}: field {field!r}: got {_short(value)}; allowed: {allowed}")


def _flatten(rec: dict, where: str) -> tuple[dict, object, str]:
    """Lift a nested person dict to the top level; returns (fields, person id or None, its field)."""
    person = rec.get("person")
    if not isinstance(person, dict):
        field = "person" if person is not None else "person_id"
        return {k: v for k, v in rec.items() if k not in ("person", "person_id")}, rec.get(field), field
    fields = {k: v for k, v in rec.items() if k != "person"}
    for k, v in person.items():
        if k in ("id", "person_id"):
            continue
        if k in fields and fields[k] != v:
            raise _bad(where, f"person.{k}", v, f"the value given at the top level ({_short(fields[k])}) or only one of them")
        fields[k] = v
    top = fields.pop("person_id", None)
    key = next((k for k in ("id", "person_id") if k in person), None)
    return fields, (top if key is None else person[key]), ("person_id" if key is None else f"person.{key}")


def _check_value(where: str, key: str, attr: str, value) -> str:
    if attr == "birth_date" and not (isinstance(value, str) and _YEAR.search(value)):
        raise _bad(where, key, value, f"a full birth date with its year as a string, e.g. 'October 2, 1996' (read as "
                                      f"{attr}; a day-of-month, month or year field cannot stand for it)")
    if not isinstance(value, str) or value.strip(". ") == "":
        raise _bad(where, key, value, f"{attr} as a non-empty string")
    return value


def _attributes(fields: dict, where: str) -> tuple[dict, set]:
    """The six attribute values (aliases resolved and checked) and the keys that gave them."""
    nested = fields.get("attributes", {})
    if not isinstance(nested, dict):
        raise _bad(where, "attributes", nested, f"an object with the keys {ATTRIBUTES}")
    given = {**{k: v for k, v in fields.items() if k != "attributes"}, **nested}
    values, used = {}, set()
    for attr in ATTRIBUTES:
        if attr in nested and attr in fields and nested[attr] != fields[attr]:
            raise _bad(where, attr, fields[attr], f"one value (attributes.{attr} says {_short(nested[attr])})")
        keys = [attr] if attr in given else [k for k in given if ATTRIBUTE_ALIASES.get(k) == attr]
        if len(keys) > 1:
            raise DataError(f"{where}: fields {keys} all stand for {attr}; allowed: one of them")
        if keys:
            values[attr] = _check_value(where, keys[0], attr, given[keys[0]])
            used.add(keys[0])
    missing = [a for a in ATTRIBUTES if a not in values]
    if missing:
        also = f" (also {', '.join(missing[1:])})" if len(missing) > 1 else ""
        raise DataError(f"{where}: field {missing[0]!r}: missing{also}; a biography record "
                        f"needs name, text and the six attributes {ATTRIBUTES} (or the aliases {sorted(ATTRIBUTE_ALIASES)})")
    return values, used


def _extra(fields: dict, used: set) -> dict:
    """Keys kn does not read, kept as strings (JSON for non-strings)."""
    items = [(k, v) for k, v in fields.items() if k not in RECORD_KEYS and k not in used]
    items += [(f"attributes.{k}", v) for k, v in fields.get("attributes", {}).items() if k not in used]
    return {k: v if isinstance(v, str) else json.dumps(v, ensure_ascii=False) for k, v in items}


def _texts(fields: dict, where: str) -> list[tuple[str, dict | None, str]]:
    """(text, given spans or None, field name) for every text of a record."""
    if "text" in fields and "texts" in fields:
        raise DataError(f"{where}: fields 'text' and 'texts' both given; allowed: one of them")
    key = "texts" if "texts" in fields else "text"
    raw = fields.get(key)
    allowed = "a string, or a non-empty list of strings or of {'text': ..., 'spans': {...}} objects"
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not items:
        raise _bad(where, key, raw, allowed)
    spans = fields.get("spans")
    if spans is not None and not isinstance(spans, (dict, list)):
        raise _bad(where, "spans", spans, "an object key -> [s, e] or [[s, e], ...], or a list of them, one per text")
    if isinstance(spans, dict):
        if len(items) > 1:
            raise _bad(where, "spans", spans, f"a list of {len(items)} span objects, one per text, when there are several texts")
        spans = [spans]
    if spans is not None and len(spans) != len(items):
        raise _bad(where, "spans", spans, f"a list of {len(items)} span objects, one per text")
    out = []
    for i, item in enumerate(items):
        name = key if isinstance(raw, str) else f"{key}[{i}]"
        given = spans[i] if spans is not None else None
        if isinstance(item, dict) and isinstance(item.get("text"), str):
            item, given = item["text"], item.get("spans", given)
        if not isinstance(item, str) or not item.strip():
            raise _bad(where, name, item, allowed)
        if given is not None and not isinstance(given, dict):
            raise _bad(where, f"spans of {name}", given, "an object key -> [s, e] or [[s, e], ...]")
        out.append((item, given, name))
    return out


def _trim(text: str, span: list[int]) -> list[int]:
    """A span never ends in '.': the full stop after a value such as 'Acme Inc.' stays outside."""
    s, e = span
    return [s, e - 1] if e - s > 1 and text[e - 1] == "." else [s, e]


def _is_pair(p) -> bool:
    return isinstance(p, list) and len(p) == 2 and all(isinstance(x, int) and not isinstance(x, bool) for x in p)


def _norm(s: str) -> str:
    return " ".join(s.split()).rstrip(".").casefold()


def _written_as(covered: str, key: str, value: str) -> bool:
    """Whether a span's text writes `value`: the same up to case, runs of whitespace and a final '.',
    or one of its bioR surface forms (another date format, a short name: kn.data.forms.surface_forms)."""
    if covered in (value, value.rstrip(".")) or _norm(covered) == _norm(value):
        return True
    if key not in ATTRIBUTES:
        return False
    try:
        return any(_norm(covered) == _norm(form) for form in surface_forms(key, value))
    except DataError:                        # a birth date not written like 'October 2, 1996'
        return False


def _given_spans(text: str, value, where: str, key: str, written: str | None = None) -> list[list[int]]:
    """[s, e] or [[s, e], ...] -> checked, trimmed [[s, e], ...]; each must cover `written` if given."""
    pairs = [value] if _is_pair(value) else value
    if not isinstance(pairs, list) or not pairs or not all(_is_pair(p) for p in pairs):
        raise _bad(where, key, value, "[start, end] or a list of [start, end] pairs (integers)")
    for s, e in pairs:
        if not (0 <= s < e <= len(text)):
            raise _bad(where, key, [s, e], f"0 <= start < end <= {len(text)} (the text's length)")
        if text[s].isspace() or text[e - 1].isspace():
            raise _bad(where, key, [s, e], f"a span that starts and ends inside the value, not on a space "
                                           f"(it covers {text[s:e]!r})")
        if written is not None and not _written_as(text[s:e], key.removeprefix("spans."), written):
            raise _bad(where, key, [s, e], f"a span of {_short(written)} (compared ignoring case, runs of spaces and a "
                                           f"final '.', or a bioR surface form of it); it covers {_short(text[s:e])}")
    return [_trim(text, p) for p in pairs]


def _spans(text: str, given: dict | None, values: dict, where: str) -> dict:
    """Spans of the name and every attribute: given ones checked, the rest found in the text."""
    given = {ATTRIBUTE_ALIASES.get(k, k): v for k, v in (given or {}).items()}
    spans = {k: _given_spans(text, v, where, f"spans.{k}", values.get(k)) for k, v in given.items()}
    for key, value in values.items():
        if key not in spans:
            spans[key] = [_trim(text, sp) for sp in find_spans(text, value)]
        if not spans[key]:
            raise _bad(where, key, value, "a value written in the text, or a span for it under 'spans'")
    return {k: spans[k] for k in values} | {k: v for k, v in spans.items() if k not in values}


def normalize_record(rec: dict, where: str = "record") -> list[dict]:
    """The biographies of one record in kn's schema (one per text); person is the given id or None."""
    fields, pid, id_field = _flatten(rec, where)
    if pid is not None and (isinstance(pid, bool) or not isinstance(pid, (int, str))):
        raise _bad(where, id_field, pid, "an integer or string id, or a person object")
    if isinstance(pid, int) and not INT64[0] <= pid <= INT64[1]:
        raise _bad(where, id_field, pid, "an integer id in [-2**63, 2**63 - 1] (it becomes an int64), or a string id")
    name = fields.get("name")
    if not isinstance(name, str) or not name.strip():
        raise _bad(where, "name", name, "a non-empty string")
    pronoun = fields.get("pronoun")
    if pronoun is not None and (not isinstance(pronoun, str) or pronoun.lower() not in PRONOUNS):
        raise _bad(where, "pronoun", pronoun, f"{', '.join(PRONOUNS)} in any case")
    group = fields.get("group", "plain")
    if not isinstance(group, str):
        raise _bad(where, "group", group, "a string such as 'plain'")
    attrs, used = _attributes(fields, where)
    extra = _extra(fields, used)
    out, texts = [], _texts(fields, where)
    for text, given, field in texts:
        at = where if len(texts) == 1 else f"{where}: {field}"
        bio = {"person": pid, "name": name, "pronoun": pronoun and pronoun.lower(), "group": group,
               "attributes": attrs, "text": text, "spans": _spans(text, given, {"name": name, **attrs}, at)}
        out.append(bio | ({"extra": extra} if extra else {}))
    return out


class _People:
    """Checks that the records of one person agree (name, attributes, pronoun) and that one name is one
    person; numbers people by first appearance and keeps each one's name, group and attributes."""

    def __init__(self):
        self.index: dict = {}      # person key -> number, by first appearance
        self.first: list = []      # per person: (where, {"name", "group", "attributes"}) of its first record
        self.pronoun: dict = {}    # person key -> (where, pronoun) of its first record that gives one
        self.by_name: dict = {}    # name -> person key

    def check(self, key, rec: dict, where: str) -> int:
        """The person's number; DataError if `rec` disagrees with an earlier record of that person."""
        if key in self.index:
            self._agrees(key, rec, where)
        elif self.by_name.get(rec["name"], key) != key:
            raise _bad(where, "name", rec["name"], "a name not already used by another person (names must be unique)")
        else:
            self.index[key], self.by_name[rec["name"]] = len(self.first), key
            attrs = {a: sys.intern(v) for a, v in rec["attributes"].items()}   # values repeat across people
            self.first.append((where, {"name": rec["name"], "group": rec["group"], "attributes": attrs}))
        if rec["pronoun"] is not None:
            self.pronoun.setdefault(key, (where, rec["pronoun"]))
        return self.index[key]

    def _agrees(self, key, rec: dict, where: str) -> None:
        at, first = self.first[self.index[key]]
        pairs = [("name", first["name"], rec["name"])]
        pairs += [(a, first["attributes"][a], rec["attributes"][a]) for a in ATTRIBUTES]
        if key in self.pronoun and rec["pronoun"] is not None:
            at_pronoun, pronoun = self.pronoun[key]
            pairs.append(("pronoun", pronoun, rec["pronoun"]))
        for field, old, new in pairs:
            if old != new:
                raise _bad(where, field, new, f"{_short(old)}, as given for the same person at "
                                              f"{at_pronoun if field == 'pronoun' else at}")


class Biographies:
    """The biographies of a JSONL file in kn's schema, each held as compact JSON (about the file's size
    in memory, few objects for the garbage collector) and decoded as it is iterated; `skipped` holds
    the messages of records skipped (skip_bad), each also logged as it is met.

    Person ids: kept when every record gives an integer id; otherwise numbered by first appearance
    of the id (or, without one, of the name), a given id kept as extra "source_person".
    """

    def __init__(self, path: str | Path, skip_bad: bool = False):
        self.skipped: list[str] = []
        self.lines: list[str] = []        # per biography: its record without "person", compact JSON
        self.number = array("q")          # per biography: its person's number
        self._people = _People()
        for lineno, rec in jsonl_lines(path):
            self._add(rec, f"{path}:{lineno}", skip_bad)
        if not self.lines:
            first = f"; first: {' | '.join(self.skipped[:3])}" if self.skipped else ""
            raise DataError(f"path: {str(path)!r} holds no readable biography records "
                            f"({len(self.skipped)} skipped{first})")
        keys = list(self._people.index)
        kept = all(k[0] == "id" and isinstance(k[1], int) for k in keys)
        self.ids = [k[1] for k in keys] if kept else list(range(len(keys)))        # per person
        self.source = [str(k[1]) if not kept and k[0] == "id" else None for k in keys]

    def _add(self, rec: dict | DataError, where: str, skip_bad: bool) -> None:
        try:
            if isinstance(rec, DataError):
                raise rec
            found = normalize_record(rec, where)
            key = ("id", found[0]["person"]) if found[0]["person"] is not None else ("name", found[0]["name"])
            number = self._people.check(key, found[0], where)
        except DataError as e:
            if not skip_bad:
                raise
            self.skipped.append(str(e))
            log.warning("skipped %s", e)
            return
        for bio in found:
            del bio["person"]
            self.lines.append(json_line(bio))
            self.number.append(number)

    def __len__(self) -> int:
        return len(self.lines)

    def __iter__(self) -> Iterator[dict]:
        for line, i in zip(self.lines, self.number):
            rec = {"person": self.ids[i], **json.loads(line)}
            if self.source[i] is not None:
                rec.setdefault("extra", {})["source_person"] = self.source[i]
            yield rec

    def people(self) -> list[dict]:
        """Per person, by first appearance: person (its id), name, group and attributes."""
        return [{"person": pid, **first} for pid, (_, first) in zip(self.ids, self._people.first)]


def read_bios(path: str | Path, skip_bad: bool = False) -> tuple[list[dict], list[str]]:
    """Biographies of a JSONL file in kn's schema (see `Biographies`), and the messages of records skipped."""
    bios = Biographies(path, skip_bad)
    return list(bios), bios.skipped


def load_bios(path: str | Path) -> list[dict]:
    """Read a biography JSONL (kn's or another generator's) into kn's schema; a bad record is an error."""
    return read_bios(path)[0]
