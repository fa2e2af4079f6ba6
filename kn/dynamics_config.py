"""The settings of the acquisition-dynamics experiment (book/papers.md, Chang et al.) and the schedule
they fix before any data or training (kn.dynamics runs it).

`DynamicsConfig` is validated once (kn.errors.DataError naming the field and what is allowed); from it:
  groups     a run's paragraph groups: the scenarios (once, duplicated, paraphrased), then the controls
             (never injected, probed alike)
  seeds      the runs: seed, seed + 1, ...; run r = seed - cfg.seed (`run_index`) takes block r of the
             paragraphs (`seed_records`) and deals it to the groups in its own shuffled order
             (`assign_scenarios`)
  injection  the steps of each scenario's injections (`injection_steps`: t0 for once; t0, t0 + gap, ...
             for duplicated and paraphrased) and the paragraphs every run needs (`injection_config`)
Entry points: `DynamicsConfig`, `injection_steps`, `groups`, `seeds`, `run_index`, `seed_records`,
`assign_scenarios`, `injection_config`; `SCENARIOS`, `CONTROL`, `STAGES`.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from kn.data.dataset import BiosConfig
from kn.data.injection import MAX_PROBES, InjectionConfig
from kn.errors import DataError, check_count
from kn.models import ModelConfig

SCENARIOS = ("once", "duplicated", "paraphrased")
CONTROL = "control"              # paragraphs probed like the injected ones, never injected
STAGES = ("early", "late")
N_BOOT = 1000                    # bootstrap resamples of an interval (kn.dynamics_summary)


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
    n_boot: int = N_BOOT             # bootstrap resamples of every interval the runs report
    device: str = "auto"             # auto | cpu | cuda
    compile: str = "auto"            # auto (kn.train.compile_setting) | on | off
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
    for name in ("n_seeds", "batch_factor", "batch_size", "n_steps", "n_injections", "gap", "eval_every", "lam_window",
                 "n_boot"):
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


def run_index(cfg: DynamicsConfig, seed: int) -> int:
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
    r = run_index(cfg, seed)
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
