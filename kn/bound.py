"""The bit-complexity lower bound of Part 3.3 (papers.md, Theorem 3.2) and what it is measured on.

- Bounds, in bits, from natural-log losses summed over the tokens of a field:
  `biod_bound(sizes, losses)`, `bios_bound(n, loss_name, loss_value)`; `max_bits` is the bioD
  bound at zero loss. Each term of a bound is clipped at 0 (our choice; papers.md states the plain
  sum): a term lower-bounds the information about one independent part of the data (the names,
  the values, the diversity sets), which is never negative, so max(0, term) is still a lower
  bound and the summed form is never negative, even for losses above chance.
- Losses: `biod_losses(model, biod)` teacher-forces every biography after <eos>, one forward per
  batch; `bios_losses` wraps kn.evaluate.field_losses. `stores_values` says whether a bound's
  bits are mostly value bits.
- `run_bound(run, bits)`: the bound of a trained run folder, fake-quantized to `bits` if given;
  capacity ratio = bits / parameters, for all and for non-embedding parameters (kn.models.n_params).
- Quantization (Result 8): `quantize_tensor`, `dequantize`, `quantize_model` (round to nearest,
  symmetric, per output channel).
The sweep, the law and the chapter's study that use them: kn.capacity.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import torch

from kn.batches import load_biod
from kn.data.biod import ATTR0, EOS, BioD, BioDConfig, bound_inputs, field_masks, render
from kn.data.dataset import load_encoded, read_meta
from kn.errors import DataError, check_number
from kn.evaluate import field_losses
from kn.models import n_params
from kn.results import read_json
from kn.tokenize import load_tokenizer

LN2 = math.log(2)
N0_BIOS = 400 * 400 * 1000                                  # bioS names: first x middle x last
S0_BIOS = 2 * (12 * 28 * 200) * 200 * 300 * 100 * 263       # pronoun, date, city, univ, major, employer
QUANT_BITS = (8, 4)                                          # Result 8

# ----------------------------------------------------------------------------- bounds (Theorem 3.2)


def _log2_pow_minus(t: int, l: int, d: int) -> float:
    """log2(T^L - D) without forming T^L; -inf when D >= T^L."""
    a = l * math.log2(t)
    x = math.log2(d) - a                                     # log2(D / T^L)
    return -math.inf if x >= 0 else a + math.log2(-math.expm1(x * LN2))


def _clip(bits: float) -> float:
    return max(0.0, bits)


def biod_bound(sizes: dict, losses: dict) -> dict:
    """Theorem 3.2 for bioD, each term clipped at 0:

        N log2((N0 - N) / e^loss_name) + N K log2(D^C / e^loss_value)
        + K D log2((T^L - D) / (D e^loss_value1))

    sizes: N0, N, K, C, D, L, T (kn.data.biod.bound_inputs); losses: loss_name (per person),
    loss_value and loss_value1 (per (person, attribute)). Returns bits and its three terms.
    """
    n0, n, k, c, d, l, t = (sizes[key] for key in ("N0", "N", "K", "C", "D", "L", "T"))
    keys = ("loss_name", "loss_value", "loss_value1")
    name, value, value1 = (check_number(key, losses[key], unit="nats") for key in keys)
    terms = {"bits_name": n * (math.log2(n0 - n) - name / LN2) if n0 > n else -math.inf,
             "bits_value": n * k * (c * math.log2(d) - value / LN2),
             "bits_diversity": k * d * (_log2_pow_minus(t, l, d) - math.log2(d) - value1 / LN2)}
    terms = {key: _clip(v) for key, v in terms.items()}
    return {"bits": sum(terms.values()), **terms}


def max_bits(sizes: dict) -> float:
    """The bioD bound of a perfect model: N log2((N0 - N) / N) + N K C log2 D + K D log2((T^L - D) / D).
    Values are then certain (zero loss), but a name is not: knowing which N names exist, the best
    name loss is ln N (uniform over them), not 0, which would overstate the maximum by N log2 N."""
    return biod_bound(sizes, {"loss_name": math.log(sizes["N"]), "loss_value": 0.0, "loss_value1": 0.0})["bits"]


def bios_bound(n: int, loss_name: float, loss_value: float, loss_pronoun: float | None = None,
               n0: int = N0_BIOS, s0: int = S0_BIOS) -> dict:
    """Theorem 3.2's bioS(N) form, N log2(N0 / e^loss_name) + N log2(S0 / e^loss_value), each term
    clipped at 0, with per-person losses.

    loss_value sums the six attribute values (company_city too: it follows from the employer, so
    its loss only lowers the bound). S0 counts the pronoun (factor 2); without `loss_pronoun` our
    losses do not cover it, so the factor 2 is dropped rather than credited for free.
    """
    value = check_number("loss_value", loss_value, unit="nats")
    if loss_pronoun is None:
        s0 = s0 / 2
    else:
        value += check_number("loss_pronoun", loss_pronoun, unit="nats")
    terms = {"bits_name": _clip(n * (math.log2(n0) - check_number("loss_name", loss_name, unit="nats") / LN2)),
             "bits_value": _clip(n * (math.log2(s0) - value / LN2)), "bits_diversity": 0.0}
    return {"bits": sum(terms.values()), **terms}


def bios_max_bits(n: int, pronoun: bool = False) -> float:
    """The bioS bound of a perfect model: values at zero loss, names at ln n (as in `max_bits`)."""
    return bios_bound(n, math.log(n), 0.0, 0.0 if pronoun else None)["bits"]


# ----------------------------------------------------------------------------- losses from a model


def _device(model, device) -> torch.device:
    return torch.device(device) if device is not None else next(model.parameters()).device


def masked_nll_sums(model, x: np.ndarray, targets: np.ndarray, masks: list[np.ndarray], batch_size: int = 64,
                    device=None) -> np.ndarray:
    """Summed NLL (nats) of targets [B, T] under each boolean mask [B, T], one forward per batch; [len(masks)]."""
    device, out = _device(model, device), np.zeros(len(masks))
    model.eval()
    with torch.no_grad():
        for s in range(0, len(x), batch_size):
            ids = torch.as_tensor(x[s:s + batch_size], dtype=torch.long, device=device)
            tgt = torch.as_tensor(targets[s:s + batch_size], dtype=torch.long, device=device)
            logits = model(input_ids=ids).logits.float()                     # [b, T, V]
            nll = torch.logsumexp(logits, -1) - logits.gather(-1, tgt[..., None])[..., 0]
            for i, m in enumerate(masks):
                out[i] += float((nll * torch.as_tensor(m[s:s + batch_size], device=device)).sum())
    return out


def biod_losses(model, biod: BioD, epoch: int = 0, batch_size: int = 64, device=None) -> dict:
    """Mean summed losses (nats, Theorem 3.2) on the biographies of `epoch`, each fed after <eos>
    as in training: loss_name over the first name occurrence, per person; loss_value (all chunks)
    and loss_value1 (first chunk), per (person, attribute); loss_value_by_attribute, per person,
    for each attribute k. Teacher forcing conditions each value on the name and the attribute
    written before it (and on the sentences before)."""
    docs, cfg = render(biod, epoch), biod.cfg
    width = int(docs.lengths()[0])                           # every biography has doc_length tokens
    targets = docs.ids.reshape(-1, width)
    x = np.concatenate([np.full((len(targets), 1), EOS, dtype=targets.dtype), targets[:, :-1]], axis=1)
    masks = {k: v.reshape(-1, width) for k, v in field_masks(docs).items()}
    attribute = attribute_of_tokens(cfg, targets)
    by_attribute = [masks["value"] & (attribute == k) for k in range(cfg.k)]
    sums = masked_nll_sums(model, x, targets, [masks[k] for k in ("name1", "value", "value1")] + by_attribute,
                           batch_size, device)
    return {"loss_name": float(sums[0] / cfg.n), "loss_value": float(sums[1] / (cfg.n * cfg.k)),
            "loss_value1": float(sums[2] / (cfg.n * cfg.k)),
            "loss_value_by_attribute": [float(v / cfg.n) for v in sums[3:]]}


def attribute_of_tokens(cfg: BioDConfig, docs: np.ndarray) -> np.ndarray:
    """The attribute index of every token of biographies [B, doc_length] (from the attribute word
    of its sentence; -1 for <domain> and <eos>)."""
    start, s = int(cfg.domain_token), cfg.sentence_length
    body = docs[:, start:start + cfg.k * s].reshape(len(docs), cfg.k, s)
    attr = np.repeat(body[:, :, 5] - ATTR0, s, axis=1)                    # word 5 of a sentence: the attribute
    out = np.full(docs.shape, -1, dtype=np.int64)
    out[:, start:start + cfg.k * s] = attr
    return out


def chance_value(sizes: dict) -> float:
    """Loss (nats) of one value, per (person, attribute), for a model that knows the diversity sets
    but nothing about the person: C ln D. A stored value sits below it."""
    return sizes["C"] * math.log(sizes["D"])


def bios_losses(model, data: str | Path, batch_size: int = 64, device=None) -> dict:
    """Per-person loss_name and loss_value (nats) on a bioS folder's biographies (field_losses),
    averaged over each person's biographies, then over people."""
    tok = load_tokenizer(Path(data) / "tokenizer")
    out = field_losses(model, load_encoded(data, "bios"), tok.eos_token_id, tok.pad_token_id, batch_size, device)
    _, person = np.unique(out["person"], return_inverse=True)
    count = np.bincount(person)
    return {k: float(np.mean(np.bincount(person, out[k]) / count)) for k in ("loss_name", "loss_value")}



