"""Knowledge acquisition dynamics (book/papers.md, Chang et al., "How do LLMs acquire factual knowledge").

Fictional-knowledge paragraphs (kn.data.injection) are injected into a running pretraining stream
and every probe's log-probability is tracked step by step:

  background  a bio dataset that never names an injected entity; its tokenizer is trained on the
              biographies, QAs *and* the injection texts, so both are tokenized alike
  base        a model pretrained on the background with kn.train, kept at two stages: `early`
              (after early_fraction of the steps) and `late` (the final model)
  continued   pretraining from a base goes on with a constant lr; at an injection step every
              paragraph scheduled there replaces the start of its own batch row (tokens, then EOS)
              -- Chang et al. prepend it to one row. Scenarios, disjoint paragraphs, one run:
                once         the original text at step t0
                duplicated   the original text at t0, t0 + gap, ... (n_injections times; paper 10 x 100)
                paraphrased  the original at t0, then a different paraphrase at each later injection

Step convention: l(t) is measured on theta_t, the weights after t updates, i.e. *before* the
update of step t; the batch of step t_i holds the injection, so l(t_i) is "just before".
l(q; theta) = mean log-prob of the target tokens (those of " target") given "<eos>" + prompt.
Metrics (pure functions of a trajectory; book/papers.md, Chang et al.):
  t_LAM = argmax_t l(t) over (t_i, t_i + lam_window]     (local acquisition maximum, paper 50 steps)
  E     = l(t_LAM) - l(t_i)                                (effectivity)
  R(t)  = (l(t_LAM + t) - l(t_pre)) / (l(t_LAM) - l(t_pre)), t_pre = the first injection step of
          the scenario (theta before any injection), t_LAM that of the last injection
  fit   R = a - b log t (least squares); the x-intercept t* = exp(a / b) is the paper's
        learnability threshold: a fact not seen again within ~t* steps is forgotten entirely.
Entry points: `DynamicsConfig`, `from_profile`, `run_dynamics`, `compare_batch_sizes`, `prepare_data`,
`pretrain_base`, `continue_pretraining`, `local_max`, `effectivity`, `retainability`,
`fit_forgetting`, `summarize`, `Trajectories`, `save_trajectories`, `load_trajectories`, `mean_curves`,
`fit_table`.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace
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
STAGES = ("early", "late")
COLUMNS = ("step", "paragraph", "scenario", "kind", "probe", "logprob")
MAX_LOG_T = float(np.log(1e9))   # a fitted t* beyond 1e9 steps is reported as None (no forgetting)


@dataclass(frozen=True)
class DynamicsConfig:
    data: BiosConfig = field(default_factory=lambda: BiosConfig(n=2000, vocab_size=4096))  # background
    model: ModelConfig = field(default_factory=ModelConfig)
    scenarios: tuple = SCENARIOS
    n_paragraphs: int = 10           # per scenario (paper: 120 in all)
    n_probes: int = 5                # per kind and paragraph (paper: 5)
    pretrain_exposures: float = 20.0  # base: passes over every biography
    pretrain_lr: float = 1e-3
    early_fraction: float = 0.25     # the early base: after this fraction of the pretraining steps
    stages: tuple = STAGES           # bases to continue from
    batch_size: int = 32             # windows per step (base and continued)
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
    seed: int = 0

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
    for name in ("batch_size", "n_steps", "n_injections", "gap", "eval_every", "lam_window"):
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


def injection_config(cfg: DynamicsConfig) -> InjectionConfig:
    return InjectionConfig(n_paragraphs=cfg.n_paragraphs * len(cfg.scenarios), n_paraphrases=max(1, cfg.n_injections - 1),
                           n_probes=cfg.n_probes, seed=cfg.seed)


def assign_scenarios(n: int, scenarios: tuple, seed: int) -> list[str]:
    """Paragraph i -> its scenario: paragraphs shuffled (seeded), then dealt round robin, so
    entity types are not tied to a scenario."""
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
    biographies, QAs and injection texts, plus out/injection/; returns the paragraph records.
    Skipped when both were written with the same config."""
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


def _total_steps(tcfg) -> int:
    from kn.train import Batches
    tok = load_tokenizer(Path(tcfg.data) / "tokenizer")
    return Batches(tcfg, tok.eos_token_id, tok.pad_token_id).total_steps


