"""Biographies made elsewhere as a kn dataset folder (`kn data import FILE --out DIR`).

Any biography JSONL that `kn.data.records.read_bios` accepts (a name, the six attributes and one or
more texts per record) becomes the folder `kn data bios` writes (kn.data.dataset): every text a
biography, six QAs per person built from the records' own attribute strings, people split into
train_people / test_people by seed, a tokenizer trained on this corpus, token spans and meta.json.
Experiments take the folder as their data: `TrainConfig(data=DIR)`,
`ExtractionConfig(data_dir=DIR)`. Entry points: `ImportConfig`, `build_import`, `import_bios`.

Memory grows with the file, not with its records: biographies stay compact JSON
(kn.data.records.Biographies), QAs are made when read, and texts are tokenized in batches
(BATCH_CHARS characters of biographies, CHUNK people's QAs). Under `signals_stop` a SIGTERM or
SIGINT raises `Stopped`, so no temporary file outlives the process; those of a process that was
killed outright are removed by the next import into the folder.
"""
from __future__ import annotations

import gc
import logging
import os
import shutil
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from kn.data.dataset import BiosDataset, write_bios
from kn.data.folder import DATASET_FILES, check_dataset_out
from kn.data.qa import qa_documents, qa_records_of, split_people, valid_people
from kn.data.records import ATTRIBUTES, Biographies
from kn.errors import check_count
from kn.signals import SIGNALS, signals_handled
from kn.tokenize import Encoded, encode_documents, encode_records, train_tokenizer

log = logging.getLogger(__name__)

CHUNK = 4096                  # people given QAs (and their QA tokens) per batch
BATCH_CHARS = 1 << 18         # characters of biography text tokenized per batch: ~100 B of offsets a token
EXIT_STOPPED = 75             # `kn data import` stopped by SIGTERM/SIGINT (sysexits EX_TEMPFAIL, as `kn train`)


@dataclass(frozen=True)
class ImportConfig:
    path: str                     # biography JSONL
    seed: int = 0                 # the train_people / test_people split
    train_fraction: float = 0.5   # share of people whose QAs are train_people
    vocab_size: int = 4096
    skip_bad: bool = False        # skip (and count) records that fail validation instead of stopping
    valid_fraction: float = 0.0   # share of train_people held out as the validation slice (split "valid")

    def __post_init__(self):
        check_count("seed", self.seed)
        check_count("vocab_size", self.vocab_size, 300)
        split_people(1, self.train_fraction)
        valid_people(np.ones(1, bool), self.valid_fraction)


def people_of(bios: Biographies) -> tuple[np.ndarray, list[str], dict[str, list[str]], list[str]]:
    """Person ids [P] in order of first appearance, their names, attribute values and groups."""
    recs = bios.people()
    return (np.array([r["person"] for r in recs], dtype=np.int64), [r["name"] for r in recs],
            {a: [r["attributes"][a] for r in recs] for a in ATTRIBUTES}, [r["group"] for r in recs])


def batches(bios: Iterable[dict], chars: int = BATCH_CHARS) -> Iterator[list[dict]]:
    """Biographies in consecutive batches of about `chars` characters of text (at least one each)."""
    batch, n = [], 0
    for rec in bios:
        batch.append(rec)
        n += len(rec["text"])
        if n >= chars:
            yield batch
            batch, n = [], 0
    if batch:
        yield batch


class QARecords:
    """The QA records of the people (`qa_records_of`), made CHUNK people at a time as they are iterated."""

    def __init__(self, ids: np.ndarray, names: list[str], values: dict[str, list[str]], is_train: np.ndarray,
                 is_valid: np.ndarray):
        self.ids, self.names, self.values, self.is_train, self.is_valid = ids, names, values, is_train, is_valid

    def __len__(self) -> int:
        return len(self.ids) * len(ATTRIBUTES)

    def chunks(self) -> Iterator[tuple]:
        """(QA documents, ids, names, values, is_train, is_valid) of CHUNK people at a time."""
        for s in range(0, len(self.ids), CHUNK):
            ids, names = self.ids[s:s + CHUNK], self.names[s:s + CHUNK]
            values = {a: v[s:s + CHUNK] for a, v in self.values.items()}
            yield (qa_documents(ids, names, values), ids, names, values, self.is_train[s:s + CHUNK],
                   self.is_valid[s:s + CHUNK])

    def __iter__(self) -> Iterator[dict]:
        for chunk in self.chunks():
            yield from qa_records_of(*chunk)

    def json_lines(self) -> Iterator[str]:
        """The records' JSONL lines (kn.data.records.write_jsonl writes them as they come)."""
        for chunk in self.chunks():
            yield from qa_records_of(*chunk).lines

    def texts(self) -> Iterator[str]:
        for docs, *_ in self.chunks():
            yield from docs.texts()


