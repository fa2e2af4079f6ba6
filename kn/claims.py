"""The claims table: every claim of papers.md beside our measured number, its scale and a verdict.

Each claim names the chapter whose result files hold our measurement, a function that reads the
number from them, and a rule that turns (ours, paper's) into a verdict: "reproduced", "partly",
"not reproduced", or "not run" where no result file exists yet. For each chapter the largest
profile with results is used (paper > gpu > cpu > smoke), and the table says which.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from kn import paper
from kn.book import results_dir
from kn.data.records import ATTRIBUTES
from kn.profiles import PROFILES


@dataclass(frozen=True)
class Claim:
    source: str                                  # paper and result
    statement: str
    paper_value: str
    chapter: str
    measure: Callable[[Path], tuple[float, str]]  # results folder -> (number, how it reads)
    verdict: Callable[[float], str]


def latest_profile(chapter: str) -> str | None:
    """The largest profile whose results folder for `chapter` exists."""
    for profile in reversed(PROFILES):
        folder = results_dir(chapter, profile)
        if folder.is_dir() and any(folder.iterdir()):
            return profile
    return None


def _load(folder: Path, name: str) -> dict:
    return json.loads((folder / f"{name}.json").read_text())


def _test_mean(name: str) -> Callable[[Path], tuple[float, str]]:
    def measure(folder):
        r = _load(folder, name)
        return 100 * r["qa"]["test"]["mean"], (f"{100 * r['qa']['test']['mean']:.1f}% test_people "
                                               f"({100 * r['memorization']['mean']:.0f}% of bios memorized)")
    return measure


def _test_mean_plain(name: str) -> Callable[[Path], tuple[float, str]]:
    def measure(folder):
        value = 100 * _load(folder, name)["qa"]["test"]["mean"]
        return value, f"{value:.1f}% test_people"
    return measure


def _at_least(good: float, some: float) -> Callable[[float], str]:
    return lambda x: "reproduced" if x >= good else "partly" if x >= some else "not reproduced"


def _at_most(good: float, some: float) -> Callable[[float], str]:
    return lambda x: "reproduced" if x <= good else "partly" if x <= some else "not reproduced"


def _celebrity_gain(folder):
    alone = 100 * _load(folder, "minority alone")["qa"]["test"]["mean"]
    helped = 100 * _load(folder, "minority + celebrities")["qa"]["test"]["mean"]
    return helped - alone, f"{alone:.1f}% -> {helped:.1f}% minority accuracy"


def _q_probe_gap(folder):
    def q(a):
        return 100 * float(np.nanmean([_load(folder, a)["q"]["whole"][k] for k in ATTRIBUTES]))
    return q("multi5+permute") - q("single"), f"Q-probe {q('single'):.1f}% (single) vs {q('multi5+permute'):.1f}% (multi5+permute)"


CLAIMS = [
    Claim("Part 3.1, R1", "Mixed training extracts knowledge of held-out people (bioS single)",
          f"{paper.PART31_MEAN['R1 mixed, bioS single']}%", "mixed_training", _test_mean("single"), _at_least(70, 20)),
    Claim("Part 3.1, R2", "Pretrain on bioS single, then QA finetune: held-out people mostly fail",
          f"{paper.PART31_MEAN['R2 pretrain + finetune, bioS single']}%", "augmentation", _test_mean("single"),
          _at_most(20, 35)),
    Claim("Part 3.1, R3", "Knowledge augmentation (multi5+permute) makes it extractable after finetuning",
          f"{paper.PART31_MEAN['R3 multi5+permute, pretrain + finetune']}%", "augmentation",
          _test_mean("multi5+permute"), _at_least(80, 25)),
    Claim("Part 3.1, R3 (LoRA)", "The same holds with LoRA finetuning", "similar to full finetune",
          "augmentation", _test_mean("multi5+permute LoRA"), _at_least(80, 25)),
    Claim("Part 3.1, R5", "Q-probing from the name: near chance for single, high for multi5+permute",
          "0.2% vs 73-99.7%", "probing", _q_probe_gap, _at_least(50, 10)),
    Claim("Part 3.1, R7", "A bidirectional (masked-LM) model extracts poorly even with multi5+permute",
          "<= ~40%", "bidirectional", _test_mean_plain("multi5+permute"), _at_most(40, 60)),
    Claim("Part 3.1, R6", "Celebrities with augmented bios lift a plain minority",
          f"{paper.CELEBRITY['single'][0]}% -> {paper.CELEBRITY['single'][1]}%", "celebrity", _celebrity_gain,
          _at_least(30, 10)),
]


def claims_table() -> list[dict]:
    """One row per claim: source, statement, paper, ours, profile, verdict."""
    rows = []
    for c in CLAIMS:
        profile = latest_profile(c.chapter)
        row = {"source": c.source, "claim": c.statement, "paper": c.paper_value, "chapter": c.chapter,
               "profile": profile, "ours": "", "verdict": "not run"}
        if profile is not None:
            try:
                value, text = c.measure(results_dir(c.chapter, profile))
                row.update(ours=text, verdict=c.verdict(value))
            except FileNotFoundError:
                pass
        rows.append(row)
    return rows
