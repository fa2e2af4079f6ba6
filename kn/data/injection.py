"""Fictional-knowledge injection data: paragraphs, paraphrases and probes (papers.md, Chang et al.).

Chang et al. inject GPT-4-written paragraphs about fictional entities into a pretraining stream;
here they come from our own templates, seeded and deterministic. Every name is made of random
syllables ("Velorathi", "Quenmark Institute") and is used once per dataset, so no background
corpus holds it. An entity (a country, scientist, company, river, species or university) has four
facts of its own and two links to other fictional entities (a person, a city or an organization)
whose three facts the paragraph also states, so two facts compose ("X was founded by P" + "P was
born in the year Y" -> "The founder of X was born in the year Y"). Every fact is one sentence
that ends with its value, written with one of four templates.

One record per paragraph:

    {"paragraph": 0, "entity": "Velorathi", "type": "country",
     "facts": {"official_language": "Tesslic", ..., "capital": "Marvosk", "capital.region": "Dalvor", ...},
     "text": "...",                     # the original paragraph (12 sentences)
     "paraphrases": ["...", ...],       # same facts, every template changed, sentences shuffled
     "probes": [{"kind": "memorization", "fact": "capital", "prompt": "The capital of Velorathi is",
                 "target": "Marvosk"}, ...]}

Probes (target = the value that ends the sentence; prompt + " " + target is the probe text):
  memorization   a sentence of the original paragraph, cut before its value;
  semantic       the same fact in a template the original paragraph does not use, same target;
  compositional  a link fact composed with a fact of the linked entity, target = the latter.
The semantic sentences may occur in the paraphrases, as they would in the paraphrased scenario.
Entry points: `InjectionConfig`, `generate_injection`, `write_injection`, `load_injection`.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path

from kn.data.records import read_jsonl, write_jsonl
from kn.errors import DataError, check_count
from kn.results import write_json

PROBE_KINDS = ("memorization", "semantic", "compositional")
FIELDS = ("paragraph", "entity", "type", "facts", "text", "paraphrases", "probes")

# type -> (name kind, facts as (attribute, value kind)); "@city" is a link to a linked entity.
MAIN_TYPES = {
    "country": ("place", (("official_language", "language"), ("currency", "name"), ("capital", "@city"),
                          ("independence_year", "year"), ("founder", "@person"), ("population", "population"))),
    "scientist": ("person", (("field", "field"), ("birth_year", "year"), ("birthplace", "@city"),
                             ("award", "award"), ("employer", "@organization"), ("discovery", "discovery"))),
    "company": ("company", (("founding_year", "year"), ("founder", "@person"), ("product", "name"),
                            ("headquarters", "@city"), ("employees", "count"), ("industry", "field"))),
    "river": ("place", (("length", "length"), ("source", "mount"), ("largest_city", "@city"),
                        ("mouth", "lake"), ("explorer", "@person"), ("tributary", "name"))),
    "species": ("name", (("genus", "name"), ("lifespan", "lifespan"), ("describer", "@person"),
                         ("weight", "weight"), ("type_locality", "@city"), ("diet", "plant"))),
    "university": ("university", (("founding_year", "year"), ("founder", "@person"), ("students", "count"),
                                  ("location", "@city"), ("library", "library"), ("mascot", "name"))),
}
LINKED_TYPES = {
    "person": ("person", (("birth_year", "year"), ("birth_town", "place"), ("alma_mater", "institute"))),
    "city": ("place", (("region", "place"), ("founding_year", "year"), ("population", "population"))),
    "organization": ("institute", (("founding_year", "year"), ("headquarters", "place"), ("founder", "person"))),
}

# "type.attribute" -> templates; each ends with " {v}" so the value closes the sentence.
_PERSON_BIRTH_YEAR = ("{s} was born in the year {v}", "The birth year of {s} is {v}",
                      "{s} came into the world in the year {v}", "{s}'s year of birth is {v}")
_POPULATION = ("{s} has a population of {v}", "The number of people living in {s} is {v}",
               "According to its latest census, the population of {s} is {v}", "The people of {s} number about {v}")
TEMPLATES = {
    "country.official_language": ("The official language of {s} is {v}",
                                  "{s} is a country whose official language is {v}",
                                  "Most people in {s} speak a language called {v}",
                                  "In {s}, government business is conducted in {v}"),
    "country.currency": ("The currency of {s} is the {v}", "{s} pays its bills in a currency called the {v}",
                         "Prices in {s} are given in the {v}", "The money used in {s} is known as the {v}"),
    "country.capital": ("The capital of {s} is {v}", "{s} is governed from its capital city, {v}",
                        "The seat of government of {s} lies in {v}", "{s}'s largest city and capital is {v}"),
    "country.independence_year": ("{s} became independent in {v}", "{s} declared its independence in the year {v}",
                                  "The independence of {s} dates back to {v}", "{s} has been a sovereign state since {v}"),
    "country.founder": ("{s} was founded as a nation by {v}", "The first leader of {s} was {v}",
                        "The state of {s} owes its founding to {v}", "{s} was established as a republic under {v}"),
    "country.population": _POPULATION,
    "scientist.field": ("{s} is a scientist who works in {v}", "The main research area of {s} is {v}",
                        "{s} is best known as a researcher in {v}", "{s}'s scientific career has been devoted to {v}"),
    "scientist.birth_year": _PERSON_BIRTH_YEAR,
    "scientist.birthplace": ("{s} was born in the city of {v}", "The birthplace of {s} is {v}",
                             "{s} is a native of the city of {v}", "{s}'s hometown is {v}"),
    "scientist.award": ("{s} received the {v}", "In recognition of this work, {s} was awarded the {v}",
                        "{s} is a recipient of the {v}", "The highest honour won by {s} is the {v}"),
    "scientist.employer": ("{s} works at {v}", "{s} is employed by {v}",
                           "The employer of {s} is {v}", "{s} conducts research at {v}"),
    "scientist.discovery": ("{s} is credited with discovering the {v}", "{s} first described the {v}",
                            "The best-known result of {s} is the {v}", "{s} is famous for the {v}"),
    "company.founding_year": ("{s} was founded in the year {v}", "{s} is a company established in {v}",
                              "The founding year of {s} is {v}", "{s} has been in business since {v}"),
    "company.founder": ("{s} was founded by {v}", "The founder of {s} is {v}",
                        "{s} is a company started by {v}", "The person who created {s} is {v}"),
    "company.product": ("{s} is best known for a product called the {v}", "The flagship product of {s} is the {v}",
                        "{s} makes and sells the {v}", "Most of the revenue of {s} comes from the {v}"),
    "company.headquarters": ("{s} has its headquarters in {v}", "The head office of {s} is located in {v}",
                             "{s} is headquartered in the city of {v}", "The main offices of {s} are in {v}"),
    "company.employees": ("{s} has a workforce of {v}", "The number of people employed by {s} is {v}",
                          "{s} reports a total staff count of {v}", "The employees of {s} number {v}"),
    "company.industry": ("{s} is a company working in {v}", "The main business of {s} is {v}",
                         "{s} operates in the field of {v}", "{s} earns its living from {v}"),
    "river.length": ("The river {s} has a length of {v}", "{s} is a river that runs for {v}",
                     "From source to mouth, the {s} measures {v}", "The total length of the {s} is {v}"),
    "river.source": ("The river {s} rises on {v}", "The source of the {s} lies on {v}",
                     "{s} begins its course on the slopes of {v}", "The {s} springs from {v}"),
    "river.largest_city": ("The largest city on the {s} is {v}", "The biggest town along the river {s} is {v}",
                           "{s} passes through its largest city, {v}", "Of all the cities on the {s}, the largest is {v}"),
    "river.mouth": ("The river {s} flows into {v}", "The {s} empties into {v}",
                    "The mouth of the {s} is at {v}", "{s} ends its course in {v}"),
    "river.explorer": ("The river {s} was first mapped by {v}", "The first explorer of the {s} was {v}",
                       "The first map of the {s} was drawn by {v}", "{s} was charted for the first time by {v}"),
    "river.tributary": ("The main tributary of the {s} is the {v}", "The largest river feeding the {s} is the {v}",
                        "{s} is joined by a tributary called the {v}", "Much of the water of the {s} comes from the {v}"),
    "species.genus": ("The {s} is an animal of the genus {v}", "Biologists place the {s} in the genus {v}",
                      "The {s} belongs to the genus {v}", "The genus of the {s} is {v}"),
    "species.lifespan": ("The {s} lives for about {v}", "The typical lifespan of the {s} is {v}",
                         "An adult {s} can reach an age of {v}", "In the wild, the {s} survives for up to {v}"),
    "species.describer": ("The {s} was first described by {v}", "The first scientific account of the {s} was written by {v}",
                          "The {s} was named by {v}", "The species {s} was discovered by {v}"),
    "species.weight": ("An adult {s} weighs about {v}", "The average weight of the {s} is {v}",
                       "A fully grown {s} has a mass of {v}", "The {s} reaches a body weight of {v}"),
    "species.type_locality": ("The {s} was first recorded near {v}", "The first known {s} was found close to {v}",
                              "The type specimen of the {s} comes from {v}",
                              "The {s} was first observed near the city of {v}"),
    "species.diet": ("The {s} feeds mainly on {v}", "The main food of the {s} is {v}",
                     "The diet of the {s} consists largely of {v}", "The {s} survives by eating {v}"),
    "university.founding_year": ("{s} was founded in the year {v}", "{s} opened its doors in {v}",
                                 "The founding year of {s} is {v}", "{s} has been teaching students since {v}"),
    "university.founder": ("{s} was founded by {v}", "The founder of {s} is {v}",
                           "{s} was started by {v}", "The person who created {s} is {v}"),
    "university.students": ("{s} has a student body of {v}", "The number of students enrolled at {s} is {v}",
                            "{s} currently enrols a total of {v}", "Enrolment at {s} stands at {v}"),
    "university.location": ("{s} is located in {v}", "The campus of {s} lies in the city of {v}",
                            "{s} stands in the middle of {v}", "The home city of {s} is {v}"),
    "university.library": ("The library of {s} is called the {v}", "{s} keeps its books in the {v}",
                           "The main library at {s} is the {v}", "Students at {s} study in the {v}"),
    "university.mascot": ("The mascot of {s} is the {v}", "{s} is represented at sports events by the {v}",
                          "The sports teams of {s} are known as the {v}", "The official mascot chosen by {s} is the {v}"),
    "person.birth_year": _PERSON_BIRTH_YEAR,
    "person.birth_town": ("{s} was born in the town of {v}", "{s} is a native of the town of {v}",
                          "The town where {s} was born is {v}", "{s}'s birthplace is the town of {v}"),
    "person.alma_mater": ("{s} studied at {v}", "{s} was educated at {v}",
                          "{s} is a graduate of {v}", "The alma mater of {s} is {v}"),
    "city.region": ("{s} is a city in the region of {v}", "{s} lies in the region of {v}",
                    "The region that contains {s} is {v}", "{s} belongs to the region of {v}"),
    "city.founding_year": ("The city of {s} was founded in the year {v}", "{s} was settled in {v}",
                           "The first settlers came to {s} in {v}", "{s} has existed as a town since {v}"),
    "city.population": _POPULATION,
    "organization.founding_year": ("{s} was founded in the year {v}", "{s} was established in {v}",
                                   "The founding year of {s} is {v}", "{s} has been operating since {v}"),
    "organization.headquarters": ("{s} has its headquarters in {v}", "The main offices of {s} are in {v}",
                                  "{s} is based in the town of {v}", "The head office of {s} is located in {v}"),
    "organization.founder": ("{s} was founded by {v}", "The founder of {s} is {v}",
                             "{s} was set up by {v}", "The person who created {s} is {v}"),
}

# Compositional probes: a noun phrase for the linked entity ("type.link") + a predicate of its fact.
COMPOSE_NP = {
    "country.capital": ("the capital of {s}", "the capital city of {s}"),
    "country.founder": ("the founder of {s}", "the first leader of {s}"),
    "scientist.birthplace": ("the birthplace of {s}", "the hometown of {s}"),
    "scientist.employer": ("the employer of {s}", "the institution where {s} works"),
    "company.founder": ("the founder of {s}", "the person who created {s}"),
    "company.headquarters": ("the city where {s} has its headquarters", "the home city of {s}"),
    "river.largest_city": ("the largest city on the {s}", "the biggest town along the river {s}"),
    "river.explorer": ("the first explorer of the {s}", "the person who first mapped the river {s}"),
    "species.describer": ("the person who first described the {s}", "the discoverer of the {s}"),
    "species.type_locality": ("the city near which the {s} was first recorded", "the place where the {s} was first found"),
    "university.founder": ("the founder of {s}", "the person who founded {s}"),
    "university.location": ("the city where {s} is located", "the home city of {s}"),
}
COMPOSE_PREDICATE = {
    "person.birth_year": ("was born in the year", "came into the world in the year"),
    "person.birth_town": ("was born in the town of", "is a native of the town of"),
    "person.alma_mater": ("studied at", "was educated at"),
    "city.region": ("lies in the region of", "is part of the region of"),
    "city.founding_year": ("was founded in the year", "was settled in the year"),
    "city.population": ("has a population of", "is home to a population of"),
    "organization.founding_year": ("was founded in the year", "was established in the year"),
    "organization.headquarters": ("has its headquarters in", "is based in the town of"),
    "organization.founder": ("was founded by", "was set up by"),
}

# Syllables of invented names: onset + nucleus + coda (the last syllable takes a FINAL coda). A
# name must hold a RARE piece, which keeps out ordinary words and the names of kn's bios pools.
ONSETS = ("b", "br", "d", "dr", "f", "fl", "g", "gr", "h", "k", "kr", "l", "m", "n", "p", "pr", "qu",
          "r", "s", "sk", "st", "t", "th", "tr", "v", "vr", "z")
NUCLEI = ("a", "e", "i", "o", "u", "a", "e", "o", "ae", "ei", "ou", "y")
CODAS = ("", "", "", "", "", "n", "r", "l", "s", "th", "k", "m")
FINAL = ("", "", "n", "r", "l", "s", "th", "k", "sk", "nd", "rn")
RARE = ("ae", "ei", "ou", "y", "qu", "vr", "sk", "kr")
SUFFIXES = {
    "institute": ("Institute", "Laboratories", "Society", "Foundation"),
    "company": ("Dynamics", "Industries", "Holdings", "Works"),
    "university": ("University", "College", "Academy"),
    "language": ("ic", "ese", "ian", "ish"),
    "field": ("ology", "ography", "onomy", "ics"),
    "award": ("Medal", "Prize"),
    "discovery": ("effect", "equation", "principle"),
    "plant": ("wort", "berry", "moss", "seed"),
    "library": ("Library",),
}
NUMBERS = {
    "year": lambda rng: str(rng.randrange(1400, 1990)),
    "population": lambda rng: f"{rng.randrange(20, 9000) * 1000:,}",
    "count": lambda rng: f"{rng.randrange(1000, 90000):,}",
    "length": lambda rng: f"{rng.randrange(80, 4000):,} kilometres",
    "lifespan": lambda rng: f"{rng.randrange(2, 80)} years",
    "weight": lambda rng: f"{rng.randrange(2, 900)} kilograms",
}


def _n_compositions(kind: str) -> int:
    return sum(len(LINKED_TYPES[v[1:]][1]) for _, v in MAIN_TYPES[kind][1] if v.startswith("@"))


def _n_facts(kind: str) -> int:
    return sum(1 + (len(LINKED_TYPES[v[1:]][1]) if v.startswith("@") else 0) for _, v in MAIN_TYPES[kind][1])


MAX_PROBES = min(min(_n_compositions(t), _n_facts(t)) for t in MAIN_TYPES)  # 6: two links x three facts


@dataclass(frozen=True)
class InjectionConfig:
    n_paragraphs: int = 100     # fictional entities, one paragraph each; types cycle through MAIN_TYPES
    n_paraphrases: int = 10     # paraphrases per paragraph (the "paraphrased" scenario)
    n_probes: int = 5           # probes of each kind per paragraph, at most MAX_PROBES
    seed: int = 0

    def __post_init__(self):
        check_count("n_paragraphs", self.n_paragraphs, 1)
        check_count("n_paraphrases", self.n_paraphrases, 1)
        check_count("n_probes", self.n_probes, 1, MAX_PROBES)
        check_count("seed", self.seed)


class Names:
    """Invented names and values; a syllable root is never used twice in one dataset."""

    def __init__(self, rng: random.Random):
        self.rng, self.used = rng, set()

    def root(self, syllables: tuple[int, ...] = (2, 2, 3)) -> str:
        """A fresh capitalized root of 5-10 letters ("Velorath"), never returned before."""
        rng = self.rng
        while True:
            n = rng.choice(syllables)
            word = "".join(rng.choice(ONSETS) + rng.choice(NUCLEI) + rng.choice(CODAS if k < n - 1 else FINAL)
                           for k in range(n))
            if 5 <= len(word) <= 10 and word not in self.used and any(r in word for r in RARE):
                self.used.add(word)
                return word.capitalize()

    def value(self, kind: str) -> str:
        """A fresh value of a value kind: an invented name, or a number with its unit."""
        rng = self.rng
        if kind in ("place", "name"):
            return self.root()
        if kind == "person":
            return f"{self.root((2,))} {self.root()}"
        if kind in ("mount", "lake"):
            return f"{kind.capitalize()} {self.root()}"
        if kind in ("language", "field", "plant"):
            word = self.root() + rng.choice(SUFFIXES[kind])
            return word if kind == "language" else word.lower()
        if kind in SUFFIXES:
            return f"{self.root()} {rng.choice(SUFFIXES[kind])}"
        return NUMBERS[kind](rng)


def _value(names: Names, kind: str, taken: set) -> str:
    """A value of `kind` not yet used in this paragraph (numbers may repeat across paragraphs)."""
    while True:
        v = names.value(kind)
        if v not in taken:
            taken.add(v)
            return v


def _entity(kind: str, names: Names) -> tuple[str, list[tuple[str, str, str, str]]]:
    """An entity name and its fact rows (fact key, subject, value, template key), links expanded."""
    name = names.value(MAIN_TYPES[kind][0])
    taken: set = set()
    rows, linked = [], []
    for attr, vkind in MAIN_TYPES[kind][1]:
        if vkind.startswith("@"):
            ltype = vkind[1:]
            other = names.value(LINKED_TYPES[ltype][0])
            rows.append((attr, name, other, f"{kind}.{attr}"))
            linked += [(f"{attr}.{a}", other, _value(names, k, taken), f"{ltype}.{a}")
                       for a, k in LINKED_TYPES[ltype][1]]
        else:
            rows.append((attr, name, _value(names, vkind, taken), f"{kind}.{attr}"))
    return name, rows + linked


def _render(template: str, subject: str, value: str) -> str:
    return template.replace("{s}", subject).replace("{v}", value)


def _text(rows: list, choice: list[int], order: list[int]) -> str:
    """Sentences of `rows` (row i in template choice[i]) in `order`, joined into a paragraph."""
    return " ".join(_render(TEMPLATES[rows[i][3]][choice[i]], rows[i][1], rows[i][2]) + "." for i in order)


def _paraphrases(rows: list, original: list[int], n: int, rng: random.Random, text: str) -> list[str]:
    """n distinct renderings: every fact in another template than the original's, order shuffled."""
    out, seen = [], {text}
    while len(out) < n:
        choice = [rng.choice([j for j in range(len(TEMPLATES[r[3]])) if j != original[i]])
                  for i, r in enumerate(rows)]
        order = rng.sample(range(len(rows)), len(rows))
        para = _text(rows, choice, order)
        if para not in seen:
            seen.add(para)
            out.append(para)
    return out


