"""Training (papers.md, Part 3.1 "Models and training"): pretraining, mixed training, QA finetuning.

One loop, `fit`, trains every model of the book: `train` (a TrainConfig, kn.train_config, on the
batches of kn.batches: pretrain, mixed, finetune full or LoRA), kn.dynamics' continued pretraining
(evaluation hook) and kn.bidirectional's masked LM (its own batches). LoRA (peft) puts rank r on
the attention's query/key/value projection and rank r' on the embedding, initialised from the
config's seed. Training length is counted in passes: over every biography (pretrain, mixed) or
over every train QA (finetune). AdamW, linear warmup then cosine to min_lr_ratio * lr. Device
placement and data parallel come from `accelerate` (`accelerate launch` works). Precision (fp32
or bf16 autocast), the attention kernel and compilation (torch.compile with fused AdamW: on a GPU,
and on the CPU where a long run measures it faster: compile_setting) are chosen at the start of a
run by kn.precision (`precision`, `attention`, `compile`: auto measures on the machine at hand)
and recorded in train.json and the checkpoint. With `trim_vocab` a new model (pretrain, mixed) has
rows only for the tokens its data use (kn.vocab); its saved models have the tokenizer's rows.
Every run gets the run folder of kn.checkpoints: a checkpoint every `checkpoint_every` steps and
on SIGTERM/SIGINT, a lock against a second writer, and a new run refuses a folder that holds a
checkpoint or a model unless `overwrite=True`. `resume=True` continues bit-exactly on CPU and
refuses changed settings or data, damaged files, and a first logged loss that is not finite or is
MAX_RESUME_RISE above the checkpoint's (which is left as it was).
A run can be measured along the way (`measured_curve`): trained in segments that resume,
bit-identical to one run, measured at log-spaced steps (`curve_stops`).
Entry points: `train`, `fit` (with `Fit`, `Hooks`), `accelerator`, `train_to`, `measured_curve`.
"""
from __future__ import annotations

import json
import logging
import math
import signal
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

from kn.batches import Batches, check_vocab, vocab_in_use
from kn.checkpoints import (checkpoint_step, data_fingerprint, load_checkpoint, prepare_run, read_state, run_lock,
                            save_checkpoint, save_model, truncate_metrics)
from kn.curves import curve_every, curve_evaluator, curve_rows
from kn.errors import DataError
from kn.models import ModelConfig, build_model, n_params, remove_mlp_bias
from kn.precision import Precision, check_setting, choose, compiled_model, legacy, set_attention
from kn.results import done, folder_path, read_json, write_json
from kn.tokenize import load_tokenizer
from kn.train_config import TrainConfig
from kn.vocab import VocabMap, expand, trim

EXIT_INTERRUPTED = 75      # `kn train` exit code when a signal stopped it (sysexits EX_TEMPFAIL): checkpoint written
MAX_RESUME_RISE = 2.0      # nats: a resumed run continues its curve (bit-exactly on CPU); a first logged loss
                           # this far above the checkpoint's last (7.4x the perplexity) is a damaged state, not noise
log = logging.getLogger(__name__)



# ----------------------------------------------------------------------------- model and optimizer


def lr_lambda(total_steps: int, warmup: float = 0.05, min_lr_ratio: float = 0.1):
    """step -> lr multiplier: linear warmup (warmup < 1: that fraction of the steps; >= 1: steps), then
    a cosine from 1 down to min_lr_ratio at total_steps."""
    warm = max(1, int(warmup * total_steps if warmup < 1 else warmup))

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = min(1.0, (step - warm) / max(1, total_steps - warm))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))
    return f


def make_model(cfg: TrainConfig, vocab_size: int, vocab: VocabMap | None = None):
    """A new model (pretrain, mixed; cut to `vocab` when given) or the init model (finetune),
    LoRA-wrapped if asked."""
    if cfg.mode != "finetune":
        model = build_model(replace(cfg.model, vocab_size=vocab_size), seed=cfg.seed)
        return trim(model, vocab) if vocab is not None else model
    from transformers import AutoModelForCausalLM
    if not Path(cfg.init, "config.json").is_file():
        raise DataError(f"init: no model (config.json) in {cfg.init!r}")
    model = AutoModelForCausalLM.from_pretrained(cfg.init, attn_implementation="sdpa")
    if getattr(model.config, "intermediate_size", 1) == 0:
        remove_mlp_bias(model)          # attention-only stays attention-only when finetuned
    if cfg.lora_rank:
        model = add_lora(model, cfg.lora_rank, cfg.lora_embed_rank, seed=cfg.seed)
    return model



