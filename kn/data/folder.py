"""A dataset's folder: checked before any work, emptied of dataset files, marked unfinished
(UNFINISHED) until its write ends, its tokenizer saved through a temporary folder. kn.data.dataset
(bioS, bioR) and kn.data.biod write theirs through it."""
from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from kn.errors import DataError
from kn.results import folder_path

UNFINISHED = ".kn-unfinished"   # a dataset write in progress (or stopped): removed once meta.json is written
DATASET_FILES = ("meta.json", "meta.diff", "tokens.npz", "bios.jsonl", "qa.jsonl", "biod.jsonl", "tokenizer")


def is_dataset(folder: str | Path) -> bool:
    """Whether `folder` holds a kn dataset: a meta.json that kn.results.write_json wrote (an object
    with provenance), whatever else it says."""
    try:
        meta = json.loads((Path(folder) / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and "provenance" in meta


def _listing(names: list[str]) -> str:
    return ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")


def check_dataset_out(out: str | Path, overwrite: bool = False, inputs: tuple = ()) -> Path:
    """`out`, symlinks resolved, as a dataset folder to write: a new or empty folder, a dataset with
    `overwrite`, or a write of kn's that stopped part-way (UNFINISHED). Else DataError naming what
    it holds (folders kn wrote, with their own meta.json, may stay beside a dataset), as when one of
    `inputs` (the files it is made from) lies inside it."""
    out = folder_path(Path(out).resolve(), "out")
    for path in inputs:
        if Path(path).resolve().is_relative_to(out):
            raise DataError(f"out: {str(out)!r} holds the input {str(path)!r}; write the dataset to a folder "
                            "outside it")
    if is_dataset(out):
        if not overwrite:
            raise DataError(f"out: {str(out)!r} already holds a dataset (meta.json); pass --overwrite "
                            "(overwrite=True) to replace it, or choose another folder")
        return out
    if not out.exists() or (out / UNFINISHED).exists():
        return out
    other = sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir() if not (p.is_dir() and is_dataset(p)))
    if other:
        raise DataError(f"out: {str(out)!r} is not empty and holds no kn dataset (it has: {_listing(other)}); "
                        "choose an empty or new folder")
    return out


@contextmanager
def dataset_folder(out: str | Path, overwrite: bool = False):
    """Yields `out` (after check_dataset_out) emptied of any dataset files, meta.json first, and
    marked UNFINISHED until the block ends without error; other files stay."""
    out = check_dataset_out(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    (out / UNFINISHED).touch()
    for name in DATASET_FILES:
        p = out / name
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
    yield out
    (out / UNFINISHED).unlink()


def save_tokenizer(tokenizer, out: Path) -> None:
    """`tokenizer.save_pretrained` into out/tokenizer through a temporary folder, removed on error."""
    tmp = out / f".tokenizer.tmp-{os.getpid()}"
    try:
        tokenizer.save_pretrained(str(tmp))
        os.replace(tmp, out / "tokenizer")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