def early_step(cfg: DynamicsConfig, data: str | Path) -> int:
    """The pretraining step of the early base; DataError if pretraining is too short to have one."""
    total = _total_steps(stage_config(cfg, Path(data), Path(".")))
    step = max(1, int(round(cfg.early_fraction * total)))
    if step >= total:
        raise DataError(f"early_fraction: pretraining has only {total} steps, too few for an early base; "
                        "raise pretrain_exposures or the number of people")
    return step


def pretrain_base(cfg: DynamicsConfig, data: str | Path, out: str | Path, progress: bool = True) -> dict:
    """Pretrain on the background (kn.train.train); returns {"early": path, "late": path}.
    The run stops at the early step, keeps that model as out/early, then resumes bit-exactly to the end.
    An interrupted pretraining with the same settings and data is resumed; any other is started again."""
    from kn.train import can_resume, checkpoint_step, stop_if_interrupted, train
    out = Path(out)
    tcfg = stage_config(cfg, Path(data), out)
    paths = {"early": out / "early", "late": out / "model"}
    data_meta = read_json(Path(data) / "meta.json")["provenance"]["config"]     # a new dataset means a new base
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


def injection_plan(cfg: DynamicsConfig, records: list[dict], tokenizer) -> list[Injection]:
    """Every (step, row, paragraph) of the run; at a step, paragraphs take rows 0, 1, ... in order.
    DataError if a text plus its EOS does not fit in the window."""
    steps, scenario_of = injection_steps(cfg), assign_scenarios(len(records), cfg.scenarios, cfg.seed)
    by_step, cache = defaultdict(list), {}
    for rec, scenario in zip(records, scenario_of):
        for k, t in enumerate(steps[scenario]):
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


def make_stream(cfg: DynamicsConfig, data: str | Path, records: list[dict], tokenizer) -> InjectedStream:
    """The continued-pretraining stream: kn.train's deterministic background batches plus injections."""
    from kn.train import Batches
    batches = Batches(stage_config(cfg, Path(data), Path(".")), tokenizer.eos_token_id, tokenizer.pad_token_id)
    return InjectedStream(lambda step: batches(step)[0], injection_plan(cfg, records, tokenizer), tokenizer.eos_token_id)


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


def mean_curves(traj: Trajectories) -> dict[str, dict[str, tuple[list, list]]]:
    """scenario -> kind -> (steps, mean l over its probes at each step), as plain lists: the reduced
    trajectories a chapter plots and keeps when the full table is too large to commit."""
    steps, present = traj.steps.tolist(), set(zip(traj.scenario.tolist(), traj.kind.tolist()))
    return {s: {k: (steps, traj.select(s, k).mean(axis=1).tolist()) for k in PROBE_KINDS if (s, k) in present}
            for s in SCENARIOS if any(s == x for x, _ in present)}


def fit_table(batch: dict, scenarios=SCENARIOS):
    """`compare_batch_sizes`' forgetting fits as Markdown for a notebook to display: one row per
    scenario, probe kind and batch size; a cell is blank where there is no fit or no t*."""
    from kn.display import markdown_table
    cols = {"b": "b", "r2": "r²", "x_intercept": "t* (steps)", "x_intercept_tokens": "t* (tokens)"}
    cell = lambda v: "" if v is None else f"{v:.3g}"
    rows = [[s, k, B] + [cell((batch[B][s][k] or {}).get(c)) for c in cols]
            for s in scenarios for k in PROBE_KINDS for B in sorted(batch)]
    return markdown_table(["scenario", "kind", "batch", *cols.values()], rows)


# ----------------------------------------------------------------------------- continued pretraining


def continue_pretraining(cfg: DynamicsConfig, data: str | Path, base: str | Path, records: list[dict], out: str | Path,
                         progress: bool = True) -> tuple[Trajectories, list[dict]]:
    """Continue pretraining `base` on the injected stream (kn.train.fit, run folder `out`, resumed when
    it holds a run with the same settings), measuring every probe every eval_every steps; returns the
    trajectories and the injection schedule (step, row, paragraph, ...)."""
    from transformers import AutoModelForCausalLM

    from kn.train import Fit, Hooks, accelerator, can_resume, fit, stop_if_interrupted
    tok = load_tokenizer(Path(data) / "tokenizer")
    stream = make_stream(cfg, data, records, tok)
    acc = accelerator(cfg.device)
    model = AutoModelForCausalLM.from_pretrained(str(base), attn_implementation="sdpa")
    meta = probe_meta(records, cfg.scenarios, cfg.seed)
    probes = [torch.from_numpy(a).to(acc.device) for a in probe_tensors(meta["prompt"], meta["target"], tok)]
    spec = Fit(cfg.n_steps, cfg.lr, warmup=0, min_lr_ratio=1.0, compile=cfg.compile)       # constant lr
    hooks = Hooks(evaluate=lambda m: probe_logprobs(m, *probes), eval_every=cfg.eval_every)
    config = json.loads(json.dumps(asdict(cfg) | {"base": str(base)}, default=str))
    resume = can_resume(Path(out), config)
    evals = stop_if_interrupted(fit(model, lambda t: (stream(t)[0],) * 2, spec, out, config, tok, acc, hooks,
                                    resume=resume, overwrite=not resume, progress=progress, desc="continued"),
                                out)["evals"]
    steps = np.array(sorted(evals))
    schedule = [it.record() for t in range(cfg.n_steps) for it in stream.at.get(t, [])]
    cols = {c: meta[c] for c in ("paragraph", "scenario", "kind", "probe")}
    return Trajectories(steps, torch.stack([evals[t].cpu() for t in steps]).numpy(), **cols), schedule


