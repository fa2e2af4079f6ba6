"""Learning curves of Part 3.1 runs (papers.md, Part 3.1, Figure "mixed training": held-out accuracy
rises last, after train_people QA and bio memorization).

Every `every` optimizer steps kn.train's fit loop calls `curve_evaluator`'s function on the model:
  train_qa   QA exact match of a fixed sample of train_people (the QAs trained on in mixed runs)
  memorized  exact match of each value inside the person's own first biography, same people
  valid_qa   QA exact match of a fixed sample of the validation slice (never trained on)
test_people are never scored along the way: they are scored once, on the final model. The sample
(at most `people` of each group, drawn by seed) is fixed for the run, so points are comparable;
the full evaluation at the end (kn.extraction) stays as it was. The sample and the three
values are shared with kn.bidirectional's masked model, which scores them by filling masks.
Entry points: `curve_every`, `curve_sample`, `curve_values`, `curve_evaluator`, `curve_rows`,
`plot_curves`, `curve_note`.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from kn.data.dataset import load_encoded
from kn.data.records import ATTRIBUTES, read_jsonl
from kn.evaluate import accuracy, memorization, span_scores
from kn.tokenize import Encoded

FIELDS = ("train_qa", "memorized", "valid_qa")
LABELS = {"train_qa": "train_people QA", "memorized": "bios memorized", "valid_qa": "validation-slice QA"}


def curve_every(total_steps: int, points: int) -> int:
    """Steps between two points so that a run of total_steps has about `points` (0: no curve)."""
    return max(1, total_steps // points) if points else 0


def _sample(people: np.ndarray, n: int, seed: int) -> np.ndarray:
    people = np.unique(people)
    return np.sort(np.random.default_rng([seed, 7]).permutation(people)[:n])


class CurveSample(NamedTuple):
    """The fixed sample a run's curve scores: QAs of train_people and of the validation slice, and
    the first biography of each sampled train_people."""
    qa: Encoded                 # the sampled QAs
    is_valid: np.ndarray        # [Q] bool: of the validation slice
    attribute: np.ndarray       # [Q] index into ATTRIBUTES
    bios: Encoded               # first biography of each sampled train_people


def curve_sample(data: str | Path, people: int, seed: int = 0) -> CurveSample:
    """At most `people` train_people and `people` of the validation slice of the dataset folder
    `data`, drawn by seed; test_people are never in it."""
    data = Path(data)
    recs = list(read_jsonl(data / "qa.jsonl"))
    split = np.array([r["split"] for r in recs])
    qa = load_encoded(data, "qa")
    train_people = _sample(qa.person[split == "train"], people, seed)
    valid_people = _sample(qa.person[split == "valid"], people, seed)
    keep = np.flatnonzero((np.isin(qa.person, train_people) & (split == "train"))
                          | (np.isin(qa.person, valid_people) & (split == "valid")))
    attribute = np.array([ATTRIBUTES.index(recs[i]["attribute"]) for i in keep], dtype=np.int64)
    bios = load_encoded(data, "bios")
    _, first = np.unique(bios.person, return_index=True)                # each person's first biography
    return CurveSample(qa.take(keep), split[keep] == "valid", attribute,
                       bios.take(first[np.isin(bios.person[first], train_people)]))


def curve_values(train_qa, memorized, valid_qa, sample: CurveSample) -> torch.Tensor:
    """tensor [3] (FIELDS) from the three scorers (called only where their group is not empty; NaN
    where it is)."""
    nan = float("nan")
    values = [train_qa() if (~sample.is_valid).any() else nan, memorized() if len(sample.bios) else nan,
              valid_qa() if sample.is_valid.any() else nan]
    return torch.tensor(values, dtype=torch.float64)


def curve_evaluator(data: str | Path, people: int, eos_id: int, pad_id: int, seed: int = 0, batch_size: int = 64):
    """model -> tensor [3] (FIELDS, fractions; NaN where a group is empty) of an autoregressive model
    on curve_sample(data, people, seed)."""
    s = curve_sample(data, people, seed)

    def evaluate(model) -> torch.Tensor:
        scores = span_scores(model, s.qa, "answer", eos_id, pad_id, batch_size, require_end=True)
        return curve_values(lambda: accuracy(scores, s.attribute, ~s.is_valid)["mean"],
                            lambda: memorization(model, s.bios, eos_id, pad_id, batch_size)["mean"],
                            lambda: accuracy(scores, s.attribute, s.is_valid)["mean"], s)
    return evaluate


def curve_rows(evals: dict) -> list[dict]:
    """{step: tensor [3]} (kn.train.fit's evals) as [{"step", "train_qa", "memorized", "valid_qa"}],
    by step; NaN becomes None (JSON)."""
    rows = []
    for step in sorted(evals):
        values = [float(v) for v in evals[step]]
        rows.append({"step": int(step)} | {f: (None if v != v else v) for f, v in zip(FIELDS, values)})
    return rows


def curve_note(result: dict, stage: str = "mixed") -> str | None:
    """Why a result has no curve of `stage` to show (made before curves were kept), else None."""
    if (result.get("curves") or {}).get(stage):
        return None
    return f"no learning curve was kept for the {stage} stage of this run (its result predates curves)"


def plot_curves(ax, result: dict, stage: str = "mixed", title: str | None = None):
    """The three curves of a result's `stage` over optimizer steps, in %; a result without one gets
    the note of `curve_note` written on the axes instead."""
    note = curve_note(result, stage)
    if note is not None:
        ax.text(0.5, 0.5, note, ha="center", va="center", wrap=True, transform=ax.transAxes, fontsize=9)
        ax.set_axis_off()
        return ax
    rows = result["curves"][stage]
    steps = [r["step"] for r in rows]
    for f in FIELDS:
        ax.plot(steps, [np.nan if r[f] is None else 100 * r[f] for r in rows], marker=".", label=LABELS[f])
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("exact match (%)")
    ax.set_ylim(0, 100)
    ax.legend(frameon=False, fontsize=8)
    if title:
        ax.set_title(title)
    return ax
