"""bioR-style biographies (papers.md, Part 3.1, "bioR"): the same people, written close to real text.

The paper had Llama rewrite each person's facts ("Write a 50 words biography about a person whose
name is X ...", attributes in shuffled order) and kept outputs that contain all six attributes. Two
ways to get such data here:

  generate_bior(people, seed)       a template generator that stands in for the rewrite model:
                                    ~32 phrasings per attribute plus sentences that merge two
                                    attributes, shuffled sentence order, 0-3 attribute-free filler
                                    sentences, later mentions by pronoun, first name or "Ms./Mr.
                                    Lastname", dates in four formats, short names for some
                                    universities and employers (pools/abbreviations.tsv).
  rewrite_with_model(records, dir)  the paper's path with a local Hugging Face causal LM; returns
                                    (kept records, number dropped).

Records follow kn.data.records; `spans[attr]` marks the surface form written, which is one of
`kn.data.forms.surface_forms(attr, canonical_value)`; `spans["name"]` marks every occurrence of the full name.
Templates live in pools/bior_templates.json.
"""
from __future__ import annotations

import json
import random
import re
from functools import lru_cache
from pathlib import Path

from kn.data.forms import date_forms, load_abbreviations
from kn.data.people import PRONOUNS, People
from kn.data.pools import POOL_DIR, Pools, load_pools
from kn.data.records import ATTRIBUTES, find_spans
from kn.errors import DataError, check_count

PERSON_FORMS = {  # slot -> (he, she) pronoun
    "Subj": ("He", "She"), "subj": ("he", "she"), "Poss": ("His", "Her"), "poss": ("his", "her"),
    "obj": ("him", "her"),
}
TITLES = ("Mr.", "Ms.")
PAIRS = (("birth_date", "birth_city"), ("university", "major"), ("company_name", "company_city"))
P_PAIR = (0.25, 0.35, 0.35)           # chance each pair is written as one merged sentence
P_SHUFFLE = 0.6                       # chance the sentences are shuffled (else life order)
FILLER_COUNTS = ((0, 1, 2, 3), (0.3, 0.35, 0.2, 0.15))
REFERENCE = (("pronoun", "first", "title", "full"), (0.55, 0.2, 0.15, 0.1))  # later mentions
DATE_WEIGHTS = (0.55, 0.15, 0.15, 0.15)   # October 2, 1996 | 2 October 1996 | 2nd October 1996 | October 2nd, 1996
P_SHORT = 0.35                        # chance a university or employer with a short form uses it
_SLOT = re.compile(r"\{(\w+)\}")


# ---- templates -----------------------------------------------------------------------------

def _check_template(template: str, values: set, allowed: set, where: str) -> tuple[str, ...]:
    """Split a template into (literal, slot, literal, ...) after checking its slots."""
    parts = tuple(_SLOT.split(template))
    slots = parts[1::2]
    unknown = set(slots) - allowed
    if unknown or sorted(s for s in slots if s in values) != sorted(values) or not set(slots) & set(PERSON_FORMS):
        raise DataError(f"{where}: template {template!r} must hold each of {sorted(values)} once, "
                        f"a person slot {sorted(PERSON_FORMS)}, and no other slots (unknown: {sorted(unknown)})")
    return parts


@lru_cache(maxsize=1)
def load_templates() -> dict:
    """Parsed bioR templates: {'single': {attr: [...]}, 'pair': {(a, b): [...]}, 'filler': [...], 'vocab': {...}}."""
    raw = json.loads((POOL_DIR / "bior_templates.json").read_text(encoding="utf-8"))
    person = set(PERSON_FORMS)
    single = {a: [_check_template(t, {"value"}, person | {"value"}, f"single/{a}") for t in raw["single"][a]]
              for a in ATTRIBUTES}
    pair = {}
    for a, b in PAIRS:
        key = f"{a}+{b}"
        pair[(a, b)] = [_check_template(t, {a, b}, person | {a, b}, f"pair/{key}") for t in raw["pair"][key]]
    vocab = {k: tuple(v) for k, v in raw["vocab"].items()}
    filler = [_check_template(t, set(), person | set(vocab), "filler") for t in raw["filler"]]
    return {"single": single, "pair": pair, "filler": filler, "vocab": vocab}


# ---- one biography -------------------------------------------------------------------------

class _Writer:
    """Accumulates text and the character spans of the attribute values written into it."""

    def __init__(self):
        self.pieces: list[str] = []
        self.n = 0
        self.spans: dict[str, list[list[int]]] = {}

    def add(self, s: str, key: str | None = None) -> None:
        if key:
            self.spans.setdefault(key, []).append([self.n, self.n + len(s)])
        self.pieces.append(s)
        self.n += len(s)


