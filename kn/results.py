"""Result files: JSON and CSV that carry their provenance, written so that a crash loses nothing.

Every file the book reads is written here, with the config, seed, git commit, hardware and wall
time of the run that made it (STYLE.md, "Results"). A JSON is written under a temporary name, then
renamed, with a "checksum" key last: the sha256 of the canonical JSON of everything else. `read_json`
refuses a file that does not match it (edited by hand or damaged), and one without it under
book/results (the committed results, all checksummed: a hand edit could delete the key); elsewhere
(runs, datasets) a file without one predates checksums and is read as it is. It also refuses
impossible values (kn.intervals.check_values). When the `kn` package differs from its commit, the
patch is kept beside the JSON as <name>.diff and the provenance names it with its sha256. A CSV
grows one row at a time: each row is one write at the end of the file, under its lock (kn.locks),
with its columns checked against the header; a write that fails (a full disk) is cut back to the
rows before it; an unfinished last line (a crash mid-write) is dropped with a warning, and so
are rows that are not rows of the file (a repeated header, another column count).

Where results live: a chapter's result files in `results_dir(chapter, profile)` (book/results/,
committed), its runs (datasets, checkpoints, models) in `runs_dir(chapter, profile)` (runs/, not
committed). An experiment skips a stage whose result file is `done` (finished, and recording the
same config), and `publish`es a run's result file into its chapter's results folder.
Entry points: `provenance`, `write_json`, `read_json`, `checksum`, `done`, `read_back`, `publish`, `results_dir`,
`runs_dir`, `append_csv`, `read_csv`, `folder_path`, `atomic_file`.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import platform
import re
import subprocess
from contextlib import contextmanager
from dataclasses import MISSING, asdict, fields, is_dataclass
from datetime import datetime, timezone
from pathlib import Path

from kn.errors import DataError
from kn.intervals import check_values
from kn.locks import acquire, release
from kn.profiles import check_profile

PACKAGE = Path(__file__).resolve().parent
ROOT = PACKAGE.parent
COMMITTED = ROOT / "book" / "results"       # every result file here carries a checksum
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+ -]*$")   # a result file's name (spaces allowed): no folders
log = logging.getLogger(__name__)


def _git(*args: str, cwd: Path = PACKAGE) -> str | None:
    try:
        r = subprocess.run(["git", *args], cwd=str(cwd), capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout if r.returncode in (0, 1) else None     # `diff --no-index` exits 1 on a difference


def git_state(cwd: str | Path | None = None) -> dict:
    """HEAD's commit and the patch of the package against it (tracked changes and untracked files
    under the package folder; results written elsewhere in the tree do not count). A copy of a clean
    checkout without its .git (a remote machine's) names its commit in $KN_GIT_COMMIT."""
    cwd = Path(cwd or PACKAGE)
    head = _git("rev-parse", "HEAD", cwd=cwd)
    if head is None:
        return {"commit": os.environ.get("KN_GIT_COMMIT") or None, "diff": ""}
    diff = _git("diff", "HEAD", "--binary", "--", ".", cwd=cwd) or ""
    for name in (_git("ls-files", "--others", "--exclude-standard", "--", ".", cwd=cwd) or "").split("\n"):
        if name:
            diff += _git("diff", "--no-index", "--binary", "--", "/dev/null", name, cwd=cwd) or ""
    return {"commit": head.strip(), "diff": diff}


CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni", "avx_vnni")  # what sets speed


def cpu_info() -> dict:
    """The CPU's model name and which of CPU_FLAGS it has (from /proc/cpuinfo; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {"cpu_model": platform.processor() or platform.machine(), "cpu_flags": []}
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    return {"cpu_model": fields.get("model name", platform.machine()), "cpu_flags": [f for f in CPU_FLAGS if f in flags]}


_PRECISIONS: list[dict] = []       # what training runs in this process chose (kn.precision), in order


def record_precision(choice: dict) -> None:
    """Note a precision a run of this process chose (kn.precision.choose): hardware() reports it."""
    if choice not in _PRECISIONS:
        _PRECISIONS.append(choice)


def hardware() -> dict:
    """CPU (model and the flags that set its speed), core count, where torch sees one the GPU, and
    "precision": every precision (dtype, attention, reason) that training runs in this process
    chose (kn.precision), none when none trained here. Files written before the choice existed
    say "fp32" or "bf16 autocast" (kn's rule then: bf16 on a GPU, fp32 on the CPU)."""
    info = {"cpu": platform.processor() or platform.machine(), **cpu_info(), "cores": os.cpu_count(), "gpu": None}
    try:
        import torch
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
        info["torch"] = torch.__version__
    except ImportError:
        pass
    info["precision"] = list(_PRECISIONS)
    return info


def provenance(config=None, seed=None, wall_time: float | None = None, git: dict | None = None,
               diff_file: str | None = None) -> dict:
    """Config, seed, git commit (git_dirty, and the patch's file and sha256 when dirty), hardware, times."""
    git = git_state() if git is None else git
    dirty = bool(git["diff"])
    return {"config": config, "seed": seed, "git_commit": git["commit"], "git_dirty": dirty,
            "git_diff": diff_file if dirty else None,
            "git_diff_sha256": hashlib.sha256(git["diff"].encode()).hexdigest() if dirty else None,
            "hardware": hardware(), "wall_time_s": None if wall_time is None else round(wall_time, 3),
            "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def folder_path(path: str | Path, name: str = "out") -> Path:
    """`path` as a folder to write into; DataError naming `name` if it or a folder above it is a file."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists() and not p.is_dir():
            raise DataError(f"{name}: {str(p)!r} is a file, so {str(path)!r} cannot be a folder; choose another path")
    return path


@contextmanager
def atomic_file(path: str | Path):
    """Yields a temporary path beside `path`; renamed onto `path` when the block ends without error."""
    path = Path(path)
    folder_path(path.parent, "path").mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:                                   # a full disk: `path` is left as it was
        if e.filename not in (None, str(tmp)):
            raise                                          # about another file, which it names
        raise _naming(e, path) from e
    finally:
        tmp.unlink(missing_ok=True)


def _naming(e: OSError, path: Path) -> OSError:
    """`e` as an OSError naming `path` (a failed write() names no file)."""
    return OSError(e.errno, e.strerror or str(e), str(path))


def write_json(path: str | Path, config=None, seed=None, wall_time: float | None = None, **data) -> Path:
    """Write `data` plus provenance to `path` (atomically); a dirty package's patch goes to <name>.diff.
    `config` (a dataclass or plain values) is recorded as_recorded, as `done` compares it."""
    path = Path(path)
    git, diff = git_state(), path.with_suffix(".diff")
    if git["diff"]:
        with atomic_file(diff) as tmp:
            tmp.write_text(git["diff"])
    else:
        diff.unlink(missing_ok=True)                       # a patch from an earlier, dirty write
    _write_record(path, {**data, "provenance": provenance(as_recorded(config), seed, wall_time, git, diff.name)})
    return path


def checksum(record: dict) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces) of `record` without its "checksum" key."""
    body = {k: v for k, v in record.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _write_record(path: Path, record: dict) -> dict:
    """`record` as JSON values, its checksum last, written atomically; returns what was written."""
    record = json.loads(json.dumps(record, default=str))          # what a reader gets back: str keys, lists
    record["checksum"] = checksum(record)
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    return record


def read_json(path: str | Path) -> dict:
    """A JSON file; a result file's checksum and values checked (see the module docstring): one
    DataError line naming the file when they are not what write_json wrote."""
    path = Path(path)
    record = json.loads(path.read_text())
    if not isinstance(record, dict):
        return record
    if "checksum" in record and record["checksum"] != checksum(record):
        raise DataError(f"result: {str(path)!r} does not match its checksum (edited by hand or damaged); "
                        "restore it (git checkout) or run its experiment again")
    if "checksum" not in record and path.resolve().is_relative_to(COMMITTED.resolve()):
        raise DataError(f"result: {str(path)!r} has no checksum, and every result under book/results has one; "
                        "restore it (git checkout) or run its experiment again")
    check_values(record, path)
    return record


def as_recorded(config) -> dict | list | None:
    """`config` (a dataclass or plain values) as write_json records it: JSON values, str() for the rest."""
    return json.loads(json.dumps(asdict(config) if is_dataclass(config) else config, default=str))


def done(path: str | Path, config, after=()) -> dict | None:
    """The result file at `path` if it is finished, records `config` (write_json's provenance) and is
    newer than each file of `after` that exists (what it was computed from), else None. Finished:
    readable and not marked "interrupted" (kn.train's train.json). One that fails read_json's checks
    (edited or damaged) is a DataError, not computed again over it."""
    path = Path(path)
    if path.is_file() and any(Path(a).is_file() and Path(a).stat().st_mtime_ns > path.stat().st_mtime_ns
                              for a in after):
        return None                                          # an input was made again since: stale
    try:
        record = read_json(path) if path.is_file() else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None                                          # not a result file: compute it again
    if not isinstance(record, dict) or record.get("interrupted") or "provenance" not in record:
        return None
    return record if same_config(record["provenance"].get("config"), config) else None


def read_back(run: str | Path, path: str | Path, config) -> dict | None:
    """A page re-rendered from its committed files: the published result at `path` when the run's
    folder `run` is gone and the result records `config` (done), else None (the run goes ahead)."""
    return None if Path(run).exists() else done(path, config)


def same_config(recorded, config) -> bool:
    """Whether a result that recorded `recorded` was made with `config`: the same values, where a
    field the record lacks (added to the config after the result was written) holds the value every
    earlier run had: its entry in the class's ADDED_SETTINGS (kn.train_config.TrainConfig's precision,
    attention, trim_vocab), else its default, which must then do what runs did before it existed. A
    field renamed since (the class's RENAMED: old name -> new) is read under its new name."""
    if isinstance(recorded, dict):
        recorded = renamed(recorded, getattr(config, "RENAMED", {}))
    return _same(recorded, as_recorded(config), _defaults(config))


def renamed(values: dict, renames: dict) -> dict:
    """`values` (a recorded config, a TOML table) with each key renamed since (renames: old -> new)
    under its new name; DataError when both names are given."""
    for old, new in renames.items():
        if old in values and new in values:
            raise DataError(f"{old}: renamed {new}, and both are given; allowed: {new} only")
    return {renames.get(k, k): v for k, v in values.items()}


def _defaults(config) -> dict:
    """{field: the value runs had before it existed, as recorded} of a dataclass (ADDED_SETTINGS, else
    its default), nested dataclass values as their own."""
    if not is_dataclass(config):
        return {}
    out, added = {}, getattr(config, "ADDED_SETTINGS", {})
    for f in fields(config):
        value = getattr(config, f.name)
        if is_dataclass(value):
            out[f.name] = _defaults(value)
        elif f.name in added:
            out[f.name] = as_recorded(added[f.name])
        elif f.default is not MISSING or f.default_factory is not MISSING:
            out[f.name] = as_recorded(f.default if f.default is not MISSING else f.default_factory())
    return out


def _same(recorded, current, defaults: dict) -> bool:
    if not (isinstance(recorded, dict) and isinstance(current, dict)):
        return recorded == current
    if set(recorded) - set(current):
        return False                                         # a field since removed
    return all(_same(recorded[k], v, defaults.get(k, {}) if isinstance(defaults.get(k), dict) else {})
               if k in recorded else k in defaults and not isinstance(defaults[k], dict) and defaults[k] == v
               for k, v in current.items())


# ----------------------------------------------------------------------------- chapters' folders


def results_dir(chapter: str, profile: str) -> Path:
    """Where a chapter's result files go: book/results/<chapter>/<profile>/ (or under $KN_RESULTS_ROOT,
    which the tests set so that running chapters leaves the committed results alone)."""
    root = Path(os.environ.get("KN_RESULTS_ROOT", ROOT / "book" / "results"))
    return root / chapter / check_profile(profile)


def runs_dir(chapter: str, profile: str) -> Path:
    """Scratch space of a chapter's runs (datasets, checkpoints, models): runs/<chapter>/<profile>/,
    or under $KN_RUNS_ROOT. Not committed; a re-run reuses what is there."""
    root = Path(os.environ.get("KN_RUNS_ROOT", ROOT / "runs"))
    return root / chapter / check_profile(profile)


def publish(src: str | Path, chapter: str, profile: str, name: str) -> dict:
    """Copy a run's result file `src` (a write_json file) to results_dir(chapter, profile)/<name>.json,
    with its patch (<name>.diff) when it has one; returns the result."""
    src = Path(src)
    if not isinstance(name, str) or not _NAME.match(name):
        raise DataError(f"name: got {name!r}; allowed: a file name without folders (letters, digits, _ . + -)")
    if not src.is_file():
        raise DataError(f"src: no result file {str(src)!r}; run the experiment first")
    record = read_json(src)
    dst = results_dir(chapter, profile) / f"{name}.json"
    diff = (record.get("provenance") or {}).get("git_diff")
    if diff:
        with atomic_file(dst.with_suffix(".diff")) as tmp:
            tmp.write_bytes((src.parent / diff).read_bytes())
        record["provenance"]["git_diff"] = dst.with_suffix(".diff").name
    else:
        dst.with_suffix(".diff").unlink(missing_ok=True)     # a patch from an earlier, dirty result
    return _write_record(dst, record)


# ----------------------------------------------------------------------------- CSV


def _complete(data: bytes, path: Path) -> int:
    """Length of `data` up to its last newline; warns about an unfinished last line past it."""
    end = data.rfind(b"\n") + 1
    if end < len(data):
        log.warning("%s: dropping an unfinished last line (%d bytes, a write that stopped part-way): %r",
                    path, len(data) - end, data[end:end + 80])
    return end


def _line(values: list) -> bytes:
    buf = io.StringIO()
    csv.writer(buf).writerow(values)
    return buf.getvalue().encode()


def _columns(header: list[str], row: dict, path: Path) -> list:
    """The row's values in header order; DataError if its keys are not the header's."""
    new, missing = [k for k in row if k not in header], [k for k in header if k not in row]
    if new or missing:
        raise DataError(f"results: the row's columns differ from the header of {str(path)!r} "
                        f"(new: {new}, missing: {missing}); write these rows to another CSV")
    return [row[k] for k in header]


def append_csv(path: str | Path, row: dict) -> Path:
    """Append one row (the header first for a new file) in one write, under the file's lock
    (kn.locks), then fsync: a crash leaves whole rows, plus at most an unfinished line that the next
    append or read drops. Columns must be the header's (in any order)."""
    path = Path(path)
    folder_path(path.parent, "results").mkdir(parents=True, exist_ok=True)
    fd = acquire(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
        end = _complete(data, path)
        if end < len(data):
            os.ftruncate(fd, end)
        header = next(csv.reader(io.StringIO(data[:end].decode(), newline="")), None)
        text = _line(list(row)) + _line(list(row.values())) if header is None else _line(_columns(header, row, path))
        os.lseek(fd, end, os.SEEK_SET)
        _write_all(fd, text, end, path)
    finally:
        release(path, fd)
    return path


def _write_all(fd: int, text: bytes, size: int, path: Path) -> None:
    """Write `text` at the end of the file (of `size` bytes) and fsync; on an OSError (a full disk)
    cut the file back to `size`, so that no part of a row is left, and raise it naming `path`."""
    try:
        while text:
            text = text[os.write(fd, text):]
        os.fsync(fd)
    except OSError as e:
        os.ftruncate(fd, size)
        raise _naming(e, path) from e


def read_csv(path: str | Path) -> list[dict]:
    """The rows of a CSV written by append_csv, as strings. Left out, with a warning: an unfinished
    last line, a repeated header (two files joined) and a row of another column count."""
    path = Path(path)
    data = path.read_bytes()
    lines = csv.reader(io.StringIO(data[:_complete(data, path)].decode(), newline=""))
    header = next(lines, None)
    rows = []
    for values in lines:
        if values == header or len(values) != len(header):
            log.warning("%s: line %d dropped (%s): %.80r", path, lines.line_num,
                        "a repeated header" if values == header else f"{len(values)} values for {len(header)} columns",
                        values)
            continue
        rows.append(dict(zip(header, values)))
    return rows
