"""Part 3.1, Results 1-3 and 6 (papers.md): is knowledge in biographies extractable by QA?

  mixed              biographies and train_people's QAs in one training run (Result 1)
  pretrain_finetune  pretrain on biographies, then QA finetune on train_people (Results 2-3, 6),
                     full or LoRA
Both report exact-match QA accuracy on train_people (in distribution) and test_people (out of
distribution), per attribute, next to how well the biographies were memorized (FINDINGS trap 1)
and the majority-guess baseline. Every stage is skipped when its result file is done
(kn.results.done: finished, with the same config), so an interrupted experiment continues where it
stopped. Entry points: `ExtractionConfig`, `from_profile`, `run_extraction`, `run_suite` (several
named runs of one chapter); the stages `prepare_dataset`, `stage_config`, `train_stage`, `finetune` (`chosen_lr`, `finetuned_model`).
A validation slice of train_people (data.valid_fraction; split "valid", never trained on) chooses
the finetune lr among `finetune_lr_grid` (among the lrs whose model learned its train_people);
test_people are scored once, on the final model. Every stage keeps a learning curve (kn.curves:
train_people QA, bios memorized and validation-slice QA on fixed samples, `curve_points` of them),
in its train.json and in the result's "curves"; `warmup_people` trains on a subset of people first.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from kn.data.bios import parse_augment
from kn.data.dataset import BiosConfig, load_encoded, read_meta, run_dataset
from kn.data.records import ATTRIBUTES, read_jsonl
from kn.errors import DataError
from kn.evaluate import accuracy, memorization, span_scores
from kn.guards import GUARD_TRAIN_QA
from kn.intervals import held_out_accuracy
from kn.models import ModelConfig
from kn.profiles import settings
from kn.results import done, publish, read_back, read_json, results_dir, runs_dir, write_json
from kn.tokenize import load_tokenizer
from kn.train import stop_if_interrupted, train
from kn.train_config import TrainConfig

SETTINGS = ("mixed", "pretrain_finetune")
SPLITS = ("train", "valid", "test")   # qa.jsonl's splits (kn.data.qa.split_names)


@dataclass(frozen=True)
class ExtractionConfig:
    setting: str = "mixed"
    data: BiosConfig = field(default_factory=BiosConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    exposures: float = 100.0          # times each person's knowledge is seen (paper: ~540)
    qa_fraction: float = 0.8          # mixed only
    batch_size: int = 16
    window: int = 512
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_people: float = 0.0        # pretrain/mixed curriculum: share of people trained on first (kn.train)
    warmup_people_steps: float = 0.0  # share of the steps spent on them
    curve_points: int = 30            # learning-curve points of every stage (kn.curves; 0 = none)
    curve_people: int = 200           # train_people and validation people a curve point scores
    finetune_exposures: float = 30.0  # passes over train_people's QAs
    finetune_lr: float = 1e-3
    finetune_lr_grid: tuple = ()      # candidate finetune lrs, chosen on the validation slice (needs
                                      # data.valid_fraction > 0); empty: finetune_lr alone
    finetune_batch_size: int = 16
    lora_rank: int = 0
    lora_embed_rank: int = 0
    seed: int = 0
    data_dir: str | None = None       # an existing dataset folder (kn data bios | kn data import) used
                                      # instead of generating `data` under the run folder

    def __post_init__(self):
        if self.setting not in SETTINGS:
            raise DataError(f"setting: got {self.setting!r}; allowed: {', '.join(SETTINGS)}")
        object.__setattr__(self, "finetune_lr_grid", tuple(self.finetune_lr_grid))
        if any(not isinstance(lr, (int, float)) or lr <= 0 for lr in self.finetune_lr_grid):
            raise DataError(f"finetune_lr_grid: got {self.finetune_lr_grid!r}; allowed: numbers > 0")
        for name, cls in (("data", BiosConfig), ("model", ModelConfig)):
            if isinstance(getattr(self, name), dict):
                object.__setattr__(self, name, cls(**getattr(self, name)))


def from_profile(profile: str, **overrides) -> ExtractionConfig:
    """The profile's settings for Part 3.1 experiments, with overrides: dataset keys (n, kind,
    augment, n_celebrity, the bioS style options of kn.data.bios.STYLE), `model` (a ModelConfig or dict) or any ExtractionConfig field; an unknown
    key is a DataError naming it (kn.profiles.KEYS). A table's `mixed_exposures` is the exposures of
    setting="mixed" runs."""
    s = settings("extraction", profile, **overrides)
    mixed_exposures = s.pop("mixed_exposures", None)       # a profile's budget for mixed runs, if it differs
    if mixed_exposures is not None and s.get("setting") == "mixed" and "exposures" not in overrides:
        s["exposures"] = mixed_exposures
    data = BiosConfig(**{k: s.pop(k) for k in (*DATA_KEYS, "vocab_size") if k in s}, seed=s.get("seed", 0))
    model = s.pop("model")
    return ExtractionConfig(data=data, model=model if isinstance(model, ModelConfig) else ModelConfig(**model), **s)


DATA_KEYS = ("n", "kind", "augment", "n_celebrity", "celebrity_augment", "train_fraction", "valid_fraction",
             "value_position", "pronouns", "length")


def _bios_per_person(cfg: ExtractionConfig) -> float:
    """Biographies per person in one pass (with celebrities, kn.batches.load_bios: everyone has the most)."""
    if cfg.data_dir is None:
        groups = [cfg.data.augment] + ([cfg.data.celebrity_augment] if cfg.data.n_celebrity else [])
        return max(parse_augment(a).per_person for a in groups)
    counts = read_meta(cfg.data_dir)["counts"]
    return counts["bios"] / counts["people"]


def stage_config(cfg: ExtractionConfig, data: Path, out: Path, mode: str, **kw) -> TrainConfig:
    """The kn.train config of one stage (`mode`) of the experiment, in run folder `out`; kw override it."""
    # exposures count how often each person's knowledge is seen: a multi5 corpus is passed over 1/5 as often
    passes = cfg.exposures / _bios_per_person(cfg)
    warm = {} if mode == "finetune" else {"warmup_people": cfg.warmup_people, "warmup_people_steps": cfg.warmup_people_steps}
    base = dict(data=str(data), out=str(out), mode=mode, model=replace(cfg.model, context=max(cfg.model.context, cfg.window)),
                passes=passes, qa_fraction=cfg.qa_fraction, batch_size=cfg.batch_size,
                window=cfg.window, lr=cfg.lr, weight_decay=cfg.weight_decay, seed=cfg.seed,
                curve_points=cfg.curve_points, curve_people=cfg.curve_people, **warm)
    return TrainConfig(**(base | kw))


def train_stage(cfg: TrainConfig, progress: bool = True) -> dict:
    """The out/train.json of a finished run of `cfg`: read when there (and newer than the model it
    started from), else trained. An interrupted run resumes (kn.train refuses other settings); a
    finished run of other settings, or from an older starting model, is replaced.
    kn.train.Interrupted when a signal stops the training (run again to resume)."""
    path = Path(cfg.out) / "train.json"
    start = [Path(cfg.init).parent / "train.json"] if cfg.init else []     # the run of the model it starts from
    if (record := done(path, cfg, after=start)) is not None:
        return record
    stale = done(path, cfg) is not None                                 # same settings, older starting model
    other = path.is_file() and not read_json(path).get("interrupted")
    stop_if_interrupted(train(cfg, resume=not stale, overwrite=other, progress=progress), cfg.out)
    return read_json(path)


def prepare_dataset(cfg: ExtractionConfig, path: Path) -> None:
    """The experiment's dataset at `path`: cfg.data_dir checked as it is; else generated there from
    cfg.data unless its meta.json already records that config."""
    if cfg.data_dir is not None:
        missing = [f for f in ("meta.json", "bios.jsonl", "qa.jsonl", "tokens.npz", "tokenizer") if not (path / f).exists()]
        if missing:
            raise DataError(f"data_dir: {str(path)!r} lacks {missing}; make it with `kn data bios` or `kn data import`")
        return
    run_dataset(cfg.data, path)


def evaluate_model(model_dir: Path, data: Path, batch_size: int = 64, splits: tuple = SPLITS,
                   memorize: bool = True) -> dict:
    """QA exact match of the QAs of `splits` only (train_people, the validation slice, test_people):
    per split, with test_people's per-person answers as `items` (for intervals resampled over
    people) and the majority baseline; and how well the bios are memorized. Recipes are chosen with
    splits=("valid",), so that test_people are scored once, for the final model."""
    import torch
    from transformers import AutoModelForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).to(device).eval()
    tok = load_tokenizer(model_dir)
    ids = (tok.eos_token_id, tok.pad_token_id)
    result = {"qa": {}}
    recs = list(read_jsonl(data / "qa.jsonl")) if splits else []
    split = np.array([r["split"] for r in recs])
    idx = np.flatnonzero(np.isin(split, splits))
    if len(idx):
        attribute = np.array([ATTRIBUTES.index(recs[i]["attribute"]) for i in idx])
        scores = span_scores(model, load_encoded(data, "qa").take(idx), "answer", *ids, batch_size=batch_size,
                             require_end=True)
        for s in splits:
            result["qa"][s] = accuracy(scores, attribute, split[idx] == s)
            result["qa"][f"n_{s}"] = int((split[idx] == s).sum())
        if "test" in splits:
            result["qa"]["items"] = person_items([recs[i] for i in idx], scores["exact"], "test")
            result["majority_baseline"] = majority_baseline(recs)
    if memorize:
        result["memorization"] = memorization(model, load_encoded(data, "bios"), *ids, batch_size=batch_size)
    return result


def person_items(recs: list[dict], exact: np.ndarray, split: str) -> dict:
    """{"person": ids, attribute: 0/1 per person}: exact match of each `split` person's six answers."""
    people = sorted({r["person"] for r in recs if r["split"] == split})
    row = {p: i for i, p in enumerate(people)}
    table = np.full((len(people), len(ATTRIBUTES)), -1, dtype=np.int64)
    for r, ok in zip(recs, exact):
        if r["split"] == split:
            table[row[r["person"]], ATTRIBUTES.index(r["attribute"])] = int(ok)
    return {"person": people} | {a: table[:, k].tolist() for k, a in enumerate(ATTRIBUTES)}


