"""Probes of what a frozen model stores where (papers.md, Part 3.1, "R4 P-probing", "R5 Q-probing").

A probe reads the model's last hidden layer at one token: `base_model(...).last_hidden_state`,
after the final LayerNorm (the same tensor as `hidden_states[-1]`, what the LM head reads). A
trainable LayerNorm and a linear layer predict an attribute of the person. The model stays frozen;
its input embeddings get a trainable low-rank update E + A @ B (A [V, r] starts at 0, B [r, d]
small random): rank 2 for P-probing, rank 16 for Q-probing, 0 for a purely linear probe.

  P-probing  each person's first biography, fed after an EOS; position j is the token just before
             the value of attribute j in that biography (with permute it can sit anywhere);
             test accuracy on a 6 x 6 grid [position attribute, target attribute].
  Q-probing  the full name alone: EOS + the name's tokens from the biography, read at the name's
             last token (as the paper does); test accuracy per attribute.
Target kinds: "first", the first token of the value (classes: the first tokens seen for that
attribute) and "whole", the whole value (classes: the distinct values as written, so company_city
is a city, not its company). Probes train on train_people and are scored on test_people. A probe
names only classes it trained on (its argmax runs over those), so each score comes with its
ceiling, the share of test people whose class some train person has (small runs: few values recur,
birth dates almost never), and the accuracy on those "reachable" test people. Simplification: the
paper trains one embedding update per probe; here one is shared by the six attribute heads of each
(read position, kind): 12 trainings for P-probing, 2 for Q-probing (rank 0: one training on cached
hidden states, seconds on a CPU).

Results (kind: "first" or "whole"; attr: an attribute; grids are [position j][target k]):
  q_probe  kind: {attr: test accuracy}; "train": {kind: {attr: acc}}; "chance" (majority guess),
           "ceiling", "reachable" (accuracy on reachable test people), "n_reachable": {kind: {attr: .}}.
  p_probe  kind: 6x6 test accuracy; "train", "reachable", "n_reachable": {kind: 6x6}; "chance" and
           "ceiling": {kind: {attr: .}}, the ceiling at the attribute's own position (the diagonal);
           "items_ahead": {"person", "cells": [[j, k], ..] with j < k, kind: per cell 1/0/None per test
           person}, the cells where a single bio has not yet written value k (Result 4's claim).
  both     "items": {"person": [test person ids], kind: {attr: {"correct": [..], "reachable": [..]}}},
           1/0 per test person (None: no label), for intervals over people; P-probing's at the diagonal.
Accuracies are NaN where no one is scored. The book's chapter probes with kn.probe_select (a low-rank
head on cached hidden states, chosen on a validation slice), which builds the same records.

Entry points: `ProbeConfig`, `probe_data` / `load_probe_data` (-> `ProbeData`), `p_probe`,
`q_probe`, `q_table`, `fit_linear_probe`; helpers `probe_targets`, `name_rows`, `head_scores`, and
`p_inputs` / `q_inputs` (what a probe reads) and `p_record` / `q_record` (its result from head scores).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from kn.data.dataset import load_encoded
from kn.data.records import ATTRIBUTES, read_jsonl
from kn.errors import DataError, check_count, check_number
from kn.evaluate import doc_rows
from kn.tokenize import Encoded, load_tokenizer, ragged_gather

KINDS = ("first", "whole")
DEFAULT_RANK = {"P-probe": 2, "Q-probe": 16}
LAYER = "last: base_model last_hidden_state = hidden_states[-1], after the final LayerNorm"


@dataclass(frozen=True)
class ProbeConfig:
    rank: int | None = None            # embedding update rank; None: 2 (P-probing), 16 (Q-probing)
    epochs: float = 20.0               # passes over train_people per probe training
    steps: int | None = None           # optimizer steps per training; overrides epochs
    lr: float = 1e-3                   # Adam
    batch_size: int = 64               # people per step
    kinds: tuple[str, ...] = KINDS     # targets: first token of the value, whole value
    seed: int = 0

    def __post_init__(self):
        kinds = (self.kinds,) if isinstance(self.kinds, str) else tuple(dict.fromkeys(self.kinds))
        if not kinds or any(k not in KINDS for k in kinds):
            raise DataError(f"kinds: got {self.kinds!r}; allowed: a non-empty subset of {', '.join(KINDS)}")
        object.__setattr__(self, "kinds", kinds)
        if self.rank is not None:
            check_count("rank", self.rank)
        if self.steps is not None:
            check_count("steps", self.steps, 1)
        check_count("batch_size", self.batch_size, 1)
        check_count("seed", self.seed)
        for name in ("epochs", "lr"):
            check_number(name, getattr(self, name), strict=True)


@dataclass
class ProbeData:
    """One row per person (ascending person id): their first biography and the probe targets."""
    bios: Encoded              # one document per person
    labels: dict               # kind -> int64 [n, 6]: class of each attribute (-1: absent)
    is_train: np.ndarray       # [n] bool: train_people (the rest are test_people)
    eos_id: int
    pad_id: int
    is_valid: np.ndarray | None = None   # [n] bool: the validation slice (a subset of is_train), if any

    def __len__(self) -> int:
        return len(self.bios)


# ----------------------------------------------------------------------------- data


def first_docs(enc: Encoded) -> np.ndarray:
    """Index of each person's first document, in ascending person id."""
    return np.unique(enc.person, return_index=True)[1]


