"""Evaluation of a trained causal LM on token spans (papers.md, Part 3.1 "QA" and Part 3.3 losses).

Every document is fed after an EOS (as in the packed training stream), right-padded, one forward
pass per batch, teacher-forced. For a span [s, e) of document tokens it yields:
  loss      summed NLL in nats of the span tokens given everything before (Part 3.3, Theorem 3.2)
  exact     argmax right at every span token (and, with require_end, at the token after it):
            the same as exact match of greedy generation of the whole value (Part 3.1 metric)
  first     argmax right at the first span token (first-token accuracy)
Entry points: `span_scores` / `score_spans`, `accuracy` (QA exact match of any selection of QAs,
per attribute: kn.extraction scores train_people, the validation slice and test_people with it),
`memorization` (FINDINGS trap 1: values inside the person's own bio), `field_losses` (loss_name,
loss_value per bio for kn.capacity), `greedy_generate`, `majority_baseline`.
"""
from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np
import torch

from kn.data.records import ATTRIBUTES
from kn.errors import DataError, check_count
from kn.tokenize import Encoded, ragged_gather


def _device(model, device) -> torch.device:
    if device is not None:
        return torch.device(device)
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def doc_rows(enc: Encoded, idx: np.ndarray, eos_id: int, pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Documents idx after an EOS, right-padded: ids, mask and targets, each [b, T], T = max length + 1.

    targets[r, p] is the token after position p: document token p (row positions shift by one),
    and EOS after the last document token. So span [s, e) is predicted at positions s..e-1.
    """
    lengths = enc.lengths()[idx]
    width = int(lengths.max()) + 2
    full = np.full((len(idx), width), pad_id, dtype=np.int64)
    cols = np.arange(width)[None, :]
    full[:, 0] = eos_id
    full[(cols >= 1) & (cols <= lengths[:, None])] = ragged_gather(enc.ids, enc.offsets[:-1][idx], lengths)
    full[np.arange(len(idx)), lengths + 1] = eos_id
    mask = cols[:, :-1] <= lengths[:, None]
    return full[:, :-1], mask.astype(np.int64), full[:, 1:]


def _token_scores(model, ids, mask, targets, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per position: NLL of the target (nats) and whether the argmax is the target, [b, T]."""
    ids, mask, targets = (torch.as_tensor(a, device=device) for a in (ids, mask, targets))
    logits = model(input_ids=ids, attention_mask=mask).logits.float()  # [b, T, V]
    picked = logits.gather(-1, targets[..., None])[..., 0]
    nll = torch.logsumexp(logits, dim=-1) - picked
    return nll, logits.argmax(-1) == targets


def _span_stats(nll, correct, spans: torch.Tensor, require_end: bool) -> torch.Tensor:
    """[4, b, m]: loss, exact, first, n_tokens of spans [b, m, 2] (s < 0: absent)."""
    s, e = spans[..., 0], spans[..., 1]
    absent = s < 0
    pos = torch.arange(nll.shape[1], device=nll.device)
    inside = (pos >= s[..., None]) & (pos < e[..., None])  # [b, m, T]
    loss = torch.where(inside, nll[:, None, :], 0.0).sum(-1)
    exact = (correct[:, None, :] | ~inside).all(-1)
    if require_end:
        exact &= correct.gather(1, e.clamp(min=0))
    first = correct.gather(1, s.clamp(min=0))
    loss = torch.where(absent, torch.nan, loss)
    exact, first = exact & ~absent, first & ~absent
    return torch.stack([loss, exact.float(), first.float(), torch.where(absent, 0, e - s).float()])


def score_spans(model, enc: Encoded, keys: Sequence[str], eos_id: int, pad_id: int, batch_size: int = 64,
                device=None, require_end: bool = False, all_occurrences: bool = False) -> dict:
    """{key: span_scores(...)} for several span keys with one forward pass per batch."""
    check_count("batch_size", batch_size, 1)
    for k in keys:
        if k not in enc.spans:
            raise DataError(f"key: got {k!r}; allowed: {', '.join(enc.spans)}")
    if len(enc) == 0:
        raise DataError("enc: no documents to score")
    device = _device(model, device)
    m = {k: enc.spans[k].shape[1] if all_occurrences else 1 for k in keys}
    out = {k: np.zeros((4, len(enc), m[k]), dtype=np.float64) for k in keys}
    order = np.argsort(enc.lengths(), kind="stable")  # similar lengths together: less padding
    model.eval()
    with torch.no_grad():
        for start in range(0, len(enc), batch_size):
            idx = order[start:start + batch_size]
            nll, correct = _token_scores(model, *doc_rows(enc, idx, eos_id, pad_id), device)
            for k in keys:
                spans = torch.as_tensor(np.asarray(enc.spans[k][idx, :m[k]], dtype=np.int64), device=device)
                out[k][:, idx] = _span_stats(nll, correct, spans, require_end).cpu().numpy()
    return {k: _as_result(v, all_occurrences) for k, v in out.items()}


def _as_result(stats: np.ndarray, all_occurrences: bool) -> dict:
    stats = stats if all_occurrences else stats[..., 0]
    return {"loss": stats[0], "exact": stats[1] > 0.5, "first": stats[2] > 0.5,
            "n_tokens": stats[3].astype(np.int64)}


def span_scores(model, enc: Encoded, key: str, eos_id: int, pad_id: int, batch_size: int = 64, device=None,
                require_end: bool = False, all_occurrences: bool = False) -> dict:
    """Teacher-forced scores of span `key` in every document: loss, exact, first, n_tokens.

    Arrays [B] (first occurrence) or [B, m] with all_occurrences. Absent spans: NaN loss, False,
    0 tokens. With require_end, `exact` also needs the token after the span (EOS at the end).
    """
    return score_spans(model, enc, (key,), eos_id, pad_id, batch_size, device, require_end, all_occurrences)[key]


def _per_doc(name: str, values, n: int) -> np.ndarray:
    values = np.asarray(values)
    if values.shape != (n,):
        raise DataError(f"{name}: got shape {values.shape}; allowed: one value per document, shape ({n},)")
    return values


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if len(x) else float("nan")


def accuracy(scores: dict, attribute: np.ndarray, select: np.ndarray) -> dict:
    """Exact-match accuracy per attribute and their mean (as the paper's tables; NaN without documents),
    first-token accuracy, over the selected docs (`select`: one bool per document)."""
    select = _per_doc("select", select, len(scores["exact"])).astype(bool)
    per = {a: _mean(scores["exact"][select & (attribute == i)]) for i, a in enumerate(ATTRIBUTES)}
    first = {a: _mean(scores["first"][select & (attribute == i)]) for i, a in enumerate(ATTRIBUTES)}
    present = [v for v in per.values() if v == v]
    return {"mean": float(np.mean(present)) if present else float("nan"), "per_attribute": per,
            "first_token": _mean(scores["first"][select]), "first_token_per_attribute": first}


def memorization(model, bios: Encoded, eos_id: int, pad_id: int, batch_size: int = 64, device=None,
                 select=None) -> dict:
    """How well bios are memorized: per attribute, exact match of its value (first occurrence)
    inside the person's own bio, teacher-forced (FINDINGS trap 1). select: optional per-document
    bool (e.g. test_people's bios). Documents where the value is absent are not counted.
    """
    select = np.ones(len(bios), bool) if select is None else _per_doc("select", select, len(bios)).astype(bool)
    scores = score_spans(model, bios, ATTRIBUTES, eos_id, pad_id, batch_size, device)
    per = {a: _mean(s["exact"][select & (s["n_tokens"] > 0)]) for a, s in scores.items()}
    first = {a: _mean(s["first"][select & (s["n_tokens"] > 0)]) for a, s in scores.items()}
    return {"mean": float(np.mean(list(per.values()))), "per_attribute": per, "first_token_per_attribute": first,
            "n_docs": int(select.sum())}


def field_losses(model, bios: Encoded, eos_id: int, pad_id: int, batch_size: int = 64, device=None) -> dict:
    """Per-bio summed losses in nats (Part 3.3, Theorem 3.2): loss_name (first occurrence of the
    name), loss_<attribute> for each value, loss_value (their sum), and person; arrays [B]."""
    scores = score_spans(model, bios, ("name",) + ATTRIBUTES, eos_id, pad_id, batch_size, device)
    out = {f"loss_{k}": s["loss"] for k, s in scores.items()}
    out["loss_value"] = np.sum([out[f"loss_{a}"] for a in ATTRIBUTES], axis=0)
    out["person"] = np.asarray(bios.person)
    return out


def _greedy_batch(model, prompts: list[list[int]], eos_id: int, pad_id: int, max_new_tokens: int,
                  device) -> list[list[int]]:
    """Right-padded rows, one full forward per new token (no KV cache, natural positions)."""
    lengths = torch.tensor([len(p) for p in prompts], device=device)
    ids = torch.full((len(prompts), int(lengths.max()) + max_new_tokens), pad_id, dtype=torch.long, device=device)
    for r, p in enumerate(prompts):
        ids[r, :len(p)] = torch.tensor(p, dtype=torch.long)
    rows = torch.arange(len(prompts), device=device)
    start, done = lengths.clone(), torch.zeros(len(prompts), dtype=torch.bool, device=device)
    for _ in range(max_new_tokens):
        width = int(lengths.max())
        mask = (torch.arange(width, device=device)[None, :] < lengths[:, None]).long()
        logits = model(input_ids=ids[:, :width], attention_mask=mask).logits
        nxt = logits[rows, lengths - 1].argmax(-1)
        active = ~done
        ids[rows[active], lengths[active]] = nxt[active]
        lengths = lengths + active.long()
        done = done | (nxt == eos_id)
        if bool(done.all()):
            break
    ids, start, lengths = ids.cpu(), start.cpu(), lengths.cpu()
    return [ids[r, start[r]:lengths[r]].tolist() for r in range(len(prompts))]


def greedy_generate(model, prompts: list[list[int]], eos_id: int, pad_id: int, max_new_tokens: int,
                    batch_size: int = 64, device=None, prepend_eos: bool = True) -> list[list[int]]:
    """Greedy continuation of each prompt (token ids), fed after an EOS as in training.

    Returns the new tokens only; a row stops after emitting EOS (which it keeps). Plain and
    correct rather than fast: meant for showing outputs and cross-checking `exact`.
    """
    check_count("batch_size", batch_size, 1)
    check_count("max_new_tokens", max_new_tokens, 1)
    seqs = [([eos_id] if prepend_eos else []) + [int(t) for t in p] for p in prompts]
    if any(len(s) == 0 for s in seqs):
        raise DataError("prompts: an empty prompt with prepend_eos=False; give at least one token")
    device, out = _device(model, device), []
    model.eval()
    with torch.no_grad():
        for i in range(0, len(seqs), batch_size):
            out += _greedy_batch(model, seqs[i:i + batch_size], eos_id, pad_id, max_new_tokens, device)
    return out


def majority_baseline(values: Sequence) -> float:
    """Share of the most common value: the accuracy of always guessing it (e.g. over test_people
    for one attribute; New York, NY for company_city in the paper)."""
    values = list(values)
    if not values:
        raise DataError("values: empty; allowed: one value per person")
    return Counter(values).most_common(1)[0][1] / len(values)