def majority_baseline(qa_records: list[dict]) -> dict:
    """Per attribute: accuracy of always answering the most common test_people value."""
    out = {}
    for attr in ATTRIBUTES:
        answers = [r["answer"] for r in qa_records if r["attribute"] == attr and r["split"] == "test"]
        _, counts = np.unique(answers, return_counts=True) if answers else (None, np.array([0]))
        out[attr] = float(counts.max() / max(1, len(answers)))
    return out


def run_extraction(cfg: ExtractionConfig, out: str | Path, progress: bool = True,
                   pretrained: str | Path | None = None, checkpoint_every: int = 0) -> dict:
    """Dataset (generated under out/data, or cfg.data_dir as it is) -> (mixed | pretrain -> finetune)
    -> evaluation; writes out/result.json, or returns it when it is done for cfg. `pretrained`: the
    run folder of a finished pretraining on the same corpus (kn.onelayer's shared one), finetuned
    from instead of pretraining in out/pretrain. `checkpoint_every` (steps) bounds what a killed
    pretraining or mixed run loses (a SIGTERM always checkpoints). The result keeps each stage's
    learning curve (kn.curves) under "curves"."""
    out = Path(out)
    if (record := done(out / "result.json", cfg, after=_trained(out, pretrained))) is not None:
        return record
    t0 = time.perf_counter()
    data = Path(cfg.data_dir) if cfg.data_dir is not None else out / "data"
    prepare_dataset(cfg, data)
    if cfg.setting == "pretrain_finetune":
        check_valid_slice(cfg, data)
    stages, recipes = {}, []
    if cfg.setting == "mixed":
        stages["mixed"] = train_stage(stage_config(cfg, data, out / "mixed", "mixed", checkpoint_every=checkpoint_every),
                                      progress)
        final = memorized = out / "mixed" / "model"
    else:
        pre = Path(pretrained) if pretrained is not None else out / "pretrain"
        stages["pretrain"] = read_json(pre / "train.json") if pretrained is not None else \
            train_stage(stage_config(cfg, data, pre, "pretrain", checkpoint_every=checkpoint_every), progress)
        memorized = pre / "model"
        final, stages["finetune"], recipes = finetune(cfg, data, memorized, out / "finetune", progress)
    chosen = next((r for r in recipes if r.get("chosen")), None)     # its train_people and validation scored
    result = evaluate_model(final, data, splits=("test",) if chosen else SPLITS)
    if chosen:
        result["qa"] = {k: chosen[k] for k in SCORED} | result["qa"]
        result["recipes"] = recipes
    if memorized != final:
        result["memorization"] = evaluate_model(memorized, data, splits=())["memorization"]
    result["training"] = {k: {f: v.get(f) for f in ("steps", "final_loss", "tokens_per_s", "n_params", "mfu", "device")}
                          for k, v in stages.items()}
    result["train_wall_s"] = {k: (v.get("provenance") or {}).get("wall_time_s") for k, v in stages.items()}
    result["curves"] = {k: v["curve"] for k, v in stages.items() if v.get("curve")}
    write_json(out / "result.json", config=asdict(cfg), seed=cfg.seed, wall_time=time.perf_counter() - t0, **result)
    return result


