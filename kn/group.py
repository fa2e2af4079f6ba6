"""Runs of one model that differ only in learning rate, trained together as one batched model (issue 27).

The capacity chapter's lr grid trains each size at several learning rates on the same data, the
same batches and the same initial weights. At batch 2 such a step is a few tiny matmuls and many
tiny kernels: `Stacked` holds the K members' weights stacked along a new first dimension and runs
them through torch.func.vmap, so each matmul becomes one batched matmul and each kernel one over K
times the elements; one step trains all K (benchmarks/steps.py, "kn grouped").
Each member stays an ordinary kn.train run. Its folder gets what `kn.train.train` writes (train.json
with the member's own config, metrics.jsonl, checkpoint/, model/), so `kn.train.train_to` finds it
finished and a stopped group resumes from its members' checkpoints (a member can also be resumed
alone). On the CPU attention "auto" is eager: SDPA has no batching rule there and runs member by
member. Per member, as alone: its own loss, gradient clipping by its own norm, and AdamW at its own
lr (`GroupAdamW`: torch.optim.AdamW's arithmetic with a learning rate per member, compiled with the
model, its state read and written as each member's own AdamW). A member's curve matches the run trained
alone up to float rounding (batched and single matmuls sum in other orders); a group's curves are
deterministic per machine and precision like any run.
Entry points: `train_lrs`, `Stacked`, `GroupAdamW`, `group_step`.
"""
from __future__ import annotations

import copy
import time
from contextlib import ExitStack
from dataclasses import asdict, fields, replace
from pathlib import Path
from types import SimpleNamespace

import torch
from torch.func import functional_call, stack_module_state, vmap

from kn.batches import Batches, check_vocab
from kn.checkpoints import (checkpoint_step, data_fingerprint, load_checkpoint, prepare_run, read_state, run_lock,
                            save_checkpoint, save_model, truncate_metrics)
from kn.errors import DataError
from kn.models import n_params
from kn.precision import Precision, compiled_model, set_attention
from kn.results import write_json
from kn.tokenize import load_tokenizer
from kn.train import (BETAS, EPS, Fit, Interrupted, StopFlag, _config_of, _tensors, accelerator, check_resumed_loss,
                      cpu_threads, decayed, flops_per_token, log_metrics, lr_lambda, make_model, mean_rate,
                      optimizer_for, resumed_precision, run_precision, run_summary)
from kn.train_config import TrainConfig

SEP = "__"   # stands for "." in a stacked weight's name (a module attribute cannot hold a dot)


class Stacked(torch.nn.Module):
    """K models of one architecture as one module: weights stacked on a leading dimension, the same
    batch through every member (vmap). forward(input_ids, attention_mask, labels) -> .loss (the sum
    over members, to backpropagate) and .losses ([K]). kn.precision times and compiles it as a model."""
    def __init__(self, models: list):
        super().__init__()
        params, _ = stack_module_state(models)
        train = {n: p.requires_grad for n, p in models[0].named_parameters()}
        self.names = {n.replace(".", SEP): n for n in params}          # stacked weight -> the members' name
        self.w = torch.nn.ParameterDict({k: torch.nn.Parameter(params[n].detach().clone(), train[n])
                                         for k, n in self.names.items()})
        self.base = copy.deepcopy(models[0]).requires_grad_(False)   # the architecture and its buffers

    @property
    def config(self):
        return self.base.config

    def set_attn_implementation(self, attention: str) -> None:
        self.base.set_attn_implementation(attention)

    def forward(self, input_ids, attention_mask=None, labels=None):
        def one(weights, x, y):
            named = {self.names[k]: w for k, w in weights.items()}
            return functional_call(self.base, named, (), {"input_ids": x, "attention_mask": attention_mask,
                                                          "labels": y}).loss
        losses = vmap(one, in_dims=(0, None, None))(dict(self.w), input_ids, labels)
        return SimpleNamespace(loss=losses.sum(), losses=losses)

    def member(self, k: int, into) -> None:
        """Copy member k's weights into `into`, a model of the members' architecture."""
        params = dict(into.named_parameters())
        with torch.no_grad():
            for key, w in self.w.items():
                params[self.names[key]].copy_(w[k])


