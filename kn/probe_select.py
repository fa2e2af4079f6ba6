"""Probes that generalize to new people (Part 3.1 Results 4-5): a low-rank linear head on the frozen
model's cached hidden states, its rank and weight decay chosen on a validation slice of people.

At a few hundred people a full linear head (d x C weights, C up to one class per person) fits its
training people and reads nothing on new ones (kn.probing at rank 0 on 300 train_people: ~97% of
them, chance on test_people). Here each head is LayerNorm, then x @ U @ V + b with U [d, r] and
V [r, C]: rank r caps what it can memorize, weight decay shrinks it further. Pre-registered, before any run they govern:

  grid        ranks x WEIGHT_DECAYS (AdamW, decoupled decay on U and V; LR, BATCH_SIZE, `steps` a fit);
              ranks: RANKS, or a profile's own (kn.profiles "probing"): at cpu 2-128, written after its
              2,500-person fit on 2-32 chose rank 32, the grid's edge, for every P-probe (its files kept,
              "ranks-to-32 <augment>.json": R4 not reproduced, R5 inconclusive, ceiling 18.5 points)
  criterion   per (probe, kind): the mean over its heads of the accuracy on the validation slice,
              probes fit on the other train_people; ties go to the smaller rank, then the larger decay
  final fit   the chosen setting refit on train_people + the validation slice; test_people are scored
              once, by that fit, and never seen before (no grid point reads them)
  people      the validation slice is the dataset's (qa.jsonl split "valid"), else a seeded VALID_FRACTION
              of train_people; claims need >= kn.guards.GUARD_PROBE_FIT (200) people fitting and
              >= GUARD_PROBE_VALID (50) choosing
  ceiling     what this method reads on test_people where the model itself holds the value: the P-probe
              at the value's own position (the token before it, where the model that memorized its
              bios predicts it); kn.claims.part31 caps Results 4-5 with it
  rules       kn.claims: Result 5, the whole-value Q-probe on test_people, multi5+permute minus single,
              interval >= 30 points; Result 4, the first-token P-probe before a value is written
              (position j < k), multi5+permute minus single, interval >= 30 points; both with the
              bios memorized, the people above and the ceiling above the threshold, else inconclusive

The model is frozen and has no embedding update (kn.probing's rank-2/16 update is the paper's), so
hidden states are computed once and a grid point costs `steps` small matrix products.
Entry points: `probe` (P or Q on a model), `run_probes` (both, on a kn.extraction run), `selection_table`,
`select_probe`, `probe_people`, `hidden_features`, `fit_heads`, `method`; the constants below.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from kn.errors import DataError, check_count
from kn.probing import (KINDS, ProbeConfig, ProbeData, as_data, frozen, new_probe, reader, head_scores,
                        load_probe_data, p_inputs, p_record, q_inputs, q_record)
from kn.results import done, read_json, write_json

RANKS = (2, 4, 8, 16, 32)
WEIGHT_DECAYS = (1.0, 0.1, 0.01, 0.0)      # strongest first: ties go to it
LR = 3e-3
BATCH_SIZE = 128
VALID_FRACTION = 0.2


def method(ranks=RANKS) -> str:
    """The method's name in a result's config: what a result file is read back by."""
    return (f"low-rank head, rank in {list(ranks)}, weight decay in {list(WEIGHT_DECAYS)}, chosen on validation-slice "
            "accuracy, refit on train_people + validation slice, test_people scored once")


def probe_people(data: ProbeData, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(fit, valid) bool [n]: the people a grid point fits on and those that choose among them, both
    within train_people (the dataset's validation slice, else a seeded VALID_FRACTION of them)."""
    valid = data.is_valid if data.is_valid is not None and data.is_valid.any() else None
    if valid is None:
        train = np.flatnonzero(data.is_train)
        valid = np.zeros(len(data), dtype=bool)
        valid[np.random.default_rng([seed, 41]).permutation(train)[:max(1, round(VALID_FRACTION * len(train)))]] = True
    valid = valid & data.is_train
    fit = data.is_train & ~valid
    if not fit.any():
        raise DataError("is_train: the probe needs train_people outside the validation slice to fit on")
    return fit, valid