SCORED = ("train", "n_train", "valid", "n_valid")     # what a recipe's evaluation keeps


def check_valid_slice(cfg: ExtractionConfig, data: Path) -> None:
    """DataError when cfg chooses among finetune lrs and the dataset `data` has no validation slice
    (its scores would be NaN and the first lr kept)."""
    if len(cfg.finetune_lr_grid) <= 1:
        return
    if not (cfg.data.valid_fraction > 0 if cfg.data_dir is None else read_meta(data)["counts"].get("valid_people")):
        raise DataError(f"finetune_lr_grid: choosing among lrs needs a validation slice, and {str(data)!r} has none; "
                        "set valid_fraction > 0 (kn data bios|import --valid-fraction)")


def _trained(out: Path, pretrained: str | Path | None) -> list[Path]:
    """The train.json files a result in `out` was computed from (a re-run of any makes it stale)."""
    stages = [Path(pretrained) if pretrained is not None else out / "pretrain", out / "mixed", out / "finetune"]
    return [s / "train.json" for s in stages] + sorted((out / "finetune").glob("lr*/train.json"))


def finetune(cfg: ExtractionConfig, data: Path, init: Path, out: Path, progress: bool = True) -> tuple[Path, dict, list]:
    """QA finetuning of the model at `init` on train_people: at cfg.finetune_lr in `out`, or at each
    lr of cfg.finetune_lr_grid in out/lr<lr>, keeping, among the recipes that learned their task
    (train_people accuracy >= the claims' guard; all when none did), the one with the best
    validation-slice accuracy (the first on ties). Returns (model folder, its train.json, the
    recipes' train and validation scores)."""
    grid = cfg.finetune_lr_grid or (cfg.finetune_lr,)
    check_valid_slice(cfg, data)
    runs = []
    for lr in grid:
        folder = out if len(grid) == 1 else _lr_folder(out, lr)
        ft = stage_config(cfg, data, folder, "finetune", init=str(init), passes=cfg.finetune_exposures, lr=lr,
                          batch_size=cfg.finetune_batch_size, lora_rank=cfg.lora_rank,
                          lora_embed_rank=cfg.lora_embed_rank, warmup=0.0)
        runs.append((folder, train_stage(ft, progress)))
    if len(grid) == 1:
        return runs[0][0] / "model", runs[0][1], []
    recipes = []
    for lr, (f, _) in zip(grid, runs):
        qa = evaluate_model(f / "model", data, splits=("train", "valid"), memorize=False)["qa"]
        recipes.append({"finetune_lr": lr} | {k: qa[k] for k in SCORED}
                       | {"learned": 100 * qa["train"]["mean"] >= GUARD_TRAIN_QA})
    pool = [i for i in range(len(grid)) if recipes[i]["learned"]] or list(range(len(grid)))
    best = max(pool, key=lambda i: (recipes[i]["valid"]["mean"], -i))
    recipes[best]["chosen"] = True
    return runs[best][0] / "model", runs[best][1], recipes