def _continued(out: Path, stage: str, cfg: DynamicsConfig) -> Path:
    """The run folder of continued pretraining from a stage's base at cfg's batch size."""
    return out / f"continued_{stage}_batch{cfg.batch_size}"


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


def fit_forgetting(t, R) -> dict:
    """Least squares R = a - b log t (Chang et al.: forgetting is a power law in t).

    Returns a, b (the decay), slope (= -b) with its 95% interval, r2, n, and the x-intercept
    t* = exp(a / b): the paper's learnability threshold, the steps after which the acquired
    knowledge is fully forgotten (None when the fit does not decay, or decays so slowly that t*
    lies beyond e^MAX_LOG_T steps)."""
    from scipy import stats
    t, R = np.asarray(t, dtype=float), np.asarray(R, dtype=float)
    ok = np.isfinite(R) & (t > 0)
    if ok.sum() < 3:
        raise DataError(f"R: {int(ok.sum())} finite points; the fit needs at least 3")
    fit = stats.linregress(np.log(t[ok]), R[ok])
    half = stats.t.ppf(0.975, ok.sum() - 2) * fit.stderr
    b = -fit.slope
    return {"a": float(fit.intercept), "b": float(b), "slope": float(fit.slope),
            "slope_ci": [float(fit.slope - half), float(fit.slope + half)], "r2": float(fit.rvalue ** 2),
            "n": int(ok.sum()), "x_intercept": float(np.exp(fit.intercept / b)) if 0 < b and fit.intercept / b < MAX_LOG_T else None}


def _scenario_summary(traj: Trajectories, scenario: str, kind: str, inj: tuple, window: int) -> dict:
    l, steps = traj.select(scenario, kind), traj.steps
    E = [effectivity(steps, l, t, window) for t in inj]
    lam = np.concatenate([local_max(steps, l, t, window) - t for t in inj])
    horizon = int(steps[-1] - (inj[-1] + window))
    mean = l.mean(axis=1)      # R of the probes' mean log-prob: per-probe ratios explode where a gain is ~0
    t, curve = retainability(steps, mean, local_max(steps, mean, inj[-1], window), inj[0], horizon)
    try:
        fit = fit_forgetting(t, curve)
    except DataError:
        fit = None
    return {"effectivity": {"mean": float(np.mean(E)), "per_injection": [float(e.mean()) for e in E]},
            "t_lam": {"mean": float(lam.mean()), "median": float(np.median(lam)), "max": int(lam.max())},
            "retainability": {"fit": fit, "t": t.tolist(), "R": [None if np.isnan(v) else float(v) for v in curve]}}


def summarize(traj: Trajectories, cfg: DynamicsConfig) -> dict:
    """scenario -> kind -> effectivity (mean, per injection), t_LAM - t_i stats, retainability
    after the last injection (of the mean log-prob over probes) and its power-law fit."""
    return {s: {k: _scenario_summary(traj, s, k, inj, cfg.lam_window) for k in PROBE_KINDS}
            for s, inj in injection_steps(cfg).items()}


# ----------------------------------------------------------------------------- experiments


def from_profile(profile: str, **overrides) -> DynamicsConfig:
    """The profile's settings (kn.profiles "dynamics"): background size n and vocab_size, `model`
    (a dict or ModelConfig) and any DynamicsConfig field; overrides replace them."""
    from kn.profiles import settings
    s = settings("dynamics", profile, **overrides)   # an unknown override names itself
    data = BiosConfig(n=s.pop("n"), vocab_size=s.pop("vocab_size"), seed=s.get("seed", 0))
    model = s.pop("model")
    return DynamicsConfig(data=data, model=model if isinstance(model, ModelConfig) else ModelConfig(**model), **s)