def add_lora(model, rank: int, embed_rank: int = 0, seed: int = 0):
    """peft LoRA: rank `rank` on the attention's query/value (GPT-NeoX fuses q, k, v in one matrix),
    rank `embed_rank` on the input embedding; the adapters' random init is drawn from `seed`
    (torch's global RNG is left as it was)."""
    from peft import LoraConfig, get_peft_model
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    attn = ["query_key_value"] if "query_key_value" in names else ["q_proj", "v_proj"]
    emb = "embed_in" if "embed_in" in names else "embed_tokens"
    targets = attn + ([emb] if embed_rank else [])
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets, lora_dropout=0.0,
                        rank_pattern={emb: embed_rank} if embed_rank else {},
                        alpha_pattern={emb: 2 * embed_rank} if embed_rank else {})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(model, config)


BETAS, EPS = (0.9, 0.98), 1e-6     # AdamW's


def decayed(name: str, p, lead: int = 0) -> bool:
    """Whether AdamW decays weight `name`: matrices, not biases, norms or embeddings (`lead`: leading
    dimensions that stack models, kn.group)."""
    return p.ndim - lead >= 2 and "embed" not in name


def optimizer_for(model, lr: float, weight_decay: float = 0.1, fused: bool = False) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases, norms and embeddings; the fused kernel if asked (a compiled
    run, kn.precision) or on a GPU."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if decayed(name, p) else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = fused or (torch.cuda.is_available() and all(p.is_cuda for g in groups for p in g["params"]))
    return torch.optim.AdamW(groups, lr=lr, betas=BETAS, eps=EPS, fused=fused or None)


def accelerator(device: str = "auto"):
    """The Accelerator of a run on device auto | cpu | cuda. Its own mixed precision is off: the
    run's autocast is kn.precision's choice (training_step)."""
    from accelerate import Accelerator
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    return Accelerator(cpu=not use_cuda, mixed_precision="no")




class StopFlag:
    """Turns SIGTERM/SIGINT into a flag the loop checks after each step (then checkpoints)."""

    def __init__(self):
        self.set, self._old = False, {}

    def __enter__(self):
        if _main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.set = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


# ----------------------------------------------------------------------------- the loop


def flops_per_token(cfg: ModelConfig, non_embedding_params: int, context: int) -> float:
    """Training FLOPs per token: 6N plus attention 12 * layers * width * context (PaLM, App. B)."""
    return 6 * non_embedding_params + 12 * cfg.n_layer * cfg.n_embd * context


COMPILE_MIN_STEPS = 1_000    # a CPU run this short never gains back the seconds compiling costs


def compile_setting(setting: str, device, total_steps: int) -> str:
    """kn.precision.choose's `compile` for a run: "on"/"off" as set; "auto": on a GPU "on"; on the CPU
    "off" for runs of fewer than COMPILE_MIN_STEPS steps (every test), else "auto" (by the run's
    expected length, then measured)."""
    if setting != "auto":
        return setting
    if torch.device(device).type == "cuda":
        return "on"
    return "auto" if total_steps >= COMPILE_MIN_STEPS else "off"


@contextmanager
def cpu_threads(n: int, device):
    """torch's threads set to n for a CPU run (0: left as they are), restored afterwards. One thread
    by default: on a 2-core machine shared with other jobs, two threads ran the cpu profile's
    models 8-40x slower (benchmarks/throughput.py), and a fixed count keeps the curve the same
    from machine to machine (the count changes float sums)."""
    before = torch.get_num_threads()
    if n and torch.device(device).type == "cpu":
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def training_step(model, opt, sched, acc, grad_clip: float = 1.0, precision: Precision | None = None):
    """One optimizer step as a function (x, labels, mask) -> detached loss, under `precision`'s
    autocast (None: fp32), compiled if it says so; nothing syncs the host."""
    precision = precision or Precision("fp32", "sdpa", "")
    forward = compiled_model(model) if precision.compiled else model

    def step(x, y, mask=None):
        with precision.autocast(acc.device):
            loss = forward(input_ids=x, attention_mask=mask, labels=y).loss
        acc.backward(loss)
        if grad_clip:
            acc.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach().clone()   # a fresh scalar: ModernBERT's detached loss kept every step's activations alive
    return step


