"""Knowledge capacity (papers.md, Part 3.3): the sweep of trained models, the capacity law and the
chapter's study. The bound each point is measured with is kn.bound (Theorem 3.2, Result 8).

- Runs: `kn.data.biod.write_biod(cfg, out, junk_ratio)` writes a folder that kn.batches re-renders every
  epoch (junk re-drawn, Results 10-11; BioDConfig.domain_token, Result 12); a point is a
  `CapacityPoint` (carried as its dict, `normalise_point`); `capacity_point(point)` builds the data,
  trains and measures one point (kn.bound.run_bound, also at int8 and int4 with quantize);
  `capacity_sweep` runs points via kn.sweep.
- The law: `fit_capacity(rows, exposures)` fits bits = ratio * params through the origin over the
  capacity-bound rows, with a t-interval on the slope.
- The profile's recipe: `grid_points`, `profile_points`, and `capacity_study(profile, results)`,
  the chapter's one call (with a runs folder it trains each size's lr grid as one group, kn.group:
  at batch 2 on one core 2.7x / 1.7x the baseline's model-steps a second at width 16 / 48,
  benchmarks/steps.py); tables for the chapter (`model_table`, `grid_table`, `fit_table`).
"""
from __future__ import annotations

import hashlib
import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path

import numpy as np
import torch

from kn.bound import QUANT_BITS, run_bound, stores_values
from kn.data.biod import BioDConfig, recorded_config, vocabulary, write_biod
from kn.data.dataset import BiosConfig, run_dataset
from kn.errors import DataError
from kn.models import ModelConfig, build_model, n_params
from kn.profiles import settings
from kn.checkpoints import checkpoint_step
from kn.group import train_lrs
from kn.results import done, write_json
from kn.sweep import holding, point_key, read_rows, run_sweep
from kn.train import measured_curve, train_to
from kn.train_config import TrainConfig

# ----------------------------------------------------------------------------- sweep points

@dataclass(frozen=True, kw_only=True)
class CapacityPoint:
    """One point of the sweep: its data, model and training. A sweep carries it as a dict
    (normalise_point: its fields in this order, the CSV row's key)."""
    data: str = "bioD"                                       # bioD | bioS
    n: int = 1000                                            # bioD(N, K, C, D, L, T); bioS uses n only
    k: int = 4
    c: int = 1
    d: int = 100
    l: int = 2  # noqa: E741
    t: int = 100
    n_first: int = 400                                       # bioD name pools, N0 = their product
    n_middle: int = 400
    n_last: int = 1000
    junk_ratio: float = 0.0                                  # Results 10-12 (bioD)
    domain_token: bool = False
    augment: str = "multi5+permute"                          # bioS only
    vocab_size: int = 4096
    arch: str = "gpt2"
    n_layer: int = 2
    n_head: int = 2
    n_embd: int = 64
    mlp_ratio: float | None = None                           # None: 4 (gpt2), 8/3 (gated)
    exposures: float = 100
    batch_size: int = 32
    window: int = 512
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup: float = 0.05
    seed: int = 0                                            # data and training
    quantize: bool = False                                   # also measure int8 and int4 (Result 8)
    curve: int = 0                                           # also measure bits at this many log-spaced steps

    def __post_init__(self):
        if self.data not in ("bioD", "bioS"):
            raise DataError(f"data: got {self.data!r}; allowed: bioD, bioS")
        if self.data == "bioS" and (self.junk_ratio or self.domain_token):
            raise DataError("junk_ratio: junk and the domain token are bioD options; use data='bioD'")
        if self.mlp_ratio is None:
            object.__setattr__(self, "mlp_ratio", 8 / 3 if self.arch in ("llama", "mistral") else 4.0)


POINT_KEYS = tuple(f.name for f in fields(CapacityPoint))
MEASURE_ONLY = ("quantize",)                                 # changes what is measured, not the model (a curve
                                                             # point trains in segments: a folder of its own)


def normalise_point(point: dict) -> dict:
    """`point` as a checked CapacityPoint, as a dict (mlp_ratio resolved): every point has the same
    keys."""
    unknown = set(point) - set(POINT_KEYS)
    if unknown:
        raise DataError(f"point: unknown keys {sorted(unknown)}; allowed: {sorted(POINT_KEYS)}")
    return asdict(CapacityPoint(**point))


def run_folder(point: dict, runs_dir: str | Path) -> Path:
    """The folder of `point` under runs_dir: data/ and run/, named by the point's hash (MEASURE_ONLY
    keys, which change only what is measured, left out: the model is shared)."""
    p = normalise_point(point)
    digest = hashlib.sha1(point_key({k: v for k, v in p.items() if k not in MEASURE_ONLY}).encode()).hexdigest()[:12]
    return Path(runs_dir) / f"{p['data']}-n{p['n']}-{p['arch']}-{p['n_layer']}-{p['n_head']}-{p['n_embd']}-{digest}"


