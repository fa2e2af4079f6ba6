"""QA pairs (papers.md, Part 3.1, "QA"): six question templates, answer = the attribute value.

Text: "What is the birth city of Anya Briar Forger? Answer: Princeton, NJ." People are split into
train_people (their QAs may be trained on) and test_people (held out: out-of-distribution
extraction). Entry points: `split_people`, `make_qa`, `qa_records`.
"""
from __future__ import annotations

import numpy as np

from kn.data.compose import Documents, PieceTable
from kn.data.people import People
from kn.data.pools import Pools, load_pools
from kn.data.records import ATTRIBUTES, DataError

QUESTIONS = {
    "birth_date": ("What is the birth date of", "?"),
    "birth_city": ("What is the birth city of", "?"),
    "university": ("Which university did", " study?"),
    "major": ("What major did", " study?"),
    "company_name": ("Which company did", " work for?"),
    "company_city": ("Where did", " work?"),
}
ANSWER = " Answer:"


def question(attribute: str, name: str) -> str:
    before, after = QUESTIONS[attribute]
    return f"{before} {name}{after}"


def split_people(n: int, train_fraction: float = 0.5, seed: int = 0) -> np.ndarray:
    """Boolean [n]: True for train_people. round(train_fraction * n) of them, chosen by seed."""
    if not (isinstance(train_fraction, (int, float)) and 0.0 <= train_fraction <= 1.0):
        raise DataError(f"train_fraction: got {train_fraction!r}; allowed: a number in [0, 1]")
    is_train = np.zeros(n, dtype=bool)
    is_train[np.random.default_rng([seed, 2]).permutation(n)[: round(train_fraction * n)]] = True
    return is_train


def make_qa(people: People, pools: Pools | None = None) -> Documents:
    """Six QA documents per person (person-major, ATTRIBUTES order), as piece rows.

    Spans: "name" and "answer" (the value after 'Answer:'). The prompt of a QA is every piece
    before the answer; `meta["attribute"]` gives each row's attribute index.
    """
    pools = pools or load_pools()
    table = PieceTable()
    names = table.ids(" " + n for n in people.names(pools))
    n, k = len(people), len(ATTRIBUTES)
    rows = np.empty((n, k, 6), dtype=np.int64)
    values = np.stack([table.ids(" " + v for v in people.values(a, pools)) for a in ATTRIBUTES], axis=1)
    for a, attr in enumerate(ATTRIBUTES):
        before, after = QUESTIONS[attr]
        rows[:, a] = [table.id(" " + before), 0, table.id(after), table.id(ANSWER), 0, table.id(".")]
    rows[:, :, 1] = names[:, None]
    rows[:, :, 4] = values
    rows = rows.reshape(n * k, 6)
    col = lambda c: np.full((n * k, 1), c)  # noqa: E731
    spans = {"name": (col(1), rows[:, 1:2]), "answer": (col(4), rows[:, 4:5])}
    return Documents(table.strings, rows, np.repeat(people.ids, k), spans,
                     meta={"kind": "qa", "attribute": np.tile(np.arange(k), n), "answer_col": 4})


def qa_records(docs: Documents, people: People, is_train: np.ndarray, pools: Pools | None = None) -> list[dict]:
    """JSONL records: person, name, attribute, question, answer, split, text, spans."""
    pools = pools or load_pools()
    names = people.names(pools)
    values = {a: people.values(a, pools) for a in ATTRIBUTES}
    base = []
    for row, a in enumerate(docs.meta["attribute"].tolist()):
        i, attr = row // len(ATTRIBUTES), ATTRIBUTES[a]
        base.append({"person": int(people.ids[i]), "name": names[i], "attribute": attr,
                     "question": question(attr, names[i]), "answer": values[attr][i],
                     "split": "train" if is_train[i] else "test"})
    return docs.records(base)