def _person_fill(slot: str, ref: str | None, she: int) -> str:
    """The text of a person slot: a name form (ref) or the pronoun."""
    if ref is None:
        return PERSON_FORMS[slot][she]
    return ref + "'s" if slot in ("Poss", "poss") else ref


def _write_sentence(w: _Writer, parts: tuple, ref: str, she: int, values: dict, rng: random.Random, vocab: dict):
    """Render one template: the first person slot gets `ref`, later ones the pronoun."""
    first = True
    for i, part in enumerate(parts):
        if i % 2 == 0:
            w.add(part)
        elif part in PERSON_FORMS:
            w.add(_person_fill(part, ref if first else None, she))
            first = False
        elif part in vocab:
            w.add(rng.choice(vocab[part]))
        else:
            attr = next(iter(values)) if part == "value" else part   # {value} in a one-attribute template
            w.add(values[attr], attr)


def _reference(rng: random.Random, names: tuple[str, str, str], she: int) -> str | None:
    """How a later sentence refers to the person: None (pronoun), first name, title or full name."""
    kind = rng.choices(*REFERENCE)[0]
    full, first, last = names
    return {"pronoun": None, "first": first, "title": f"{TITLES[she]} {last}", "full": full}[kind]


def _plan(rng: random.Random, templates: dict) -> list:
    """Sentence plan: a list of (attributes tuple | None for filler, template parts)."""
    units = []
    for (a, b), p in zip(PAIRS, P_PAIR):
        if rng.random() < p:
            units.append(((a, b), rng.choice(templates["pair"][(a, b)])))
        else:
            units += [((a,), rng.choice(templates["single"][a])), ((b,), rng.choice(templates["single"][b]))]
    if rng.random() < P_SHUFFLE:
        rng.shuffle(units)
        _employer_first(units)
    n_fill = rng.choices(*FILLER_COUNTS)[0]
    for parts in rng.sample(templates["filler"], n_fill):
        units.insert(rng.randint(0, len(units)), (None, parts))
    return units


def _employer_first(units: list) -> None:
    """A lone company-city sentence ("Her employer is headquartered in ...") follows the employer's."""
    pos = {u[0]: k for k, u in enumerate(units)}
    a, b = pos.get(("company_name",)), pos.get(("company_city",))
    if a is not None and b is not None and b < a:
        units[a], units[b] = units[b], units[a]


def _choose_forms(rng: random.Random, canonical: dict, date: tuple[int, int, int]) -> dict:
    """The surface form written for each attribute in this biography."""
    forms = dict(canonical)
    forms["birth_date"] = rng.choices(date_forms(*date), DATE_WEIGHTS)[0]
    for attr in ("university", "company_name"):
        short = load_abbreviations().get(attr, {}).get(canonical[attr])
        if short and rng.random() < P_SHORT:
            forms[attr] = rng.choice(short)
    return forms


def compose_bior(rng: random.Random, names: tuple[str, str, str], she: int, canonical: dict,
                 date: tuple[int, int, int]) -> tuple[str, dict]:
    """One biography: (text, spans). names = (full, first, last); she = 0 he / 1 she."""
    templates = load_templates()
    forms = _choose_forms(rng, canonical, date)
    w = _Writer()
    for k, (attrs, parts) in enumerate(_plan(rng, templates)):
        if k:
            w.add(" ")
        ref = names[0] if k == 0 else _reference(rng, names, she)
        values = {} if attrs is None else {a: forms[a] for a in attrs}
        _write_sentence(w, parts, ref, she, values, rng, templates["vocab"])
    text = "".join(w.pieces)
    spans = {"name": find_spans(text, names[0])}
    spans.update({a: w.spans[a] for a in ATTRIBUTES})
    return text, spans


def generate_bior(people: People, seed: int = 0, n_per_person: int = 1, pools: Pools | None = None,
                  group: str = "plain") -> list[dict]:
    """bioR-style records for `people`, person-major (all biographies of person 0 first).

    Deterministic in `seed`; `attributes` hold the canonical bioS values.
    """
    seed = check_count("seed", seed)
    n_per_person = check_count("n_per_person", n_per_person, 1)
    p = pools or load_pools()
    rng = random.Random(seed)
    full = people.names(p)
    firsts = [p.first_names[i] for i in people.first.tolist()]
    lasts = [p.last_names[i] for i in people.last.tolist()]
    cols = {a: people.values(a, p) for a in ATTRIBUTES}
    dates = list(zip(people.month.tolist(), people.day.tolist(), people.year.tolist()))
    she = people.pronoun.tolist()
    records = []
    for i, pid in enumerate(people.ids.tolist()):
        canonical = {a: cols[a][i] for a in ATTRIBUTES}
        for _ in range(n_per_person):
            text, spans = compose_bior(rng, (full[i], firsts[i], lasts[i]), she[i], canonical, dates[i])
            records.append({"person": pid, "name": full[i], "pronoun": PRONOUNS[she[i]], "group": group,
                            "attributes": dict(canonical), "text": text, "spans": spans})
    return records


