"""Knowledge acquisition dynamics (book/papers.md, Chang et al., "How do LLMs acquire factual knowledge").

Fictional-knowledge paragraphs (kn.data.injection) are injected into a running pretraining stream
and every probe's log-probability is tracked step by step:

  background  a bio dataset that never names an injected entity; its tokenizer is trained on the
              biographies, QAs *and* every injection text, so all are tokenized alike
  base        a model pretrained on the background with kn.train for pretrain_exposures passes, kept
              at two stages: `early` (after early_fraction of the steps, half by default) and `late`
              (the end). Many people and few passes make a pass long (cpu: 10,000 people, ~74 steps a
              pass, 2 passes), so the stream does not show the same biographies every few steps (as it
              did with 400 people and 40 passes, ~4 steps a pass)
  continued   pretraining from a base goes on with a constant lr over the base's own stream past its
              end (the passes after pretrain_exposures: new shuffles of the background, the same for
              both bases); at an injection step every paragraph scheduled there replaces the start of
              its own batch row (tokens, then EOS) -- Chang et al. prepend it to one row. Groups of
              disjoint paragraphs, one run:
                once         the original text at step t0
                duplicated   the original text at t0, t0 + gap, ... (n_injections times; paper 10 x 100)
                paraphrased  the original at t0, then a different paraphrase at each later injection
                control      never injected, probed alike: what l does without the paragraph
  seeds       n_seeds runs from the same two bases (data and base pretraining are shared, to save
              time): seed s takes its own block of paragraphs (n_paragraphs per group), its own
              assignment of them to groups and its own stretch of the stream (run r = s - cfg.seed
              starts r runs' worth of passes later), so no two runs share a paragraph or a batch

Step convention: l(t) is measured on theta_t, the weights after t updates, i.e. *before* the
update of step t; the batch of step t_i holds the injection, so l(t_i) is "just before".
l(q; theta) = mean log-prob of the target tokens (those of " target") given "<eos>" + prompt.
Metrics (pure functions of a trajectory; book/papers.md, Chang et al.):
  t_LAM = argmax_t l(t) over (t_i, t_i + lam_window]     (local acquisition maximum, paper 50 steps)
  E     = l(t_LAM) - l(t_i)                                (effectivity; for controls at the same t_i)
  R(t)  = (l(t_LAM + t) - l(t_pre)) / (l(t_LAM) - l(t_pre)), t_pre = the first injection step of
          the scenario (theta before any injection), t_LAM that of the last injection; l is the mean
          over paragraphs ("minus_control": the injected mean minus the controls' mean, step by step)
Forgetting laws, least squares on R(t) after the last injection (`fit_forgetting`):
  log     R = a - b log t        Chang et al.'s "power law"; t* = exp(a / b) is their learnability
                                 threshold (a fact not seen again within ~t* steps is forgotten)
  linear  R = a - b t
  exp     R = c + a exp(-t / tau)
  AIC = n log(RSS / n) + 2 (k + 1) (Gaussian residuals, k parameters plus their variance); `best` has the
  lowest, delta_aic is its lead over the next; `power_law` only when log is best by >= AIC_MARGIN and
  decays (b > 0): a log law that fits a rising R is no forgetting.
Intervals (`bootstrap`): each of n_boot resamples draws the seeds with replacement, then within each
drawn seed its paragraphs with replacement (injected and controls apart), and recomputes the statistic
from them: the unit is a paragraph, never a step. value = the estimate from all paragraphs; low, high =
the 2.5 and 97.5 percentiles. Two runs on the same paragraphs (early and late base; batch B and
batch_factor x B) are compared on the same resamples.

Result files, in the run folder (a chapter publishes them with kn.results.publish):
  dynamics.json     {"seeds": [...], "n_boot", "scale": {people, steps_per_pass, pretrain_steps, early_step,
                     tokens_per_step, pretrain_tokens, continued_steps, continued_tokens, runs,
                     paragraphs_per_scenario, controls},
                     "injection_steps": {scenario: [...]}, "schedule": [{seed, step, row, paragraph,
                     scenario, text, n_tokens}], "stages": {stage: SUMMARY},
                     "early_vs_late": {scenario: {kind: {"effectivity" | "effectivity_minus_control":
                         {"early": I, "late": I, "late_minus_early": I}}}}  (when both stages ran),
                     "duplicated_minus_paraphrased": {stage: {kind: {"effectivity" | "effectivity_minus_control" |
                         "forgetting" | "forgetting_minus_control": I}}}  (forgetting: decay b of the log law)}
  batch_sizes.json  {"factor", "batch_sizes": [B, factor x B], "seeds", "n_boot", "tokens_per_step": {"B": ...},
                     "batches": {"B": SUMMARY, ...}, "small_minus_large": {scenario: {kind:
                         {"forgetting" | "forgetting_minus_control": I}}}}   (decay b of the smaller batch
                     minus the larger's: > 0 when the larger batch forgets more slowly)
  curves.json       {"curves": {stage: {group: {kind: [steps, mean l over the probes of every seed]}}}}
  SUMMARY = {scenario: {kind: {"effectivity": I, "control_effectivity": I, "effectivity_minus_control": I,
             "per_injection": [mean E at each injection], "t_lam": {"mean", "median", "max"} (t_LAM - t_i),
             "forgetting": F, "forgetting_minus_control": F}}}
  F = None (fewer than MIN_POINTS points of R) or {"fits": {"log": {"a", "b", "x_intercept",
      "x_intercept_tokens", "rss", "aic"}, "linear": {"a", "b", "rss", "aic"}, "exp": {"c", "a", "tau", "rss",
      "aic"}}, "best", "delta_aic", "power_law", "n", "decay_b": I (b of the log law), "valid" (share of
      resamples with a fit), "t": [...], "R": [...]}
  I = {"value", "low", "high"} (None where undefined)
Entry points: `DynamicsConfig`, `from_profile`, `run_dynamics`, `compare_batch_sizes`, `prepare_data`,
`pretrain_base`, `continue_pretraining`, `local_max`, `effectivity`, `retainability`, `fit_forgetting`,
`predict`, `bootstrap_draws`, `bootstrap`, `make_pools`, `summarize`, `early_vs_late`, `duplicated_vs_paraphrased`,
`Trajectories`, `save_trajectories`, `load_trajectories`, `mean_curves`, `interval_text`, `effectivity_table`,
`forgetting_table`, `difference_table`.
"""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from kn.data.dataset import BiosConfig, build_bios, write_bios
from kn.data.injection import MAX_PROBES, PROBE_KINDS, InjectionConfig, generate_injection, load_injection, write_injection
from kn.data.records import ATTRIBUTES
from kn.errors import DataError, check_count
from kn.models import ModelConfig
from kn.results import read_json, write_json
from kn.tokenize import encode_records, load_tokenizer, train_tokenizer

