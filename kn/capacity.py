"""Knowledge capacity (papers.md, Part 3.3): the bit-complexity lower bound, bits per parameter,
the capacity law and post-training quantization.

- Bounds (Theorem 3.2), in bits, from natural-log losses summed over the tokens of a field:
  `biod_bound(sizes, losses)`, `bios_bound(n, loss_name, loss_value)`; `max_bits` is the bioD
  bound at zero loss. Each term of a bound is clipped at 0 (our choice; papers.md states the plain
  sum): a term lower-bounds the information about one independent part of the data (the names,
  the values, the diversity sets), which is never negative, so max(0, term) is still a lower
  bound and the summed form is never negative, even for losses above chance.
- Losses: `biod_losses(model, biod)` teacher-forces every biography after <eos>, one forward per
  batch; `bios_losses` wraps kn.evaluate.field_losses. Capacity ratio = bits / parameters, for all
  and for non-embedding parameters (kn.models.n_params).
- Runs: `kn.data.biod.write_biod(cfg, out, junk_ratio)` writes a folder that kn.train re-renders every
  epoch (junk re-drawn, Results 10-11; BioDConfig.domain_token, Result 12); `run_bound(run, bits)`
  computes the bound of a trained run, fake-quantized to `bits` if given; `capacity_point(point)`
  builds the data, trains and measures one point; `capacity_sweep` runs points via kn.sweep.
- The law: `fit_capacity(rows, exposures)` fits bits = ratio * params through the origin over the
  capacity-bound rows, with a t-interval on the slope.
- Quantization (Result 8): `quantize_tensor`, `dequantize`, `quantize_model` (round to nearest,
  symmetric, per output channel).
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from kn.data.biod import ATTR0, EOS, BioD, BioDConfig, bound_inputs, field_masks, render, write_biod
from kn.errors import DataError, check_number
from kn.models import ModelConfig, n_params
from kn.results import done, read_json, write_json
from kn.sweep import point_key, run_sweep
from kn.train import measured_curve, train_to

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
    from kn.data.dataset import load_encoded
    from kn.evaluate import field_losses
    from kn.tokenize import load_tokenizer
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
    from kn.data.dataset import read_meta
    from kn.train import load_biod
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


# ----------------------------------------------------------------------------- sweep points

POINT_DEFAULTS = {
    "data": "bioD",                                          # bioD | bioS
    "n": 1000, "k": 4, "c": 1, "d": 100, "l": 2, "t": 100,  # bioD(N, K, C, D, L, T); bioS uses n only
    "n_first": 400, "n_middle": 400, "n_last": 1000,         # bioD name pools, N0 = their product
    "junk_ratio": 0.0, "domain_token": False,                # Results 10-12 (bioD)
    "augment": "multi5+permute", "vocab_size": 4096,         # bioS only
    "arch": "gpt2", "n_layer": 2, "n_head": 2, "n_embd": 64, "mlp_ratio": None,  # None: 4 (gpt2), 8/3 (gated)
    "exposures": 100, "batch_size": 32, "window": 512, "lr": 1e-3, "weight_decay": 0.1, "warmup": 0.05,
    "seed": 0,                                               # data and training
    "quantize": False,                                       # also measure int8 and int4 (Result 8)
    "curve": 0,                                              # also measure bits at this many log-spaced steps
}
MEASURE_ONLY = ("quantize",)                                 # changes what is measured, not the model (a curve
                                                             # point trains in segments: a folder of its own)


def normalise_point(point: dict) -> dict:
    """`point` over POINT_DEFAULTS, checked, mlp_ratio resolved: every point has the same keys."""
    unknown = set(point) - set(POINT_DEFAULTS)
    if unknown:
        raise DataError(f"point: unknown keys {sorted(unknown)}; allowed: {sorted(POINT_DEFAULTS)}")
    p = POINT_DEFAULTS | point
    if p["data"] not in ("bioD", "bioS"):
        raise DataError(f"data: got {p['data']!r}; allowed: bioD, bioS")
    if p["data"] == "bioS" and (p["junk_ratio"] or p["domain_token"]):
        raise DataError("junk_ratio: junk and the domain token are bioD options; use data='bioD'")
    if p["mlp_ratio"] is None:
        p["mlp_ratio"] = 8 / 3 if p["arch"] in ("llama", "mistral") else 4.0
    return p


def run_folder(point: dict, runs_dir: str | Path) -> Path:
    """The folder of `point` under runs_dir: data/ and run/, named by the point's hash (MEASURE_ONLY
    keys, which change only what is measured, left out: the model is shared)."""
    p = normalise_point(point)
    digest = hashlib.sha1(point_key({k: v for k, v in p.items() if k not in MEASURE_ONLY}).encode()).hexdigest()[:12]
    return Path(runs_dir) / f"{p['data']}-n{p['n']}-{p['arch']}-{p['n_layer']}-{p['n_head']}-{p['n_embd']}-{digest}"


def _make_data(p: dict, out: Path) -> None:
    if (out / "meta.json").is_file():
        return                                               # deterministic in the point: reuse
    if p["data"] == "bioD":
        cfg = BioDConfig(n=p["n"], k=p["k"], c=p["c"], d=p["d"], l=p["l"], t=p["t"], n_first=p["n_first"],
                         n_middle=p["n_middle"], n_last=p["n_last"], seed=p["seed"], domain_token=p["domain_token"])
        write_biod(cfg, out, p["junk_ratio"])
    else:
        from kn.data.dataset import BiosConfig, make_dataset
        make_dataset(BiosConfig(n=p["n"], augment=p["augment"], seed=p["seed"], vocab_size=p["vocab_size"]), out)


def _train_config(p: dict, folder: Path, device: str):
    """The kn.train config of a point. On the CPU pinned to fp32 with SDPA attention, what the
    sweep ran in: bf16 ran these tiny models at 0.52-0.68x fp32's speed (issue 27)."""
    from kn.train import TrainConfig
    model = ModelConfig(arch=p["arch"], n_layer=p["n_layer"], n_head=p["n_head"], n_embd=p["n_embd"],
                        mlp_ratio=p["mlp_ratio"], context=p["window"])
    on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    return TrainConfig(data=str(folder / "data"), out=str(folder / "run"), model=model, exposures=p["exposures"],
                       batch_size=p["batch_size"], window=p["window"], lr=p["lr"], weight_decay=p["weight_decay"],
                       warmup=p["warmup"], seed=p["seed"], device=device,
                       **({"precision": "fp32", "attention": "sdpa"} if on_cpu else {}))