@torch.no_grad()
def hidden_features(model, rows, pos: np.ndarray, device, batch_size: int = 64) -> torch.Tensor:
    """The frozen model's last hidden layer at pos [n, P] (rows(idx) -> ids, mask): [n, P, d] on the CPU."""
    emb = model.get_input_embeddings()
    with frozen(model):
        feats = reader(model, new_probe(emb.num_embeddings, emb.embedding_dim, 0, [], 0).to(device), rows, pos,
                        np.arange(pos.shape[1]), device)
        return torch.cat([feats(np.arange(s, min(s + batch_size, len(pos))))
                          for s in range(0, len(pos), batch_size)]).cpu()


class LowRankHeads(torch.nn.Module):
    """H heads: LayerNorm, then x @ U_h @ V_h + b_h (U_h [d, r], V_h [r, C_h]). Heads with the same number
    of classes form one block of batched products; forward: x [b, H, d] -> [(head indices, logits
    [b, len(indices), C])] per block."""

    def __init__(self, width: int, rank: int, n_classes: list[int], seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.blocks = [np.flatnonzero(np.asarray(n_classes) == c) for c in sorted(set(n_classes))]
        self.params = torch.nn.ModuleList()
        for hs in self.blocks:
            h, c = len(hs), n_classes[hs[0]]
            self.params.append(torch.nn.ParameterDict({
                "norm_w": torch.ones(h, width), "norm_b": torch.zeros(h, width),
                "U": torch.randn(h, width, rank, generator=g) / math.sqrt(width),
                "V": torch.zeros(h, rank, c), "b": torch.zeros(h, c)}))          # V = 0: uniform logits at start

    def forward(self, x: torch.Tensor) -> list[tuple[np.ndarray, torch.Tensor]]:
        x = torch.nn.functional.layer_norm(x, x.shape[-1:])
        out = []
        for hs, p in zip(self.blocks, self.params):
            xb = x[:, torch.as_tensor(hs)] * p["norm_w"] + p["norm_b"]
            out.append((hs, torch.einsum("bhr,hrc->bhc", torch.einsum("bhd,hdr->bhr", xb, p["U"]), p["V"]) + p["b"]))
        return out


def _loss(blocks: list, y: torch.Tensor) -> torch.Tensor:
    """Sum over heads of the mean cross-entropy over rows with a label (y [b, H] >= 0)."""
    total = 0.0
    for hs, z in blocks:
        yb = y[:, torch.as_tensor(hs)]
        has = yb >= 0
        nll = -z.log_softmax(-1).gather(-1, yb.clamp(min=0)[..., None])[..., 0]
        total = total + (torch.where(has, nll, 0.0).sum(0) / has.sum(0).clamp(min=1)).sum()
    return total


def fit_heads(feats: torch.Tensor, cols: np.ndarray, labels: np.ndarray, n_classes: list[int], fit: np.ndarray,
              rank: int, weight_decay: float, steps: int, seed: int = 0) -> LowRankHeads:
    """Heads trained on the people `fit`: head h reads feats[:, cols[h]] ([n, P, d]) and predicts
    labels[:, h] (-1: none) among n_classes[h]; AdamW, LR, decay on U and V, seeded batches of
    BATCH_SIZE people (the same for every setting)."""
    heads = LowRankHeads(feats.shape[-1], rank, n_classes, seed)
    decayed = [p[k] for p in heads.params for k in ("U", "V")]
    other = [p[k] for p in heads.params for k in ("norm_w", "norm_b", "b")]
    opt = torch.optim.AdamW([{"params": decayed, "weight_decay": weight_decay},
                             {"params": other, "weight_decay": 0.0}], lr=LR)
    y, cols_t = torch.as_tensor(labels, dtype=torch.long), torch.as_tensor(cols)
    rng, people = np.random.default_rng([seed, 43]), np.flatnonzero(fit)
    for _ in range(steps):
        idx = torch.as_tensor(rng.choice(people, min(BATCH_SIZE, len(people)), replace=False))
        loss = _loss(heads(feats[idx][:, cols_t]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return heads


@torch.no_grad()
def predict(heads: LowRankHeads, feats: torch.Tensor, cols: np.ndarray, labels: np.ndarray, fit: np.ndarray,
            idx: np.ndarray) -> np.ndarray:
    """Each head's most likely class among those of the people `fit`, for the people idx: [len(idx), H];
    -2 for a head with no labelled fitting person."""
    out = np.full((len(idx), labels.shape[1]), -2)
    for hs, z in heads(feats[torch.as_tensor(idx)][:, torch.as_tensor(cols)]):
        for i, h in enumerate(hs):
            seen = np.unique(labels[fit & (labels[:, h] >= 0), h])
            if len(seen):
                out[:, h] = seen[z[:, i, torch.as_tensor(seen)].argmax(-1).numpy()]
    return out


def _valid_score(pred: np.ndarray, labels: np.ndarray) -> float:
    """Mean over heads of the accuracy on labelled rows; heads without any are left out (NaN: none)."""
    acc = [float((pred[labels[:, h] >= 0, h] == labels[labels[:, h] >= 0, h]).mean())
           for h in range(labels.shape[1]) if (labels[:, h] >= 0).any()]
    return float(np.mean(acc)) if acc else float("nan")


def select_probe(feats: torch.Tensor, cols: np.ndarray, labels: np.ndarray, n_classes: list[int], groups: dict,
                 fit: np.ndarray, valid: np.ndarray, steps: int, seed: int = 0,
                 progress: bool = False, ranks=RANKS) -> tuple[np.ndarray, dict]:
    """Choose (rank, weight decay) per group of heads (name -> head indices) on the validation slice,
    refit each chosen setting on fit + valid and predict every person with it.

    Returns (predictions [n, H], {group: {"rank", "weight_decay", "valid": its validation score,
    "grid": [[rank, weight decay, validation score], ...]}}). Only the validation people are read
    while choosing; the others (test) are predicted once, by the refit."""
    grid = [(r, wd) for r in ranks for wd in WEIGHT_DECAYS]
    vidx = np.flatnonzero(valid)
    scores = {g: [] for g in groups}
    for r, wd in tqdm(grid, desc="probe grid", disable=not progress):
        pred = predict(fit_heads(feats, cols, labels, n_classes, fit, r, wd, steps, seed), feats, cols, labels, fit, vidx)
        for g, hs in groups.items():
            scores[g].append(_valid_score(pred[:, hs], labels[vidx][:, hs]))
    best = {g: int(np.argmax(np.nan_to_num(s, nan=-1.0))) for g, s in scores.items()}   # the first best, grid order
    chosen = {g: grid[i] for g, i in best.items()}
    out, every = np.full(labels.shape, -2), fit | valid
    for setting in dict.fromkeys(chosen.values()):
        heads = fit_heads(feats, cols, labels, n_classes, every, *setting, steps, seed)
        hs = np.concatenate([groups[g] for g in groups if chosen[g] == setting])
        out[:, hs] = predict(heads, feats, cols, labels, every, np.arange(len(labels)))[:, hs]
    info = {g: {"rank": chosen[g][0], "weight_decay": chosen[g][1], "valid": scores[g][best[g]],
                "grid": [[r, wd, s] for (r, wd), s in zip(grid, scores[g])]} for g in groups}
    return out, info


def _probe(model, data: ProbeData, which: str, steps: int, seed: int, device, progress: bool, ranks=RANKS) -> dict:
    """P- or Q-probing with select_probe per kind; the record of kn.probing's p_probe / q_probe plus
    "selection": {kind: select_probe's info}, "n_fit", "n_valid" and "method"."""
    fit, valid = probe_people(data, seed)
    rows, pos = p_inputs(data) if which == "P" else q_inputs(data)
    feats = hidden_features(model, rows, pos, device)
    heads = [(kind, j, k) for kind in KINDS for j in range(pos.shape[1]) for k in range(6)]
    cols = np.array([j for _, j, _ in heads])
    labels = np.stack([np.where(pos[:, j] >= 0, data.labels[kind][:, k], -1) for kind, j, k in heads], 1)
    n_classes = [int(data.labels[kind][:, k].max()) + 1 for kind, _, k in heads]
    groups = {kind: np.array([i for i, h in enumerate(heads) if h[0] == kind]) for kind in KINDS}
    pred, info = select_probe(feats, cols, labels, n_classes, groups, fit, valid, steps, seed, progress, ranks)
    sc = {h: head_scores(pred[:, i], labels[:, i], data.is_train) for i, h in enumerate(heads)}
    record = (p_record if which == "P" else q_record)(data, ProbeConfig(rank=0, steps=steps, seed=seed), 0, steps, sc)
    config = {"steps": steps, "lr": LR, "batch_size": BATCH_SIZE, "ranks": tuple(ranks), "weight_decays": WEIGHT_DECAYS,
              "seed": seed}
    return {**record, "config": config, "selection": info, "n_fit": int(fit.sum()), "n_valid": int(valid.sum()),
            "method": method(ranks)}


def run_probes(run_dir: str | Path, out_file: str | Path, steps: int, seed: int = 0, progress: bool = False,
               ranks=RANKS) -> dict:
    """P- and Q-probes (select_probe over `ranks`) of the pretrained model run_dir/pretrain/model on the
    dataset run_dir/data (a kn.extraction run), on the GPU when there is one; writes {"p": ..., "q": ...}
    to out_file with write_json and returns the record. A finished out_file of the same config (run
    name, model's training time, method, steps, seed) is returned as it is; so is one of the same run,
    method, steps and seed when run_dir is gone (a page re-rendered from its committed files)."""
    check_count("steps", steps, 1)
    run_dir = Path(run_dir)
    same = {"run": run_dir.name, "method": method(ranks), "steps": steps, "seed": seed}
    if not run_dir.exists() and Path(out_file).is_file():
        record = read_json(out_file)
        if {k: record["provenance"]["config"].get(k) for k in same} == same:
            return record
    if not (run_dir / "pretrain" / "model").is_dir() or not (run_dir / "data").is_dir():
        raise DataError(f"run_dir: {str(run_dir)!r} needs pretrain/model and data (a kn.extraction run); "
                        "train it first")
    trained = run_dir / "pretrain" / "train.json"
    model_at = read_json(trained)["provenance"]["written_at"] if trained.is_file() else None   # retrained: probe again
    config = {**same, "model_written_at": model_at}
    if (record := done(out_file, config)) is not None:
        return record
    from transformers import AutoModelForCausalLM
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForCausalLM.from_pretrained(str(run_dir / "pretrain" / "model")).to(device)
    data, start = load_probe_data(run_dir / "data"), time.perf_counter()
    p, q = (_probe(model, data, which, steps, seed, device, progress, ranks) for which in ("P", "Q"))
    return read_json(write_json(out_file, config=config, seed=seed, wall_time=time.perf_counter() - start, p=p, q=q))


def probe(model, data, which: str, steps: int, seed: int = 0, device=None, progress: bool = False,
          ranks=RANKS) -> dict:
    """select_probe's P-probing (which="P") or Q-probing ("Q") of a model on data (ProbeData, a
    BiosDataset or a dataset folder)."""
    if which not in ("P", "Q"):
        raise DataError(f"which: got {which!r}; allowed: P, Q")
    check_count("steps", steps, 1)
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    return _probe(model, as_data(data), which, steps, seed, torch.device(device), progress, ranks)


def selection_table(results: dict) -> tuple[list[str], list[list]]:
    """Header and rows for kn.display.markdown_table: per run, probe and kind, the chosen rank and weight
    decay, the validation accuracy that chose them (the criterion: mean over the probe's heads, for P
    all 36 cells) and the test accuracy (Q: mean over attributes; P: at each value's own position, the
    diagonal, Results 4-5's ceiling); results: name -> {"p": ..., "q": ...}."""
    pct = lambda x: "–" if x is None or math.isnan(x) else f"{100 * x:.1f}%"  # noqa: E731
    rows = []
    for name, record in results.items():
        for key, probe_name in (("q", "Q, the name's last token"), ("p", "P, the value's own position")):
            r = record[key]
            for kind, s in r["selection"].items():
                test = np.diag(np.array(r[kind], float)) if key == "p" else np.array(list(r[kind].values()), float)
                rows.append([name, probe_name, kind, str(s["rank"]), f"{s['weight_decay']:g}", pct(s["valid"]),
                             pct(float(np.nanmean(test)))])
    return ["run", "probe", "target", "rank", "weight decay", "validation accuracy", "test accuracy"], rows