def _lr_folder(out: Path, lr: float) -> Path:
    return out / f"lr{lr:g}"


def chosen_lr(result: dict) -> float | None:
    """The finetune lr a run chose on its validation slice (None: no grid, cfg.finetune_lr)."""
    return next((r["finetune_lr"] for r in result.get("recipes", []) if r.get("chosen")), None)


def finetuned_model(out: str | Path, result: dict) -> Path:
    """The model folder of the finetuning that `result` (of run folder `out`) evaluated."""
    lr = chosen_lr(result)
    return Path(out) / "finetune" / "model" if lr is None else _lr_folder(Path(out) / "finetune", lr) / "model"


def results_table(results: dict) -> tuple[list[str], list[list[str]]]:
    """(header, rows) for kn.display.markdown_table: per run, QA exact match of train_people, the
    validation slice and test_people (with its 95% interval over people), bios memorized, and every
    candidate finetune lr with its validation and train_people accuracy, the chosen one marked."""

    def pct(r, split):
        m = r["qa"].get(split, {}).get("mean")
        return "-" if m is None or m != m else f"{100 * m:.1f}%"

    rows = []
    for name, r in results.items():
        test = "-"
        if "items" in r["qa"]:
            t = held_out_accuracy(r)
            test = f"{t.value:.1f}% [{t.low:.1f}, {t.high:.1f}]"
        recipes = ", ".join(f"{c['finetune_lr']:g}: {100 * c['valid']['mean']:.1f}%"
                            + (f" (train {100 * c['train']['mean']:.0f}%)" if "train" in c else "")
                            + (" **chosen**" if c.get("chosen") else "") for c in r.get("recipes", []))
        rows.append([name, pct(r, "train"), pct(r, "valid"), test, f"{100 * r['memorization']['mean']:.1f}%", recipes or "-"])
    return ["run", "train_people", "validation slice", "test_people [95%]", "bios memorized",
            "finetune lr: validation accuracy (train_people)"], rows


