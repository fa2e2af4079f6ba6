"""QA pairs (papers.md, Part 3.1, "QA"): six question templates, answer = the attribute value.

Text: "What is the birth city of Anya Briar Forger? Answer: Princeton, NJ." People are split into
train_people (their QAs may be trained on) and test_people (held out: out-of-distribution
extraction); a validation slice of the train_people ("valid") is held out too, for choosing
recipes. Entry points: `split_people`, `valid_people`, `make_qa` / `qa_records` (kn's people) and
`qa_documents` / `qa_records_of` (any people given as strings, e.g. imported biographies).
"""
from __future__ import annotations

import numpy as np

from kn.data.compose import Documents, PieceTable
from kn.data.people import People
from kn.data.pools import Pools, load_pools
from kn.data.records import ATTRIBUTES, JsonRecords, json_string
from kn.errors import DataError

QUESTIONS = {
    "birth_date": ("What is the birth date of", "?"),
    "birth_city": ("What is the birth city of", "?"),
    "university": ("Which university did", " study?"),
    "major": ("What major did", " study?"),
    "company_name": ("Which company did", " work for?"),
    "company_city": ("Where did", " work?"),
}
ANSWER = " Answer:"


def split_people(n: int, train_fraction: float = 0.5, seed: int = 0) -> np.ndarray:
    """Boolean [n]: True for train_people. round(train_fraction * n) of them, chosen by seed."""
    if not (isinstance(train_fraction, (int, float)) and 0.0 <= train_fraction <= 1.0):
        raise DataError(f"train_fraction: got {train_fraction!r}; allowed: a number in [0, 1]")
    is_train = np.zeros(n, dtype=bool)
    is_train[np.random.default_rng([seed, 2]).permutation(n)[: round(train_fraction * n)]] = True
    return is_train


def valid_people(is_train: np.ndarray, valid_fraction: float = 0.0, seed: int = 0) -> np.ndarray:
    """Boolean [n]: the validation slice, round(valid_fraction * #train_people) of the train_people,
    chosen by seed. Their QAs are never trained on; recipes (lr, passes, rank) are chosen on them."""
    if not (isinstance(valid_fraction, (int, float)) and 0.0 <= valid_fraction < 1.0):
        raise DataError(f"valid_fraction: got {valid_fraction!r}; allowed: a number in [0, 1)")
    train = np.flatnonzero(is_train)
    is_valid = np.zeros(len(is_train), dtype=bool)
    is_valid[np.random.default_rng([seed, 3]).permutation(train)[: round(valid_fraction * len(train))]] = True
    return is_valid


def split_names(is_train: np.ndarray, is_valid: np.ndarray | None = None) -> np.ndarray:
    """Per person: "train", "valid" (a train_person held out for recipe choice) or "test"."""
    names = np.where(is_train, "train", "test").astype(object)
    if is_valid is not None:
        names[is_valid] = "valid"
    return names


def answer_piece(value: str) -> str:
    """' <value>' as written before the closing '.': a value ending in '.' ('Acme Inc.') shares it."""
    return " " + (value[:-1] if value.endswith(".") else value)


def qa_documents(ids: np.ndarray, names: list[str], values: dict[str, list[str]]) -> Documents:
    """Six QA documents per person (person-major, ATTRIBUTES order), as piece rows, from strings:
    person ids [N], names [N] and each attribute's values [N].

    Spans: "name" and "answer" (the value after 'Answer:', without a final '.' of its own). The
    prompt of a QA is every piece before the answer; `meta["attribute"]` gives each row's attribute.
    """
    table = PieceTable()
    name_ids = table.ids(" " + n for n in names)
    n, k = len(names), len(ATTRIBUTES)
    rows = np.empty((n, k, 6), dtype=np.int64)
    answers = np.stack([table.ids(answer_piece(v) for v in values[a]) for a in ATTRIBUTES], axis=1)
    for a, attr in enumerate(ATTRIBUTES):
        before, after = QUESTIONS[attr]
        rows[:, a] = [table.id(" " + before), 0, table.id(after), table.id(ANSWER), 0, table.id(".")]
    rows[:, :, 1] = name_ids[:, None]
    rows[:, :, 4] = answers
    rows = rows.reshape(n * k, 6)
    col = lambda c: np.full((n * k, 1), c)  # noqa: E731
    spans = {"name": (col(1), rows[:, 1:2]), "answer": (col(4), rows[:, 4:5])}
    return Documents(table.strings, rows, np.repeat(np.asarray(ids), k), spans,
                     meta={"kind": "qa", "attribute": np.tile(np.arange(k), n), "answer_col": 4})


def make_qa(people: People, pools: Pools | None = None) -> Documents:
    """`qa_documents` of kn's own people (pool indices looked up as strings)."""
    pools = pools or load_pools()
    return qa_documents(people.ids, people.names(pools), {a: people.values(a, pools) for a in ATTRIBUTES})


def qa_records(docs: Documents, people: People, is_train: np.ndarray, pools: Pools | None = None,
               is_valid: np.ndarray | None = None) -> JsonRecords:
    """JSONL records of `make_qa` documents (see `qa_records_of`)."""
    pools = pools or load_pools()
    return qa_records_of(docs, people.ids, people.names(pools), {a: people.values(a, pools) for a in ATTRIBUTES},
                         is_train, is_valid)


def qa_records_of(docs: Documents, ids: np.ndarray, names: list[str], values: dict[str, list[str]],
                  is_train: np.ndarray, is_valid: np.ndarray | None = None) -> JsonRecords:
    """JSONL records: person, name, attribute, question, answer, split (`split_names`), text, spans."""
    split = [json_string(s) for s in split_names(is_train, is_valid)]
    ids, names_json = np.asarray(ids).tolist(), [json_string(n)[1:-1] for n in names]
    answers = [[json_string(v) for v in values[a]] for a in ATTRIBUTES]
    formats = [_head_format(a) for a in ATTRIBUTES]
    heads = []
    for row, a in enumerate(docs.meta["attribute"].tolist()):
        i = row // len(ATTRIBUTES)
        heads.append(formats[a] % (ids[i], names_json[i], names_json[i], answers[a][i], split[i]))
    return JsonRecords(docs.json_lines(heads))


def _head_format(attribute: str) -> str:
    """The first fields of a QA record as JSON, to fill with % (person id, name, name, answer JSON,
    split JSON); the name goes in JSON-escaped without its quotes (escaping is per character)."""
    before, after = (json_string(x)[1:-1].replace("%", "%%") for x in QUESTIONS[attribute])
    return ('{"person":%d,"name":"%s","attribute":' + json_string(attribute).replace("%", "%%")
            + f',"question":"{before} %s{after}","answer":%s,"split":%s')