def _measure(folder: Path, p: dict, device: str, batch_size: int) -> dict:
    """run_bound of the trained run, plus bits and ratio at int8 and int4 (NaN unless quantize)."""
    dev = None if device == "auto" else device
    out = run_bound(folder / "run", None, batch_size, dev)
    for b in QUANT_BITS:
        q = run_bound(folder / "run", b, batch_size, dev) if p["quantize"] else {"bits": math.nan, "ratio": math.nan}
        out |= {f"bits_int{b}": q["bits"], f"ratio_int{b}": q["ratio"]}
    return out


def _curve(folder: Path, tcfg, p: dict, device: str, batch_size: int) -> list:
    """[[step, bits], ...] at kn.train.curve_stops, in folder/curve.json so that a stopped point keeps its stops."""
    dev = None if device == "auto" else device
    return measured_curve(tcfg, p["curve"], lambda: run_bound(folder / "run", None, batch_size, dev)["bits"],
                          folder / "curve.json", p)


def capacity_point(point: dict, runs_dir: str | Path | None = None, device: str = "auto",
                   eval_batch_size: int = 256) -> dict:
    """One point of the law: build its data, train (resuming an interrupted run), measure the
    bound. Keys: POINT_DEFAULTS. Returns flat numbers: losses, bits and terms, max_bits, n_params
    (all, non-embedding), ratios (also int8/int4 with quantize), steps, final_loss, tokens_per_s,
    train_s, wall_s, and curve ([[step, bits], ...] ending at the last step; with curve > 0 the run
    is trained in segments, bit-identical to one run). runs_dir=None trains in a temporary folder
    that is removed afterwards."""
    t0 = time.perf_counter()
    p = normalise_point(point)
    with tempfile.TemporaryDirectory(prefix="kn-capacity-") as tmp:
        folder = run_folder(p, runs_dir if runs_dir is not None else tmp)
        _make_data(p, folder / "data")
        t1 = time.perf_counter()
        tcfg = _train_config(p, folder, device)       # a finished run (a sweep stopped while measuring) is read
        curve = _curve(folder, tcfg, p, device, eval_batch_size) if p["curve"] else []
        summary = train_to(tcfg)
        train_s = time.perf_counter() - t1
        out = _measure(folder, p, device, eval_batch_size)
    return {**out, "steps": summary["steps"], "final_loss": summary["final_loss"],
            "tokens_per_s": summary["tokens_per_s"], "train_s": train_s, "wall_s": time.perf_counter() - t0,
            "curve": json.dumps(curve + [[summary["steps"], out["bits"]]])}


