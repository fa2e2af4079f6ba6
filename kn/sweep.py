"""Sweeps: run many experiment points, append each finished one to a CSV, skip those already there.

A point is a dict of plain values; its key is the point as sorted JSON. `run_sweep(points, fn, csv)`
calls the module-level function `fn(point) -> dict` for every point whose key is not yet in the
CSV, and appends {key, **point, **fn(point)} as each one finishes, so a sweep can be stopped and
continued in parts. Executors:
  local     in this process, one after another (workers=1), or `workers` processes at once
            (several small models on one under-used GPU)
  submitit  one job per point through submitit: cluster="slurm" on a SLURM cluster, "local" to
            test; the results are gathered and written here, so skipping works the same
"""
from __future__ import annotations

import csv
import json
import logging
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

from kn.data.records import DataError
from kn.results import append_csv

EXECUTORS = ("local", "submitit")
log = logging.getLogger(__name__)


SCRATCH_KEYS = ("runs_dir",)   # where a point keeps its files: not part of its identity


def point_key(point: dict) -> str:
    """The point as sorted JSON, without SCRATCH_KEYS (a sweep continued from another checkout skips done points)."""
    return json.dumps({k: v for k, v in point.items() if k not in SCRATCH_KEYS}, sort_keys=True,
                      separators=(",", ":"), default=str)


def done_keys(path: str | Path) -> set[str]:
    path = Path(path)
    if not path.is_file():
        return set()
    with open(path, newline="") as f:
        return {row["key"] for row in csv.DictReader(f)}


def read_rows(path: str | Path) -> list[dict]:
    """The CSV's rows with numbers parsed back (JSON where it parses, else the string)."""
    with open(path, newline="") as f:
        return [{k: _parse(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _parse(v: str):
    try:
        return json.loads(v)
    except (json.JSONDecodeError, TypeError):
        return float(v) if v in ("nan", "inf", "-inf") else v


def _row(point: dict, result: dict) -> dict:
    return {"key": point_key(point), **point, **result}


def run_sweep(points: list[dict], fn: Callable[[dict], dict], results: str | Path, executor: str = "local",
              workers: int = 1, folder: str | Path | None = None, cluster: str = "slurm",
              slurm: dict | None = None) -> list[dict]:
    """Run the points not yet in `results`; returns the rows written by this call."""
    if executor not in EXECUTORS:
        raise DataError(f"executor: got {executor!r}; allowed: {', '.join(EXECUTORS)}")
    if not isinstance(workers, int) or workers < 1:
        raise DataError(f"workers: got {workers!r}; allowed: an integer >= 1")
    done = done_keys(results)
    todo = [p for p in points if point_key(p) not in done]
    log.info("sweep %s: %d points, %d done, %d to run", results, len(points), len(points) - len(todo), len(todo))
    if not todo:
        return []
    if executor == "submitit":
        return _submitit(todo, fn, results, folder or Path(results).with_suffix(".jobs"), cluster, slurm or {})
    rows = []
    if workers == 1:
        for p in todo:
            rows.append(_row(p, fn(p)))
            append_csv(results, rows[-1])
        return rows
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(fn, p): p for p in todo}
        for fut in as_completed(futures):
            rows.append(_row(futures[fut], fut.result()))
            append_csv(results, rows[-1])
    return rows


def _submitit(todo, fn, results, folder, cluster, slurm) -> list[dict]:
    import submitit
    ex = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    ex.update_parameters(**slurm)
    jobs = [(p, ex.submit(fn, p)) for p in todo]
    rows = []
    for p, job in jobs:
        rows.append(_row(p, job.result()))
        append_csv(results, rows[-1])
    return rows
