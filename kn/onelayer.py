"""One-layer transformers acquire and extract knowledge (Xu & Chen 2025; papers.md, last section).

A one-layer model, attention + MLP (arch "attn_mlp", mlp_ratio 4) or attention only ("attn_only",
mlp_ratio 0), is pretrained on biographies (the knowledge statements) with data multiplicity M
(bioS multiM: M differently worded biographies per person), then QA-finetuned on train_people (the
fine-tuning set, a train_fraction share of the people), fully ("full") or with LoRA of rank r on
the attention's query/key/value ("loraR"), at the lr (of finetune_lr_grid, or lora_lr_grid) that a
validation slice of train_people chooses among those that fit train_people (kn.extraction.finetune,
as in Part 3.1's chapters). Extraction is exact-match QA accuracy on test_people,
whose QAs were never trained on. The stages are kn.extraction's (pretrain_finetune); this module
adds the grid, pretraining shared between points (with the bios' memorization measured along it:
`curve`), and the spectrum of the finetuning update
W_ft - W_pre per matrix (the paper: dominated by one direction, `rank1_share`).

Run folders under runs_dir:
  pretrain/<name>/  one pretraining (data/, pretrain/) per (arch, multiplicity, model, data size,
                    pretraining budget, seed); built under a file lock, so parallel points wait
  points/<name>/    one per point: data/ (the point's split), pretrain -> symlink to the shared
                    pretrain/, finetune/, result.json (kn.extraction's layout)
Sharing across train_fraction and finetuning is exact: the split only decides which QAs are
finetuned on; the biographies, their tokens and the tokenizer (trained on all biographies and
QAs, whatever their split) do not depend on it. `onelayer_point` checks that the point's bio
tokens and tokenizer equal the shared ones before it links.

Entry points: `study` (the chapter: the sweep, its rows by point, results/onelayer/<profile>/summary.json),
`OnelayerPoint` (a point's fields; `check_point` gives its dict), `onelayer_point` (one point -> flat
dict), `onelayer_points`, `onelayer_sweep`, `update_spectrum`, `rank1_share`, `matrix_shares`;
kn.profiles' "onelayer" table sizes the grid.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
import warnings
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from itertools import product
from pathlib import Path

import numpy as np

from kn.data.dataset import BiosConfig
from kn.errors import DataError, check_count
from kn.extraction import (ExtractionConfig, chosen_lr, evaluate_model, finetuned_model, prepare_dataset, run_extraction,
                           stage_config, train_stage)
from kn.intervals import held_out_accuracy
from kn.locks import file_lock
from kn.models import ModelConfig
from kn.profiles import settings
from kn.results import results_dir, runs_dir as chapter_runs, write_json
from kn.sweep import point_key, read_rows, run_sweep
from kn.train import measured_curve, train_to

ARCHS = {"attn_mlp": 4.0, "attn_only": 0.0}        # arch -> mlp_ratio of the one layer
_FINETUNE = re.compile(r"^(full|lora([1-9]\d*))$")
AXES = ("train_fraction", "finetune", "arch", "multiplicity")   # grid axes, outermost first

@dataclass(frozen=True, kw_only=True)
class OnelayerPoint:
    """One point of the sweep: each field optional but runs_dir (kn.profiles' "onelayer" table sets them per
    profile). A sweep carries it as a dict (check_point: its fields in this order, the CSV row's key)."""
    arch: str = "attn_mlp"                    # ARCHS
    multiplicity: int = 1
    train_fraction: float = 0.5
    finetune: str = "full"                    # full | loraR
    augment_extra: str = ""                   # more bioS augmentations: "permute", "fullname", joined by '+'
    n: int = 100
    n_embd: int = 128
    n_head: int = 4
    vocab_size: int = 2048
    window: int = 128
    batch_size: int = 16                      # pretraining
    lr: float = 3e-3
    exposures: float = 100.0
    curve: int = 0                            # also measure memorization at this many log-spaced pretraining steps
    finetune_exposures: float = 30.0
    finetune_lr: float = 1e-3
    finetune_batch_size: int = 16
    lora_lr: float = 1e-2                     # finetune_lr of loraR points: a rank-1 update needs a larger step
    valid_fraction: float = 0.0               # share of train_people held out as the validation slice
    finetune_lr_grid: list = field(default_factory=list)   # lrs chosen on the validation slice
    lora_lr_grid: list = field(default_factory=list)       # (kn.extraction.finetune)
    seed: int = 0
    runs_dir: str | None = None

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise DataError(f"arch: got {self.arch!r}; allowed: {', '.join(ARCHS)}")
        if not isinstance(self.finetune, str) or not _FINETUNE.match(self.finetune):
            raise DataError(f"finetune: got {self.finetune!r}; allowed: 'full' or 'loraR' with R >= 1 (lora1, lora8)")
        check_count("multiplicity", self.multiplicity, 1)
        check_count("curve", self.curve)
        for key in ("finetune_lr_grid", "lora_lr_grid"):
            if not isinstance(getattr(self, key), (list, tuple)):
                raise DataError(f"{key}: got {getattr(self, key)!r}; allowed: a list of learning rates (empty: "
                                "finetune_lr or lora_lr alone)")
        if not isinstance(self.runs_dir, (str, os.PathLike)):
            raise DataError(f"runs_dir: got {self.runs_dir!r}; allowed: a folder path (string)")


DEFAULTS = {f.name: f.default if f.default is not MISSING else f.default_factory() for f in fields(OnelayerPoint)}

# Point keys that do not change the pretraining (so points differing only in these share it)
FINETUNE_KEYS = ("train_fraction", "valid_fraction", "finetune", "finetune_exposures", "finetune_lr", "lora_lr",
                 "finetune_lr_grid", "lora_lr_grid", "finetune_batch_size", "runs_dir")
SHARED_FRACTION = 0.5   # the split written into the shared pretraining's dataset (never trained on)

# Matrices whose update spectrum the sweep reports: short name -> GPT-NeoX parameter name part
MATRICES = {"qkv": "attention.query_key_value", "attn_out": "attention.dense", "mlp_in": "mlp.dense_h_to_4h",
            "mlp_out": "mlp.dense_4h_to_h", "embed": "embed_in"}

# ----------------------------------------------------------------------------- points


def check_point(point: dict) -> dict:
    """The point as a checked OnelayerPoint, as a dict (defaults filled in); DataError naming the key
    for unknown keys or bad values."""
    unknown = set(point) - set(DEFAULTS)
    if unknown:
        raise DataError(f"point: unknown keys {sorted(unknown)}; allowed: {', '.join(DEFAULTS)}")
    return asdict(OnelayerPoint(**point))


def lora_rank(finetune: str) -> int:
    """'full' -> 0, 'lora8' -> 8."""
    return int(_FINETUNE.match(finetune).group(2) or 0)


def point_config(point: dict) -> ExtractionConfig:
    """The kn.extraction config (pretrain_finetune) of a point; no learning curves (a sweep of many
    small runs reads their end points)."""
    p = check_point(point)
    model = ModelConfig(n_layer=1, n_head=p["n_head"], n_embd=p["n_embd"], mlp_ratio=ARCHS[p["arch"]],
                        vocab_size=p["vocab_size"], context=p["window"])
    augment = "+".join(filter(None, [f"multi{p['multiplicity']}", p["augment_extra"]]))
    data = BiosConfig(n=p["n"], augment=augment, seed=p["seed"], train_fraction=p["train_fraction"],
                      valid_fraction=p["valid_fraction"], vocab_size=p["vocab_size"])
    keys = ("exposures", "batch_size", "window", "lr", "finetune_exposures", "finetune_batch_size", "seed")
    rank = lora_rank(p["finetune"])
    return ExtractionConfig(setting="pretrain_finetune", data=data, model=model, lora_rank=rank, curve_points=0,
                            finetune_lr=p["lora_lr"] if rank else p["finetune_lr"],
                            finetune_lr_grid=p["lora_lr_grid"] if rank else p["finetune_lr_grid"], **{k: p[k] for k in keys})


def _folder_name(p: dict, keys: list[str], label: str) -> str:
    """Readable prefix plus a hash of the keys' values (the folder changes when any of them does)."""
    digest = hashlib.sha1(json.dumps({k: p[k] for k in keys}, sort_keys=True).encode()).hexdigest()[:10]
    return f"{label}-{digest}"


def point_dirs(point: dict) -> tuple[Path, Path]:
    """(shared pretraining folder, point folder) under the point's runs_dir."""
    p = check_point(point)
    root = Path(p["runs_dir"])
    pre_keys = sorted(k for k in p if k not in FINETUNE_KEYS)
    pt_keys = sorted(k for k in p if k != "runs_dir")
    pre = _folder_name(p, pre_keys, f"{p['arch']}-m{p['multiplicity']}")
    pt = _folder_name(p, pt_keys, f"{p['arch']}-m{p['multiplicity']}-tf{p['train_fraction']}-{p['finetune']}")
    return root / "pretrain" / pre, root / "points" / pt


# ----------------------------------------------------------------------------- shared pretraining


def shared_pretrain(cfg: ExtractionConfig, folder: Path, curve: int = 0) -> list:
    """Pretrain once in folder (dataset with SHARED_FRACTION and no validation slice, then pretrain/);
    with curve > 0 the bios' memorization is measured at that many log-spaced steps (kn.train.measured_curve,
    the last one the finished run's, which the point measures). Returns [[step, memorization], ...]."""
    base = replace(cfg, data=replace(cfg.data, train_fraction=SHARED_FRACTION, valid_fraction=0.0))
    with file_lock(folder.with_name(folder.name + ".lock")):   # parallel points wait for the builder
        prepare_dataset(base, folder / "data")
        tcfg = stage_config(base, folder / "data", folder / "pretrain", "pretrain")
        if not curve:
            train_stage(tcfg, progress=False)
            return []
        measure = lambda: evaluate_model(folder / "pretrain" / "model", folder / "data", splits=())["memorization"]["mean"]
        points = measured_curve(tcfg, curve, measure, folder / "curve.json", asdict(tcfg))
        train_to(tcfg)
    return points


def same_corpus(data_a: Path, data_b: Path) -> bool:
    """Whether two dataset folders hold the same bio tokens and the same tokenizer."""
    tok = [json.loads((d / "tokenizer" / "tokenizer.json").read_text()) for d in (data_a, data_b)]
    if tok[0] != tok[1]:
        return False
    with np.load(data_a / "tokens.npz") as a, np.load(data_b / "tokens.npz") as b:
        names = [k for k in a.files if k.startswith("bios_")]
        return sorted(names) == sorted(k for k in b.files if k.startswith("bios_")) and \
            all(np.array_equal(a[k], b[k]) for k in names)


def _link_pretrain(cfg: ExtractionConfig, shared: Path, out: Path) -> None:
    """Build the point's dataset, check it against the shared one, link out/pretrain to it."""
    prepare_dataset(cfg, out / "data")
    if not same_corpus(out / "data", shared / "data"):
        raise DataError(f"runs_dir: the dataset in {str(out)!r} differs from the shared pretraining's "
                        f"{str(shared)!r} in its biographies or tokenizer; delete both and rerun")
    link = out / "pretrain"
    if not link.exists():
        os.symlink(os.path.relpath(shared / "pretrain", out), link)


# ----------------------------------------------------------------------------- update spectrum


def _weights(model_dir: str | Path) -> dict:
    """Parameters of a saved model by name, float32 on the CPU (tied weights once)."""
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    return {n: p.detach().float().cpu() for n, p in model.named_parameters()}


def update_spectrum(pretrained_dir: str | Path, finetuned_dir: str | Path) -> dict:
    """Singular values (descending, numpy) of W_ft - W_pre for every non-empty 2-D parameter."""
    import torch
    pre, ft = _weights(pretrained_dir), _weights(finetuned_dir)
    out = {}
    for name, w in pre.items():
        if w.ndim == 2 and w.numel():
            if name not in ft or ft[name].shape != w.shape:
                raise DataError(f"finetuned_dir: no parameter {name!r} of shape {tuple(w.shape)} in {str(finetuned_dir)!r}")
            out[name] = torch.linalg.svdvals(ft[name] - w).numpy()
    return out


def rank1_share(singular_values) -> float:
    """s1^2 / sum s^2: the share of the update's squared Frobenius norm in its top direction
    (1 for a rank-1 update; NaN for no update)."""
    s = np.asarray(singular_values, dtype=np.float64)
    total = float((s ** 2).sum())
    return float(s.max() ** 2 / total) if total > 0 else float("nan")


def matrix_shares(spectrum: dict) -> dict:
    """rank1_<matrix> for each of MATRICES (NaN where the model has no such matrix, e.g. attn_only's MLP)."""
    out = {}
    for short, part in MATRICES.items():
        names = [n for n in spectrum if part in n]
        out[f"rank1_{short}"] = rank1_share(spectrum[names[0]]) if len(names) == 1 else float("nan")
    return out


# ----------------------------------------------------------------------------- one point, the sweep


def _flat(result: dict, finetune_lr: float) -> dict:
    """The numbers a sweep row keeps from kn.extraction's result (finetune_lr: the lr without a grid)."""
    qa, tr = result["qa"], result["training"]
    base = result["majority_baseline"]
    test = held_out_accuracy(result)                      # % with its 95% interval over test_people
    chosen = chosen_lr(result)
    return {"acc_train": qa["train"]["mean"], "acc_valid": qa.get("valid", {}).get("mean", float("nan")),
            "acc_test": qa["test"]["mean"], "finetune_lr_chosen": finetune_lr if chosen is None else chosen,
            "acc_test_low": test.low / 100, "acc_test_high": test.high / 100,
            "first_token_train": qa["train"]["first_token"], "first_token_test": qa["test"]["first_token"],
            "majority_baseline": float(np.mean(list(base.values()))),
            "memorization": result["memorization"]["mean"],
            "pretrain_loss": tr["pretrain"]["final_loss"], "finetune_loss": tr["finetune"]["final_loss"],
            "n_params": tr["pretrain"]["n_params"]["all"],
            "n_params_non_embedding": tr["pretrain"]["n_params"]["non_embedding"],
            "finetune_trainable_params": tr["finetune"]["n_params"]["all"]}


def onelayer_point(point: dict) -> dict:
    """Run one point (shared pretraining, the point's finetuning, evaluation); a flat dict of
    accuracies (train_people, the validation slice, test_people), the finetune lr chosen, memorization
    and its curve over pretraining steps (JSON [[step, memorization], ...], ending at the last step),
    final losses, n_params (with embeddings; also without) and the rank-1 share of the update per matrix."""
    t0 = time.perf_counter()
    cfg = point_config(point)
    shared, out = point_dirs(point)
    with warnings.catch_warnings():   # attn_only's zero-width MLP layers warn at every init
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
        curve = shared_pretrain(cfg, shared, check_point(point)["curve"])
        _link_pretrain(cfg, shared, out)
        result = run_extraction(cfg, out, progress=False, pretrained=shared / "pretrain")
        shares = matrix_shares(update_spectrum(out / "pretrain" / "model", finetuned_model(out, result)))
    curve = curve + [[result["training"]["pretrain"]["steps"], result["memorization"]["mean"]]]
    return _flat(result, cfg.finetune_lr) | shares | {"memorization_curve": json.dumps(curve),
                                                      "wall_s": round(time.perf_counter() - t0, 2)}


def onelayer_points(profile: str, runs_dir: str | Path, **overrides) -> list[dict]:
    """The profile's grid as points (AXES order, outermost first, so the first points need distinct
    pretrainings); overrides replace table entries (a list for an axis, a value otherwise)."""
    s = settings("onelayer", profile, **overrides)
    axes = {a: s.pop(a) for a in AXES if isinstance(s.get(a), list)}
    fixed = s | {"runs_dir": str(runs_dir)}
    return [check_point(fixed | dict(zip(axes, values))) for values in product(*axes.values())]


def onelayer_sweep(profile: str, results_csv: str | Path, workers: int = 1, executor: str = "local",
                   runs_dir: str | Path | None = None, seed: int = 0, **sweep_kw) -> list[dict]:
    """Run the profile's grid (at `seed`) through kn.sweep.run_sweep (done points skipped); returns
    the rows written by this call. runs_dir defaults to kn.results.runs_dir("onelayer", profile)."""
    points = onelayer_points(profile, runs_dir or chapter_runs("onelayer", profile), seed=seed)
    return run_sweep(points, onelayer_point, results_csv, executor=executor, workers=workers, **sweep_kw)


# ----------------------------------------------------------------------------- the chapter

SUMMARY_KEYS = ("arch", "multiplicity", "train_fraction", "finetune", "acc_test", "acc_train", "memorization",
                "pretrain_loss", "majority_baseline", "n_params", "acc_valid", "finetune_lr_chosen", "memorization_curve")


def random_rank1_share(width: int, seed: int = 0, n: int = 20) -> float:
    """Mean rank-1 share of `n` Gaussian matrices of qkv's shape [3 * width, width]: an update with no direction."""
    rng = np.random.default_rng(seed)
    return float(np.mean([rank1_share(np.linalg.svd(rng.standard_normal((3 * width, width)), compute_uv=False))
                          for _ in range(n)]))


def grid_rows(profile: str, csv: Path, runs: Path, seed: int = 0) -> list[dict]:
    """The sweep's rows of the profile's grid (the CSV may hold other grids' rows too); one per point."""
    keys = {point_key(p) for p in onelayer_points(profile, runs, seed=seed)}
    rows = [r for r in read_rows(csv) if point_key(r["key"]) in keys] if csv.is_file() else []
    if len({point_key(r["key"]) for r in rows}) != len(rows) or len(rows) != len(keys):
        raise DataError(f"results: {str(csv)!r} holds {len(rows)} rows of the {len(keys)} points of the {profile} grid; "
                        "run the sweep to finish it")
    return rows


def study(profile: str, seed: int = 0) -> dict:
    """The chapter: the profile's sweep (done points skipped), its rows, and summary.json. Returns rows,
    point ((arch, multiplicity, train_fraction, finetune) -> row), the axes archs, ms, fracs, tunes
    (sorted), base (mean majority guess), share ((arch, matrix) -> mean rank-1 share over full
    finetunes, NaN for a matrix the arch lacks) and random_share (random_rank1_share at the width)."""
    t0 = time.perf_counter()
    csv, runs = results_dir("onelayer", profile) / "sweep.csv", chapter_runs("onelayer", profile)
    onelayer_sweep(profile, csv, runs_dir=runs, seed=seed)
    rows = grid_rows(profile, csv, runs, seed)
    point = {(r["arch"], r["multiplicity"], r["train_fraction"], r["finetune"]): r for r in rows}
    archs, ms = list(ARCHS), sorted({r["multiplicity"] for r in rows})
    fracs, tunes = sorted({r["train_fraction"] for r in rows}), sorted({r["finetune"] for r in rows}, key=lora_rank)
    base = float(np.mean([r["majority_baseline"] for r in rows]))
    full = [r for r in rows if r["finetune"] == "full"]
    share = {(a, k): float(np.mean([r[f"rank1_{k}"] for r in full if r["arch"] == a])) for a in archs for k in MATRICES}
    random_share = random_rank1_share(rows[0]["n_embd"], seed)
    top = {a: point[(a, ms[-1], fracs[-1], "full")] for a in archs}      # the largest M and finetuning set
    headline = {"multiplicity": ms[-1], "train_fraction": fracs[-1], "acc_test_attn_mlp": top["attn_mlp"]["acc_test"],
                "acc_test_attn_only": top["attn_only"]["acc_test"], "majority_baseline": base}
    write_json(results_dir("onelayer", profile) / "summary.json", config=settings("onelayer", profile), seed=seed,
               wall_time=time.perf_counter() - t0, headline=headline, random_share=random_share,
               rank1_share_full={f"{a}/{k}": None if np.isnan(v) else v for (a, k), v in share.items()},
               points=[{k: r[k] for k in SUMMARY_KEYS} for r in rows])
    return {"rows": rows, "point": point, "archs": archs, "ms": ms, "fracs": fracs, "tunes": tunes, "base": base,
            "share": share, "random_share": random_share}
