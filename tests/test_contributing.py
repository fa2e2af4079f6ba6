"""CONTRIBUTING.md's "Add a chapter", followed step by step for a toy chapter: a module with a frozen
config, `from_profile` and one `study(profile, ...)` call (step 2), its profile table (step 3), a
claim with a rule and a guard (step 4), a notebook that calls `study` once (step 5), run the way
`kn run <chapter> --profile smoke` runs it (step 7), then judged by the claims table. A test cannot
edit kn/profiles.py and kn/claims/, so it adds the table and the claim where those edits would put
them: in this process by monkeypatch, in the notebook's kernel by a sitecustomize module.
Run: OMP_NUM_THREADS=1 pytest tests/test_contributing.py
"""
import sys
import textwrap
from pathlib import Path

import nbformat
import pytest

from kn import claims, profiles
from kn.book import chapters, run_chapter
from kn.profiles import PROFILES

ROOT = Path(__file__).resolve().parents[1]

# step 2: kn/<module>.py (here toy_chapter.py), as the guide describes it
MODULE = '''
"""Toy chapter: a coin's heads rate (the guide's example, not a paper's claim).
Entry points: `CoinConfig`, `from_profile`, `study`."""
from dataclasses import dataclass

import numpy as np

from kn.errors import check_count
from kn.profiles import settings
from kn.results import done, read_json, results_dir, write_json

CHAPTER = "toy"


@dataclass(frozen=True)
class CoinConfig:
    n: int = 100                       # flips
    p: float = 0.5                     # heads probability
    seed: int = 0

    def __post_init__(self):
        check_count("n", self.n, 1)


def from_profile(profile: str, **overrides) -> CoinConfig:
    return CoinConfig(**settings(CHAPTER, profile, **overrides))


def study(profile: str, seed: int = 0, results=None, runs=None) -> dict:
    """The chapter's one call: flip, write flips.json (skipped when done with this config)."""
    cfg = from_profile(profile, seed=seed)
    path = (results or results_dir(CHAPTER, profile)) / "flips.json"
    if (record := done(path, cfg)) is None:
        flips = np.random.default_rng(cfg.seed).random(cfg.n) < cfg.p
        record = read_json(write_json(path, config=cfg, seed=cfg.seed, flips=flips.astype(int).tolist()))
    return {"heads": 100 * float(np.mean(record["flips"])), "n": len(record["flips"])}
'''

# step 3: TABLES["toy"] and KEYS["toy"] in kn/profiles.py, every profile, keys = the config's fields
TABLE = {p: {"n": n, "p": 0.8} for p, n in zip(PROFILES, (200, 400, 1000, 10_000, 100_000))}
KEYS = ("n", "p", "seed")

# step 4: a Claim in kn.claims.CLAIMS, its rule and guard fixed before the run
CLAIM = '''
import numpy as np

from kn.claims.rules import Check, Claim, Evidence, Rule, load
from kn.intervals import bootstrap


def heads(folder):
    flips = np.array(load(folder, "flips")["flips"], dtype=float)[:, None]
    estimate = bootstrap([flips], lambda t: 100 * float(t.mean()))
    return Evidence(estimate, f"{estimate.value:.1f}% [{estimate.low:.1f}, {estimate.high:.1f}]",
                    guards=(Check("flips", len(flips), 100, ""),))


CLAIM = Claim("Toy", "the coin lands heads at least 60% of the time", "80%", "toy", heads, Rule("at_least", 60))
'''

# the edits to kn/profiles.py and kn/claims/__init__.py, for the notebook's kernel
SITE = '''
from kn import claims, profiles
from toy_claim import CLAIM
profiles.TABLES["toy"] = {TABLE!r}
profiles.KEYS["toy"] = {KEYS!r}
claims.CLAIMS.append(CLAIM)
'''

