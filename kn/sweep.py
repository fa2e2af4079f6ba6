"""Sweeps: run many experiment points, append each finished one to a CSV, skip those already there.

A point is a dict of plain values; its key is the point as sorted JSON. `run_sweep(points, fn, csv)`
calls the module-level function `fn(point) -> dict` for every point whose key is not yet in the
CSV, and appends {key, **point, **fn(point)} as each one finishes (kn.results.append_csv: one
locked write per row, columns checked against the header), so a sweep can be stopped and
continued in parts. A malformed row (another column count, a repeated header, an empty or NaN
result) is dropped with a warning and does not count: its point runs again. Before running a
point a sweep locks it: an fcntl lock on <csv>.locks/<hash of the key>.lock, held until its row
is written. Two sweeps on one CSV share the work: each skips the points the other has finished
or holds, then waits for those it skipped and runs any whose holder died without writing a row.
Executors:
  local     in this process, one after another (workers=1), or `workers` processes at once
            (several small models on one under-used GPU)
  submitit  one job per point through submitit: cluster="slurm" on a SLURM cluster, "local" to
            test; the results are gathered and written here, so skipping and locks work the same
"""
from __future__ import annotations

import hashlib
import json
import logging
from contextlib import contextmanager
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

from kn.errors import DataError, check_count
from kn.locks import acquire, release
from kn.results import append_csv, folder_path, read_csv

EXECUTORS = ("local", "submitit")
log = logging.getLogger(__name__)


SCRATCH_KEYS = ("runs_dir",)   # where a point keeps its files: not part of its identity


def point_key(point: dict) -> str:
    """The point as sorted JSON, without SCRATCH_KEYS (a sweep continued from another checkout skips done points)."""
    return json.dumps({k: v for k, v in point.items() if k not in SCRATCH_KEYS}, sort_keys=True,
                      separators=(",", ":"), default=str)


# Result columns where NaN means "not measured for this point", not a failed run: int8/int4 bits of a
# point without quantize and the second value's loss of a bioS run (kn.capacity); the rank-1 share of
# a matrix the model lacks or its finetuning left alone, the validation slice of a point without one (kn.onelayer).
NOT_MEASURED = ("bits_int8", "ratio_int8", "bits_int4", "ratio_int4", "loss_value1",
                "rank1_qkv", "rank1_attn_out", "rank1_mlp_in", "rank1_mlp_out", "rank1_embed", "acc_valid")


def done_keys(path: str | Path) -> set[str]:
    """The keys of the CSV's whole rows: a point whose row is malformed (`_rows`) is not done."""
    path = Path(path)
    return {row["key"] for row in _rows(path)} if path.is_file() else set()


def read_rows(path: str | Path) -> list[dict]:
    """The CSV's whole rows (`_rows`) with numbers parsed back (JSON where it parses, else the string)."""
    return [{k: _parse(v) for k, v in row.items()} for row in _rows(path)]


def _rows(path: Path) -> list[dict]:
    """read_csv's rows less the malformed ones (`_fault`), with a warning: the sweep runs their
    points again. A CSV without a key column (not a sweep's) is read as it is."""
    table = read_csv(path)
    if table and "key" not in table[0]:
        return table
    rows = []
    for row in table:
        fault = _fault(row)
        if fault:
            log.warning("%s: row of %.80s dropped (%s): its point runs again", path, row["key"], fault)
        else:
            rows.append(row)
    return rows


def _fault(row: dict) -> str | None:
    """Why a sweep row is malformed: its key is not a point, or a result column (not the key, not
    the point's) is empty or NaN (NOT_MEASURED aside); None for a whole row."""
    try:
        point = json.loads(row["key"])
    except json.JSONDecodeError:
        point = None
    if not isinstance(point, dict):
        return "its key is not a point"
    results = {k: v for k, v in row.items() if k != "key" and k not in SCRATCH_KEYS and k not in point}
    bad = [k for k, v in results.items() if v == "" or (v.lower() == "nan" and k not in NOT_MEASURED)]
    return f"empty or NaN {bad}" if bad else None


def _parse(v: str):
    try:
        return json.loads(v)
    except (json.JSONDecodeError, TypeError):
        return float(v) if v in ("nan", "inf", "-inf") else v


def _row(point: dict, result: dict) -> dict:
    return {"key": point_key(point), **point, **result}


# ----------------------------------------------------------------------------- point locks


def locks_folder(results: Path) -> Path:
    return results.with_name(results.name + ".locks")