def concat_encoded(parts: list[Encoded]) -> Encoded:
    """One Encoded from consecutive batches (span arrays padded with -1 to the widest batch)."""
    spans = {}
    for k in parts[0].spans:
        m = max(p.spans[k].shape[1] for p in parts)
        pad = lambda a: np.pad(a, ((0, 0), (0, m - a.shape[1]), (0, 0)), constant_values=-1)  # noqa: E731
        spans[k] = np.concatenate([pad(p.spans[k]) for p in parts])
    lengths = np.concatenate([p.lengths() for p in parts])
    return Encoded(np.concatenate([p.ids for p in parts]), np.concatenate([[0], np.cumsum(lengths)]),
                   np.concatenate([p.person for p in parts]), spans)


@contextmanager
def collections_paused():
    """The cyclic garbage collector off inside the block (as it was after): an import makes no
    reference cycles, and full collections over its short-lived records took a quarter of its time."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class Stopped(Exception):
    """A SIGTERM or SIGINT stopped the import (`signals_stop`)."""


@contextmanager
def signals_stop():
    """Inside the block SIGTERM and SIGINT raise Stopped, so every atomic_file removes its temporary
    file on the way out (a default SIGTERM ends the process where it stands); later signals are
    ignored until the block ends. Handlers can only be set in the main thread; elsewhere a no-op."""
    def stop(signum, frame):
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        raise Stopped(f"stopped by {signal.Signals(signum).name}")
    with signals_handled(stop):
        yield


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return True
    except PermissionError:        # another user's process
        return False
    return False


def remove_stale_temporaries(out: str | Path) -> list[Path]:
    """Delete the temporary dataset files and folders (.<name>.tmp-<pid>: kn.results.atomic_file,
    kn.data.folder.save_tokenizer) in `out` whose process is gone: left by a run killed where no
    handler runs (SIGKILL, power loss)."""
    out, stale = Path(out), []
    if not out.is_dir():
        return stale
    for p in out.iterdir():
        name, _, pid = p.name.rpartition(".tmp-")
        if name.startswith(".") and name[1:] in DATASET_FILES and pid.isdigit() and _gone(int(pid)):
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
            stale.append(p)
            log.info("removed %s, left by process %s, which is gone", p, pid)
    return stale


def build_import(cfg: ImportConfig) -> tuple[BiosDataset, list[str]]:
    """The dataset of a biography JSONL, and the messages of the records skipped."""
    with collections_paused():
        return _build(cfg)


def _build(cfg: ImportConfig) -> tuple[BiosDataset, list[str]]:
    bios = Biographies(cfg.path, cfg.skip_bad)
    ids, names, values, groups = people_of(bios)
    is_train = split_people(len(ids), cfg.train_fraction, cfg.seed)
    is_valid = valid_people(is_train, cfg.valid_fraction, cfg.seed)
    qa = QARecords(ids, names, values, is_train, is_valid)
    tokenizer = train_tokenizer(chain((r["text"] for r in bios), qa.texts()), vocab_size=cfg.vocab_size)
    keys = ("name",) + ATTRIBUTES
    bios_tokens = concat_encoded([encode_records(batch, tokenizer, keys=keys) for batch in batches(bios)])
    qa_tokens = concat_encoded([encode_documents(docs, tokenizer) for docs, *_ in qa.chunks()])
    ds = BiosDataset(cfg, None, groups, is_train, bios, qa, tokenizer, bios_tokens, qa_tokens, is_valid)
    return ds, bios.skipped


def import_bios(cfg: ImportConfig, out, overwrite: bool = False) -> tuple[BiosDataset, list[str]]:
    """Build and write the folder (`out` is checked first: an existing dataset is replaced only with
    overwrite, and it may not hold the input file); meta.json also records how many records were skipped."""
    check_dataset_out(out, overwrite, inputs=(cfg.path,))
    t0 = time.perf_counter()
    ds, skipped = build_import(cfg)
    remove_stale_temporaries(out)
    with collections_paused():
        write_bios(ds, out, wall_time=time.perf_counter() - t0, overwrite=overwrite, kind="import",
                   skipped=len(skipped))
    return ds, skipped