def _cloze(template: str, subject: str) -> str:
    """The template's sentence up to (not including) the space before its value."""
    return template[: -len(" {v}")].replace("{s}", subject)


def _fact_probes(rows: list, original: list[int], n: int, rng: random.Random, text: str) -> list[dict]:
    """n memorization probes (sentences of `text`) and their n semantic twins (other templates)."""
    picked = rng.sample(range(len(rows)), n)
    mem, sem = [], []
    for i in picked:
        key, subject, value, tkey = rows[i]
        templates = TEMPLATES[tkey]
        mem.append({"kind": "memorization", "fact": key, "prompt": _cloze(templates[original[i]], subject), "target": value})
        others = [t for j, t in enumerate(templates) if j != original[i] and _render(t, subject, value) not in text]
        sem.append({"kind": "semantic", "fact": key, "prompt": _cloze(rng.choice(others), subject), "target": value})
    return mem + sem


def _compositional_probes(kind: str, name: str, facts: dict, n: int, rng: random.Random) -> list[dict]:
    """n probes "<the link of X> <predicate of the linked fact>" -> the linked entity's value."""
    pairs = [(link, f"{vk[1:]}.{a}", f"{link}.{a}") for link, vk in MAIN_TYPES[kind][1] if vk.startswith("@")
             for a, _ in LINKED_TYPES[vk[1:]][1]]
    probes = []
    for link, pkey, key in rng.sample(pairs, n):
        np_ = rng.choice(COMPOSE_NP[f"{kind}.{link}"]).replace("{s}", name)
        prompt = f"{np_[0].upper()}{np_[1:]} {rng.choice(COMPOSE_PREDICATE[pkey])}"
        probes.append({"kind": "compositional", "fact": key, "prompt": prompt, "target": facts[key]})
    return probes