# ----------------------------------------------------------------------------- data folders and runs


def _load_model(path: Path, device):
    from transformers import AutoModelForCausalLM
    if not (path / "config.json").is_file():
        raise DataError(f"run: no trained model (model/config.json) in {str(path.parent)!r}")
    model = AutoModelForCausalLM.from_pretrained(str(path), attn_implementation="sdpa")
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device)


def run_bound(run: str | Path, bits: int | None = None, batch_size: int = 64, device=None,
              embeddings: bool = True) -> dict:
    """The bound of a trained run folder (kn.train out/), on its own training data; with `bits`,
    of its model fake-quantized to that many bits (Result 8). Returns losses, bits and its terms,
    max_bits, n_params (all, non-embedding) and the capacity ratios."""
    run = Path(run)
    data = read_json(run / "train.json")["provenance"]["config"]["data"]
    model = _load_model(run / "model", device)
    if bits is not None:
        model = quantize_model(model, bits, embeddings)
    loaded = load_biod(data)
    if loaded is not None:
        sizes = bound_inputs(loaded[0].cfg)
        losses = biod_losses(model, loaded[0], batch_size=batch_size)
        bound, top, chance = biod_bound(sizes, losses), max_bits(sizes), chance_value(sizes)
    else:
        n = read_meta(data)["counts"]["people"]
        losses = {**bios_losses(model, data, batch_size), "loss_value1": math.nan}
        bound, top = bios_bound(n, losses["loss_name"], losses["loss_value"]), bios_max_bits(n)
        chance = math.log(S0_BIOS / 2)                      # the six values of a person, pronoun left out
    counts = n_params(model, trainable_only=False)
    return {**losses, **bound, "max_bits": top, "chance_value": chance, "stores_values": stores_values(bound),
            "n_params": counts["all"], "n_params_non_embedding": counts["non_embedding"],
            "ratio": bound["bits"] / counts["all"], "ratio_non_embedding": bound["bits"] / max(1, counts["non_embedding"])}


