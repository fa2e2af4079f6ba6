"""Measured run times per chapter and profile: the one source every page and the README show.

A chapter's time at a profile is the compute recorded in its committed result files
(book/results/<chapter>/<profile>/): the sum of the sweep rows' `wall_s` where the folder holds a
sweep CSV (its JSON files then only summarise the rows), else the sum of the JSON files'
provenance wall times. `render(root)` writes book/times.md (the intro's table), book/times/<chapter>.md
(each chapter's re-run box) and the README's table between its TIMES markers; `kn book` calls it,
and tests/test_times.py checks that what is committed is what it writes. Entry points:
`chapter_times`, `times_table`, `rendered`, `render`.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from kn.profiles import PROFILES
from kn.results import ROOT
from kn.toc import chapters

MARKERS = ("<!-- times: written by kn.times (kn book); do not edit -->", "<!-- /times -->")
HOW = ("Compute recorded in the committed result files (one thread per run on a 2-core CPU, often beside "
       "other runs; sweeps: the sum of their points; mixed_training's R1 search ran on one H200 GPU, six runs at "
       "once, and a resumed run records its last part only); - : no committed result at that profile")


def _seconds(folder: Path) -> float | None:
    sweeps = sorted(folder.glob("*.csv"))
    if sweeps:
        rows = [r for f in sweeps for r in csv.DictReader(open(f, newline=""))]
        return sum(float(r["wall_s"]) for r in rows if _finite(r.get("wall_s")))
    walls = [json.loads(f.read_text()).get("provenance", {}).get("wall_time_s") for f in sorted(folder.glob("*.json"))]
    walls = [w for w in walls if isinstance(w, (int, float))]
    return sum(walls) if walls else None


def _finite(v) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def chapter_times(root: Path = ROOT) -> dict[str, dict[str, float | None]]:
    """{chapter: {profile: seconds or None}} for every chapter of the book."""
    results = root / "book" / "results"
    return {ch: {p: _seconds(results / ch / p) if (results / ch / p).is_dir() else None for p in PROFILES}
            for ch in chapters(root)}


def _text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def times_table(times: dict, chapters: list[str] | None = None) -> str:
    """A Markdown table, a row per chapter and a column per profile."""
    rows = ["| chapter | " + " | ".join(f"`{p}`" for p in PROFILES) + " |", "|---|" + "---|" * len(PROFILES)]
    rows += [f"| {ch} | " + " | ".join(_text(times[ch][p]) for p in PROFILES) + " |" for ch in chapters or times]
    return "\n".join(rows) + "\n"


def rendered(root: Path = ROOT) -> dict[Path, str]:
    """{file: text} that `render` writes: book/times.md, book/times/<chapter>.md and, where README.md
    has the TIMES markers, README.md."""
    times = chapter_times(root)
    files = {root / "book" / "times.md": times_table(times) + f"\n{HOW}.\n"}
    files |= {root / "book" / "times" / f"{ch}.md": times_table(times, [ch]) + f"\n{HOW}.\n" for ch in times}
    readme = root / "README.md"
    text = readme.read_text() if readme.is_file() else ""
    start, end = text.find(MARKERS[0]), text.find(MARKERS[1])
    if 0 <= start < end:
        files[readme] = text[:start] + MARKERS[0] + "\n" + times_table(times) + text[end:]
    return files


def render(root: Path = ROOT) -> list[Path]:
    """Write `rendered(root)`; returns the files that changed."""
    changed = []
    for path, text in rendered(root).items():
        if not path.is_file() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            changed.append(path)
    return changed
