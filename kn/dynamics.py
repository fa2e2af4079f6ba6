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

The settings and schedule are kn.dynamics_config's, the probes and trajectories kn.trajectories', the
measures (t_LAM, effectivity, retainability, forgetting laws) kn.forgetting's, and the pooled paragraphs,
bootstrap intervals and summaries kn.dynamics_summary's (each module's docstring defines its part).

The chapter's one call is `study(profile, seed)`: the runs in runs/dynamics/<profile>/ and their
files published, or, with no run folder, the published files read back.

Result files, in the run folder (study publishes them to results/dynamics/<profile>/):
  dynamics.json     {"seeds": [...], "n_boot", "scale": {people, steps_per_pass, pretrain_steps, early_step,
                     tokens_per_step, pretrain_tokens, continued_steps, continued_tokens, runs,
                     paragraphs_per_scenario, controls},
                     "injection_steps": {scenario: [...]}, "schedule": [{seed, step, row, paragraph,
                     scenario, text, n_tokens}], "stages": {stage: SUMMARY},
                     "early_vs_late": {scenario: {kind: {"effectivity" | "effectivity_minus_control":
                         {"early": I, "late": I, "late_minus_early": I}}}}  (when both stages ran),
                     "duplicated_minus_paraphrased": {stage: {kind: {"effectivity" | "effectivity_minus_control" |
                         "forgetting" | "forgetting_minus_control": I}}}  (forgetting: decay b of the log law),
                     "claims": {"bump": I, "stage_gain": I, "aic_lead": {scenario: I}, "scenarios"}
                         (the claims' pooled numbers, kn.dynamics_claims; with the late base)}
  batch_sizes.json  {"factor", "batch_sizes": [B, factor x B], "seeds", "n_boot", "tokens_per_step": {"B": ...},
                     "batches": {"B": SUMMARY, ...}, "small_minus_large": {scenario: {kind:
                         {"forgetting" | "forgetting_minus_control": I}}}}   (decay b of the smaller batch
                     minus the larger's: > 0 when the larger batch forgets more slowly)
  curves.json       {"curves": {stage: {group: {kind: [steps, mean l over the probes of every seed]}}}}
  SUMMARY = {scenario: {kind: {"effectivity": I, "control_effectivity": I, "effectivity_minus_control": I,
             "per_injection": [mean E at each injection], "t_lam": {"mean", "median", "max", "window", "at_edge"
             (share of probes peaking at the window's last step), "mean_curve" (per injection, of the mean curve)}
             (t_LAM - t_i),
             "forgetting": F, "forgetting_minus_control": F}}}
  F = None (fewer than MIN_POINTS points of R) or {"fits": {"log": {"a", "b", "x_intercept",
      "x_intercept_tokens", "rss", "aic"}, "linear": {"a", "b", "rss", "aic"}, "exp": {"c", "a", "tau", "rss",
      "aic"}}, "best", "delta_aic", "power_law", "n", "decay_b": I (b of the log law), "valid" (share of
      resamples with a fit), "t": [...], "R": [...]}
  I = {"value", "low", "high"} (None where undefined)
Entry points: `study`, `from_profile`, `run_dynamics`, `compare_batch_sizes`, `scaled`, `prepare_data`, `pretrain_base`,
`background`, `scale`, `injection_plan`, `make_stream`, `stream_start`, `continue_pretraining`.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from kn.batches import Batches
from kn.checkpoints import can_resume, checkpoint_step
from kn.data.dataset import BiosConfig, build_bios, read_meta, write_bios
from kn.data.injection import generate_injection, load_injection, write_injection
from kn.data.records import ATTRIBUTES
from kn.dynamics_claims import claim_intervals
from kn.dynamics_config import (STAGES, DynamicsConfig, assign_scenarios, groups, injection_config, injection_steps,
                                run_index, seed_records, seeds)
from kn.dynamics_summary import differences, duplicated_vs_paraphrased, early_vs_late, make_pools, summarize
from kn.errors import DataError
from kn.models import ModelConfig
from kn.profiles import settings
from kn.results import done, publish, read_back, read_json, results_dir, runs_dir, write_json
from kn.tokenize import encode_records, load_tokenizer, train_tokenizer
from kn.train import Fit, Hooks, accelerator, fit, stop_if_interrupted, train
from kn.train_config import TrainConfig
from kn.trajectories import Trajectories, mean_curves, probe_logprobs, probe_meta, probe_tensors, save_trajectories


# ----------------------------------------------------------------------------- data and base model


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
    if done(out / "meta.json", cfg.data) and done(out / "injection" / "meta.json", inj):
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
    base = dict(data=str(data), out=str(out), mode="pretrain", model=cfg.model, passes=cfg.pretrain_exposures,
                batch_size=cfg.batch_size, window=cfg.window, lr=cfg.pretrain_lr, seed=cfg.seed,
                device=cfg.device, compile=cfg.compile)
    return TrainConfig(**(base | kw))


def background(cfg: DynamicsConfig, data: str | Path):
    """The base's pretraining stream (kn.batches.Batches) at cfg's batch size."""
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
    out = Path(out)
    tcfg = stage_config(cfg, Path(data), out)
    paths = {"early": out / "early", "late": out / "model"}
    data_meta = {"bios": read_meta(data)["provenance"]["config"],                      # new data or tokenizer:
                 "injection": asdict(injection_config(cfg))}                           # a new base
    if done(out / "train.json", tcfg) and done(out / "data.json", data_meta) and \
            all(p.is_dir() for p in paths.values()):
        return {k: str(v) for k, v in paths.items()}
    step = early_step(cfg, data)
    resumable = done(out / "data.json", data_meta) and can_resume(out, asdict(tcfg))
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
    return (math.ceil(cfg.pretrain_exposures) + run_index(cfg, seed) * per_run) * batches.steps_per_epoch


def make_stream(cfg: DynamicsConfig, data: str | Path, records: list[dict], tokenizer,
                seed: int | None = None) -> InjectedStream:
    """Seed's continued-pretraining stream: the base's deterministic batches (kn.batches) from
    `stream_start` on, plus the injections of seed's paragraphs."""
    seed = cfg.seed if seed is None else seed
    batches = background(cfg, data)
    start = stream_start(cfg, batches, seed)
    return InjectedStream(lambda step: batches(start + step)[0], injection_plan(cfg, records, tokenizer, seed),
                          tokenizer.eos_token_id)


# ----------------------------------------------------------------------------- continued pretraining


def continue_pretraining(cfg: DynamicsConfig, data: str | Path, base: str | Path, records: list[dict], out: str | Path,
                         seed: int | None = None, progress: bool = True) -> tuple[Trajectories, list[dict]]:
    """Seed's run (default cfg.seed): continue pretraining `base` on its injected stream (kn.train.fit, run
    folder `out`, resumed when it holds a run with the same settings), measuring every probe of its
    paragraphs and controls every eval_every steps; returns the trajectories and the injection
    schedule (seed, step, row, paragraph, ...)."""
    from transformers import AutoModelForCausalLM

    seed = cfg.seed if seed is None else seed
    tok = load_tokenizer(Path(data) / "tokenizer")
    stream = make_stream(cfg, data, records, tok, seed)
    acc = accelerator(cfg.device)
    model = AutoModelForCausalLM.from_pretrained(str(base), attn_implementation="sdpa")
    meta = probe_meta(seed_records(cfg, records, seed), groups(cfg), seed)
    probes = [torch.from_numpy(a).to(acc.device) for a in probe_tensors(meta["prompt"], meta["target"], tok)]
    spec = Fit(total_steps=cfg.n_steps, lr=cfg.lr, warmup=0, min_lr_ratio=1.0, compile=cfg.compile)       # constant lr
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


# ----------------------------------------------------------------------------- experiments


def from_profile(profile: str, **overrides) -> DynamicsConfig:
    """The profile's settings (kn.profiles "dynamics"): background size n and vocab_size, `model`
    (a dict or ModelConfig) and any DynamicsConfig field; overrides replace them."""
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


def run_dynamics(cfg: DynamicsConfig, out_dir: str | Path, progress: bool = True) -> dict:
    """Data -> base (early, late) -> one continued run per stage in cfg.stages and seed (run folders
    out_dir/continued_<stage>_batch<B>_seed<s>, resumed after an interruption). Writes
    out_dir/trajectories_<stage>_seed<s>.csv, dynamics.json and curves.json (module docstring); returns
    dynamics.json's content plus "curves", "trajectories" (stage -> seed -> Trajectories) and "bases"."""
    out, t_start, n_boot = Path(out_dir), time.perf_counter(), cfg.n_boot
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
    if "late" in cfg.stages:
        result["claims"] = claim_intervals(pools, n_boot)
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


def compare_batch_sizes(cfg: DynamicsConfig, out_dir: str | Path, progress: bool = True) -> dict:
    """Continued pretraining from the late base with batch B and batch_factor x B at equal tokens, every
    seed (Chang et al.: larger batches forget more slowly); batch B's runs are run_dynamics' late runs,
    resumed if finished. Writes out_dir/batch_sizes.json (module docstring) and returns its content."""
    out, t_start, big, n_boot = Path(out_dir), time.perf_counter(), scaled(cfg), cfg.n_boot
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


CHAPTER = "dynamics"
PUBLISHED = ("dynamics", "batch_sizes", "curves")


def study(profile: str, seed: int = 0) -> dict:
    """The chapter's runs at `profile`: run_dynamics and compare_batch_sizes in runs/dynamics/<profile>/,
    their files published to results/dynamics/<profile>/; with no run folder, published files that record
    the same config are read back (a page re-rendered from its committed files, not retrained). Returns
    config, dynamics (dynamics.json's content plus "curves") and batch (batch_sizes.json's content);
    run here, dynamics also holds run_dynamics' trajectories and bases."""
    cfg, out, folder = from_profile(profile, seed=seed), runs_dir(CHAPTER, profile), results_dir(CHAPTER, profile)
    records = {n: read_back(out, folder / f"{n}.json", cfg) for n in PUBLISHED}
    if None not in records.values():
        return {"config": cfg, "dynamics": records["dynamics"] | {"curves": records["curves"]["curves"]},
                "batch": records["batch_sizes"]}
    res, batch = run_dynamics(cfg, out, progress=False), compare_batch_sizes(cfg, out, progress=False)
    for name in PUBLISHED:
        publish(out / f"{name}.json", CHAPTER, profile, name)
    return {"config": cfg, "dynamics": res, "batch": batch}