def capacity_sweep(points: list[dict], results_csv: str | Path, workers: int = 1, executor: str = "local",
                   runs_dir: str | Path | None = None, device: str = "auto", **sweep_kw) -> list[dict]:
    """kn.sweep.run_sweep over capacity_point: one CSV row per finished point, done points skipped.
    Points are normalised first, so every row has the same columns."""
    fn = partial(capacity_point, runs_dir=None if runs_dir is None else str(runs_dir), device=device)
    return run_sweep([normalise_point(p) for p in points], fn, results_csv, executor=executor, workers=workers,
                     **sweep_kw)


# ----------------------------------------------------------------------------- the law


def stores_values(row: dict) -> bool:
    """Whether a model stored knowledge rather than names: value bits are most of its bits (and
    some). The value loss over its chance level C ln D is reported beside it; a fraction-of-chance
    rule would flag a model that holds 10^4 value bits merely because its data hold 3x more."""
    return float(row["bits_value"]) > 0 and float(row["bits_value"]) >= 0.5 * float(row["bits"])


def capacity_rows(rows: list[dict], exposures: float | None = None, max_fraction: float = 0.5,
                  bits: str = "bits", arch: str | None = None) -> list[dict]:
    """Rows of the capacity-bound regime: at `exposures` and `arch` (all if None), storing values
    (`stores_values`), and with bits <= max_fraction * max_bits, i.e.
    models that could not store even that share of the data's information (bigger models sit on
    the max_bits plateau, where bits/params only falls)."""
    return [r for r in _at(rows, exposures, arch)
            if stores_values(r) and float(r[bits]) <= max_fraction * float(r["max_bits"])]


def clean(row: dict) -> bool:
    """A row of the law: no junk, no domain token (Results 10-12 are variations, not points of the law)."""
    return not float(row.get("junk_ratio", 0) or 0) and row.get("domain_token") in (None, False, "False", 0)


def _at(rows: list[dict], exposures: float | None, arch: str | None) -> list[dict]:
    return [r for r in rows if (exposures is None or float(r["exposures"]) == float(exposures))
            and (arch is None or r.get("arch", "gpt2") == arch) and clean(r)]


def fit_capacity(rows: list[dict], exposures: float | None = None, params: str = "n_params", bits: str = "bits",
                 max_fraction: float = 0.5, level: float = 0.95, arch: str | None = None) -> dict:
    """The law over `capacity_rows`: least squares bits = ratio * params through the origin, with a
    `level` t-interval on the ratio (n - 1 degrees of freedom), and the log-log slope of bits on
    params with its t-interval (n - 2; the law says 1). params: n_params (all) or
    n_params_non_embedding; bits: bits, bits_int8 or bits_int4. Returns ratio, ci_low, ci_high,
    slope, slope_low, slope_high (NaN under 3 points), n_points (fitted), n_sizes (distinct
    params), n_rows (at these exposures) and n_storing_values (of those rows)."""
    pts = capacity_rows(rows, exposures, max_fraction, bits, arch)
    x = np.array([float(r[params]) for r in pts])
    y = np.array([float(r[bits]) for r in pts])
    if len(x) < 2 or not np.all(np.isfinite(y)):
        raise DataError(f"rows: {len(x)} capacity-bound rows storing values with finite {bits!r} at "
                        f"exposures={exposures}; the fit needs at least 2 (raise max_fraction={max_fraction} "
                        f"or add smaller models)")
    sxx = float(x @ x)
    ratio = float(x @ y) / sxx
    resid = y - ratio * x
    half = _t(level, len(x) - 1) * math.sqrt(float(resid @ resid) / (len(x) - 1) / sxx)
    at = _at(rows, exposures, arch)
    return {"ratio": ratio, "ci_low": ratio - half, "ci_high": ratio + half, **_loglog_slope(x, y, level),
            "n_points": len(x), "n_sizes": len(set(x)), "n_rows": len(at),
            "n_storing_values": sum(stores_values(r) for r in at)}


