"""Result files: JSON and CSV that carry their provenance.

Every file the book reads is written here, with the config, seed, git commit, hardware and wall
time of the run that made it (STYLE.md, "Results"). Entry points: `provenance`, `write_json`,
`read_json`, `append_csv`.
"""
from __future__ import annotations

import csv
import json
import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path


def git_commit(cwd: str | Path | None = None) -> str | None:
    """The checkout's HEAD commit (with '-dirty' if the tree has changes), or None outside git."""
    cwd = str(cwd or Path(__file__).resolve().parent)
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if head.returncode:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def hardware() -> dict:
    """CPU, core count and, where torch sees one, the GPU."""
    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "gpu": None}
    try:
        import torch
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
        info["torch"] = torch.__version__
    except ImportError:
        pass
    return info


def provenance(config=None, seed=None, wall_time: float | None = None) -> dict:
    return {"config": config, "seed": seed, "git_commit": git_commit(), "hardware": hardware(),
            "wall_time_s": None if wall_time is None else round(wall_time, 3),
            "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def write_json(path: str | Path, config=None, seed=None, wall_time: float | None = None, **data) -> Path:
    """Write `data` plus provenance to `path` (atomically: temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({**data, "provenance": provenance(config, seed, wall_time)}, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def read_json(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def append_csv(path: str | Path, row: dict) -> Path:
    """Append one row (writing the header for a new file); columns are the first row's keys."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)
    return path