def _make_data(p: dict, out: Path) -> None:
    """The point's data at `out`, unless its meta.json already records the same config (results.done)."""
    if p["data"] == "bioD":
        cfg = BioDConfig(n=p["n"], k=p["k"], c=p["c"], d=p["d"], l=p["l"], t=p["t"], n_first=p["n_first"],
                         n_middle=p["n_middle"], n_last=p["n_last"], seed=p["seed"], domain_token=p["domain_token"])
        if done(out / "meta.json", recorded_config(cfg, p["junk_ratio"])) is None:
            write_biod(cfg, out, p["junk_ratio"], overwrite=True)
    else:
        run_dataset(BiosConfig(n=p["n"], augment=p["augment"], seed=p["seed"], vocab_size=p["vocab_size"]), out)


def _train_config(p: dict, folder: Path, device: str):
    """The kn.train config of a point. On the CPU pinned to fp32: bf16 ran these tiny models at
    0.52-0.68x fp32's speed (issue 27). Attention and compilation are the run's measured choice
    (kn.precision: a point's >= 50K steps time compiled against eager, which gave 1.27-1.57x at batch
    2, and compiled eager attention ran 1.1-1.2x compiled SDPA at width 16); the committed cpu sweep's
    points ran eager with SDPA, before the choice existed."""
    model = ModelConfig(arch=p["arch"], n_layer=p["n_layer"], n_head=p["n_head"], n_embd=p["n_embd"],
                        mlp_ratio=p["mlp_ratio"], context=p["window"])
    on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    return TrainConfig(data=str(folder / "data"), out=str(folder / "run"), model=model, passes=p["exposures"],
                       batch_size=p["batch_size"], window=p["window"], lr=p["lr"], weight_decay=p["weight_decay"],
                       warmup=p["warmup"], seed=p["seed"], device=device,
                       **({"precision": "fp32"} if on_cpu else {}))


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
    bound. Keys: CapacityPoint's fields. Returns flat numbers: losses, bits and terms, max_bits, n_params
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


def train_grid(points: list[dict], results: str | Path, runs_dir: str | Path, device: str = "auto") -> None:
    """Each size's lr-grid runs trained together (kn.group.train_lrs) ahead of the grid's sweep, which then
    finds them trained and measures them. Size by size (a second study beside this one takes the next
    size): the points with no row in `results` that no other sweep holds, locked while they train,
    whose runs are unfinished and stand at one step (a size left with one run, or with runs stopped at
    different steps, trains them one by one in the sweep)."""
    sizes = {}
    for p in map(normalise_point, points):
        sizes.setdefault(point_key({k: v for k, v in p.items() if k != "lr"}), []).append(p)
    for members in sizes.values():
        with holding(members, results) as free:
            cfgs = []
            for p in free:
                folder = run_folder(p, runs_dir)
                _make_data(p, folder / "data")
                cfgs.append(_train_config(p, folder, device))
            cfgs = [c for c in cfgs if done(Path(c.out) / "train.json", c) is None]
            if len(cfgs) > 1 and len({checkpoint_step(Path(c.out) / "checkpoint") for c in cfgs}) == 1:
                train_lrs(cfgs)


def capacity_sweep(points: list[dict], results_csv: str | Path, workers: int = 1, executor: str = "local",
                   runs_dir: str | Path | None = None, device: str = "auto", **sweep_kw) -> list[dict]:
    """kn.sweep.run_sweep over capacity_point: one CSV row per finished point, done points skipped.
    Points are normalised first, so every row has the same columns."""
    fn = partial(capacity_point, runs_dir=None if runs_dir is None else str(runs_dir), device=device)
    return run_sweep([normalise_point(p) for p in points], fn, results_csv, executor=executor, workers=workers,
                     **sweep_kw)


# ----------------------------------------------------------------------------- the law


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
    """The largest batch whose run reaches min_steps (kn.batches.Batches' count), 1 if none does."""
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
    elsewhere). With `runs_dir`, each size's grid trains as one group (train_grid). Returns grid, lrs,
    points, rows (the finished points), missing (the points not finished, with the sizes whose grid
    is not) and fits."""
    t0, results = time.perf_counter(), Path(results)
    grid = grid_points(profile, seed)
    for arch in dict.fromkeys(p["arch"] for p in grid) if train else ():
        if runs_dir is not None:
            train_grid([p for p in grid if p["arch"] == arch], results / "grid.csv", runs_dir)
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