# ---- the rewrite-model path ----------------------------------------------------------------

PROMPT = "Write a 50 words biography about a person whose name is {name}."
STATEMENTS = {
    "birth_date": "{Subj} was born on {value}.", "birth_city": "{Subj} was born in {value}.",
    "university": "{Subj} studied at {value}.", "major": "{Subj} majored in {value}.",
    "company_name": "{Subj} worked for {value}.", "company_city": "{Subj} worked in {value}.",
}


def rewrite_prompt(record: dict, rng: random.Random) -> str:
    """The paper's prompt: the name, then the six attributes as short statements in shuffled order."""
    she = 1 if record.get("pronoun") == "she" else 0
    order = list(ATTRIBUTES)
    rng.shuffle(order)
    statements = [STATEMENTS[a].format(Subj=PERSON_FORMS["Subj"][she], value=record["attributes"][a]) for a in order]
    return " ".join([PROMPT.format(name=record["name"])] + statements)


def load_model(model_dir: str, device: str = "cpu"):
    """(model, tokenizer) from a local Hugging Face folder, ready for left-padded batch generation."""
    path = Path(model_dir)
    if not path.is_dir():
        raise DataError(f"model_dir: no such folder {str(model_dir)!r}; expected a local Hugging Face model folder")
    if not (path / "config.json").is_file():
        raise DataError(f"model_dir: {str(model_dir)!r} is not a model folder (no config.json)")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).to(device).eval()
    except (OSError, ValueError) as e:
        raise DataError(f"model_dir: could not load a causal LM and tokenizer from {str(model_dir)!r}: {e}") from None
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise DataError(f"model_dir: the tokenizer in {str(model_dir)!r} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _as_chat(tokenizer, prompt: str) -> str:
    """Wrap the prompt in the tokenizer's chat template when it has one (instruction-tuned models)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return prompt


def generate_texts(model, tokenizer, prompts: list[str], max_new_tokens: int, sample: bool, device: str) -> list[str]:
    """Continue each prompt; returns only the decoded new tokens, stripped."""
    import torch
    batch = tokenizer([_as_chat(tokenizer, p) for p in prompts], return_tensors="pt", padding=True,
                      return_token_type_ids=False).to(device)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=sample,
                             pad_token_id=tokenizer.pad_token_id)
    new = out[:, batch["input_ids"].shape[1]:]   # [B, <= max_new_tokens]
    return [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]


def keep_rewrite(record: dict, text: str) -> dict | None:
    """The rewritten record if `text` holds the full name and all six canonical values, else None."""
    keys = [("name", record["name"])] + [(a, record["attributes"][a]) for a in ATTRIBUTES]
    spans = {k: find_spans(text, v) for k, v in keys}
    if not all(spans.values()):
        return None
    return {"person": record.get("person"), "name": record["name"], "pronoun": record.get("pronoun"),
            "group": record.get("group", "plain"), "attributes": dict(record["attributes"]),
            "text": text, "spans": spans}


def rewrite_with_model(records: list[dict], model_dir: str, seed: int = 0, max_new_tokens: int = 128,
                       batch_size: int = 8, device: str = "cpu", sample: bool = True,
                       attempts: int = 1) -> tuple[list[dict], int]:
    """Rewrite bioS records with a local causal LM, as the paper did with Llama.

    Each record gets the paper's prompt (attributes shuffled, seeded by `seed`); generation is
    sampled (or greedy with sample=False) after torch.manual_seed(seed). An output is kept when it
    contains the full name and all six canonical values verbatim; records that fail are retried up
    to `attempts` times in all. Returns (kept records in input order, number dropped).
    """
    seed, batch_size = check_count("seed", seed), check_count("batch_size", batch_size, 1)
    attempts, max_new_tokens = check_count("attempts", attempts, 1), check_count("max_new_tokens", max_new_tokens, 1)
    for i, rec in enumerate(records):
        if not isinstance(rec.get("name"), str) or set(ATTRIBUTES) - set(rec.get("attributes", {})):
            raise DataError(f"records[{i}]: needs 'name' and 'attributes' with all of {ATTRIBUTES}")
    import torch
    model, tokenizer = load_model(model_dir, device)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    kept: dict[int, dict] = {}
    todo = list(range(len(records)))
    for _ in range(attempts):
        for start in range(0, len(todo), batch_size):
            idx = todo[start:start + batch_size]
            prompts = [rewrite_prompt(records[i], rng) for i in idx]
            for i, text in zip(idx, generate_texts(model, tokenizer, prompts, max_new_tokens, sample, device)):
                rec = keep_rewrite(records[i], text)
                if rec is not None:
                    kept[i] = rec
        todo = [i for i in todo if i not in kept]
    return [kept[i] for i in sorted(kept)], len(todo)