@dataclass(frozen=True, kw_only=True)
class Fit:
    """Plain values of one optimisation run: AdamW, schedule (lr_lambda) and bookkeeping; built by
    keyword. A TrainConfig's run takes every field but total_steps from the config's field of that name."""
    total_steps: int
    lr: float
    warmup: float = 0.05               # < 1: fraction of the steps; >= 1: steps
    min_lr_ratio: float = 0.1          # 1.0: constant lr after the warmup
    weight_decay: float = 0.1
    grad_clip: float = 1.0             # 0: no clipping
    compile: str = "auto"              # auto (GPU; long CPU runs, measured: compile_setting) | on | off
    threads: int = 1                   # CPU: torch threads for the run (0 = torch's default), then restored
    precision: str = "auto"            # kn.precision: auto | fp32 | bf16
    attention: str = "auto"            # kn.precision: auto | sdpa | eager
    checkpoint_every: int = 0          # steps; 0 = only at the end and on SIGTERM/SIGINT
    log_every: int = 20
    max_steps: int | None = None       # stop early; the schedule is unchanged

    def __post_init__(self):
        check_setting("precision", self.precision)
        check_setting("attention", self.attention)


@dataclass(frozen=True)
class Hooks:
    """What a run adds to plain next-token training: measurements along the way (kn.dynamics) and an
    attention mask over padding (finetune QAs, masked LM)."""
    evaluate: Callable | None = None   # model -> tensor, on theta_t (before step t's update), no grad
    eval_every: int = 1                # evaluate at steps t % eval_every == 0 and at total_steps
    pad_id: int | None = None          # attention_mask = ids != pad_id


class Interrupted(Exception):
    """A run stopped by SIGTERM/SIGINT after writing its checkpoint: running it again resumes."""


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True, overwrite: bool = False) -> dict:
    """Run one training job; returns the summary also written to out/train.json. A folder holding
    a checkpoint or a model needs resume=True (same settings) or overwrite=True (starts again)."""
    acc = accelerator(cfg.device)
    tokenizer = load_tokenizer(Path(cfg.data) / "tokenizer") if cfg.mode != "finetune" else load_tokenizer(cfg.init)
    batches = Batches(cfg, tokenizer.eos_token_id, tokenizer.pad_token_id)
    check_vocab(batches, len(tokenizer))
    vocab = vocab_in_use(batches, tokenizer.eos_token_id, len(tokenizer)) if cfg.trim_vocab else None
    model = make_model(cfg, len(tokenizer), vocab)
    fpt = flops_per_token(_config_of(model), n_params(model, trainable_only=False)["non_embedding"], cfg.window)
    spec = Fit(total_steps=batches.total_steps,
               **{f.name: getattr(cfg, f.name) for f in fields(Fit) if f.name != "total_steps"})
    hooks = Hooks(pad_id=tokenizer.pad_token_id if cfg.mode == "finetune" else None)
    if every := curve_every(batches.total_steps, cfg.curve_points):
        if batches.biod is not None:
            raise DataError("curve_points: learning curves score QAs; a bioD folder has none (set curve_points = 0)")
        evaluate = curve_evaluator(cfg.data, cfg.curve_people, tokenizer.eos_token_id, tokenizer.pad_token_id, cfg.seed)
        hooks = replace(hooks, evaluate=(lambda m: evaluate(expand(m))) if vocab else evaluate, eval_every=every)
    s = fit(model, vocab.batches(batches) if vocab else batches, spec, cfg.out, asdict(cfg), tokenizer, acc, hooks,
            resume, overwrite, progress, cfg.mode, data=cfg.data)
    params = n_params(expand(model)) if vocab else s["n_params"]         # as saved: the tokenizer's rows
    summary = run_summary(cfg.mode, s, params, vocab.record() if vocab else {"tokenizer": len(tokenizer),
                                                                             "trimmed": False}, fpt)
    if every:
        summary["curve"] = curve_rows(s["evals"])
    if acc.is_main_process:
        write_json(Path(cfg.out) / "train.json", config=asdict(cfg), seed=cfg.seed, wall_time=s["wall_time"], **summary)
    return summary


def run_summary(mode: str, s: dict, params: dict, vocab: dict, fpt: float) -> dict:
    """train.json's fields (but a curve) of a run in `mode` whose fit returned `s`: its parameter counts
    `params` (kn.models.n_params), vocabulary record, FLOPs per token and MFU."""
    return {"mode": mode, **{k: s[k] for k in ("steps", "total_steps", "interrupted", "final_loss", "tokens_per_s")},
            "n_params": params, "vocab": vocab, "flops_per_token": fpt,
            "mfu": mfu(s["tokens_per_s"] * fpt, s["device"]),
            **{k: s[k] for k in ("precision", "device", "world_size", "history")}}