def _check_group(cfgs: list[TrainConfig]) -> None:
    """DataError unless the configs differ only in lr and out (data: in folder, not in content) and train a
    new model without extras."""
    first, free = cfgs[0], ("lr", "out", "data")
    for c in cfgs[1:]:
        if replace(c, lr=first.lr, out=first.out, data=first.data) != first:
            diff = [f.name for f in fields(c) if f.name not in free and getattr(c, f.name) != getattr(first, f.name)]
            raise DataError(f"train_lrs: the runs may differ only in lr and out; {Path(c.out).name!r} also differs in "
                            f"{', '.join(diff)}")
    if first.mode != "pretrain" or first.curve_points or first.trim_vocab:
        raise DataError("train_lrs: grouped runs pretrain a new model without learning curves or a trimmed vocabulary "
                        f"(got mode={first.mode!r}, curve_points={first.curve_points}, trim_vocab={first.trim_vocab})")
    if len({c.out for c in cfgs}) < len(cfgs):
        raise DataError("train_lrs: each run needs its own out folder")


def train_lrs(cfgs: list[TrainConfig], progress: bool = False) -> list[dict]:
    """Train the runs `cfgs` (kn.train configs equal but for lr, out and the folder of the same data) as
    one group, resuming their checkpoints; returns each run's train.json summary. Interrupted (checkpoints
    written) if a signal stops it."""
    if not cfgs:
        raise DataError("train_lrs: got no runs; allowed: one or more kn.train configs")
    _check_group(cfgs)
    cfg = cfgs[0]
    acc = accelerator(cfg.device)
    if acc.num_processes > 1:
        raise DataError(f"train_lrs: a group trains in one process; got {acc.num_processes} (accelerate launch): "
                        "run it with plain python")
    device = acc.device
    tokenizer = load_tokenizer(Path(cfg.data) / "tokenizer")
    batches = Batches(cfg, tokenizer.eos_token_id, tokenizer.pad_token_id)
    check_vocab(batches, len(tokenizer))
    spec = Fit(total_steps=batches.total_steps,
               **{f.name: getattr(cfg, f.name) for f in fields(Fit) if f.name != "total_steps"})
    if device.type == "cpu" and spec.attention == "auto":
        spec = replace(spec, attention="eager")     # SDPA has no vmap rule on the CPU: it loops over the members
    outs = [Path(c.out) for c in cfgs]
    with ExitStack() as stack, cpu_threads(spec.threads, device):
        for out in outs:
            out.mkdir(parents=True, exist_ok=True)
            stack.enter_context(run_lock(out))
        fingerprint = data_fingerprint(cfg.data)
        if any(data_fingerprint(c.data) != fingerprint for c in cfgs[1:]):
            raise DataError("train_lrs: the runs' data folders hold different data; a group trains on one")
        for c, out in zip(cfgs, outs):
            prepare_run(out, asdict(c), True, False, fingerprint, cfg.data)
        steps = {checkpoint_step(out / "checkpoint") for out in outs}
        if len(steps) > 1:
            raise DataError(f"train_lrs: the runs' checkpoints are at different steps ({sorted(steps, key=str)}); "
                            "resume each alone with kn.train")
        return _train(cfgs, batches, spec, tokenizer, acc, fingerprint, steps.pop() is not None, progress)


