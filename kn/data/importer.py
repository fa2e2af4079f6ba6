"""Biographies made elsewhere as a kn dataset folder (`kn data import FILE --out DIR`).

Any biography JSONL that `kn.data.records.read_bios` accepts (a name, the six attributes and one or
more texts per record) becomes the folder `kn data bios` writes (kn.data.dataset): every text a
biography, six QAs per person built from the records' own attribute strings, people split into
train_people / test_people by seed, a tokenizer trained on this corpus, token spans and meta.json.
Experiments take the folder as their data: `TrainConfig(data=DIR)`,
`ExtractionConfig(data_dir=DIR)`. Entry points: `ImportConfig`, `build_import`, `import_bios`.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from kn.data.dataset import BiosDataset, check_dataset_out, write_bios
from kn.data.qa import qa_documents, qa_records_of, split_people
from kn.data.records import ATTRIBUTES, read_bios
from kn.errors import check_count
from kn.tokenize import encode_documents, encode_records, train_tokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImportConfig:
    path: str                     # biography JSONL
    seed: int = 0                 # the train_people / test_people split
    train_fraction: float = 0.5   # share of people whose QAs are train_people
    vocab_size: int = 4096
    skip_bad: bool = False        # skip (and count) records that fail validation instead of stopping

    def __post_init__(self):
        check_count("seed", self.seed)
        check_count("vocab_size", self.vocab_size, 300)
        split_people(1, self.train_fraction)


def people_of(bios: list[dict]) -> tuple[np.ndarray, list[str], dict[str, list[str]], list[str]]:
    """Person ids [P] in order of first appearance, their names, attribute values and groups."""
    first = {}
    for rec in bios:
        first.setdefault(rec["person"], rec)
    recs = list(first.values())
    return (np.array([r["person"] for r in recs], dtype=np.int64), [r["name"] for r in recs],
            {a: [r["attributes"][a] for r in recs] for a in ATTRIBUTES}, [r["group"] for r in recs])


def build_import(cfg: ImportConfig) -> tuple[BiosDataset, list[str]]:
    """The dataset of a biography JSONL, and the messages of the records skipped."""
    bios, skipped = read_bios(cfg.path, cfg.skip_bad)
    for message in skipped:
        log.warning("skipped %s", message)
    ids, names, values, groups = people_of(bios)
    is_train = split_people(len(ids), cfg.train_fraction, cfg.seed)
    qa_docs = qa_documents(ids, names, values)
    qa = qa_records_of(qa_docs, ids, names, values, is_train)
    tokenizer = train_tokenizer((r["text"] for r in bios + qa), vocab_size=cfg.vocab_size)
    bios_tokens = encode_records(bios, tokenizer, keys=("name",) + ATTRIBUTES)
    ds = BiosDataset(cfg, None, groups, is_train, bios, qa, tokenizer, bios_tokens, encode_documents(qa_docs, tokenizer))
    return ds, skipped


def import_bios(cfg: ImportConfig, out, overwrite: bool = False) -> tuple[BiosDataset, list[str]]:
    """Build and write the folder (`out` is checked first: an existing dataset is replaced only with
    overwrite, and it may not hold the input file); meta.json also records how many records were skipped."""
    check_dataset_out(out, overwrite, inputs=(cfg.path,))
    t0 = time.perf_counter()
    ds, skipped = build_import(cfg)
    write_bios(ds, out, wall_time=time.perf_counter() - t0, overwrite=overwrite, kind="import", skipped=len(skipped))
    return ds, skipped