SCENARIOS = ("once", "duplicated", "paraphrased")
CONTROL = "control"              # paragraphs probed like the injected ones, never injected
STAGES = ("early", "late")
COLUMNS = ("step", "paragraph", "scenario", "kind", "probe", "logprob")
MAX_LOG_T = float(np.log(1e9))   # a fitted t* beyond 1e9 steps is reported as None (no forgetting)
LAWS = ("log", "linear", "exp")
AIC_MARGIN = 2.0                 # "power law" needs the log law's AIC lower than the others' by this
MIN_POINTS = 5                   # points of R the three fits need (exp has 3 parameters)
N_BOOT = 1000                    # bootstrap resamples


@dataclass(frozen=True)
class DynamicsConfig:
    data: BiosConfig = field(default_factory=lambda: BiosConfig(n=10000, vocab_size=4096))  # background
    model: ModelConfig = field(default_factory=ModelConfig)
    scenarios: tuple = SCENARIOS
    n_paragraphs: int = 10           # per scenario and seed, plus as many controls (paper: 120 in all)
    n_probes: int = 5                # per kind and paragraph (paper: 5)
    n_seeds: int = 3                 # runs from the shared bases: seeds seed, seed + 1, ...
    pretrain_exposures: float = 2.0  # base: passes over every biography
    pretrain_lr: float = 1e-3
    early_fraction: float = 0.5      # the early base: after this fraction of the pretraining steps
    stages: tuple = STAGES           # bases to continue from
    batch_size: int = 32             # windows per step (base and continued)
    batch_factor: int = 4            # compare_batch_sizes: batch_size x this at equal tokens (paper: 16)
    window: int = 512
    lr: float = 1e-3                 # continued pretraining, constant
    n_steps: int = 1600              # continued pretraining steps
    t0: int = 100                    # first injection; the steps before let fresh AdamW moments settle
    n_injections: int = 10           # duplicated / paraphrased (paper: 10)
    gap: int = 100                   # steps between their injections (paper: 100)
    eval_every: int = 1              # steps between measurements of l (paper: 1)
    lam_window: int = 50             # steps searched for t_LAM (paper: 50)
    device: str = "auto"             # auto | cpu | cuda
    compile: str = "auto"            # auto (GPU only) | on | off
    seed: int = 0                    # background, base and the first run

    def __post_init__(self):
        for name, cls in (("data", BiosConfig), ("model", ModelConfig)):
            if isinstance(getattr(self, name), dict):
                object.__setattr__(self, name, cls(**getattr(self, name)))
        for name in ("scenarios", "stages"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        _check_choices("scenarios", self.scenarios, SCENARIOS)
        _check_choices("stages", self.stages, STAGES)
        _check_numbers(self)
        _check_schedule(self)


def _check_choices(name: str, values: tuple, allowed: tuple) -> None:
    bad = [v for v in values if v not in allowed]
    if not values or bad or len(set(values)) != len(values):
        raise DataError(f"{name}: got {values!r}; allowed: a non-empty tuple of distinct values from {', '.join(allowed)}")


def _check_numbers(cfg: DynamicsConfig) -> None:
    check_count("n_paragraphs", cfg.n_paragraphs, 1)
    check_count("n_probes", cfg.n_probes, 1, MAX_PROBES)
    for name in ("n_seeds", "batch_factor", "batch_size", "n_steps", "n_injections", "gap", "eval_every", "lam_window"):
        check_count(name, getattr(cfg, name), 1)
    check_count("window", cfg.window, 8, cfg.model.context)
    check_count("t0", cfg.t0)
    check_count("seed", cfg.seed)
    for name in ("lr", "pretrain_lr", "pretrain_exposures"):
        if not getattr(cfg, name) > 0:
            raise DataError(f"{name}: got {getattr(cfg, name)!r}; allowed: a number > 0")
    if not 0 < cfg.early_fraction < 1:
        raise DataError(f"early_fraction: got {cfg.early_fraction!r}; allowed: a number in (0, 1)")
    for name, allowed in (("device", ("auto", "cpu", "cuda")), ("compile", ("auto", "on", "off"))):
        if getattr(cfg, name) not in allowed:
            raise DataError(f"{name}: got {getattr(cfg, name)!r}; allowed: {', '.join(allowed)}")


def _check_schedule(cfg: DynamicsConfig) -> None:
    steps = injection_steps(cfg)
    last = max(s[-1] for s in steps.values())
    if last + cfg.lam_window > cfg.n_steps:
        where = "is past the run" if last >= cfg.n_steps else "leaves less than lam_window steps"
        raise DataError(f"n_steps: the last injection, at step {last} (t0 + (n_injections - 1) * gap), {where} "
                        f"(n_steps={cfg.n_steps}, lam_window={cfg.lam_window}); allowed: n_steps >= {last + cfg.lam_window}")
    if any(len(s) > 1 for s in steps.values()) and cfg.lam_window > cfg.gap:
        raise DataError(f"lam_window: {cfg.lam_window} is longer than the gap of {cfg.gap} steps between injections; "
                        f"allowed: lam_window <= gap")
    if cfg.t0 % cfg.eval_every or cfg.gap % cfg.eval_every:
        raise DataError(f"eval_every: {cfg.eval_every} must divide t0={cfg.t0} and gap={cfg.gap}, "
                        "so that l is measured right before every injection")
    bad = [n for n in ("n_steps", "t0", "gap", "lam_window") if getattr(cfg, n) % cfg.batch_factor]
    if bad:
        raise DataError(f"batch_factor: {cfg.batch_factor} does not divide {bad[0]}={getattr(cfg, bad[0])}; allowed: "
                        "1 or a divisor of n_steps, t0, gap and lam_window (the larger batch runs 1/batch_factor of each)")
    rows = max(len(v) for v in _per_step(steps, cfg.n_paragraphs).values())
    if rows > cfg.batch_size:
        raise DataError(f"batch_size: {cfg.batch_size} rows, but {rows} paragraphs are injected at one step "
                        f"(n_paragraphs x scenarios); allowed: batch_size >= {rows}")


def injection_steps(cfg: DynamicsConfig) -> dict[str, tuple[int, ...]]:
    """Scenario -> the steps at which each of its paragraphs is injected."""
    repeated = tuple(cfg.t0 + k * cfg.gap for k in range(cfg.n_injections))
    return {s: (cfg.t0,) if s == "once" else repeated for s in cfg.scenarios}


def _per_step(steps: dict, n_paragraphs: int) -> dict[int, list]:
    """Step -> [(scenario, injection index)] repeated once per paragraph of the scenario."""
    out = defaultdict(list)
    for scenario, ts in steps.items():
        for k, t in enumerate(ts):
            out[t] += [(scenario, k)] * n_paragraphs
    return out


def groups(cfg: DynamicsConfig) -> tuple[str, ...]:
    """The paragraph groups of a run: the scenarios, then the controls."""
    return cfg.scenarios + (CONTROL,)


def seeds(cfg: DynamicsConfig) -> tuple[int, ...]:
    """The seeds of the runs: seed, seed + 1, ..., seed + n_seeds - 1."""
    return tuple(range(cfg.seed, cfg.seed + cfg.n_seeds))


def _run_index(cfg: DynamicsConfig, seed: int) -> int:
    if seed not in seeds(cfg):
        raise DataError(f"seed: got {seed!r}; allowed: one of {list(seeds(cfg))} (seed to seed + n_seeds - 1)")
    return seed - cfg.seed


def injection_config(cfg: DynamicsConfig) -> InjectionConfig:
    """Every run's paragraphs, in blocks of n_paragraphs x groups, one block per seed."""
    return InjectionConfig(n_paragraphs=cfg.n_paragraphs * len(groups(cfg)) * cfg.n_seeds,
                           n_paraphrases=max(1, cfg.n_injections - 1), n_probes=cfg.n_probes, seed=cfg.seed)


def seed_records(cfg: DynamicsConfig, records: list[dict], seed: int) -> list[dict]:
    """The block of paragraph records of one seed's run (its controls included)."""
    size = cfg.n_paragraphs * len(groups(cfg))
    r = _run_index(cfg, seed)
    if len(records) < (r + 1) * size:
        raise DataError(f"records: {len(records)} paragraphs, but seed {seed} needs {(r + 1) * size}; "
                        "prepare the data with this config (prepare_data)")
    return records[r * size: (r + 1) * size]


def assign_scenarios(n: int, scenarios: tuple, seed: int) -> list[str]:
    """Paragraph i -> its group: paragraphs shuffled (seeded), then dealt round robin, so entity
    types are not tied to a group."""
    order = np.random.default_rng([seed, 11]).permutation(n)
    out = [""] * n
    for j, i in enumerate(order):
        out[i] = scenarios[j % len(scenarios)]
    return out


# ----------------------------------------------------------------------------- data and base model


def _same_config(meta: Path, config: dict) -> bool:
    return meta.is_file() and read_json(meta)["provenance"]["config"] == json.loads(json.dumps(config, default=str))


def check_unmentioned(bios: list[dict], records: list[dict]) -> None:
    """Raise DataError if a biography names an injected entity."""
    corpus = "\n".join(b["text"] for b in bios)
    hit = [r["entity"] for r in records if r["entity"] in corpus]
    if hit:
        raise DataError(f"seed: the background biographies mention injected entities {hit[:3]}; pick another seed")


def prepare_data(cfg: DynamicsConfig, out: str | Path) -> list[dict]:
    """Write the background dataset folder (kn.data.dataset layout) with a tokenizer trained on
    biographies, QAs and injection texts, plus out/injection/; returns the paragraph records of every
    seed. Skipped when both were written with the same config."""
    out, inj = Path(out), injection_config(cfg)
    if _same_config(out / "meta.json", asdict(cfg.data)) and _same_config(out / "injection" / "meta.json", asdict(inj)):
        return load_injection(out / "injection")
    t_start = time.perf_counter()
    records = generate_injection(inj)
    ds = build_bios(cfg.data)
    check_unmentioned(ds.bios, records)
    texts = [r["text"] for r in ds.bios + ds.qa] + [t for r in records for t in (r["text"], *r["paraphrases"])]
    tok = train_tokenizer(texts, vocab_size=cfg.data.vocab_size)
    ds = replace(ds, tokenizer=tok, bios_tokens=encode_records(ds.bios, tok, keys=("name",) + ATTRIBUTES),
                 qa_tokens=encode_records(ds.qa, tok))
    write_injection(records, out / "injection", inj)
    write_bios(ds, out, wall_time=time.perf_counter() - t_start, overwrite=True)   # another config: rebuild
    return records


def stage_config(cfg: DynamicsConfig, data: Path, out: Path, **kw):
    from kn.train import TrainConfig
    base = dict(data=str(data), out=str(out), mode="pretrain", model=cfg.model, exposures=cfg.pretrain_exposures,
                batch_size=cfg.batch_size, window=cfg.window, lr=cfg.pretrain_lr, seed=cfg.seed,
                device=cfg.device, compile=cfg.compile)
    return TrainConfig(**(base | kw))


def background(cfg: DynamicsConfig, data: str | Path):
    """The base's pretraining stream (kn.train.Batches) at cfg's batch size."""
    from kn.train import Batches
    tok = load_tokenizer(Path(data) / "tokenizer")
    return Batches(stage_config(cfg, Path(data), Path(".")), tok.eos_token_id, tok.pad_token_id)


def early_step(cfg: DynamicsConfig, data: str | Path) -> int:
    """The pretraining step of the early base; DataError if pretraining is too short to have one."""
    total = background(cfg, data).total_steps
    step = max(1, int(round(cfg.early_fraction * total)))
    if step >= total:
        raise DataError(f"early_fraction: pretraining has only {total} steps, too few for an early base; "
                        "raise pretrain_exposures or the number of people")
    return step


def scale(cfg: DynamicsConfig, data: str | Path) -> dict:
    """The sizes a chapter reports: a pass over the background, the base pretraining, one continued run."""
    b, per_step = background(cfg, data), cfg.batch_size * cfg.window
    return {"people": cfg.data.n, "steps_per_pass": b.steps_per_epoch, "pretrain_steps": b.total_steps,
            "early_step": early_step(cfg, data), "tokens_per_step": per_step, "pretrain_tokens": b.total_steps * per_step,
            "continued_steps": cfg.n_steps, "continued_tokens": cfg.n_steps * per_step,
            "runs": cfg.n_seeds * len(cfg.stages), "paragraphs_per_scenario": cfg.n_paragraphs * cfg.n_seeds,
            "controls": cfg.n_paragraphs * cfg.n_seeds}


def pretrain_base(cfg: DynamicsConfig, data: str | Path, out: str | Path, progress: bool = True) -> dict:
    """Pretrain on the background (kn.train.train); returns {"early": path, "late": path}.
    The run stops at the early step, keeps that model as out/early, then resumes bit-exactly to the end.
    An interrupted pretraining with the same settings and data is resumed; any other is started again."""
    from kn.train import can_resume, checkpoint_step, stop_if_interrupted, train
    out = Path(out)
    tcfg = stage_config(cfg, Path(data), out)
    paths = {"early": out / "early", "late": out / "model"}
    data_meta = {"bios": read_json(Path(data) / "meta.json")["provenance"]["config"],    # new data or tokenizer:
                 "injection": asdict(injection_config(cfg))}                           # a new base
    if _same_config(out / "train.json", asdict(tcfg)) and _same_config(out / "data.json", data_meta) and \
            all(p.is_dir() for p in paths.values()):
        return {k: str(v) for k, v in paths.items()}
    step = early_step(cfg, data)
    resumable = _same_config(out / "data.json", data_meta) and can_resume(out, asdict(tcfg))
    if not (resumable and (paths["early"].is_dir() or checkpoint_step(out / "checkpoint") <= step)):
        shutil.rmtree(out, ignore_errors=True)
        write_json(out / "data.json", config=data_meta, early_step=step)
    if not paths["early"].is_dir():
        stop_if_interrupted(train(replace(tcfg, max_steps=step), resume=True, progress=progress), out)
        os.replace(out / "model", paths["early"])
    stop_if_interrupted(train(tcfg, resume=True, progress=progress), out)
    return {k: str(v) for k, v in paths.items()}


# ----------------------------------------------------------------------------- injection


@dataclass
class Injection:
    step: int
    row: int
    paragraph: int
    scenario: str
    text: str              # "original" | "paraphrase k"
    tokens: np.ndarray     # int [n] (EOS not included)

    def record(self) -> dict:
        return {"step": self.step, "row": self.row, "paragraph": self.paragraph, "scenario": self.scenario,
                "text": self.text, "n_tokens": int(len(self.tokens))}


def _text(rec: dict, scenario: str, k: int) -> tuple[str, str]:
    if scenario == "paraphrased" and k > 0:
        return f"paraphrase {k}", rec["paraphrases"][k - 1]
    return "original", rec["text"]


def injection_plan(cfg: DynamicsConfig, records: list[dict], tokenizer, seed: int | None = None) -> list[Injection]:
    """Every (step, row, paragraph) of seed's run (default cfg.seed) from its block of `records`; at a
    step, paragraphs take rows 0, 1, ... in order; controls are never injected.
    DataError if a text plus its EOS does not fit in the window."""
    seed = cfg.seed if seed is None else seed
    block = seed_records(cfg, records, seed)
    steps, group_of = injection_steps(cfg), assign_scenarios(len(block), groups(cfg), seed)
    by_step, cache = defaultdict(list), {}
    for rec, scenario in zip(block, group_of):
        for k, t in enumerate(steps.get(scenario, ())):
            by_step[t].append((rec, scenario, *_text(rec, scenario, k)))
    plan = []
    for t in sorted(by_step):
        for row, (rec, scenario, label, text) in enumerate(by_step[t]):
            if text not in cache:
                cache[text] = np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)
            plan.append(Injection(t, row, rec["paragraph"], scenario, label, cache[text]))
    longest = max(len(p.tokens) for p in plan)
    if longest + 1 > cfg.window:
        raise DataError(f"window: {cfg.window} tokens, but an injected paragraph has {longest} tokens plus EOS; "
                        f"allowed: window >= {longest + 1}")
    return plan


