"""Probes and their trajectories in the acquisition-dynamics experiment (book/papers.md, Chang et al.).

l(q; theta) = mean log-prob of the target tokens (those of " target") given "<eos>" + prompt, for every
probe of a run's paragraphs and controls at every measured step (kn.dynamics.continue_pretraining; l(t)
is measured on theta_t, before the update of step t). `Trajectories` holds logprob [S steps, P probes]
and the probe columns (paragraph, scenario, kind, probe); on disk it is a tidy CSV (one row per step and
probe, columns COLUMNS); `mean_curves` reduces the runs to one curve per group and kind for the figures.
Entry points: `Trajectories`, `probe_meta`, `probe_tensors`, `probe_logprobs`, `save_trajectories`,
`load_trajectories`, `mean_curves`, `common_steps`.
"""
from __future__ import annotations

import csv
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kn.data.injection import PROBE_KINDS
from kn.dynamics_config import CONTROL, SCENARIOS, assign_scenarios
from kn.errors import DataError

COLUMNS = ("step", "paragraph", "scenario", "kind", "probe", "logprob")


@dataclass
class Trajectories:
    """l for every probe at every measured step: logprob [S, P]; probe columns [P]."""
    steps: np.ndarray
    logprob: np.ndarray
    paragraph: np.ndarray
    scenario: np.ndarray
    kind: np.ndarray
    probe: np.ndarray      # index of the probe within its paragraph and kind

    def select(self, scenario: str, kind: str) -> np.ndarray:
        """logprob [S, p] of the probes of one scenario and kind."""
        return self.logprob[:, (self.scenario == scenario) & (self.kind == kind)]

    def table(self) -> dict[str, np.ndarray]:
        """The tidy table: one row per (step, probe), columns COLUMNS."""
        s, p = self.logprob.shape
        cols = {"step": np.repeat(self.steps, p)}
        cols |= {k: np.tile(getattr(self, k), s) for k in ("paragraph", "scenario", "kind", "probe")}
        return cols | {"logprob": self.logprob.reshape(-1)}


def probe_meta(records: list[dict], scenarios: tuple, seed: int) -> dict[str, np.ndarray]:
    """Probe columns (paragraph, scenario, kind, probe) plus prompt and target, in record order."""
    scenario_of = assign_scenarios(len(records), scenarios, seed)
    rows = []
    for rec, scenario in zip(records, scenario_of):
        seen = defaultdict(int)
        for p in rec["probes"]:
            rows.append((rec["paragraph"], scenario, p["kind"], seen[p["kind"]], p["prompt"], p["target"]))
            seen[p["kind"]] += 1
    names = ("paragraph", "scenario", "kind", "probe", "prompt", "target")
    return {n: np.array([r[i] for r in rows]) for i, n in enumerate(names)}


def probe_tensors(prompts, targets, tokenizer) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """"<eos>" + prompt + " " + target, right-padded: (ids [P, L], attention mask, target mask)."""
    full = tokenizer([f"{p} {t}" for p, t in zip(prompts, targets)], add_special_tokens=False)["input_ids"]
    head = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    width = 1 + max(len(f) for f in full)
    ids = np.full((len(full), width), tokenizer.pad_token_id, dtype=np.int64)
    attn, target = np.zeros_like(ids), np.zeros_like(ids, dtype=bool)
    for i, (f, h) in enumerate(zip(full, head)):
        if f[: len(h)] != h or len(f) == len(h):
            raise DataError(f"probe {i}: the prompt's tokens are not a prefix of prompt + ' ' + target")
        ids[i, 0], ids[i, 1: 1 + len(f)] = tokenizer.eos_token_id, f
        attn[i, : 1 + len(f)] = 1
        target[i, 1 + len(h): 1 + len(f)] = True
    return ids, attn, target


@torch.no_grad()
def probe_logprobs(model, ids, attn, target, chunk: int = 256) -> torch.Tensor:
    """Mean log-prob of each probe's target tokens, [P] on the model's device (no host sync)."""
    out = []
    for s in range(0, len(ids), chunk):
        x, m = ids[s: s + chunk], target[s: s + chunk, 1:]
        logits = model(input_ids=x, attention_mask=attn[s: s + chunk]).logits[:, :-1].float()   # [p, L-1, V]
        logp = logits.gather(-1, x[:, 1:, None]).squeeze(-1) - logits.logsumexp(-1)         # next-token log-probs
        out.append((logp * m).sum(1) / m.sum(1))
    return torch.cat(out)


def save_trajectories(traj: Trajectories, path: str | Path) -> Path:
    """The tidy table as CSV (written in one go, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cols, tmp = traj.table(), path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        w.writerows(zip(*(cols[c].tolist() if c != "logprob" else (f"{v:.6f}" for v in cols[c]) for c in COLUMNS)))
    os.replace(tmp, path)
    return path


def load_trajectories(path: str | Path) -> Trajectories:
    """Read a CSV written by `save_trajectories`."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    steps = np.unique([int(r["step"]) for r in rows])
    p = len(rows) // len(steps)
    first = rows[:p]
    return Trajectories(steps, np.array([float(r["logprob"]) for r in rows]).reshape(len(steps), p),
                        np.array([int(r["paragraph"]) for r in first]), np.array([r["scenario"] for r in first]),
                        np.array([r["kind"] for r in first]), np.array([int(r["probe"]) for r in first]))


def mean_curves(trajs: list[Trajectories]) -> dict[str, dict[str, tuple[list, list]]]:
    """group -> kind -> (steps, mean l over its probes in every run at each step), as plain lists: the
    reduced trajectories a chapter plots and keeps when the full tables are too large to commit. The
    runs must share their steps."""
    steps = common_steps(trajs)
    present = {(g, k) for tr in trajs for g, k in zip(tr.scenario.tolist(), tr.kind.tolist())}
    return {g: {k: (steps.tolist(), np.hstack([tr.select(g, k) for tr in trajs]).mean(axis=1).tolist())
                for k in PROBE_KINDS if (g, k) in present}
            for g in SCENARIOS + (CONTROL,) if any(g == x for x, _ in present)}


def common_steps(trajs: list[Trajectories]) -> np.ndarray:
    steps = trajs[0].steps
    if any(not np.array_equal(tr.steps, steps) for tr in trajs):
        raise DataError("trajectories: the runs were measured at different steps; pool runs of one config only")
    return steps