def mean_rate(history: list) -> float:
    """Mean tokens/s of the logged windows, the first (warm-up, compiling) left out where there are others."""
    rates = [h["tokens_per_s"] for h in history]
    return float(np.mean(rates[1:] or rates or [0.0]))


def log_metrics(path: Path, rec: dict) -> None:
    """Append one logged step to a run's metrics.jsonl."""
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")


def fit(model, batches, spec: Fit, out: str | Path, config: dict, tokenizer, acc, hooks: Hooks = Hooks(),
        resume: bool = False, overwrite: bool = False, progress: bool = True, desc: str = "train",
        data: str | Path | None = None) -> dict:
    """Train `model` on batches(step) -> (ids [B, T], labels [B, T]) in run folder `out`, locked for
    the run. `config` holds the run's settings: a resumed run must have the same (BOOKKEEPING
    aside), and the same data when `data` names their folder. A folder holding a checkpoint or a
    model needs resume=True or overwrite=True. Returns steps, total_steps, interrupted, final_loss,
    tokens_per_s, n_params, device, world_size, history (the logged steps of this call), wall_time
    (training seconds over every part of a resumed run) and evals (step -> tensor, with hooks.evaluate)."""
    out = folder_path(out, "out")
    with run_lock(out) if acc.is_main_process else nullcontext(), cpu_threads(spec.threads, acc.device):
        fingerprint = data_fingerprint(data) if data is not None and acc.is_main_process else None
        if acc.is_main_process:
            prepare_run(out, config, resume, overwrite, fingerprint, data)
        acc.wait_for_everyone()
        checkpoint = out / "checkpoint" if resume and checkpoint_step(out / "checkpoint") is not None else None
        return _fit(model, batches, spec, out, config, tokenizer, acc, hooks, checkpoint, progress, desc, fingerprint)


def check_resumed_loss(loss: float, before: float | None, start: int, step: int) -> None:
    """DataError if the first logged loss after resuming at `start` is not finite or is more than
    MAX_RESUME_RISE above `before`, the checkpoint's last logged loss."""
    if math.isfinite(loss) and (before is None or loss <= before + MAX_RESUME_RISE):
        return
    was = "none logged" if before is None else f"{before:.4g}"
    raise DataError(f"resume: the loss over steps {start + 1}-{step} is {loss:.4g} against {was} before the checkpoint "
                    f"at step {start} (allowed: finite, at most {MAX_RESUME_RISE:g} nats more), so its state is "
                    "damaged; the checkpoint is left as it was; start again with overwrite=True (--overwrite)")


