"""bioS biographies and their augmentations (papers.md, Part 3.1, "bioS" and "Augmentations").

One sentence per attribute, in the fixed order of ATTRIBUTES, each from ~50 templates; the full
name in the first sentence, a pronoun after. Augmentations, joined with '+':
  single      one biography per person (the default)
  multiM      M biographies per person, every template re-drawn (M >= 1)
  permute     the sentences of each biography shuffled; permuteP gives P shuffled copies of the
              same sentences (with multiM, each of the M biographies is shuffled P times)
  fullname    every pronoun replaced by the full name
The name always sits in whichever sentence comes first. Entry point: `make_bios(people, augment, seed)`.
Composition is vectorised: a biography is a row of piece ids (kn.data.compose).

Styles (STYLE; each default is kn's bioS, byte for byte) ablate how another bioS generator's text
differs from kn's (issue 22): value_position="mid" swaps 10 of each attribute's templates that end
on the value for 10 with the value mid-sentence or possessive (32 -> 92 of 291); pronouns="mixed"
writes, in each sentence after the first, they/their/them (verbs agreeing) instead of he/she with
probability THEY_SHARE; length="long" follows each sentence with a filler sentence (no person, no
value) with probability FILLER_SHARE. VARIANTS names presets: "hard" turns all three on.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from kn.data.compose import PAD, Documents, PieceTable
from kn.data.people import PRONOUNS, People
from kn.data.pools import Pools, load_pools
from kn.data.records import ATTRIBUTES, JsonRecords, json_line
from kn.errors import DataError, check_count

# Slots in templates, and their fills: index 0 he, 1 she, 2 the full name.
PERSON_SLOTS = {
    "Subj": (" He", " She", " {name}"), "subj": (" he", " she", " {name}"),
    "Poss": (" His", " Her", " {name}'s"), "poss": (" his", " her", " {name}'s"),
    "obj": (" him", " her", " {name}"),
}
VALUE = -2                                 # code of the {value} slot
SLOT_CODE = {s: -3 - i for i, s in enumerate(PERSON_SLOTS)}
_PLACEHOLDER = re.compile(r"\{(\w+)\}")
_AUGMENT = re.compile(r"^(single|fullname|multi(\d+)|permute(\d*))$")

STYLE = {"value_position": ("kn", "mid"), "pronouns": ("gendered", "mixed"), "length": ("kn", "long")}  # first: default
VARIANTS = {"kn": {}, "mid": {"value_position": "mid"}, "they": {"pronouns": "mixed"}, "long": {"length": "long"},
            "hard": {"value_position": "mid", "pronouns": "mixed", "length": "long"}}
THEY_SHARE = 0.5          # of the sentences after the first
FILLER_SHARE = 1 / 3      # of the sentences: ~+23% tokens a bio, the other generator's +22% (85 vs 70)
THEY = {"Subj": " They", "subj": " they", "Poss": " Their", "poss": " their", "obj": " them"}
# third-person verbs that follow a subject slot in the templates, and their form after "they"
THEY_VERBS = {"was": "were", "is": "are", "has": "have", "celebrates": "celebrate", "lists": "list", "hails": "hail",
              "traces": "trace", "comes": "come", "names": "name", "holds": "hold", "counts": "count",
              "calls": "call", "speaks": "speak"}
_SUBJECT_VERB = re.compile(r"(\{[Ss]ubj\} (?:(?:proudly|originally|first|still|always|never) )?)(\w+)")


@dataclass(frozen=True)
class Augment:
    multi: int = 1          # template draws per person
    permute: int = 0        # shuffled copies per draw; 0 keeps the fixed order
    fullname: bool = False

    @property
    def per_person(self) -> int:
        return self.multi * max(self.permute, 1)


def parse_augment(augment: str) -> Augment:
    """'multi5+permute+fullname' -> Augment(5, 1, True), with a clear error otherwise."""
    allowed = "'single', 'multiM' (M >= 1), 'permute' or 'permuteP' (P >= 1), 'fullname', joined with '+'"
    multi, permute, fullname = 1, 0, False
    for part in str(augment).split("+"):
        m = _AUGMENT.match(part.strip())
        if not m:
            raise DataError(f"augment: unknown augmentation {part!r} in {augment!r}; allowed: {allowed}")
        if m.group(2) is not None:
            multi = int(m.group(2))
            if multi < 1:
                raise DataError(f"augment: multiM needs M >= 1, got {part!r}")
        elif m.group(1).startswith("permute"):
            permute = int(m.group(3) or 1)
            if permute < 1:
                raise DataError(f"augment: permuteP needs P >= 1, got {part!r}")
        fullname |= part.strip() == "fullname"
    return Augment(multi, permute, fullname)


def check_style(**style) -> dict:
    """The STYLE options with `style` on top of the defaults; DataError naming an unknown option or value."""
    out = {k: v[0] for k, v in STYLE.items()}
    for key, value in style.items():
        if key not in STYLE:
            raise DataError(f"{key}: unknown bioS style option; allowed: {', '.join(STYLE)}")
        if value not in STYLE[key]:
            raise DataError(f"{key}: got {value!r}; allowed: {', '.join(STYLE[key])}")
        out[key] = value
    return out


def variant_style(variant: str | None = None, **given) -> dict:
    """The STYLE options of a VARIANTS preset (None: kn's), with the options in `given` that are not None on top."""
    if variant is not None and variant not in VARIANTS:
        raise DataError(f"variant: got {variant!r}; allowed: {', '.join(VARIANTS)}")
    return check_style(**VARIANTS[variant or "kn"] | {k: v for k, v in given.items() if v is not None})


def style_templates(pools: Pools, value_position: str) -> dict:
    """attribute -> templates: kn's, or ("mid") with its first templates that end on the value
    replaced, in place, by the attribute's mid_templates."""
    if value_position == "kn":
        return pools.templates
    out = {}
    for attr, templates in pools.templates.items():
        mid = iter(pools.mid_templates[attr])
        ends = [i for i, t in enumerate(templates) if t.endswith("{value}.")][:len(pools.mid_templates[attr])]
        out[attr] = tuple(next(mid) if i in ends else t for i, t in enumerate(templates))
    return out


def they_template(template: str) -> str:
    """`template` as it reads after the subject "they": the verb after a subject slot agreeing."""
    return _SUBJECT_VERB.sub(lambda m: m.group(1) + THEY_VERBS.get(m.group(2), m.group(2)), template)


def parse_template(template: str, table: PieceTable) -> list[int]:
    """A template as codes: piece ids for literal text, VALUE / SLOT_CODE for slots.

    Literal text before a slot loses its trailing space (the fill carries it); a sentence that
    starts with literal text gains a leading space (every sentence starts with one).
    """
    codes, pos = [], 0
    parts = _PLACEHOLDER.split(template)  # literal, slot, literal, slot, ..., literal
    for i, part in enumerate(parts):
        if i % 2:
            if part != "value" and part not in SLOT_CODE:
                raise DataError(f"template {template!r}: unknown placeholder {{{part}}}")
            codes.append(VALUE if part == "value" else SLOT_CODE[part])
            continue
        lit = part[:-1] if i + 1 < len(parts) and part.endswith(" ") else part
        if i == 0 and lit:
            lit = " " + lit
        if lit:
            codes.append(table.id(lit))
    return codes


def template_codes(templates: dict, table: PieceTable) -> tuple[np.ndarray, np.ndarray]:
    """Codes of every template (attribute -> templates): int [6, T_max, S] padded with PAD, and the
    count per attribute."""
    parsed = [[parse_template(t, table) for t in templates[attr]] for attr in ATTRIBUTES]
    counts = np.array([len(p) for p in parsed])
    codes = np.full((len(ATTRIBUTES), counts.max(), max(len(c) for p in parsed for c in p)), PAD, dtype=np.int64)
    for a, p in enumerate(parsed):
        for i, c in enumerate(p):
            codes[a, i, :len(c)] = c
    return codes, counts


def value_pieces(people: People, table: PieceTable, pools: Pools) -> np.ndarray:
    """[N, 6] piece ids of ' <value>' for each person and attribute."""
    cols = []
    for attr in ATTRIBUTES:
        values = people.values(attr, pools)
        uniq, inv = np.unique(np.array(values, dtype=object), return_inverse=True)
        cols.append(table.ids(" " + v for v in uniq)[inv.ravel()])
    return np.stack(cols, axis=1)


def person_pieces(people: People, table: PieceTable, pools: Pools) -> tuple[np.ndarray, np.ndarray]:
    """([N, n_slots, 3] piece ids of every slot fill: he, she, name), [N] id of ' <name>'."""
    names = people.names(pools)
    fills = np.empty((len(people), len(PERSON_SLOTS), 3), dtype=np.int64)
    for j, forms in enumerate(PERSON_SLOTS.values()):
        fills[:, j, 0] = table.id(forms[0])
        fills[:, j, 1] = table.id(forms[1])
        fills[:, j, 2] = table.ids(forms[2].format(name=n) for n in names)
    return fills, table.ids(" " + n for n in names)


def make_bios(people: People, augment: str = "single", seed: int = 0, pools: Pools | None = None,
              **style) -> Documents:
    """bioS biographies of `people`, person-major (all biographies of person 0 first); `style`: STYLE
    options (kn's by default)."""
    pools = pools or load_pools()
    aug = parse_augment(augment)
    style = check_style(**style)
    check_count("seed", seed)
    rng = np.random.default_rng([seed, 1])
    table = PieceTable()
    templates = style_templates(pools, style["value_position"])
    codes, counts = template_codes(templates, table)
    values = value_pieces(people, table, pools)
    fills, name_piece = person_pieces(people, table, pools)

    n, k = len(people), len(ATTRIBUTES)
    person = np.repeat(np.arange(n), aug.per_person)                     # [B] row -> person index
    draws = np.stack([rng.integers(0, c, size=n * aug.multi) for c in counts], axis=1)
    tmpl = np.repeat(draws, max(aug.permute, 1), axis=0)                 # [B, 6] template per attribute
    order = np.tile(np.arange(k), (len(person), 1))                      # [B, 6] attribute at position
    if aug.permute:
        order = np.argsort(rng.random(order.shape), axis=1)

    # sentence at position j is attribute order[:, j] rendered with its template
    attr = order
    drawn = np.take_along_axis(tmpl, attr, axis=1)                       # [B, 6] template at position
    seg = codes[attr, drawn]                                             # [B, 6, S]
    is_name = np.zeros((len(person), k), dtype=bool)
    is_name[:, 0] = True
    is_name |= aug.fullname
    who = np.where(is_name, 2, people.pronoun[person][:, None])          # [B, 6] fill column
    if style["pronouns"] == "mixed":
        seg, who, fills = _they(seg, who, attr, drawn, templates, table, fills, np.random.default_rng([seed, 2]))
    if style["length"] == "long":
        seg = _fillers(seg, pools, table, np.random.default_rng([seed, 3]))
    rows = seg.copy()
    rows = np.where(seg == VALUE, np.take_along_axis(values[person], attr, axis=1)[..., None], rows)
    for j, code in enumerate(SLOT_CODE.values()):
        rows = np.where(seg == code, fills[person, j][np.arange(len(person))[:, None], who][..., None], rows)

    S = seg.shape[2]
    value_col = (seg == VALUE).argmax(axis=2) + np.arange(k) * S          # [B, 6] by position
    name_col = (seg <= SLOT_CODE["Subj"]).argmax(axis=2) + np.arange(k) * S
    by_attr = np.argsort(order, axis=1)                                  # position of each attribute
    spans = {"name": (np.where(is_name, name_col, PAD), np.where(is_name, name_piece[person][:, None], PAD))}
    for a, key in enumerate(ATTRIBUTES):
        pos = by_attr[:, a:a + 1]
        spans[key] = (np.take_along_axis(value_col, pos, axis=1), values[person, a:a + 1])
    meta = {"kind": "bioS", "augment": augment, "seed": seed} | {k: v for k, v in style.items() if v != STYLE[k][0]}
    docs = Documents(table.strings, _left_pack(rows.reshape(len(person), -1)), people.ids[person], spans, meta=meta)
    docs.spans = _shift_cols(rows.reshape(len(person), -1), docs.spans)
    return docs


def _they(seg, who, attr, drawn, templates, table, fills, rng):
    """pronouns="mixed": each sentence not naming the person (who < 2) becomes, with probability
    THEY_SHARE, its template's they-form (they_template) filled from a fourth column, they/their/them."""
    they_codes, _ = template_codes({a: tuple(map(they_template, t)) for a, t in templates.items()}, table)
    they = (who < 2) & (rng.random(who.shape) < THEY_SHARE)             # [B, 6]
    seg = np.where(they[..., None], they_codes[attr, drawn], seg)       # same slots, same widths
    column = np.broadcast_to(table.ids(THEY[s] for s in PERSON_SLOTS)[None, :, None], (len(fills), len(PERSON_SLOTS), 1))
    return seg, np.where(they, 3, who), np.concatenate([fills, column], axis=2)


def _fillers(seg, pools, table, rng):
    """length="long": [B, 6, S + 1], each sentence followed, with probability FILLER_SHARE, by a filler."""
    ids = table.ids(" " + f for f in pools.fillers)
    pick = ids[rng.integers(0, len(ids), size=seg.shape[:2])]
    return np.concatenate([seg, np.where(rng.random(seg.shape[:2]) < FILLER_SHARE, pick, PAD)[..., None]], axis=2)


def _left_pack(rows: np.ndarray) -> np.ndarray:
    """Move PAD entries of each row to its end, keeping the order of the rest."""
    keep = rows >= 0
    order = np.argsort(~keep, axis=1, kind="stable")
    return np.take_along_axis(rows, order, axis=1)


def _shift_cols(rows: np.ndarray, spans: dict) -> dict:
    """Re-index span columns after `_left_pack` removed the PADs before them."""
    new_col = np.cumsum(rows >= 0, axis=1) - 1
    return {k: (np.where(c >= 0, np.take_along_axis(new_col, np.maximum(c, 0), axis=1), PAD), p)
            for k, (c, p) in spans.items()}


def bio_records(docs: Documents, people: People, pools: Pools | None = None, group: str = "plain") -> JsonRecords:
    """JSONL records (kn.data.records schema) of biographies made by `make_bios`."""
    pools = pools or load_pools()
    names, attrs = people.names(pools), people.attributes(pools)
    heads = {p: json_line({"person": p, "name": names[i], "pronoun": PRONOUNS[people.pronoun[i]], "group": group,
                           "attributes": attrs[i]})[:-1]
             for i, p in enumerate(people.ids.tolist())}
    return JsonRecords(docs.json_lines([heads[p] for p in docs.person.tolist()]))