def _train(cfgs, batches, spec: Fit, tokenizer, acc, fingerprint, resume: bool, progress: bool) -> list[dict]:
    from tqdm.auto import tqdm

    device = acc.device
    outs, k_lrs = [Path(c.out) for c in cfgs], [c.lr for c in cfgs]
    members = [make_model(cfgs[0], len(tokenizer)).to(device) for _ in cfgs]   # one seed: one initial model
    opts = [optimizer_for(m, c.lr, c.weight_decay) for m, c in zip(members, cfgs)]
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, lr_lambda(spec.total_steps, spec.warmup, spec.min_lr_ratio))
              for o in opts]
    start = 0
    for m, o, s, out in zip(members, opts, scheds, outs) if resume else ():
        start, _ = load_checkpoint(out / "checkpoint", m, o, s)
        truncate_metrics(out / "metrics.jsonl", start)
    stacked = Stacked(members).to(device)
    if resume:
        states = [read_state(out / "checkpoint") for out in outs]
        precision = resumed_precision(states[0], spec, device)
        last, before_s = [s.get("loss") for s in states], states[0].get("train_s") or 0.0
    else:
        precision = run_precision(stacked, _tensors(batches(0), 0, 1, device, None), spec, acc)
        last, before_s = [None] * len(cfgs), 0.0
        for out in outs:
            (out / "metrics.jsonl").write_text("")
    set_attention(stacked, precision.attention)
    opt = GroupAdamW(stacked, k_lrs, spec.weight_decay, spec.grad_clip, precision.compiled)
    if resume:
        opt.load(members, opts)
    lam = lr_lambda(spec.total_steps, spec.warmup, spec.min_lr_ratio)
    step_fn = group_step(stacked, opt, precision, device)
    end = min(spec.total_steps, spec.max_steps or spec.total_steps)
    stacked.train()
    t0 = time.perf_counter()
    loss_sum, n_logged, window_t0, unchecked = torch.zeros(len(cfgs), device=device), 0, time.perf_counter(), resume
    histories = [[] for _ in cfgs]
    bar = tqdm(total=end, initial=start, disable=not progress, desc=f"{len(cfgs)} lrs", unit="step")

    def save(step: int, final: bool) -> None:
        for k, (m, o, s, out) in enumerate(zip(members, opts, scheds, outs)):
            stacked.member(k, m)
            opt.member(k, m, o, s, step)
            save_checkpoint(out / "checkpoint", m, tokenizer, o, s, step, asdict(cfgs[k]), {}, fingerprint, last[k],
                            precision.record(), before_s + time.perf_counter() - t0)
            if final:
                save_model(m, tokenizer, out / "model")

    with StopFlag() as stop:
        step = start
        while step < end and not stop.set:
            x, y, _ = _tensors(batches(step), 0, 1, device, None)
            loss_sum += step_fn(x, y, lam(step))
            n_logged += 1
            step += 1
            if step % spec.log_every == 0 or step == end:
                means = (loss_sum / n_logged).tolist()
                if unchecked:
                    for k, v in enumerate(means):
                        check_resumed_loss(v, last[k], start, step)
                    unchecked = False
                last, dt = means, time.perf_counter() - window_t0
                for k, out in enumerate(outs):
                    rec = {"step": step, "loss": means[k], "lr": k_lrs[k] * lam(step),
                           "tokens_per_s": n_logged * x.numel() / dt, "elapsed_s": time.perf_counter() - t0}
                    histories[k].append(rec)
                    log_metrics(out / "metrics.jsonl", rec)
                bar.set_postfix(loss=f"{min(means):.3f}")
                loss_sum.zero_(); n_logged, window_t0 = 0, time.perf_counter()
            bar.update(1)
            if spec.checkpoint_every and step % spec.checkpoint_every == 0 and step < end and not unchecked:
                save(step, False)
        interrupted = stop.set and step < end
    bar.close()
    save(step, not interrupted)
    if interrupted:
        raise Interrupted(f"stopped by a signal at step {step} of {spec.total_steps}; run again to resume from the "
                          f"checkpoints in {', '.join(repr(str(o)) for o in outs)}")
    return [_summary(c, m, h, step, spec, precision, device, len(tokenizer), before_s + time.perf_counter() - t0,
                     k_lrs) for c, m, h in zip(cfgs, members, histories)]


def group_step(stacked: Stacked, opt: GroupAdamW, precision: Precision, device):
    """One optimizer step of every member: (x, y, the schedule's lr multiplier) -> detached losses [K]."""
    forward = compiled_model(stacked) if precision.compiled else stacked

    def step(x, y, multiplier: float):
        with precision.autocast(device):
            out = forward(input_ids=x, labels=y)
        out.loss.backward()
        opt.step(multiplier)
        return out.losses.detach().clone()
    return step