def _fit(model, batches, spec: Fit, out: Path, config: dict, tokenizer, acc, hooks: Hooks, checkpoint: Path | None,
         progress: bool, desc: str, fingerprint: str | None = None) -> dict:
    """The loop of `fit`, in a prepared and locked folder, from `checkpoint` or from step 0. After a
    resume, no checkpoint is written before the first logged loss passed check_resumed_loss."""
    from tqdm.auto import tqdm

    model = model.to(acc.device)
    start, evals, last_loss = 0, {}, None
    rank, world = acc.process_index, acc.num_processes
    state = read_state(checkpoint) if checkpoint is not None else None
    precision = resumed_precision(state, spec, acc.device) if state is not None else \
        run_precision(model, _tensors(batches(0), rank, world, acc.device, hooks.pad_id), spec, acc)
    opt = optimizer_for(model, spec.lr, spec.weight_decay, fused=precision.compiled)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(spec.total_steps, spec.warmup, spec.min_lr_ratio))
    before_s = 0.0                                              # training seconds of the parts before a resume
    if state is not None:
        start, evals = load_checkpoint(checkpoint, model, opt, sched)
        last_loss = state.get("loss")
        before_s = state.get("train_s") or 0.0                   # none recorded (older checkpoints): 0
        if acc.is_main_process:
            truncate_metrics(out / "metrics.jsonl", start)
        log.info("resumed %s at step %d", out, start)
    elif acc.is_main_process:
        (out / "metrics.jsonl").write_text("")
    set_attention(model, precision.attention)
    log.info("%s: %s (%s)", out, precision.name, precision.reason)
    model, opt = acc.prepare(model, opt)
    raw = acc.unwrap_model(model)
    step_fn = training_step(model, opt, sched, acc, spec.grad_clip, precision)
    end = min(spec.total_steps, spec.max_steps or spec.total_steps)

    model.train()
    t_start = time.perf_counter()
    loss_sum, tokens_done, n_logged, window_t0 = torch.zeros((), device=acc.device), 0, 0, time.perf_counter()
    history, unchecked = [], checkpoint is not None            # the first loss after a resume is checked
    bar = tqdm(total=end, initial=start, disable=not (progress and acc.is_main_process), desc=desc, unit="step")
    with StopFlag() as stop:
        step = start
        while step < end and not stop.set:
            if hooks.evaluate and step % hooks.eval_every == 0:
                evals[step] = _evaluate(model, acc, hooks.evaluate, precision)
            x, y, mask = _tensors(batches(step), rank, world, acc.device, hooks.pad_id)
            loss_sum += step_fn(x, y, mask)
            tokens_done += int(x.numel()) * world
            n_logged += 1
            step += 1
            if step % spec.log_every == 0 or step == end:
                mean = (loss_sum / n_logged).item()                       # the one host sync per log
                if unchecked:
                    check_resumed_loss(mean, last_loss, start, step)
                    unchecked = False
                last_loss = mean
                dt = time.perf_counter() - window_t0
                rec = {"step": step, "loss": mean, "lr": sched.get_last_lr()[0], "tokens_per_s": tokens_done / dt,
                       "elapsed_s": time.perf_counter() - t_start}
                history.append(rec)
                if acc.is_main_process:
                    log_metrics(out / "metrics.jsonl", rec)
                bar.set_postfix(loss=f"{mean:.3f}", tok_s=f"{rec['tokens_per_s']:,.0f}")
                loss_sum.zero_(); tokens_done, n_logged, window_t0 = 0, 0, time.perf_counter()
            bar.update(1)
            if acc.is_main_process and spec.checkpoint_every and step % spec.checkpoint_every == 0 and step < end \
                    and not unchecked:
                save_checkpoint(out / "checkpoint", raw, tokenizer, opt, sched, step, config, evals, fingerprint,
                                last_loss, precision.record(), before_s + time.perf_counter() - t_start)
        interrupted = stop.set and step < end
    bar.close()
    if unchecked and n_logged:                                  # stopped before the first log after a resume
        check_resumed_loss((loss_sum / n_logged).item(), last_loss, start, step)
    if hooks.evaluate and step == spec.total_steps:
        evals[step] = _evaluate(model, acc, hooks.evaluate, precision)
    wall = before_s + time.perf_counter() - t_start             # every part of a resumed run
    if acc.is_main_process:
        save_checkpoint(out / "checkpoint", raw, tokenizer, opt, sched, step, config, evals, fingerprint, last_loss,
                        precision.record(), wall)
        if not interrupted:
            save_model(raw, tokenizer, out / "model")
    if interrupted:
        log.info("stopped by signal at step %d; resume with resume=True", step)
    tok_s = mean_rate(history)
    summary = {"steps": step, "total_steps": spec.total_steps, "interrupted": interrupted,
               "final_loss": history[-1]["loss"] if history else None, "tokens_per_s": tok_s,
               "n_params": n_params(raw), "precision": precision.record(), "device": str(acc.device),
               "world_size": world, "history": history, "wall_time": wall}
    return summary | ({"evals": evals} if hooks.evaluate else {})


def _tensors(batch: tuple, rank: int, world: int, device, pad_id: int | None) -> tuple:
    """(x, labels, attention mask or None) of this rank's rows (data parallel) of batch (ids, labels)."""
    ids, labels = batch[0][rank::world], batch[1][rank::world]
    x = torch.from_numpy(ids).to(device, non_blocking=True).long()
    y = torch.from_numpy(labels).to(device, non_blocking=True).long()
    return x, y, None if pad_id is None else x != pad_id


def run_precision(model, batch: tuple, spec: Fit, acc) -> Precision:
    """kn.precision.choose on the main process, the same for every process of a data-parallel run."""
    how = compile_setting(spec.compile, acc.device, spec.total_steps)
    choice = [choose(model, batch, spec.precision, spec.attention, acc.device, how, spec.total_steps)
              if acc.is_main_process else None]
    if acc.num_processes > 1:
        from accelerate.utils import broadcast_object_list
        broadcast_object_list(choice)
    return choice[0]