def _lock_point(folder: Path, key: str, wait: bool) -> tuple[Path, int] | None:
    """(lock file, open fd holding its lock) for `key` (kn.locks), or None if another process holds it and not `wait`."""
    path = folder / (hashlib.sha1(key.encode()).hexdigest()[:20] + ".lock")
    fd = acquire(path, wait)
    return None if fd is None else (path, fd)


def _unlock(lock: tuple[Path, int]) -> None:
    release(*lock, remove=True)
    try:
        lock[0].parent.rmdir()                              # the last lock gone: no folder left behind
    except OSError:
        pass


@contextmanager
def holding(points: list[dict], results: str | Path):
    """The points without a row in `results` that no other sweep holds, locked for the body as run_sweep
    locks a point: work done on them ahead of the sweep (kn.capacity's grid, trained in groups) is then
    not done twice by a second sweep beside this one."""
    held, _ = _lock_points(points, Path(results), wait=False)
    try:
        yield [p for p, _ in held.values()]
    finally:
        for _, lock in held.values():
            _unlock(lock)


def _lock_points(points: list[dict], results: Path, wait: bool) -> tuple[dict, list[dict]]:
    """({key: (point, lock)} of the points now held here that have no row yet, the points held elsewhere)."""
    held, busy = {}, []
    for p in points:
        lock = _lock_point(locks_folder(results), point_key(p), wait)
        if lock is None:
            busy.append(p)
        else:
            held[point_key(p)] = (p, lock)
    done = done_keys(results)                     # read after locking: a holder writes its row, then releases
    for key in [k for k in held if k in done]:
        _unlock(held.pop(key)[1])
    return held, busy


# ----------------------------------------------------------------------------- the sweep


def run_sweep(points: list[dict], fn: Callable[[dict], dict], results: str | Path, executor: str = "local",
              workers: int = 1, folder: str | Path | None = None, cluster: str = "slurm",
              slurm: dict | None = None) -> list[dict]:
    """Run the points not yet in `results`; returns the rows written by this call."""
    if executor not in EXECUTORS:
        raise DataError(f"executor: got {executor!r}; allowed: {', '.join(EXECUTORS)}")
    check_count("workers", workers, 1)
    results = Path(results)
    folder_path(results.parent, "results")
    unique, done = {point_key(p): p for p in points}, done_keys(results)
    pending = [p for k, p in unique.items() if k not in done]
    log.info("sweep %s: %d points, %d done, %d to run", results, len(unique), len(unique) - len(pending), len(pending))
    rows, wait = [], False
    while pending:                                           # a second pass waits for the points another sweep held
        pending = (_sequential if executor == "local" and workers == 1 else _batch)(
            pending, fn, results, rows, wait, executor, workers, folder or results.with_suffix(".jobs"), cluster,
            slurm or {})
        wait = True
    return rows


def _finish(results: Path, rows: list, p: dict, result: dict) -> None:
    rows.append(_row(p, result))
    append_csv(results, rows[-1])


def _sequential(pending, fn, results, rows, wait, *_) -> list[dict]:
    """Lock, run and unlock one point at a time; returns the points held by another sweep."""
    busy = []
    for p in pending:
        lock = _lock_point(locks_folder(results), point_key(p), wait)
        if lock is None:
            busy.append(p)
            continue
        try:
            if point_key(p) not in done_keys(results):      # read after locking: a holder writes, then releases
                _finish(results, rows, p, fn(p))
        finally:
            _unlock(lock)
    return busy


def _batch(pending, fn, results, rows, wait, executor, workers, folder, cluster, slurm) -> list[dict]:
    """Lock every free point, run them at once (processes or submitit jobs), unlock each as its row is
    written; returns the points held by another sweep."""
    held, busy = _lock_points(pending, results, wait)

    def finish(p: dict, result: dict) -> None:
        _finish(results, rows, p, result)
        _unlock(held.pop(point_key(p))[1])
    try:
        _run([p for p, _ in held.values()], fn, finish, executor, workers, folder, cluster, slurm)
    finally:
        for _, lock in held.values():
            _unlock(lock)
    return busy


def _run(todo, fn, finish, executor, workers, folder, cluster, slurm) -> None:
    """Run `todo`, calling finish(point, result) as each one ends."""
    if not todo:
        return
    if executor == "submitit":
        import submitit
        ex = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
        ex.update_parameters(**slurm)
        for p, job in [(p, ex.submit(fn, p)) for p in todo]:
            finish(p, job.result())
    else:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(fn, p): p for p in todo}
            for fut in as_completed(futures):
                finish(futures[fut], fut.result())