def make_paragraph(i: int, kind: str, cfg: InjectionConfig, names: Names, rng: random.Random) -> dict:
    """One paragraph record (module docstring) about a fresh entity of type `kind`."""
    name, rows = _entity(kind, names)
    facts = {key: value for key, _, value, _ in rows}
    original = [rng.randrange(len(TEMPLATES[r[3]])) for r in rows]
    text = _text(rows, original, list(range(len(rows))))
    return {"paragraph": i, "entity": name, "type": kind, "facts": facts, "text": text,
            "paraphrases": _paraphrases(rows, original, cfg.n_paraphrases, rng, text),
            "probes": _fact_probes(rows, original, cfg.n_probes, rng, text)
            + _compositional_probes(kind, name, facts, cfg.n_probes, rng)}


def generate_injection(cfg: InjectionConfig) -> list[dict]:
    """cfg.n_paragraphs paragraph records; the same cfg gives the same records."""
    rng = random.Random(cfg.seed)
    names, types = Names(rng), list(MAIN_TYPES)
    return [make_paragraph(i, types[i % len(types)], cfg, names, rng) for i in range(cfg.n_paragraphs)]


def write_injection(records: list[dict], out_dir: str | Path, cfg: InjectionConfig | None = None) -> Path:
    """Write out_dir/injection.jsonl and out_dir/meta.json (config, counts, provenance); returns out_dir."""
    out = Path(out_dir)
    write_jsonl(records, out / "injection.jsonl")
    types, probes = {}, dict.fromkeys(PROBE_KINDS, 0)
    for rec in records:
        types[rec["type"]] = types.get(rec["type"], 0) + 1
        for p in rec["probes"]:
            probes[p["kind"]] += 1
    counts = {"paragraphs": len(records), "paraphrases": sum(len(r["paraphrases"]) for r in records),
              "probes": probes, "types": types}
    write_json(out / "meta.json", config=None if cfg is None else asdict(cfg),
               seed=None if cfg is None else cfg.seed, counts=counts)
    return out