def _t(level: float, dof: int) -> float:
    from scipy import stats
    return float(stats.t.ppf(0.5 + level / 2, dof))


def _loglog_slope(x: np.ndarray, y: np.ndarray, level: float) -> dict:
    """Slope of log bits on log params (ordinary least squares) with its t-interval; NaN under 3
    points or 2 sizes."""
    if len(x) < 3 or len(set(x)) < 2 or np.any(y <= 0):
        return {"slope": math.nan, "slope_low": math.nan, "slope_high": math.nan}
    lx, ly = np.log(x), np.log(y)
    dx = lx - lx.mean()
    slope = float(dx @ (ly - ly.mean()) / (dx @ dx))
    resid = ly - ly.mean() - slope * dx
    half = _t(level, len(x) - 2) * math.sqrt(float(resid @ resid) / (len(x) - 2) / float(dx @ dx))
    return {"slope": slope, "slope_low": slope - half, "slope_high": slope + half}


def fit_all(rows: list[dict]) -> dict:
    """Every fit the chapter reports: per arch and exposures, of bits, bits_int8 and bits_int4.
    Keys "bits@100" (gpt2) or "llama:bits@100"; a fit that cannot be made holds its reason."""
    fits = {}
    for arch, e in sorted({(r.get("arch", "gpt2"), float(r["exposures"])) for r in rows if clean(r)}):
        for bits in [b for b in ("bits", "bits_int8", "bits_int4") if all(b in r for r in rows)]:
            key = f"{'' if arch == 'gpt2' else arch + ':'}{bits}@{e:g}"
            try:
                fits[key] = fit_capacity(rows, exposures=e, bits=bits, arch=arch)
            except DataError as err:
                fits[key] = {"error": str(err)}
    return fits


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


# ----------------------------------------------------------------------------- the profile's recipe (Part 3.3)
#
# Written before the runs they govern. Every point trains >= min_steps optimizer steps (Part 3.3,
# Remark A.2: at least 50K steps whatever the batch): the batch is the largest that still gives them,
# batch 1 if none does (its row's `steps` then says how far it fell short). A size without N gets
# the people whose value bits are data_bits_per_param x its parameters, and at least enough to reach
# min_steps at batch 1 at the profile's fewest exposures. The lr of a size is the grid's value that
# stores the most bits at grid_exposures (capacity has no held-out set: the grid maximises the very
# quantity measured, as the paper's best-of-grid does); every point of that size uses it.


def _biod_cfg(p: dict) -> BioDConfig:
    return BioDConfig(**{k: p[k] for k in ("n", "k", "c", "d", "l", "t", "n_first", "n_middle", "n_last")},
                      seed=p["seed"], domain_token=p["domain_token"])


def model_params(s: dict, size: tuple, arch: str = "gpt2") -> int:
    """Parameters of a size on the profile's bioD, embeddings of every token in use counted (the
    word-level vocabulary holds only tokens the data use: Part 3.3's count)."""
    from kn.data.biod import vocabulary
    from kn.models import build_model
    p = normalise_point({**s["data"], "n": 1, "arch": arch, "n_layer": size[0], "n_head": size[1], "n_embd": size[2]})
    cfg = ModelConfig(arch=arch, n_layer=size[0], n_head=size[1], n_embd=size[2], mlp_ratio=p["mlp_ratio"],
                      vocab_size=len(vocabulary(_biod_cfg(p))), context=8)
    return n_params(build_model(cfg), trainable_only=False)["all"]


def people_for(s: dict, size: tuple, arch: str = "gpt2") -> int:
    """N of a size (size[3] when given): value bits >= data_bits_per_param x params, and enough
    windows for min_steps at batch 1 at the profile's fewest exposures."""
    if len(size) == 4:
        return int(size[3])
    d = s["data"]
    value_bits = d["k"] * d["c"] * math.log2(d["d"])                    # per person
    tokens = BioDConfig(n=1, **{k: d[k] for k in ("k", "c", "d", "l", "t")}).doc_length()
    fewest = min(arm["exposures"] for arm in s["arms"])
    by_bits = s["data_bits_per_param"] * model_params(s, size, arch) / value_bits
    by_steps = s["min_steps"] * s["window"] / (tokens * fewest)
    return int(math.ceil(max(by_bits, by_steps)))


