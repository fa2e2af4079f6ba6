"""File locks: one exclusive fcntl lock per file, held by an open descriptor.

`acquire(path, wait)` locks path (created with its folder), waiting for the holder or, with
wait=False, returning None while another process holds it; a lock file its releaser unlinked in
between is retried, so holders that remove their file on release (kn.sweep) exclude each other too.
`file_lock(path, wait, busy)` holds one for a `with` block: a held lock waits, or with wait=False
is a DataError with the message `busy`. Users: kn.checkpoints.run_lock (a run's folder, not
waiting), kn.onelayer (a shared pretraining, waiting), kn.sweep (a point, either), kn.results.append_csv
(a CSV, waiting).
"""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path

from kn.errors import DataError


def acquire(path: Path, wait: bool = True) -> int | None:
    """An open descriptor holding the lock on `path`, or None if another process holds it and not `wait`."""
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:                           # the folder was removed in between
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)                                        # locked a file that was unlinked: retry


def release(path: Path, fd: int, remove: bool = False) -> None:
    """Let go of the lock; with `remove`, unlink its file first (a waiter then retries on a new one)."""
    if remove:
        path.unlink(missing_ok=True)
    os.close(fd)


@contextmanager
def file_lock(path: Path, wait: bool = True, busy: str = ""):
    """Hold the lock on `path` for the block; with wait=False a lock held elsewhere is DataError(busy)."""
    fd = acquire(path, wait)
    if fd is None:
        raise DataError(busy or f"{path}: locked by another process")
    try:
        yield
    finally:
        release(path, fd)