def stores_values(row: dict) -> bool:
    """Whether a model stored knowledge rather than names: value bits are most of its bits (and
    some). The value loss over its chance level C ln D is reported beside it; a fraction-of-chance
    rule would flag a model that holds 10^4 value bits merely because its data hold 3x more."""
    return float(row["bits_value"]) > 0 and float(row["bits_value"]) >= 0.5 * float(row["bits"])



# ----------------------------------------------------------------------------- quantization (Result 8)


def quantize_tensor(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Round-to-nearest symmetric quantization per output channel (row) of w [out, in]:
    scale = max|w_row| / (2^(bits-1) - 1), q = round(w / scale) in int8; |w - q scale| <= scale / 2."""
    if not isinstance(bits, int) or isinstance(bits, bool) or not 2 <= bits <= 8:
        raise DataError(f"bits: got {bits!r}; allowed: an integer 2..8 (8 = int8, 4 = int4)")
    if w.ndim != 2:
        raise DataError(f"w: got shape {tuple(w.shape)}; allowed: a matrix [out, in]")
    qmax = 2 ** (bits - 1) - 1
    w = w.detach().float()
    scale = (w.abs().amax(dim=1) / qmax).clamp(min=torch.finfo(torch.float32).tiny)   # [out]
    q = torch.round(w / scale[:, None]).clamp(-qmax, qmax).to(torch.int8)
    return q, scale


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Float weights q * scale (per row)."""
    return q.float() * scale[:, None]


def quantize_model(model, bits: int, embeddings: bool = True):
    """A copy of `model` with every Linear weight (and, with embeddings, the token embedding, one
    channel per token) fake-quantized: quantized to `bits`, then dequantized into float weights.
    Norms and biases stay as they are (a few parameters per channel)."""
    model = copy.deepcopy(model)
    skip = set() if embeddings else {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    out_emb = model.get_output_embeddings()
    if not embeddings and out_emb is not None:
        skip.add(id(out_emb.weight))
    done = set()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.Linear, torch.nn.Embedding)) and id(m.weight) not in skip | done:
                done.add(id(m.weight))
                m.weight.copy_(dequantize(*quantize_tensor(m.weight, bits)).to(m.weight.dtype))
    return model