def _contiguous(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Class ids 0..C-1 of the distinct valid values; -1 elsewhere."""
    out = np.full(len(values), -1, dtype=np.int64)
    out[valid] = np.unique(values[valid], return_inverse=True)[1]
    return out


def probe_targets(bios: Encoded, values: dict) -> dict:
    """kind -> int64 [n, 6] for documents `bios` and per-document attribute values (attribute -> [n]):
    "first" classes the value's first token in the document (-1 where absent), "whole" the value."""
    first, whole = [], []
    for a in ATTRIBUTES:
        if a not in bios.spans or a not in values or len(values[a]) != len(bios):
            raise DataError(f"values: need attribute {a!r} with one value per document ({len(bios)}) and its spans")
        start = bios.spans[a][:, 0, 0]
        ok = start >= 0
        token = np.where(ok, bios.ids[bios.offsets[:-1] + np.maximum(start, 0)], -1)
        first.append(_contiguous(token, ok))
        whole.append(_contiguous(np.asarray(values[a]), np.ones(len(bios), dtype=bool)))
    return {"first": np.stack(first, 1), "whole": np.stack(whole, 1)}


def _make_data(bios: Encoded, values: dict, is_train: np.ndarray, tokenizer, is_valid=None) -> ProbeData:
    is_train = np.asarray(is_train, dtype=bool)
    if is_train.all() or not is_train.any():
        raise DataError("is_train: probes need both train_people and test_people "
                        "(train_fraction strictly between 0 and 1)")
    return ProbeData(bios, probe_targets(bios, values), is_train, tokenizer.eos_token_id, tokenizer.pad_token_id,
                     None if is_valid is None else np.asarray(is_valid, dtype=bool))


def probe_data(ds) -> ProbeData:
    """ProbeData of a `kn.data.dataset.BiosDataset` (first biography of each person)."""
    docs = first_docs(ds.bios_tokens)
    person = ds.bios_tokens.person[docs]
    where = {int(p): i for i, p in enumerate(ds.people.ids.tolist())}
    index = np.array([where[int(p)] for p in person])
    values = {a: np.asarray(ds.people.values(a))[index] for a in ATTRIBUTES}
    is_valid = None if ds.is_valid is None else ds.is_valid[index]
    return _make_data(ds.bios_tokens.take(docs), values, ds.is_train[index], ds.tokenizer, is_valid)


def load_probe_data(folder: str | Path) -> ProbeData:
    """ProbeData of a dataset folder written by `kn data bios` (values from bios.jsonl, split from qa.jsonl)."""
    folder = Path(folder)
    bios = load_encoded(folder, "bios")
    records = list(read_jsonl(folder / "bios.jsonl"))
    if len(records) != len(bios):
        raise DataError(f"data: bios.jsonl and tokens.npz disagree ({len(records)} vs {len(bios)} biographies); "
                        "rebuild the dataset")
    docs = first_docs(bios)
    values = {a: np.array([records[i]["attributes"][a] for i in docs]) for a in ATTRIBUTES}
    split = {int(r["person"]): r["split"] for r in read_jsonl(folder / "qa.jsonl")}
    names = np.array([split[int(p)] for p in bios.person[docs]])
    return _make_data(bios.take(docs), values, names != "test", load_tokenizer(folder / "tokenizer"), names == "valid")


def as_data(data) -> ProbeData:
    if isinstance(data, ProbeData):
        return data
    if isinstance(data, (str, Path)):
        return load_probe_data(data)
    if hasattr(data, "bios_tokens") and hasattr(data, "people"):
        return probe_data(data)
    raise DataError(f"data: got {type(data).__name__}; allowed: ProbeData, a BiosDataset or a dataset folder")


def name_rows(bios: Encoded, eos_id: int, pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q-probe inputs: EOS + the tokens of each document's first name span, right-padded.
    Returns ids [n, T], mask [n, T] and the position of the name's last token [n]."""
    s, e = bios.spans["name"][:, 0, 0], bios.spans["name"][:, 0, 1]
    if (s < 0).any():
        raise DataError(f"bios: {int((s < 0).sum())} documents have no name span; Q-probing needs the name")
    lengths = e - s
    ids = np.full((len(bios), int(lengths.max()) + 1), pad_id, dtype=np.int64)
    cols = np.arange(ids.shape[1])[None, :]
    ids[:, 0] = eos_id
    ids[(cols >= 1) & (cols <= lengths[:, None])] = ragged_gather(bios.ids, bios.offsets[:-1] + s, lengths)
    return ids, (cols <= lengths[:, None]).astype(np.int64), lengths


# ----------------------------------------------------------------------------- the probe


class Probe(torch.nn.Module):
    """A rank-r update A @ B of the input embedding, and per head a LayerNorm and a linear layer."""

    def __init__(self, vocab: int, width: int, rank: int, n_classes: list[int]):
        super().__init__()
        self.A = torch.nn.Parameter(torch.zeros(vocab, rank))          # [V, r], starts at 0
        self.B = torch.nn.Parameter(torch.randn(rank, width) * 0.02)    # [r, d]
        self.norms = torch.nn.ModuleList(torch.nn.LayerNorm(width) for _ in n_classes)
        self.heads = torch.nn.ModuleList(torch.nn.Linear(width, c) for c in n_classes)

    def embed(self, model, ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings E[ids] + (A @ B)[ids], [b, T, d]."""
        x = model.get_input_embeddings()(ids)
        return x if self.A.shape[1] == 0 else x + (self.A[ids] @ self.B).to(x.dtype)

    def forward(self, feats: torch.Tensor) -> list[torch.Tensor]:
        """feats [b, H, d] -> one logits tensor [b, C_h] per head."""
        return [head(norm(feats[:, h])) for h, (norm, head) in enumerate(zip(self.norms, self.heads))]


def new_probe(vocab: int, width: int, rank: int, n_classes: list[int], seed: int) -> Probe:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Probe(vocab, width, rank, n_classes)


@contextmanager
def frozen(model):
    """The model in eval mode with no trainable parameters; restored afterwards."""
    flags, training = [p.requires_grad for p in model.parameters()], model.training
    model.requires_grad_(False)
    model.eval()
    try:
        yield model
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
        model.train(training)


def _hidden(model, probe: Probe, ids: np.ndarray, mask: np.ndarray, device) -> torch.Tensor:
    """Last hidden layer [b, T, d] (float32) with the probe's embedding update."""
    ids, mask = torch.as_tensor(ids, device=device), torch.as_tensor(mask, device=device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        h = model.base_model(inputs_embeds=probe.embed(model, ids), attention_mask=mask).last_hidden_state
    return h.float()


def reader(model, probe: Probe, rows, pos: np.ndarray, col: np.ndarray, device):
    """feats(idx) -> [b, H, d]: hidden states of people idx at pos [n, P], head h reading column col[h]."""
    col_t = torch.as_tensor(col, device=device)

    def feats(idx):
        h = _hidden(model, probe, *rows(idx), device)
        p = torch.as_tensor(np.maximum(pos[idx], 0), device=device)
        return h[torch.arange(len(idx), device=device)[:, None], p][:, col_t]
    return feats


@torch.no_grad()
def _cached(feats, n: int, batch_size: int):
    """The same reader over hidden states computed once (no embedding update to train)."""
    cache = torch.cat([feats(np.arange(s, min(s + batch_size, n))) for s in range(0, n, batch_size)])
    return lambda idx: cache[torch.as_tensor(idx, device=cache.device)]


# ----------------------------------------------------------------------------- training


def _n_steps(cfg: ProbeConfig, n_train: int) -> int:
    return cfg.steps or max(1, math.ceil(cfg.epochs * n_train / min(cfg.batch_size, n_train)))


def _batches(train_idx: np.ndarray, batch_size: int, steps: int, seed: int):
    """`steps` batches of train people from seeded reshuffles."""
    rng, bs = np.random.default_rng([seed, 17]), min(batch_size, len(train_idx))
    order, k = train_idx[:0], 0
    for _ in range(steps):
        if k + bs > len(order):
            order, k = rng.permutation(train_idx), 0
        yield order[k:k + bs]
        k += bs


def _loss(logits: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    """Sum over heads of the mean cross-entropy over rows with a label (y >= 0)."""
    total = 0.0
    for h, z in enumerate(logits):
        n = (y[:, h] >= 0).sum().clamp(min=1)
        total = total + torch.nn.functional.cross_entropy(z, y[:, h], ignore_index=-1, reduction="sum") / n
    return total


@torch.no_grad()
def _predict(probe: Probe, feats, n: int, batch_size: int, seen: list[torch.Tensor]) -> np.ndarray:
    """Each head's most likely class among those it trained on (seen[h]: bool [C_h]) for every person,
    [n, H]; -2 for a head that trained on none."""
    def batch(idx):
        return torch.stack([z.masked_fill(~ok, -torch.inf).argmax(-1).where(ok.any(), -2)
                            for z, ok in zip(probe(feats(idx)), seen)], 1)
    return torch.cat([batch(np.arange(s, min(s + batch_size, n))) for s in range(0, n, batch_size)]).cpu().numpy()


def head_scores(pred: np.ndarray, labels: np.ndarray, is_train: np.ndarray) -> dict:
    """One head's scores from predictions and labels [n] (-1: no label), people split by is_train.

    "train", "test": accuracy over labelled people; "ceiling": share of labelled test people whose
    class some labelled train person has; "reachable": test accuracy over those people,
    "n_reachable" their count; "items": {"correct", "reachable"}, 1/0 per test person (None without
    a label). Shares are NaN with no one to score.
    """
    labels, is_train = np.asarray(labels), np.asarray(is_train, dtype=bool)
    has = labels >= 0
    right = has & (np.asarray(pred) == labels)
    seen = has & np.isin(labels, labels[is_train & has])
    test = has & ~is_train
    share = lambda x, m: float(x[m].mean()) if m.any() else float("nan")  # noqa: E731
    flags = lambda x: [int(v) if h else None for v, h in zip(x[~is_train], has[~is_train])]  # noqa: E731
    return {"train": share(right, has & is_train), "test": share(right, test), "ceiling": share(seen, test),
            "reachable": share(right, test & seen), "n_reachable": int((test & seen).sum()),
            "items": {"correct": flags(right), "reachable": flags(seen)}}


def _fit(probe: Probe, feats, labels: np.ndarray, is_train: np.ndarray, cfg: ProbeConfig, steps: int,
         seed: int, bar) -> np.ndarray:
    """Adam on train_people; returns every person's predicted class per head, [n, H], among the classes
    of train_people (so test accuracy never exceeds the ceiling)."""
    y = torch.as_tensor(labels, dtype=torch.long, device=probe.B.device)
    opt = torch.optim.Adam(probe.parameters(), lr=cfg.lr)
    probe.train()
    for idx in _batches(np.nonzero(is_train)[0], cfg.batch_size, steps, seed):
        loss = _loss(probe(feats(idx)), y[torch.as_tensor(idx, device=y.device)])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.update(1)
    probe.eval()
    seen = [torch.as_tensor(np.isin(np.arange(head.out_features), labels[is_train, h]), device=y.device)
            for h, head in enumerate(probe.heads)]
    return _predict(probe, feats, len(labels), cfg.batch_size, seen)


def _groups(heads: list[tuple], rank: int) -> list[list[tuple]]:
    """Heads (kind, position j, attribute k) that share one training: one per (j, kind), all with rank 0."""
    if rank == 0:
        return [heads]
    keys = list(dict.fromkeys((kind, j) for kind, j, _ in heads))
    return [[h for h in heads if h[:2] == key] for key in keys]


def _train_heads(model, data: ProbeData, rows, pos: np.ndarray, heads: list[tuple], cfg: ProbeConfig,
                 rank: int, device, progress: bool, desc: str) -> tuple[dict, int]:
    """Train every head (kind, j, k), reading pos[:, j] and predicting data.labels[kind][:, k].
    Returns ({head: head_scores}, steps per training)."""
    groups, steps = _groups(heads, rank), _n_steps(cfg, int(data.is_train.sum()))
    emb = model.get_input_embeddings()
    out = {}
    with frozen(model), tqdm(total=steps * len(groups), desc=desc, unit="step", disable=not progress) as bar:
        for g, group in enumerate(groups):
            cols = list(dict.fromkeys(j for _, j, _ in group))
            labels = np.stack([np.where(pos[:, j] >= 0, data.labels[kind][:, k], -1) for kind, j, k in group], 1)
            n_classes = [int(data.labels[kind][:, k].max()) + 1 for kind, _, k in group]
            probe = new_probe(emb.num_embeddings, emb.embedding_dim, rank, n_classes, cfg.seed * 1009 + g).to(device)
            feats = reader(model, probe, rows, pos[:, cols], np.array([cols.index(j) for _, j, _ in group]), device)
            if rank == 0:
                feats = _cached(feats, len(data), cfg.batch_size)
            pred = _fit(probe, feats, labels, data.is_train, cfg, steps, cfg.seed * 1009 + g, bar)
            out.update({h: head_scores(pred[:, i], labels[:, i], data.is_train) for i, h in enumerate(group)})
    return out, steps


# ----------------------------------------------------------------------------- entry points


def _setup(model, data, cfg, overrides, device, which: str):
    data = as_data(data)
    unknown = sorted(set(overrides) - {f.name for f in fields(ProbeConfig)})
    if unknown:
        raise DataError(f"overrides: unknown {unknown}; allowed: {', '.join(f.name for f in fields(ProbeConfig))}")
    cfg = replace(cfg or ProbeConfig(), **overrides)
    rank = DEFAULT_RANK[which] if cfg.rank is None else cfg.rank
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    return data, cfg, rank, torch.device(device)


def majority_share(labels: np.ndarray, is_train: np.ndarray) -> float:
    """Test accuracy of always guessing the most common train class (labels -1: skipped)."""
    train, test = labels[is_train & (labels >= 0)], labels[~is_train & (labels >= 0)]
    if not len(train) or not len(test):
        return float("nan")
    return float((test == np.bincount(train).argmax()).mean())


def _summary(data: ProbeData, cfg: ProbeConfig, rank: int, steps: int, own: dict) -> dict:
    """Fields common to both probes; own: {(kind, k): head_scores} of each target at its own position."""
    per = lambda key: {kind: {a: own[(kind, k)][key] for k, a in enumerate(ATTRIBUTES)}  # noqa: E731
                       for kind in cfg.kinds}
    items = {kind: {a: own[(kind, k)]["items"] for k, a in enumerate(ATTRIBUTES)} for kind in cfg.kinds}
    return {"targets": list(ATTRIBUTES), "layer": LAYER, "rank": rank, "steps": steps,
            "n_train": int(data.is_train.sum()), "n_test": int((~data.is_train).sum()),
            "chance": {kind: {a: majority_share(data.labels[kind][:, k], data.is_train)
                              for k, a in enumerate(ATTRIBUTES)} for kind in cfg.kinds},
            "ceiling": per("ceiling"), "config": asdict(cfg),
            "items": {"person": data.bios.person[~data.is_train].tolist(), **items}}


def p_inputs(data: ProbeData):
    """P-probing's reads: rows(idx) -> (ids, mask) of the biographies and the read positions [n, 6]
    (the token just before each value)."""
    # value j starts at document token s: after the leading EOS, row position s holds token s - 1
    pos = np.stack([data.bios.spans[a][:, 0, 0] for a in ATTRIBUTES], 1)       # [n, 6]
    rows = lambda idx: doc_rows(data.bios, idx, data.eos_id, data.pad_id)[:2]  # noqa: E731
    return rows, pos


def p_record(data: ProbeData, cfg: ProbeConfig, rank: int, steps: int, sc: dict) -> dict:
    """P-probing's result from the scores of every head (kind, j, k) (head_scores, fit on data.is_train)."""
    grid = lambda kind, key: [[sc[(kind, j, k)][key] for k in range(6)] for j in range(6)]  # noqa: E731
    ahead = [[j, k] for j in range(6) for k in range(6) if j < k]   # single: value k not yet written at j
    return {**{kind: grid(kind, "test") for kind in cfg.kinds},
            "items_ahead": {"person": data.bios.person[~data.is_train].tolist(), "cells": ahead,
                            **{kind: [sc[(kind, j, k)]["items"]["correct"] for j, k in ahead] for kind in cfg.kinds}},
            **{key: {kind: grid(kind, key) for kind in cfg.kinds} for key in ("train", "reachable", "n_reachable")},
            "positions": list(ATTRIBUTES), "position": "the token just before the value of the position attribute",
            **_summary(data, cfg, rank, steps, {(kind, k): sc[(kind, k, k)] for kind in cfg.kinds for k in range(6)})}


def p_probe(model, data, cfg: ProbeConfig | None = None, progress: bool = True, device=None, **overrides) -> dict:
    """P-probing (Result 4): test accuracy [position attribute j][target attribute k] per kind.

    data: ProbeData, a BiosDataset or a dataset folder; overrides: ProbeConfig fields. Returns
    {"first": 6x6, "whole": 6x6, "train", "reachable", "n_reachable": {kind: 6x6}, "chance",
    "ceiling": {kind: {attr: .}}, "items", "positions", "targets", "n_train", "n_test", "rank",
    "steps", ...} (module docstring).
    """
    data, cfg, rank, device = _setup(model, data, cfg, overrides, device, "P-probe")
    rows, pos = p_inputs(data)
    heads = [(kind, j, k) for kind in cfg.kinds for j in range(6) for k in range(6)]
    sc, steps = _train_heads(model, data, rows, pos, heads, cfg, rank, device, progress, "P-probe")
    return p_record(data, cfg, rank, steps, sc)


def q_inputs(data: ProbeData):
    """Q-probing's reads: rows(idx) -> (ids, mask) of EOS + name, and the name's last token [n, 1]."""
    ids, mask, last = name_rows(data.bios, data.eos_id, data.pad_id)

    def rows(idx):
        width = int(last[idx].max()) + 1
        return ids[idx, :width], mask[idx, :width]
    return rows, last[:, None]


def q_record(data: ProbeData, cfg: ProbeConfig, rank: int, steps: int, sc: dict) -> dict:
    """Q-probing's result from the scores of every head (kind, 0, k) (head_scores, fit on data.is_train)."""
    per = lambda kind, key: {a: sc[(kind, 0, k)][key] for k, a in enumerate(ATTRIBUTES)}  # noqa: E731
    return {**{kind: per(kind, "test") for kind in cfg.kinds},
            **{key: {kind: per(kind, key) for kind in cfg.kinds} for key in ("train", "reachable", "n_reachable")},
            "position": "the name's last token (input: EOS + name)",
            **_summary(data, cfg, rank, steps, {(kind, k): sc[(kind, 0, k)] for kind in cfg.kinds for k in range(6)})}


def q_probe(model, data, cfg: ProbeConfig | None = None, progress: bool = True, device=None, **overrides) -> dict:
    """Q-probing (Result 5): from the name alone, test accuracy per target attribute and kind.

    Returns {"first": {attr: acc}, "whole": {...}, "train", "chance", "ceiling", "reachable",
    "n_reachable": {kind: {attr: .}}, "items", ...} (module docstring).
    """
    data, cfg, rank, device = _setup(model, data, cfg, overrides, device, "Q-probe")
    rows, pos = q_inputs(data)
    heads = [(kind, 0, k) for kind in cfg.kinds for k in range(6)]
    sc, steps = _train_heads(model, data, rows, pos, heads, cfg, rank, device, progress, "Q-probe")
    return q_record(data, cfg, rank, steps, sc)


def fit_linear_probe(features, labels, is_train, steps: int = 200, lr: float = 1e-2, batch_size: int = 64,
                     seed: int = 0) -> float:
    """Test accuracy of LayerNorm + linear trained on features [n, d] -> labels [n] (ints >= 0;
    -1 skipped) of the rows where is_train, scored on the others. No embedding update."""
    x = torch.as_tensor(np.asarray(features), dtype=torch.float32)
    y = np.asarray(labels, dtype=np.int64)
    is_train = np.asarray(is_train, dtype=bool)
    if x.ndim != 2 or y.shape != (len(x),) or is_train.shape != (len(x),):
        raise DataError(f"features: need [n, d] with labels and is_train of shape ({len(x)},); "
                        f"got {tuple(x.shape)}, {y.shape}, {is_train.shape}")
    if is_train.all() or not is_train.any():
        raise DataError("is_train: need both train rows (True) and test rows (False)")
    cfg = ProbeConfig(steps=steps, lr=lr, batch_size=batch_size, seed=seed)
    probe = new_probe(0, x.shape[1], 0, [int(y.max()) + 1], seed)
    feats = lambda idx: x[torch.as_tensor(idx)][:, None, :]  # noqa: E731
    with tqdm(disable=True) as bar:
        return head_scores(_fit(probe, feats, y[:, None], is_train, cfg, steps, seed, bar)[:, 0], y, is_train)["test"]


def q_table(results: dict, kind: str = "whole") -> tuple[list[str], list[list]]:
    """Header and rows for kn.display.markdown_table: Q-probe test accuracy, ceiling, accuracy on
    reachable test people (their count) and chance, per run and attribute; results: name -> {"q": ...}."""
    pct = lambda x: "–" if x is None or math.isnan(x) else f"{100 * x:.0f}%"  # noqa: E731
    rows = []
    for name, record in results.items():
        q = record["q"]
        rows += [[name, a, pct(q[kind][a]), pct(q["ceiling"][kind][a]),
                  f"{pct(q['reachable'][kind][a])} ({q['n_reachable'][kind][a]})", pct(q["chance"][kind][a])]
                 for a in q["targets"]]
    return ["run", "attribute", "accuracy", "ceiling", "reachable accuracy (n)", "chance"], rows