# step 5: book/toy.ipynb, the skeleton of a chapter
CELLS = [("markdown", "# Toy: a coin\n\n**The claim**: heads at least 60% of the time.", []),
         ("code", "try:\n    import kn\nexcept ImportError:\n    %pip install -q -r ../requirements.txt -e ..", ["hide-input"]),
         ("code", 'profile = "cpu"\nseed = 0', ["parameters"]),
         ("code", "from myst_nb import glue\n\nfrom kn.claims import claims_markdown, claims_table\n"
                  "from toy_chapter import study", []),
         ("code", "r = study(profile, seed=seed)\nglue('heads', f\"{r['heads']:.1f}%\", display=False)", []),
         ("code", 'claims_markdown(claims_table("toy", profile))', [])]


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """The toy chapter's files under tmp_path, importable here and in a kernel; results in tmp_path."""
    (tmp_path / "toy_chapter.py").write_text(textwrap.dedent(MODULE))
    (tmp_path / "toy_claim.py").write_text(textwrap.dedent(CLAIM))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("KN_RESULTS_ROOT", str(tmp_path / "results"))
    monkeypatch.setenv("KN_RUNS_ROOT", str(tmp_path / "runs"))
    monkeypatch.setitem(profiles.TABLES, "toy", TABLE)
    monkeypatch.setitem(profiles.KEYS, "toy", KEYS)
    for name in ("toy_chapter", "toy_claim"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    from toy_claim import CLAIM as claim
    monkeypatch.setattr(claims, "CLAIMS", [*claims.CLAIMS, claim])
    return tmp_path


def test_toy_chapter_from_the_guide(toy):
    """The toy's table passes the checks every table gets; its study writes a result once and skips it
    when done; the claims table reads it and gives the rule's verdict; a guard that fails makes it
    inconclusive."""
    from dataclasses import fields

    import toy_chapter
    assert set(KEYS) == {f.name for f in fields(toy_chapter.CoinConfig)}
    assert all(profiles.settings("toy", p) == TABLE[p] for p in PROFILES)
    assert [r["verdict"] for r in claims.claims_table("toy")] == ["not run"]
    first = toy_chapter.study("smoke")
    path = toy / "results" / "toy" / "smoke" / "flips.json"
    stamp = path.stat().st_mtime_ns
    assert toy_chapter.study("smoke") == first and path.stat().st_mtime_ns == stamp      # done: not flipped again
    (row,) = claims.claims_table("toy")
    assert row["profile"] == "smoke" and row["verdict"] == "reproduced", row                  # 200 flips at p = 0.8
    toy_chapter.study("smoke", seed=1)                                                        # another config: redone
    assert path.stat().st_mtime_ns != stamp
    profiles.TABLES["toy"] = {**TABLE, "smoke": {"n": 50, "p": 0.8}}
    toy_chapter.study("smoke")
    assert claims.claims_table("toy")[0]["verdict"] == "inconclusive"                      # the 100-flip guard


def test_toy_chapter_runs_like_kn_run(toy, monkeypatch):
    """The notebook of step 5 executed by kn run's runner (papermill, profile injected) writes the
    chapter's result, and the claims table it prints is the one read here."""
    (toy / "sitecustomize.py").write_text(textwrap.dedent(SITE.format(TABLE=TABLE, KEYS=KEYS)))
    monkeypatch.setenv("PYTHONPATH", f"{toy}:{ROOT}")
    book = toy / "book"
    book.mkdir()
    (toy / "_config.yml").write_text((ROOT / "_config.yml").read_text())
    (toy / "_toc.yml").write_text("format: jb-book\nroot: book/toy\n")                       # step 6
    nb = nbformat.v4.new_notebook()
    nb.cells = [(nbformat.v4.new_markdown_cell if kind == "markdown" else nbformat.v4.new_code_cell)(
        source, metadata={"tags": tags}) for kind, source, tags in CELLS]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, book / "toy.ipynb")
    assert chapters(toy) == ["toy"]
    out = run_chapter("toy", "smoke", book=book)
    assert (toy / "results" / "toy" / "smoke" / "flips.json").is_file()
    shown = nbformat.read(out, 4).cells[-1].outputs[0]["data"]
    (row,) = claims.claims_table("toy", "smoke")
    assert row["verdict"] == "reproduced" and f"**{row['verdict']}**" in str(shown)