class GroupAdamW:
    """kn.train's AdamW (its betas, eps and decay split) over a Stacked model's weights, member k at lr
    lrs[k] times the schedule's multiplier, each member's gradients first clipped by their own norm
    (as torch.nn.utils.clip_grad_norm_). One step is one function, compiled with the model: at these
    sizes torch's AdamW and clipping run a few tiny kernels per weight, a large share of the step. Member k's
    state reads and writes as the torch.optim.AdamW a run of it alone holds (`member`, `load`)."""

    def __init__(self, stacked: Stacked, lrs: list[float], weight_decay: float, grad_clip: float, compiled: bool):
        named = [(stacked.names[k], w) for k, w in stacked.w.items() if w.requires_grad]
        self.names, self.params = [n for n, _ in named], [w for _, w in named]
        self.decay = [weight_decay if decayed(n, w, lead=1) else 0.0 for n, w in named]
        lr = torch.tensor(lrs, device=self.params[0].device)
        self.rows = [lr.view(-1, *[1] * (w.dim() - 1)) for w in self.params]     # member k's lr on row k
        self.m = [torch.zeros_like(w) for w in self.params]
        self.v = [torch.zeros_like(w) for w in self.params]
        self.t, self.multiplier = torch.zeros((), device=lr.device), torch.zeros((), device=lr.device)
        self.grad_clip = grad_clip
        self.update = torch.compile(_adamw, dynamic=False) if compiled else _adamw

    def step(self, multiplier: float) -> None:
        grads = [w.grad for w in self.params]
        if any(g is None for g in grads):
            raise RuntimeError("kn.group: a trainable weight got no gradient; torch's AdamW would skip it, this one "
                               "steps every weight")
        self.multiplier.fill_(multiplier)
        with torch.no_grad():
            self.update(self.params, grads, self.m, self.v, self.t, self.multiplier, self.rows, self.decay,
                        self.grad_clip)
        for w in self.params:
            w.grad = None

    def member(self, k: int, model, opt, sched, step: int) -> None:
        """Member k's AdamW state and schedule, after `step` steps, into `opt` (kn.train.optimizer_for of
        `model`) and `sched` (its LambdaLR)."""
        index = _order(opt, model)
        state = {index[n]: {"step": self.t.detach().cpu().clone(), "exp_avg": m[k], "exp_avg_sq": v[k]}
                 for n, m, v in zip(self.names, self.m, self.v)}
        opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})
        sched.last_epoch, sched._step_count = step, step + 1
        sched._last_lr = [g["initial_lr"] * sched.lr_lambdas[i](step) for i, g in enumerate(opt.param_groups)]
        for g, lr in zip(opt.param_groups, sched._last_lr):
            g["lr"] = lr

    def load(self, models: list, opts: list) -> None:
        """The state of the members' optimizers (loaded from their checkpoints), stacked."""
        states = [(o.state_dict()["state"], _order(o, m)) for m, o in zip(models, opts)]
        with torch.no_grad():
            for i, n in enumerate(self.names):
                self.m[i].copy_(torch.stack([s[ix[n]]["exp_avg"] for s, ix in states]))
                self.v[i].copy_(torch.stack([s[ix[n]]["exp_avg_sq"] for s, ix in states]))
            first, index = states[0]
            self.t.fill_(float(first[index[self.names[0]]]["step"]))


def _adamw(params, grads, m, v, t, multiplier, rows, decay, grad_clip: float) -> None:
    """One AdamW step of stacked weights in place (torch.optim.AdamW's arithmetic, member k at lr
    rows[.][k] * multiplier), after clipping each member's gradients by its own norm."""
    if grad_clip:
        norm = torch.cat([g.flatten(1) for g in grads], 1).norm(dim=1)
        coef = (grad_clip / (norm + 1e-6)).clamp(max=1.0)
        grads = [g * coef.view(-1, *[1] * (g.dim() - 1)) for g in grads]
    t.add_(1)
    (beta1, beta2), correction1, correction2 = BETAS, 1 - BETAS[0] ** t, (1 - BETAS[1] ** t).sqrt()
    for w, g, m_, v_, r, wd in zip(params, grads, m, v, rows, decay):
        lr = r * multiplier
        w.mul_(1 - lr * wd)
        m_.lerp_(g, 1 - beta1)
        v_.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        w.sub_(lr / correction1 * m_ / (v_.sqrt() / correction2 + EPS))


def _order(opt, model) -> dict:
    """name -> index of each of `model`'s weights in `opt`'s state (its parameter order)."""
    ids = {id(p): n for n, p in model.named_parameters()}
    return {ids[id(p)]: i for i, p in enumerate(p for g in opt.param_groups for p in g["params"])}


def _summary(cfg: TrainConfig, model, history: list, step: int, spec: Fit, precision: Precision, device, vocab: int,
             wall: float, lrs: list) -> dict:
    """The member's train.json, as kn.train.train writes it, plus the group it trained in."""
    fpt = flops_per_token(_config_of(model), n_params(model, trainable_only=False)["non_embedding"], cfg.window)
    s = {"steps": step, "total_steps": spec.total_steps, "interrupted": False, "tokens_per_s": mean_rate(history),
         "final_loss": history[-1]["loss"] if history else None, "precision": precision.record(),
         "device": str(device), "world_size": 1, "history": history}
    summary = run_summary(cfg.mode, s, n_params(model), {"tokenizer": vocab, "trimmed": False}, fpt) | \
        {"group": {"lrs": lrs, "how": "kn.group: trained as one vmapped model with the other lrs"}}
    write_json(Path(cfg.out) / "train.json", config=asdict(cfg), seed=cfg.seed, wall_time=wall, **summary)
    return summary