def pretraining_key(cfg: ExtractionConfig) -> dict | None:
    """What a pretrain_finetune run's pretraining depends on (None for mixed): runs with equal keys
    can share one pretrained model."""
    if cfg.setting != "pretrain_finetune":
        return None
    return {k: v for k, v in asdict(cfg).items() if not k.startswith(("finetune", "lora"))}


def run_suite(chapter: str, profile: str, configs: dict, progress: bool = True) -> dict:
    """Run named experiments of a chapter: models and data under runs/<chapter>/<profile>/<name>/
    (not committed), each result.json published to the chapter's results folder. A run whose
    pretraining equals an earlier one's (e.g. a LoRA finetune) finetunes that model. A run with no
    folder whose published result records the same settings is that result (a page re-rendered from
    its committed files, not retrained). Returns name -> result."""
    out, pretrained = {}, {}
    for name, cfg in configs.items():
        key = json.dumps(pretraining_key(cfg), sort_keys=True, default=str)
        run = runs_dir(chapter, profile) / name
        if (record := read_back(run, results_dir(chapter, profile) / f"{name}.json", cfg)) is not None:
            out[name] = record
            continue
        run_extraction(cfg, run, progress=progress, pretrained=pretrained.get(key))
        pretrained.setdefault(key, run / "pretrain")
        out[name] = publish(run / "result.json", chapter, profile, name)
    return out