def resumed_precision(state: dict, spec: Fit, device) -> Precision:
    """The precision a checkpoint's run chose (kn.precision.legacy when it records none; compiled by the
    rule of then where it records no `compiled`: compile "on", or "auto" on a GPU), compiled as
    `spec.compile` sets it ("auto": as the run was); DataError when the run sets another precision
    or attention (auto allows any: a resumed run continues in what it ran in)."""
    p = Precision(**state["precision"]) if state.get("precision") else legacy(device)
    if "compiled" not in (state.get("precision") or {}):
        then = (state.get("config") or {}).get("compile", "auto")
        p = replace(p, compiled=then == "on" or (then == "auto" and torch.device(device).type == "cuda"))
    if spec.precision not in ("auto", p.dtype) or spec.attention not in ("auto", p.attention):
        raise DataError(f"resume: the checkpoint ran in {p.name}, which precision={spec.precision!r}, "
                        f"attention={spec.attention!r} exclude; resume with settings that allow it, or start "
                        "again with overwrite=True (--overwrite)")
    if spec.compile == "auto" or (spec.compile == "on") == p.compiled:
        return p
    return replace(p, compiled=spec.compile == "on", reason=f"{p.reason}; compile={spec.compile} set at a resume")


def _evaluate(model, acc, evaluate, precision: Precision):
    """evaluate(model) in eval mode, under the run's autocast, without gradients."""
    model.eval()
    with torch.no_grad(), precision.autocast(acc.device):
        value = evaluate(model)
    model.train()
    return value


def stop_if_interrupted(summary: dict, out: str | Path) -> dict:
    """The summary of a finished `fit`; Interrupted if a signal stopped it (its checkpoint is written)."""
    if summary["interrupted"]:
        raise Interrupted(f"stopped by a signal at step {summary['steps']} of {summary['total_steps']}; "
                          f"run again to resume from the checkpoint in {str(out)!r}")
    return summary


def train_to(cfg: TrainConfig, stop: int | None = None) -> dict:
    """The run of cfg trained to `stop` steps (None: to the end), resuming what is there; its train.json."""
    c = replace(cfg, max_steps=stop)
    return done(Path(c.out) / "train.json", c) or stop_if_interrupted(train(c, resume=True, progress=False), c.out)


def curve_stops(total_steps: int, n: int) -> list[int]:
    """n optimizer steps, log-spaced from total/2^(n-1)... up to total_steps (the last), distinct."""
    return sorted({max(1, int(round(total_steps / 2 ** (n - 1 - i)))) for i in range(n)})


def measured_curve(cfg: TrainConfig, n: int, measure: Callable[[], float], path: str | Path, config: dict) -> list:
    """[[step, measure()], ...] at curve_stops(total, n) but the last (the caller measures the finished
    run), the run of cfg trained to each stop in turn; kept in `path` (with `config`) so that a stopped
    run keeps its stops. DataError if the run is already past a stop that is not measured."""
    path = Path(path)
    curve = read_json(path)["curve"] if path.is_file() else []
    tok = load_tokenizer(Path(cfg.data) / "tokenizer")
    total = Batches(cfg, tok.eos_token_id, tok.pad_token_id).total_steps
    for stop in curve_stops(total, n)[:-1]:
        if stop > (curve[-1][0] if curve else 0):
            if (checkpoint_step(Path(cfg.out) / "checkpoint") or 0) > stop:
                raise DataError(f"curve: the run in {cfg.out!r} is past step {stop} and cannot be measured there; "
                                "remove the folder to train it again")
            train_to(cfg, stop)
            curve.append([stop, measure()])
            write_json(path, config=config, curve=curve)
    return curve


def _config_of(model) -> ModelConfig:
    """Layers and width of a loaded model (what the FLOP count needs)."""
    c = model.config
    return ModelConfig(n_layer=c.num_hidden_layers, n_head=c.num_attention_heads, n_embd=c.hidden_size,
                       mlp_ratio=c.intermediate_size / c.hidden_size, vocab_size=c.vocab_size,
                       context=c.max_position_embeddings)


PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}  # dense bf16


def mfu(flops_per_s: float, device) -> float | None:
    """Model FLOPs utilisation against the bf16 dense peak of the GPU (None on CPU or unknown GPUs)."""
    if torch.device(device).type != "cuda":
        return None
    name = torch.cuda.get_device_name(torch.device(device))
    peak = next((v for k, v in PEAK_FLOPS.items() if k in name), None)
    return None if peak is None else flops_per_s / peak
