"""Measures of Xu & Chen's claims, from the one-layer sweep's rows (kn.onelayer): the MLP's gap,
LoRA's low-rank gap and the rank-1 share of the finetuning update.
"""
from __future__ import annotations

import numpy as np

from kn.claims.part31 import ANY_VALUE, fit_guards
from kn.claims.rules import Check, Evidence, NoInterval
from kn.guards import GUARD_TRAIN_QA
from kn.intervals import Interval, bootstrap
from kn.sweep import read_rows


def _onelayer_rows(folder):
    return read_rows(folder / "sweep.csv")


def _row(rows, **match) -> dict:
    sel = [r for r in rows if all(r[k] == v for k, v in match.items())]
    if len(sel) != 1:
        raise FileNotFoundError(f"{len(sel)} sweep points match {match}")
    return sel[0]


def _point(rows, **match) -> Interval:
    """Held-out accuracy (%) of the one sweep point matching `match`, with its interval over test_people."""
    r = _row(rows, **match)
    if r.get("acc_test_low") in (None, ""):
        raise NoInterval("sweep.csv has no interval columns (made before intervals): re-run the chapter")
    return Interval(*(100 * float(r[k]) for k in ("acc_test", "acc_test_low", "acc_test_high")))


def _learned(rows, label: str, **match) -> tuple[Check, ...]:
    """The extraction guards of one sweep point."""
    r = _row(rows, **match)
    return fit_guards(label, float(r["acc_train"]), float(r["memorization"]))


def _gap(a: Interval, b: Interval) -> Interval:
    """a - b with the conservative interval of two independent intervals' ends."""
    return Interval(a.value - b.value, a.low - b.high, a.high - b.low)


def _largest(rows) -> dict:
    return {"multiplicity": max(r["multiplicity"] for r in rows), "train_fraction": max(r["train_fraction"] for r in rows)}


def mlp_gap(folder):
    rows = _onelayer_rows(folder)
    at = _largest(rows) | {"finetune": "full"}
    mlp, att = _point(rows, arch="attn_mlp", **at), _point(rows, arch="attn_only", **at)
    gap = _gap(mlp, att)
    return Evidence(gap, f"{mlp.value:.1f}% [{mlp.low:.1f}, {mlp.high:.1f}] (attention+MLP) vs {att.value:.1f}% "
                         f"[{att.low:.1f}, {att.high:.1f}] (attention only), held-out: gap {gap.value:+.1f} "
                         f"[{gap.low:+.1f}, {gap.high:+.1f}]", _learned(rows, "attention+MLP", arch="attn_mlp", **at),
                    ceiling=100.0, ceiling_text=ANY_VALUE)


def low_rank_gap(folder):
    """Every rank's held-out accuracy minus full finetuning's; the claim needs each of them, so the
    evidence is the smallest gap (its interval: the smallest ends)."""
    rows = _onelayer_rows(folder)
    at = _largest(rows) | {"arch": "attn_mlp"}
    lora = sorted({r["finetune"] for r in rows} - {"full"})
    if not lora:
        raise FileNotFoundError("no low-rank points")
    full = _point(rows, finetune="full", **at)
    gaps = {r: _gap(_point(rows, finetune=r, **at), full) for r in lora}
    worst = Interval(*(min(g[i] for g in gaps.values()) for i in range(3)))
    every = ", ".join(f"{r} {g.value:+.1f} [{g.low:+.1f}, {g.high:+.1f}]" for r, g in gaps.items())
    return Evidence(worst, f"full {full.value:.1f}%; each rank minus full: {every} (held-out, every rank)",
                    _learned(rows, "full finetune", finetune="full", **at))


def rank1(folder):
    rows = [r for r in _onelayer_rows(folder) if r["finetune"] == "full" and r["arch"] == "attn_mlp"]
    shares = np.array([[100 * float(r["rank1_qkv"])] for r in rows])
    est = bootstrap([shares], lambda t: float(t.mean()))
    learned = sum(100 * float(r["acc_train"]) >= GUARD_TRAIN_QA for r in rows)
    return Evidence(est, f"top direction holds {est.value:.0f}% [{est.low:.0f}, {est.high:.0f}] of the attention (qkv) "
                         f"update's squared norm ({len(rows)} full finetunes, resampled over them)",
                    (Check(f"full finetunes that learned train_people (>= {GUARD_TRAIN_QA:g}%)", learned, 3, ""),))