def run_dynamics(cfg: DynamicsConfig, out_dir: str | Path, progress: bool = True) -> dict:
    """Data -> base (early, late) -> continued pretraining with injections from each base in
    cfg.stages (run folders out_dir/continued_<stage>_batch<B>, resumed after an interruption). Writes
    out_dir/trajectories_<stage>.csv and out_dir/dynamics.json; returns
    {"stages": stage -> summary, "schedule": [...], "trajectories": stage -> Trajectories, "bases": ...}."""
    out, t_start = Path(out_dir), time.perf_counter()
    records = prepare_data(cfg, out / "data")
    injection_plan(cfg, records, load_tokenizer(out / "data" / "tokenizer"))     # window check before training
    bases = pretrain_base(cfg, out / "data", out / "base", progress)
    result = {"stages": {}, "trajectories": {}, "bases": bases, "schedule": None}
    for stage in cfg.stages:
        traj, schedule = continue_pretraining(cfg, out / "data", bases[stage], records, _continued(out, stage, cfg),
                                              progress)
        save_trajectories(traj, out / f"trajectories_{stage}.csv")
        result["stages"][stage], result["trajectories"][stage], result["schedule"] = summarize(traj, cfg), traj, schedule
    write_json(out / "dynamics.json", config=asdict(cfg), seed=cfg.seed, wall_time=time.perf_counter() - t_start,
               stages=result["stages"], schedule=result["schedule"], injection_steps=injection_steps(cfg))
    return result


def scaled(cfg: DynamicsConfig, factor: int) -> DynamicsConfig:
    """cfg with factor x the batch and 1/factor the steps (schedule included): equal tokens."""
    fields_ = ("n_steps", "t0", "gap", "lam_window")
    bad = [f for f in fields_ if getattr(cfg, f) % factor]
    if bad:
        raise DataError(f"{bad[0]}: {getattr(cfg, bad[0])} is not divisible by factor={factor}; "
                        f"allowed: multiples of factor for {', '.join(fields_)}")
    return replace(cfg, batch_size=cfg.batch_size * factor, stages=("late",),
                   **{f: getattr(cfg, f) // factor for f in fields_}, eval_every=1)


def compare_batch_sizes(cfg: DynamicsConfig, out_dir: str | Path, factor: int = 2, progress: bool = True) -> dict:
    """Continued pretraining from the late base with batch B and factor*B at equal tokens (Chang et
    al.: larger batches forget more slowly). Both share the data and base of `cfg`.
    Returns batch size -> scenario -> kind -> retainability fit, with t* also in tokens; writes
    out_dir/batch_sizes.json."""
    out, big = Path(out_dir), scaled(cfg, factor)
    records = prepare_data(cfg, out / "data")
    for c in (cfg, big):
        injection_plan(c, records, load_tokenizer(out / "data" / "tokenizer"))
    bases = pretrain_base(cfg, out / "data", out / "base", progress)
    fits = {}
    for c in (cfg, big):
        if c is cfg and _has_late_run(cfg, out):       # run_dynamics already ran batch B from the late base
            traj = load_trajectories(out / "trajectories_late.csv")
        else:
            traj, _ = continue_pretraining(c, out / "data", bases["late"], records, _continued(out, "late", c), progress)
        save_trajectories(traj, out / f"trajectories_batch{c.batch_size}.csv")
        fits[c.batch_size] = {s: {k: _with_tokens(v["retainability"]["fit"], c.batch_size * c.window)
                                  for k, v in kinds.items()} for s, kinds in summarize(traj, c).items()}
    write_json(out / "batch_sizes.json", config=asdict(cfg), seed=cfg.seed, factor=factor, fits=fits)
    return fits


def _has_late_run(cfg: DynamicsConfig, out: Path) -> bool:
    """Whether out holds run_dynamics' late-base trajectories for cfg (same settings but stages)."""
    done = out / "dynamics.json"
    if not (done.is_file() and (out / "trajectories_late.csv").is_file()):
        return False
    stages = tuple(read_json(done)["provenance"]["config"]["stages"])
    return "late" in stages and _same_config(done, asdict(replace(cfg, stages=stages)))


def _with_tokens(fit: dict | None, tokens_per_step: int) -> dict | None:
    if fit is None:
        return None
    x = fit["x_intercept"]
    return fit | {"x_intercept_tokens": None if x is None else x * tokens_per_step}