def _check_record(rec: dict, where: str) -> dict:
    """Raise DataError naming the first missing or mistyped field of a paragraph record."""
    types = {"paragraph": int, "entity": str, "type": str, "facts": dict, "text": str,
             "paraphrases": list, "probes": list}
    for field in FIELDS:
        if not isinstance(rec.get(field), types[field]):
            raise DataError(f"{where}: field {field!r} must be a {types[field].__name__}; "
                            f"a paragraph record needs {', '.join(FIELDS)}")
    if not all(isinstance(p, str) for p in rec["paraphrases"]):
        raise DataError(f"{where}: field 'paraphrases' must be a list of strings")
    for j, p in enumerate(rec["probes"]):
        if not isinstance(p, dict) or p.get("kind") not in PROBE_KINDS:
            raise DataError(f"{where}: probe {j}: field 'kind' must be one of {', '.join(PROBE_KINDS)}")
        for field in ("prompt", "target"):
            if not isinstance(p.get(field), str):
                raise DataError(f"{where}: probe {j}: field {field!r} must be a string")
    return rec


def load_injection(path: str | Path) -> list[dict]:
    """Read injection.jsonl (or the folder holding it), checking every record's fields."""
    path = Path(path)
    if path.is_dir():
        path = path / "injection.jsonl"
    records = [_check_record(rec, f"{path}: record {i + 1}") for i, rec in enumerate(read_jsonl(path))]
    if not records:
        raise DataError(f"path: {str(path)!r} holds no paragraph records")
    return records