def batch_for(p: dict, min_steps: int) -> int:
    """The largest batch whose run reaches min_steps (kn.train.Batches' count), 1 if none does."""
    rows = int(_biod_cfg(p).doc_length() * p["n"] * (1 + p["junk_ratio"])) // p["window"]   # windows of one pass
    batch = max(1, int(rows * p["exposures"] // max(1, min_steps)))
    while batch > 1 and round(p["exposures"] * (rows // batch)) < min_steps:
        batch -= 1
    return batch


def _point(s: dict, size: tuple, exposures: float, seed: int, arch: str = "gpt2", **extra) -> dict:
    p = normalise_point({**s["data"], "n": people_for(s, size, arch), "arch": arch, "n_layer": size[0],
                         "n_head": size[1], "n_embd": size[2], "exposures": exposures, "window": s["window"],
                         "weight_decay": s["weight_decay"], "seed": seed, **extra})
    return p | {"batch_size": batch_for(p, s["min_steps"])}


def _size(p: dict) -> tuple:
    return (p.get("arch", "gpt2"), int(p["n_layer"]), int(p["n_head"]), int(p["n_embd"]))


def grid_points(profile: str, seed: int = 0) -> list[dict]:
    """The lr grid of a profile (kn.profiles "capacity"): every size of every arm (arch kept) at
    grid_exposures, once per lr."""
    from kn.profiles import settings
    s = settings("capacity", profile)
    sizes = {(arm.get("arch", "gpt2"), tuple(size)): None for arm in s["arms"] for size in arm["sizes"]}
    return [_point(s, size, s["grid_exposures"], seed, arch=arch, lr=lr) for arch, size in sizes for lr in s["lr_grid"]]


def best_lr(rows: list[dict]) -> dict:
    """{(arch, n_layer, n_head, n_embd): lr} of the grid rows: per size, the lr that stored the most bits."""
    best = {}
    for r in rows:
        key = _size(r)
        if key not in best or float(r["bits"]) > best[key][1]:
            best[key] = (float(r["lr"]), float(r["bits"]))
    return {k: lr for k, (lr, _) in best.items()}


def profile_points(profile: str, lrs: dict, seed: int = 0, **extra) -> list[dict]:
    """The capacity sweep of a profile: every arm's sizes at its exposures (and arch, junk_ratio,
    domain_token), the `seeds` block's extra seeds, the `curve` block's bits-over-steps points, each
    at its size's lr from `lrs` (best_lr, by arch and size: junk arms use the clean grid's lr);
    sizes missing from `lrs` (grid not finished) are left out. `extra` on every point (quantize)."""
    from kn.profiles import settings
    s = settings("capacity", profile)
    curve = s.get("curve", {})
    out = []
    for arm in s["arms"]:
        arch = arm.get("arch", "gpt2")
        data = {k: arm[k] for k in ("junk_ratio", "domain_token") if k in arm}
        plain = arch == "gpt2" and not data                      # seeds and curves: the law's own arms
        for size in arm["sizes"]:
            stops = curve.get("stops", 0) if plain and arm["exposures"] == curve.get("exposures") and \
                tuple(size[:3]) in map(tuple, curve.get("sizes", ())) else 0
            more = s.get("seeds", {})
            for sd in [seed] + (list(more["seeds"]) if plain and tuple(size[:3]) in map(tuple, more.get("sizes", ()))
                                 and arm["exposures"] in more["exposures"] else []):
                lr = lrs.get((arch, *size[:3]))
                if lr is not None:
                    out.append(_point(s, size, arm["exposures"], sd, arch=arch, lr=lr, curve=stops if sd == seed else 0,
                                      **data, **extra))
    return out


def _lrs(grid: list[dict], results: Path) -> tuple[list[dict], dict]:
    """(the grid's finished rows, best_lr of the sizes whose whole grid is finished)."""
    from kn.sweep import read_rows
    keys = {point_key(p) for p in grid}
    rows = [r for r in (read_rows(results / "grid.csv") if (results / "grid.csv").is_file() else [])
            if point_key(r["key"]) in keys]
    want, have = {}, {}
    for p in grid:
        want[_size(p)] = want.get(_size(p), 0) + 1
    for r in rows:
        have.setdefault(_size(r), []).append(r)
    return rows, best_lr([r for size, rs in have.items() if len(rs) == want[size] for r in rs])


def training_order(points: list[dict], seed: int) -> list[dict]:
    """The law's points first (seed `seed`, clean data), then its other seeds, then the variations."""
    return sorted(points, key=lambda p: (not clean(p), p["seed"] != seed))


def capacity_study(profile: str, results: str | Path, runs_dir: str | Path | None = None, seed: int = 0,
                   workers: int = 1, train: bool = True) -> dict:
    """The chapter's whole experiment, arch by arch (GPT-2 first): the per-size lr grid
    (results/grid.csv), then the profile's points at each size's best lr with int8/int4 measured
    (results/sweep.csv, in `training_order`), then every fit (results/fit.json). Finished points are
    skipped, so a stopped study continues, and two studies started side by side share the points;
    train=False trains nothing and fits the points already finished (a sweep still running
    elsewhere). Returns grid, lrs, points, rows (the finished points), missing (the points not
    finished, with the sizes whose grid is not) and fits."""
    from kn.sweep import read_rows
    t0, results = time.perf_counter(), Path(results)
    grid = grid_points(profile, seed)
    for arch in dict.fromkeys(p["arch"] for p in grid) if train else ():
        capacity_sweep([p for p in grid if p["arch"] == arch], results / "grid.csv", runs_dir=runs_dir, workers=workers)
        mine = [p for p in profile_points(profile, _lrs(grid, results)[1], seed, quantize=True) if p["arch"] == arch]
        capacity_sweep(training_order(mine, seed), results / "sweep.csv", runs_dir=runs_dir, workers=workers)
    grid_rows, lrs = _lrs(grid, results)
    points = profile_points(profile, lrs, seed, quantize=True)
    keys = {point_key(normalise_point(p)): p for p in points}
    rows = [r for r in (read_rows(results / "sweep.csv") if (results / "sweep.csv").is_file() else [])
            if point_key(r["key"]) in keys]                                            # not an earlier recipe's
    finished = {point_key(r["key"]) for r in rows}
    missing = [p for key, p in keys.items() if key not in finished]
    missing += [p for p in profile_points(profile, {_size(p): p["lr"] for p in grid}, seed, quantize=True)
                if _size(p) not in lrs]                                                 # sizes still in the grid
    fits = fit_all(rows)
    write_json(results / "fit.json", config={"grid": grid, "points": points}, seed=seed,
               wall_time=time.perf_counter() - t0, lrs={"/".join(map(str, k)): v for k, v in lrs.items()},
               fits=fits, n_points=len(points) + len(missing), n_done=len(rows))
    return {"grid": grid_rows, "lrs": lrs, "points": points, "rows": rows, "missing": missing, "fits": fits}


# ----------------------------------------------------------------------------- tables for the chapter


def _flag(row: dict) -> str:
    return "yes" if stores_values(row) else "**no**"


def model_table(rows: list[dict]) -> tuple[list[str], list[list]]:
    """(header, lines) of every model: size, seed, recipe (lr, batch, steps), data, the bits split by
    term, value loss over chance, bits/param in full precision and after int8/int4. For
    kn.book.markdown_table."""
    header = ["exposures", "params", "seed", "lr", "batch", "steps", "N", "bits: names", "values", "of max",
              "value loss / chance", "stores values", "bits/param", "int8", "int4"]
    lines = []
    for r in sorted(rows, key=lambda r: (r.get("arch", "gpt2"), r["exposures"], r["n_params"], r["seed"])):
        p = float(r["n_params"])
        variant = "" if clean(r) else f", junk {float(r['junk_ratio']):g}:1" + (" + domain" if not r["domain_token"] in
                                                                                 (False, "False", 0) else "")
        lines.append([f"{r.get('arch', 'gpt2')} {r['exposures']:g}{variant}", f"{int(p):,}", str(r["seed"]), f"{r['lr']:g}",
                      str(r["batch_size"]), f"{int(r['steps']):,}", f"{int(r['n']):,}", f"{r['bits_name']:,.0f}",
                      f"{r['bits_value']:,.0f}", f"{r['bits'] / r['max_bits']:.0%}",
                      f"{r['loss_value'] / r['chance_value']:.2f}", _flag(r), f"{r['bits'] / p:.3f}",
                      f"{r['bits_int8'] / p:.3f}", f"{r['bits_int4'] / p:.3f}"])
    return header, lines


def grid_table(rows: list[dict]) -> tuple[list[str], list[list]]:
    """(header, lines) of the lr grid: per size, the bits each lr stored; the chosen lr (most bits) in bold."""
    lrs = sorted({float(r["lr"]) for r in rows})
    best = best_lr(rows)
    header = ["size (layers x width)", "params", "steps"] + [f"lr {lr:g}: bits" for lr in lrs]
    lines = []
    for size in sorted(best, key=lambda k: (k[0], k[3])):
        at = {float(r["lr"]): r for r in rows if _size(r) == size}
        cells = [(f"**{at[lr]['bits']:,.0f}**" if lr == best[size] else f"{at[lr]['bits']:,.0f}") if lr in at else "-"
                 for lr in lrs]
        any_row = next(iter(at.values()))
        lines.append([f"{size[0]} {size[1]}x{size[3]}", f"{int(any_row['n_params']):,}", f"{int(any_row['steps']):,}"]
                     + cells)
    return header, lines


def seed_spread(rows: list[dict]) -> list[dict]:
    """Per (arch, exposures, size) with more than one seed: params, the seeds' bits/param, their mean and range."""
    groups = {}
    for r in rows:
        groups.setdefault((r.get("arch", "gpt2"), float(r["exposures"]), _size(r)), []).append(r)
    out = []
    for (arch, e, _), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[1][0]["n_params"])):
        if len(rs) > 1:
            ratios = [float(r["bits"]) / float(r["n_params"]) for r in rs]
            out.append({"arch": arch, "exposures": e, "n_params": int(rs[0]["n_params"]), "ratios": ratios,
                        "mean": float(np.mean(ratios)), "low": min(ratios), "high": max(ratios)})
    return out


def points_to_decide(fit: dict, threshold: float, tolerance: float) -> str:
    """What would decide a near rule (band threshold * (1 +- tolerance)) that this fit leaves open:
    the interval's half-width needed to sit wholly inside (estimate in the band) or outside (estimate
    outside) the band, and the models that would give it, if the half-width shrinks as 1/sqrt(models)."""
    lo, hi = threshold * (1 - tolerance), threshold * (1 + tolerance)
    r, half, n = fit["ratio"], (fit["ci_high"] - fit["ci_low"]) / 2, fit["n_points"]
    if fit["ci_low"] >= lo and fit["ci_high"] <= hi or fit["ci_high"] < lo or fit["ci_low"] > hi:
        return "decided"
    need = min(r - lo, hi - r) if lo <= r <= hi else (lo - r if r < lo else r - hi)
    if need <= 0:
        return f"the estimate {r:.2f} sits on the band's edge: no number of models decides it"
    models = math.ceil(n * (half / need) ** 2)
    return (f"a half-width under {need:.2f} (now {half:.2f}), about {models} models at this spread "
            f"(now {n})")


def fit_table(fits: dict) -> tuple[list[str], list[list]]:
    """(header, lines) of every fit of `fit_all`: ratio and log-log slope with their intervals, or why
    there is none."""
    header = ["fit", "bits/param", "95% interval", "log-log slope", "models fitted", "store values / run"]
    lines = []
    for key, f in fits.items():
        if "ratio" in f:
            slope = (f"{f['slope']:.2f} [{f['slope_low']:.2f}, {f['slope_high']:.2f}]"
                     if math.isfinite(f.get("slope", math.nan)) else "-")
            lines.append([key, f"{f['ratio']:.3f}", f"{f['ci_low']:.3f} to {f['ci_high']:.3f}", slope,
                          str(f["n_points"]), f"{f['n_storing_values']} / {f['n_rows']}"])
        else:
            lines.append([key, "-", "-", "-", "0", f["error"].split(";")[0]])
    return header, lines