def inject(ids: np.ndarray, items: list[Injection], eos_id: int) -> np.ndarray:
    """A copy of batch ids [B, T] with each item's tokens, then EOS, replacing the start of its row."""
    ids = ids.copy()
    for it in items:
        n = len(it.tokens)
        ids[it.row, :n] = it.tokens
        ids[it.row, n] = eos_id
    return ids


class InjectedStream:
    """Batches of continued pretraining: background(step) -> ids [B, T], with the plan's paragraphs
    injected at their steps. Deterministic per step."""

    def __init__(self, background, plan: list[Injection], eos_id: int):
        self.background, self.eos = background, eos_id
        self.at = defaultdict(list)
        for it in plan:
            self.at[it.step].append(it)

    def __call__(self, step: int) -> tuple[np.ndarray, list[Injection]]:
        items = self.at.get(step, [])
        return inject(self.background(step), items, self.eos), items


def stream_start(cfg: DynamicsConfig, batches, seed: int) -> int:
    """The background step where seed's continued run starts: the base's stream past its last pass,
    run r = seed - cfg.seed after r runs' worth of passes, so runs share no batch. A run at batch_factor
    x the batch (equal tokens) reads the same passes, in rows of the same order."""
    per_run = -(-cfg.n_steps * cfg.batch_size // batches.rows_per_epoch)     # passes one run reads, rounded up
    return (math.ceil(cfg.pretrain_exposures) + _run_index(cfg, seed) * per_run) * batches.steps_per_epoch


def make_stream(cfg: DynamicsConfig, data: str | Path, records: list[dict], tokenizer,
                seed: int | None = None) -> InjectedStream:
    """Seed's continued-pretraining stream: the base's deterministic batches (kn.train) from
    `stream_start` on, plus the injections of seed's paragraphs."""
    seed = cfg.seed if seed is None else seed
    batches = background(cfg, data)
    start = stream_start(cfg, batches, seed)
    return InjectedStream(lambda step: batches(start + step)[0], injection_plan(cfg, records, tokenizer, seed),
                          tokenizer.eos_token_id)


# ----------------------------------------------------------------------------- probes and trajectories


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
    steps = _common_steps(trajs)
    present = {(g, k) for tr in trajs for g, k in zip(tr.scenario.tolist(), tr.kind.tolist())}
    return {g: {k: (steps.tolist(), np.hstack([tr.select(g, k) for tr in trajs]).mean(axis=1).tolist())
                for k in PROBE_KINDS if (g, k) in present}
            for g in SCENARIOS + (CONTROL,) if any(g == x for x, _ in present)}


def _common_steps(trajs: list[Trajectories]) -> np.ndarray:
    steps = trajs[0].steps
    if any(not np.array_equal(tr.steps, steps) for tr in trajs):
        raise DataError("trajectories: the runs were measured at different steps; pool runs of one config only")
    return steps


# ----------------------------------------------------------------------------- continued pretraining


def continue_pretraining(cfg: DynamicsConfig, data: str | Path, base: str | Path, records: list[dict], out: str | Path,
                         seed: int | None = None, progress: bool = True) -> tuple[Trajectories, list[dict]]:
    """Seed's run (default cfg.seed): continue pretraining `base` on its injected stream (kn.train.fit, run
    folder `out`, resumed when it holds a run with the same settings), measuring every probe of its
    paragraphs and controls every eval_every steps; returns the trajectories and the injection
    schedule (seed, step, row, paragraph, ...)."""
    from transformers import AutoModelForCausalLM

    from kn.train import Fit, Hooks, accelerator, can_resume, fit, stop_if_interrupted
    seed = cfg.seed if seed is None else seed
    tok = load_tokenizer(Path(data) / "tokenizer")
    stream = make_stream(cfg, data, records, tok, seed)
    acc = accelerator(cfg.device)
    model = AutoModelForCausalLM.from_pretrained(str(base), attn_implementation="sdpa")
    meta = probe_meta(seed_records(cfg, records, seed), groups(cfg), seed)
    probes = [torch.from_numpy(a).to(acc.device) for a in probe_tensors(meta["prompt"], meta["target"], tok)]
    spec = Fit(cfg.n_steps, cfg.lr, warmup=0, min_lr_ratio=1.0, compile=cfg.compile)       # constant lr
    hooks = Hooks(evaluate=lambda m: probe_logprobs(m, *probes), eval_every=cfg.eval_every)
    config = json.loads(json.dumps(asdict(cfg) | {"base": str(base), "run_seed": seed}, default=str))
    resume = can_resume(Path(out), config)
    evals = stop_if_interrupted(fit(model, lambda t: (stream(t)[0],) * 2, spec, out, config, tok, acc, hooks,
                                    resume=resume, overwrite=not resume, progress=progress, desc="continued"),
                                out)["evals"]
    steps = np.array(sorted(evals))
    schedule = [{"seed": seed} | it.record() for t in range(cfg.n_steps) for it in stream.at.get(t, [])]
    cols = {c: meta[c] for c in ("paragraph", "scenario", "kind", "probe")}
    return Trajectories(steps, torch.stack([evals[t].cpu() for t in steps]).numpy(), **cols), schedule


def _run(cfg: DynamicsConfig, out: Path, stage: str, base: str, records: list[dict], seed: int, name: str,
         progress: bool) -> tuple[Trajectories, list[dict]]:
    """One continued run in out/continued_<stage>_batch<B>_seed<s>, its table in out/trajectories_<name>_seed<s>.csv."""
    traj, schedule = continue_pretraining(cfg, out / "data", base, records,
                                          out / f"continued_{stage}_batch{cfg.batch_size}_seed{seed}", seed, progress)
    save_trajectories(traj, out / f"trajectories_{name}_seed{seed}.csv")
    return traj, schedule


# ----------------------------------------------------------------------------- metrics


def _rows(steps: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Row of each step in t (DataError if one was not measured)."""
    rows = np.searchsorted(steps, t)
    if np.any(rows >= len(steps)) or np.any(steps[np.minimum(rows, len(steps) - 1)] != t):
        raise DataError(f"steps: l was not measured at step(s) {np.setdiff1d(t, steps)[:5].tolist()}")
    return rows


def local_max(steps: np.ndarray, l: np.ndarray, t_inj: int, window: int) -> np.ndarray:
    """t_LAM per probe: the step of the largest l in (t_inj, t_inj + window]; l is [S] or [S, P]."""
    idx = np.nonzero((steps > t_inj) & (steps <= t_inj + window))[0]
    if not len(idx):
        raise DataError(f"lam_window: no measurement in ({t_inj}, {t_inj + window}]")
    return steps[idx[np.argmax(l[idx], axis=0)]]


def _take(l: np.ndarray, rows) -> np.ndarray:
    """l[rows[p], p] for every probe p (l [S, P]) or l[rows] (l [S])."""
    return l[rows] if l.ndim == 1 else l[rows, np.arange(l.shape[1])]


def effectivity(steps: np.ndarray, l: np.ndarray, t_inj: int, window: int) -> np.ndarray:
    """E = l(t_LAM) - l(t_inj) per probe (book/papers.md, Chang et al.); l(t_inj) is before the update."""
    t_lam = local_max(steps, l, t_inj, window)
    return _take(l, _rows(steps, t_lam)) - l[_rows(steps, np.array([t_inj]))[0]]


def retainability(steps: np.ndarray, l: np.ndarray, t_lam, t_pre: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """(t [H], R [H, P]) for t = 1..horizon (book/papers.md, Chang et al.); NaN where l(t_LAM + t) was not
    measured or the acquisition l(t_LAM) - l(t_pre) is not positive."""
    l2 = l[:, None] if l.ndim == 1 else l
    t_lam = np.broadcast_to(np.asarray(t_lam), (l2.shape[1],))
    pre = l2[_rows(steps, np.array([t_pre]))[0]]
    gain = _take(l2, _rows(steps, t_lam)) - pre                                          # [P]
    t = np.arange(1, horizon + 1)
    want = t_lam[None, :] + t[:, None]                                                   # [H, P]
    rows = np.minimum(np.searchsorted(steps, want), len(steps) - 1)
    ok = (steps[rows] == want) & (gain > 0)[None, :]
    R = np.where(ok, (l2[rows, np.arange(l2.shape[1])] - pre) / np.where(gain > 0, gain, 1.0), np.nan)
    keep = ok.any(axis=1)
    return t[keep], (R[keep] if l.ndim > 1 else R[keep, 0])




# ----------------------------------------------------------------------------- forgetting laws


def _lstsq(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Least squares y ~ X @ coef: (coef, residual sum of squares)."""
    coef = np.linalg.lstsq(X, y, rcond=None)[0]
    return coef, float(np.sum((y - X @ coef) ** 2))


def aic(rss: float, n: int, k: int) -> float:
    """AIC of a least-squares fit with k parameters and Gaussian residuals (their variance counts too)."""
    return float(n * np.log(max(rss, 1e-12 * n) / n) + 2 * (k + 1))


def fit_log(t, R) -> dict:
    """R = a - b log t; t* = exp(a / b) (None when R does not decay, or t* > e^MAX_LOG_T steps)."""
    t, R = np.asarray(t, float), np.asarray(R, float)
    (a, slope), rss = _lstsq(np.column_stack([np.ones_like(t), np.log(t)]), R)
    b = -slope
    t_star = float(np.exp(a / b)) if b > 0 and a / b < MAX_LOG_T else None
    return {"a": float(a), "b": float(b), "x_intercept": t_star, "rss": rss, "aic": aic(rss, len(t), 2)}


def fit_linear(t, R) -> dict:
    """R = a - b t."""
    t, R = np.asarray(t, float), np.asarray(R, float)
    (a, slope), rss = _lstsq(np.column_stack([np.ones_like(t), t]), R)
    return {"a": float(a), "b": float(-slope), "rss": rss, "aic": aic(rss, len(t), 2)}


def fit_exp(t, R) -> dict:
    """R = c + a exp(-t / tau): c and a by least squares at each tau; tau on a log grid from 0.1 x the
    first t to 100 x the last (there the law is a line), then refined between the grid's neighbours."""
    from scipy.optimize import minimize_scalar
    t, R = np.asarray(t, float), np.asarray(R, float)

    def fit(log_tau):
        return _lstsq(np.column_stack([np.ones_like(t), np.exp(-t / np.exp(log_tau))]), R)

    grid = np.log(np.geomspace(0.1 * t.min(), 100 * t.max(), 60))
    k = int(np.argmin([fit(g)[1] for g in grid]))
    best = minimize_scalar(lambda g: fit(g)[1], bounds=(grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]),
                           method="bounded").x
    log_tau = best if fit(best)[1] <= fit(grid[k])[1] else grid[k]
    (c, a), rss = fit(log_tau)
    return {"c": float(c), "a": float(a), "tau": float(np.exp(log_tau)), "rss": rss, "aic": aic(rss, len(t), 3)}


FITS = {"log": fit_log, "linear": fit_linear, "exp": fit_exp}


def predict(law: str, fit: dict, t) -> np.ndarray:
    """R(t) of a fitted law (a figure's line)."""
    t = np.asarray(t, float)
    if law == "log":
        return fit["a"] - fit["b"] * np.log(t)
    if law == "linear":
        return fit["a"] - fit["b"] * t
    if law == "exp":
        return fit["c"] + fit["a"] * np.exp(-t / fit["tau"])
    raise DataError(f"law: got {law!r}; allowed: {', '.join(LAWS)}")


def fit_forgetting(t, R) -> dict:
    """The three forgetting laws on the finite points of R(t): {"fits": law -> its fit with "aic",
    "best": the law of lowest AIC, "delta_aic": its lead over the next, "power_law": best is log by
    >= AIC_MARGIN and decays (b > 0), "n": points}. DataError with fewer than MIN_POINTS points."""
    t, R = np.asarray(t, float), np.asarray(R, float)
    ok = np.isfinite(R) & (t > 0)
    if ok.sum() < MIN_POINTS:
        raise DataError(f"R: {int(ok.sum())} finite points; the fits need at least {MIN_POINTS}")
    fits = {law: FITS[law](t[ok], R[ok]) for law in LAWS}
    order = sorted(LAWS, key=lambda law: fits[law]["aic"])
    delta = fits[order[1]]["aic"] - fits[order[0]]["aic"]
    power = order[0] == "log" and delta >= AIC_MARGIN and fits["log"]["b"] > 0
    return {"fits": fits, "best": order[0], "delta_aic": float(delta), "power_law": bool(power), "n": int(ok.sum())}


# ----------------------------------------------------------------------------- pooled paragraphs and intervals


@dataclass
class Pool:
    """One scenario and probe kind over every seed's run, one column per paragraph (the mean over its
    probes): l [S, N] and E at each injection [I, N] of the injected paragraphs, the same for the
    controls (control_l [S, M], control_E at the scenario's injection steps); seed [N] and
    control_seed [M] name each column's run; t_lam [I x probes]: t_LAM - t_i of the injected probes."""
    steps: np.ndarray
    inj: tuple
    window: int
    tokens_per_step: int
    l: np.ndarray
    E: np.ndarray
    seed: np.ndarray
    control_l: np.ndarray
    control_E: np.ndarray
    control_seed: np.ndarray
    t_lam: np.ndarray


def paragraph_means(traj: Trajectories, group: str, kind: str, inj: tuple, window: int):
    """(l [S, n], E [I, n], t_LAM - t_i [I x p]) of one group's paragraphs in one run: E per probe at
    each injection step in `inj`, then every column averaged over a paragraph's probes."""
    mask = (traj.scenario == group) & (traj.kind == kind)
    l, para = traj.logprob[:, mask], traj.paragraph[mask]
    onehot = para[:, None] == np.unique(para)[None, :]
    avg = onehot / onehot.sum(axis=0)                                                  # [p, n]
    E = np.stack([effectivity(traj.steps, l, t, window) for t in inj])                 # [I, p]
    lam = np.concatenate([local_max(traj.steps, l, t, window) - t for t in inj])
    return l @ avg, E @ avg, lam


def make_pools(trajs: dict[int, Trajectories], cfg: DynamicsConfig) -> dict[tuple[str, str], Pool]:
    """(scenario, kind) -> its Pool over the runs `trajs` (seed -> trajectories of one stage)."""
    steps = _common_steps(list(trajs.values()))
    return {(s, k): _pool(trajs, steps, s, k, inj, cfg) for s, inj in injection_steps(cfg).items() for k in PROBE_KINDS}


def _pool(trajs: dict, steps: np.ndarray, scenario: str, kind: str, inj: tuple, cfg: DynamicsConfig) -> Pool:
    part = {g: [paragraph_means(trajs[seed], g, kind, inj, cfg.lam_window) for seed in trajs] for g in (scenario, CONTROL)}
    label = {g: np.concatenate([np.full(p[0].shape[1], seed) for seed, p in zip(trajs, part[g])]) for g in part}
    l, E = ({g: np.hstack([p[i] for p in part[g]]) for g in part} for i in (0, 1))
    return Pool(steps, inj, cfg.lam_window, cfg.batch_size * cfg.window, l[scenario], E[scenario], label[scenario],
                l[CONTROL], E[CONTROL], label[CONTROL], np.concatenate([p[2] for p in part[scenario]]))


def forgetting_curve(pool: Pool, curve: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(t, R) of a mean curve [S] after the pool's last injection, at the steps where it was measured."""
    steps, inj, w = pool.steps, pool.inj, pool.window
    t, R = retainability(steps, curve, local_max(steps, curve, inj[-1], w), inj[0], int(steps[-1] - (inj[-1] + w)))
    ok = np.isfinite(R)
    return t[ok], R[ok]


def _decay(pool: Pool, curve: np.ndarray) -> float:
    """b of the log law fitted to the curve's R (NaN with fewer than MIN_POINTS points)."""
    t, R = forgetting_curve(pool, curve)
    return fit_log(t, R)["b"] if len(t) >= MIN_POINTS else float("nan")


STATISTICS = {   # name -> (pool, injected columns, control columns) -> number
    "effectivity": lambda p, i, j: p.E[:, i].mean(),
    "control_effectivity": lambda p, i, j: p.control_E[:, j].mean(),
    "effectivity_minus_control": lambda p, i, j: p.E[:, i].mean() - p.control_E[:, j].mean(),
    "forgetting": lambda p, i, j: _decay(p, p.l[:, i].mean(axis=1)),
    "forgetting_minus_control": lambda p, i, j: _decay(p, p.l[:, i].mean(axis=1) - p.control_l[:, j].mean(axis=1)),
}


def bootstrap_draws(labels: list[np.ndarray], n_boot: int, seed: int = 0) -> list[list[np.ndarray]]:
    """n_boot two-stage resamples of units labelled by their group (a paragraph by its run's seed):
    each draws the groups with replacement, then within each drawn group as many of its units, with
    replacement, for each array of labels apart (injected and control paragraphs); returns per
    resample one index array per array of labels. The same labels and seed give the same resamples."""
    rng = np.random.default_rng([seed, 13])
    names = np.unique(np.concatenate(labels))
    members = [{g: np.flatnonzero(lab == g) for g in names} for lab in labels]
    out = []
    for _ in range(n_boot):
        drawn = rng.choice(names, size=len(names))
        out.append([np.concatenate([rng.choice(m[g], size=len(m[g])) for g in drawn]) for m in members])
    return out


@lru_cache(maxsize=4)
def _draws(seed: tuple, control_seed: tuple, n_boot: int) -> list[list[np.ndarray]]:
    return bootstrap_draws([np.array(seed), np.array(control_seed)], n_boot)


def _number(x) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


def interval(value: float, samples) -> dict:
    """{"value", "low", "high"}: the estimate and the 2.5 / 97.5 percentiles of its finite resamples;
    all None when the estimate itself is undefined."""
    s = np.asarray(samples, float)
    s = s[np.isfinite(s)]
    low, high = np.percentile(s, [2.5, 97.5]) if len(s) and _number(value) is not None else (None, None)
    return {"value": _number(value), "low": _number(low), "high": _number(high)}


def bootstrap(pools: tuple[Pool, ...], name: str, n_boot: int = N_BOOT, combine=None) -> tuple[dict, float]:
    """(interval, share of resamples where it is defined) of combine(statistic `name` of each pool) --
    pools over the same paragraphs, resampled alike; combine defaults to the one pool's value."""
    first, stat = pools[0], STATISTICS[name]
    if any(not (np.array_equal(p.seed, first.seed) and np.array_equal(p.control_seed, first.control_seed))
           for p in pools):
        raise DataError("pools: the runs compared hold different paragraphs; compare runs of the same seeds")
    combine = combine or (lambda v: v)
    every = (slice(None), slice(None))
    draws = _draws(tuple(first.seed), tuple(first.control_seed), n_boot)
    samples = [combine(*(stat(p, i, j) for p in pools)) for i, j in draws]
    return interval(combine(*(stat(p, *every) for p in pools)), samples), float(np.mean(np.isfinite(samples)))


# ----------------------------------------------------------------------------- summaries


def _forgetting(pool: Pool, curve: np.ndarray, name: str, n_boot: int) -> dict | None:
    t, R = forgetting_curve(pool, curve)
    if len(t) < MIN_POINTS:
        return None
    f = fit_forgetting(t, R)
    x = f["fits"]["log"]["x_intercept"]
    f["fits"]["log"]["x_intercept_tokens"] = None if x is None else x * pool.tokens_per_step
    decay, valid = bootstrap((pool,), name, n_boot)
    return f | {"decay_b": decay, "valid": valid, "t": t.tolist(), "R": R.tolist()}


def summarize_pool(pool: Pool, n_boot: int = N_BOOT) -> dict:
    """One scenario and kind: effectivity (injected, control, their difference) with intervals, E per
    injection, t_LAM - t_i, and the forgetting laws after the last injection (module docstring, SUMMARY)."""
    out = {name: bootstrap((pool,), name, n_boot)[0]
           for name in ("effectivity", "control_effectivity", "effectivity_minus_control")}
    lam = pool.t_lam
    out |= {"per_injection": pool.E.mean(axis=1).tolist(),
            "t_lam": {"mean": float(lam.mean()), "median": float(np.median(lam)), "max": int(lam.max())}}
    mean, control = pool.l.mean(axis=1), pool.control_l.mean(axis=1)
    return out | {"forgetting": _forgetting(pool, mean, "forgetting", n_boot),
                  "forgetting_minus_control": _forgetting(pool, mean - control, "forgetting_minus_control", n_boot)}


def summarize(pools: dict[tuple[str, str], Pool], n_boot: int = N_BOOT) -> dict:
    """scenario -> kind -> summarize_pool."""
    out = defaultdict(dict)
    for (s, k), pool in pools.items():
        out[s][k] = summarize_pool(pool, n_boot)
    return dict(out)


def differences(a: dict, b: dict, names: tuple, n_boot: int = N_BOOT) -> dict:
    """scenario -> kind -> name -> interval of statistic(b) - statistic(a), pools a and b on the same paragraphs."""
    out = defaultdict(dict)
    for key in a:
        out[key[0]][key[1]] = {n: bootstrap((a[key], b[key]), n, n_boot, lambda x, y: y - x)[0] for n in names}
    return dict(out)


def duplicated_vs_paraphrased(pools: dict, n_boot: int = N_BOOT) -> dict:
    """kind -> name -> interval of duplicated minus paraphrased (effectivity, forgetting, and both minus
    control): their paragraphs differ but share the runs, so the seeds are resampled together."""
    names = ("effectivity", "effectivity_minus_control", "forgetting", "forgetting_minus_control")
    return {k: {n: bootstrap((pools["duplicated", k], pools["paraphrased", k]), n, n_boot, lambda d, p: d - p)[0]
                for n in names} for k in PROBE_KINDS}


def early_vs_late(early: dict, late: dict, n_boot: int = N_BOOT) -> dict:
    """scenario -> kind -> effectivity and effectivity_minus_control: {"early", "late", "late_minus_early"}."""
    names = ("effectivity", "effectivity_minus_control")
    diff, out = differences(early, late, names, n_boot), defaultdict(dict)
    for (s, k) in early:
        out[s][k] = {n: {"early": bootstrap((early[s, k],), n, n_boot)[0], "late": bootstrap((late[s, k],), n, n_boot)[0],
                         "late_minus_early": diff[s][k][n]} for n in names}
    return dict(out)


# ----------------------------------------------------------------------------- experiments


def from_profile(profile: str, **overrides) -> DynamicsConfig:
    """The profile's settings (kn.profiles "dynamics"): background size n and vocab_size, `model`
    (a dict or ModelConfig) and any DynamicsConfig field; overrides replace them."""
    from kn.profiles import settings
    s = settings("dynamics", profile, **overrides)   # an unknown override names itself
    data = BiosConfig(n=s.pop("n"), vocab_size=s.pop("vocab_size"), seed=s.get("seed", 0))
    model = s.pop("model")
    return DynamicsConfig(data=data, model=model if isinstance(model, ModelConfig) else ModelConfig(**model), **s)


def _prepare(cfgs: tuple, out: Path, progress: bool) -> tuple[list[dict], dict]:
    """Data and bases for the configs' runs (all share cfgs[0]'s), checking every seed's injection plan
    against the window before any training."""
    records = prepare_data(cfgs[0], out / "data")
    tok = load_tokenizer(out / "data" / "tokenizer")
    for c in cfgs:
        for s in seeds(c):
            injection_plan(c, records, tok, s)
    return records, pretrain_base(cfgs[0], out / "data", out / "base", progress)


def run_dynamics(cfg: DynamicsConfig, out_dir: str | Path, progress: bool = True, n_boot: int = N_BOOT) -> dict:
    """Data -> base (early, late) -> one continued run per stage in cfg.stages and seed (run folders
    out_dir/continued_<stage>_batch<B>_seed<s>, resumed after an interruption). Writes
    out_dir/trajectories_<stage>_seed<s>.csv, dynamics.json and curves.json (module docstring); returns
    dynamics.json's content plus "curves", "trajectories" (stage -> seed -> Trajectories) and "bases"."""
    out, t_start = Path(out_dir), time.perf_counter()
    records, bases = _prepare((cfg,), out, progress)
    trajs, schedule = {}, []
    for stage in cfg.stages:
        trajs[stage] = {}
        for s in seeds(cfg):
            trajs[stage][s], sched = _run(cfg, out, stage, bases[stage], records, s, stage, progress)
            schedule += sched if stage == cfg.stages[0] else []
    pools = {stage: make_pools(trajs[stage], cfg) for stage in cfg.stages}
    result = {"seeds": list(seeds(cfg)), "n_boot": n_boot, "scale": scale(cfg, out / "data"),
              "injection_steps": injection_steps(cfg), "schedule": schedule,
              "stages": {stage: summarize(pools[stage], n_boot) for stage in cfg.stages}}
    if set(STAGES) <= set(cfg.stages):
        result["early_vs_late"] = early_vs_late(pools["early"], pools["late"], n_boot)
    if {"duplicated", "paraphrased"} <= set(cfg.scenarios):
        result["duplicated_minus_paraphrased"] = {stage: duplicated_vs_paraphrased(pools[stage], n_boot)
                                                  for stage in cfg.stages}
    write_json(out / "dynamics.json", config=asdict(cfg), seed=cfg.seed, wall_time=time.perf_counter() - t_start, **result)
    curves = {stage: mean_curves(list(trajs[stage].values())) for stage in cfg.stages}
    write_json(out / "curves.json", config=asdict(cfg), seed=cfg.seed, curves=curves)
    return result | {"curves": curves, "trajectories": trajs, "bases": bases}


def scaled(cfg: DynamicsConfig) -> DynamicsConfig:
    """cfg with batch_factor x the batch and 1/batch_factor the steps (schedule included): equal tokens."""
    f = cfg.batch_factor
    if f < 2:
        raise DataError(f"batch_factor: got {f}; allowed: an integer >= 2 to compare batch sizes")
    fields_ = ("n_steps", "t0", "gap", "lam_window")      # divisible by f: DynamicsConfig checks it
    return replace(cfg, batch_size=cfg.batch_size * f, stages=("late",), batch_factor=1, eval_every=1,
                   **{n: getattr(cfg, n) // f for n in fields_})


def compare_batch_sizes(cfg: DynamicsConfig, out_dir: str | Path, progress: bool = True, n_boot: int = N_BOOT) -> dict:
    """Continued pretraining from the late base with batch B and batch_factor x B at equal tokens, every
    seed (Chang et al.: larger batches forget more slowly); batch B's runs are run_dynamics' late runs,
    resumed if finished. Writes out_dir/batch_sizes.json (module docstring) and returns its content."""
    out, t_start, big = Path(out_dir), time.perf_counter(), scaled(cfg)
    records, bases = _prepare((cfg, big), out, progress)
    pools = {}
    for c in (cfg, big):
        trajs = {s: _run(c, out, "late", bases["late"], records, s, f"batch{c.batch_size}", progress)[0] for s in seeds(c)}
        pools[c.batch_size] = make_pools(trajs, c)
    names = ("forgetting", "forgetting_minus_control")
    result = {"factor": cfg.batch_factor, "batch_sizes": [cfg.batch_size, big.batch_size], "seeds": list(seeds(cfg)),
              "n_boot": n_boot, "tokens_per_step": {str(c.batch_size): c.batch_size * c.window for c in (cfg, big)},
              "batches": {str(B): summarize(p, n_boot) for B, p in pools.items()},
              "small_minus_large": differences(pools[big.batch_size], pools[cfg.batch_size], names, n_boot)}
    write_json(out / "batch_sizes.json", config=asdict(cfg), seed=cfg.seed, wall_time=time.perf_counter() - t_start,
               **result)
    return result


# ----------------------------------------------------------------------------- tables


def interval_text(iv: dict | None) -> str:
    """An interval as "value [low, high]"; blank where undefined."""
    if not iv or iv["value"] is None:
        return ""
    bounds = "" if iv["low"] is None else f" [{iv['low']:.3g}, {iv['high']:.3g}]"
    return f"{iv['value']:.3g}{bounds}"


def effectivity_table(stages: dict, scenarios=SCENARIOS):
    """Effectivity of the injected paragraphs, of the controls and their difference (nats, 95% interval),
    one row per stage, scenario and probe kind, as Markdown."""
    from kn.display import markdown_table
    names = ("effectivity", "control_effectivity", "effectivity_minus_control")
    rows = [[stage, s, k] + [interval_text(summary[s][k][n]) for n in names]
            for stage, summary in stages.items() for s in scenarios for k in PROBE_KINDS]
    return markdown_table(["base", "scenario", "kind", "E injected", "E control", "E injected - control"], rows)


def forgetting_table(summaries: dict, key: str = "forgetting", scenarios=SCENARIOS):
    """The forgetting laws per label (a stage, a batch size), scenario and kind: AIC of each law, the best
    and its lead, the log law's decay b (95% interval) and t*, as Markdown; blank where there is no fit."""
    from kn.display import markdown_table
    rows = []
    for label, summary in summaries.items():
        for s in scenarios:
            for k in PROBE_KINDS:
                f = summary[s][k][key]
                rows.append([label, s, k] + ([""] * 6 if f is None else _law_cells(f)))
    return markdown_table(["run", "scenario", "kind", "AIC log", "AIC linear", "AIC exp", "lowest AIC by",
                           "decay b (log law)", "t* (steps)"], rows)


def _law_cells(f: dict) -> list[str]:
    t_star = f["fits"]["log"]["x_intercept"]
    return [*(f"{f['fits'][law]['aic']:.1f}" for law in LAWS), f"{f['best']} by {f['delta_aic']:.1f}",
            interval_text(f["decay_b"]), "" if t_star is None else f"{t_star:.3g}"]


def difference_table(diffs: dict, scenarios=SCENARIOS):
    """A comparison of two runs (early_vs_late or small_minus_large): one row per scenario and kind, one
    column per statistic (its intervals), as Markdown."""
    from kn.display import markdown_table
    first = diffs[scenarios[0]][PROBE_KINDS[0]]
    cols = [(n, sub) for n, v in first.items() for sub in (v if "value" not in v else [None])]
    rows = [[s, k] + [interval_text(diffs[s][k][n] if sub is None else diffs[s][k][n][sub]) for n, sub in cols]
            for s in scenarios for k in PROBE_KINDS]
    return markdown_table(["scenario", "kind"] + [n if sub is None else f"{n}: {sub}" for n, sub in cols], rows)
