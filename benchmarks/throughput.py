"""Training throughput on the cpu profiles' models: plain Hugging Face GPT-2 eager against kn's
engine and each candidate speed-up, all in one run.

Models (kn.profiles "cpu"): the Part 3.1 model (2 layers, 4 heads, 128 wide, 2048-token vocabulary)
and the capacity chapter's 2-layer 32- and 64-wide models (heads 16 wide, 209-token bioD
vocabulary); batches of 16 windows of 128 tokens, from the profiles' own data. The baseline,
"hf eager", is the loop one writes first: kn's GPT-2 config (GPTNeoXForCausalLM) with eager
attention, model(input_ids, labels).loss, backward, torch.optim.AdamW. Each candidate changes one
thing; "kn before" is kn's step as issue 11 found it (SDPA, for-loop AdamW, clipping, schedule,
accelerate) and "kn" is kn's step now (kn.models.build_model, kn.train.optimizer_for,
kn.train.training_step, compiled where kn.train.compile_setting says so, on one thread as kn.train.fit
runs on the CPU).

The machine is shared: engines are timed in turn, repeat after repeat (A, B, C, A, B, C, ...), so
that other load hits all of them alike. Reported: the median tokens/s over repeats and the median
of each repeat's ratio to the baseline; % of peak = FLOPs per token (kn.train.flops_per_token with
the output head counted) x tokens/s over the fp32 matmul rate of a large torch.mm measured here on
the same threads. Compile time is the first steps' time beyond that of ordinary steps. An equal-loss
check trains kn's engine and the baseline's eager attention (kn's optimizer) on the same Part 3.1
tokens and compares the final loss with the spread between seeds. Asserts nothing.
Run (without OMP_NUM_THREADS, so that "kn before" gets torch's default threads):
    python benchmarks/throughput.py [--models part3.1 ...] [--repeats 5] [--steps 4]
"""
import argparse
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from kn.batches import Batches
from kn.models import ModelConfig, build_model, hf_config, n_params
from kn.precision import Precision
from kn.results import write_json
from kn.train import PEAK_FLOPS, accelerator, compile_setting, flops_per_token, lr_lambda, optimizer_for, training_step
from kn.train_config import TrainConfig

MODELS = {   # name -> (model, batch, window, data)
    "part3.1": (ModelConfig(n_layer=2, n_head=4, n_embd=128, vocab_size=2048, context=128), 16, 128, "bios"),
    "capacity-32": (ModelConfig(n_layer=2, n_head=2, n_embd=32, vocab_size=209, context=128), 16, 128, "biod"),
    "capacity-64": (ModelConfig(n_layer=2, n_head=4, n_embd=64, vocab_size=209, context=128), 16, 128, "biod"),
}
CANDIDATES = {   # name -> what differs from "hf eager"
    "hf eager": {},
    "kn before": {"kn": "before", "threads": 0},      # torch's default threads, as kn ran before
    "kn before, 1 thread": {"kn": "before"},
    "kn": {"kn": "now"},                            # kn.train's default: 1 thread on the CPU
    "sdpa": {"attn": "sdpa"},
    "foreach AdamW": {"adam": "foreach"},
    "fused AdamW": {"adam": "fused"},
    "bf16 autocast": {"bf16": True},
    "2 threads": {"threads": 2},
    "batch x2": {"batch": 2},
    "vocab trimmed": {"trim": True},
    "compile": {"compile": True},
    "compile + fused AdamW": {"compile": True, "adam": "fused"},
}
LR = 3e-3
DEFAULT_THREADS = torch.get_num_threads()          # before main() sets 1 (OMP_NUM_THREADS=1 makes it 1 too)


def dataset(kind: str, root: Path) -> str:
    """The cpu profile's data folder: bios (Part 3.1: 100 people, 2048 tokens) or bioD (capacity)."""
    out = root / kind
    if kind == "bios":
        from kn.data.dataset import BiosConfig, make_dataset
        make_dataset(BiosConfig(n=100, vocab_size=2048), out)
    else:
        from kn.data.biod import BioDConfig, write_biod
        write_biod(BioDConfig(n=1000, k=4, c=4, d=100, l=1, t=100, n_first=32, n_middle=32, n_last=32), out)
    return str(out)


def batches(data: str, cfg: ModelConfig, batch: int, window: int, seed: int = 0) -> Batches:
    from kn.tokenize import load_tokenizer
    tok = load_tokenizer(Path(data) / "tokenizer")
    tcfg = TrainConfig(data=data, out=".", model=cfg, batch_size=batch, window=window, seed=seed, passes=1000)
    return Batches(tcfg, tok.eos_token_id, tok.pad_token_id)


def plain(cfg: ModelConfig, attn="eager", adam="plain", bf16=False, compile=False, seed=0):
    """The plain loop: (x -> loss) for a fresh model."""
    from transformers import AutoModelForCausalLM
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config(cfg), attn_implementation=attn)
    return plain_step(model, adam, bf16, compile), model


def plain_step(model, adam="plain", bf16=False, compile=False):
    """x -> loss of one plain training step of `model`: forward, backward, torch AdamW at a constant lr."""
    flag = {"plain": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}[adam]
    opt = torch.optim.AdamW(model.parameters(), lr=LR, **flag)
    forward = torch.compile(model) if compile else model

    def step(x):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = forward(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()
    return step


def kn_engine(cfg: ModelConfig, which: str, total_steps: int = 10_000, seed: int = 0):
    """kn's step: as issue 11 found it ("before"), as it is now ("now"), or now with eager attention ("eager")."""
    acc = accelerator("cpu")
    if which == "eager":
        model = build_model(cfg, seed=seed)
        model.set_attn_implementation("eager")
        opt, compile_ = optimizer_for(model, LR), False
    elif which == "before":
        from transformers import AutoModelForCausalLM
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(hf_config(cfg), attn_implementation="sdpa")
        groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in optimizer_for(model, LR).param_groups]
        opt = torch.optim.AdamW(groups, lr=LR, betas=(0.9, 0.98), eps=1e-6)        # for-loop AdamW on the CPU
        compile_ = False
    else:
        model = build_model(cfg, seed=seed)
        compile_ = compile_setting("auto", acc.device, total_steps) == "on"
        opt = optimizer_for(model, LR, fused=compile_)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(total_steps))
    model, opt = acc.prepare(model, opt)
    fn = training_step(model, opt, sched, acc, 1.0, Precision("fp32", "sdpa", "", compiled=compile_))
    return (lambda x: fn(x, x)), model


def make(name: str, cfg: ModelConfig, used: np.ndarray):
    """(step, flops per token, batch factor, token map) of one candidate."""
    c = CANDIDATES[name]
    model_cfg = replace(cfg, vocab_size=len(used)) if c.get("trim") else cfg
    if "kn" in c:
        step, model = kn_engine(model_cfg, c["kn"])
    else:
        step, model = plain(model_cfg, c.get("attn", "eager"), c.get("adam", "plain"), c.get("bf16", False),
                            c.get("compile", False))
    counts = n_params(model, trainable_only=False)
    fpt = flops_per_token(model_cfg, counts["non_embedding"] + model_cfg.vocab_size * model_cfg.n_embd,
                          model_cfg.context)                                       # + the tied output head
    remap = np.zeros(cfg.vocab_size, dtype=np.int64)
    remap[used] = np.arange(len(used))
    return step, fpt, c.get("batch", 1), (remap if c.get("trim") else None), c.get("threads", 1) or DEFAULT_THREADS


def run_steps(step, xs, n: int, threads: int) -> float:
    """Seconds for n steps over the batches xs (threads set for the block, then restored)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    for i in range(n):
        step(xs[i % len(xs)]).item()
    dt = time.perf_counter() - t0
    torch.set_num_threads(before)
    return dt


def matmul_peak(threads: int, n: int = 2048, reps: int = 5) -> float:
    """fp32 FLOP/s of an n x n torch.mm on `threads` threads: the best of `reps`."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = 0.0
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t0))
    torch.set_num_threads(1)
    return best


def measure_model(name: str, data: str, names: list[str], repeats: int, steps: int, peak: dict) -> list[dict]:
    """Interleaved timing of every candidate on one model; one row per candidate."""
    cfg, batch, window, _ = MODELS[name]
    source = batches(data, cfg, 2 * batch, window)
    rows2x = [source(i)[0] for i in range(4)]                                   # 4 batches of 2B windows
    used = np.unique(np.concatenate([source(i)[0].ravel() for i in range(source.steps_per_epoch)]))
    engines, xs, first = {}, {}, {}
    for cand in names:
        step, fpt, factor, remap, threads = make(cand, cfg, used)
        rows = [r[: batch * factor] for r in rows2x]
        xs[cand] = [torch.from_numpy(remap[r] if remap is not None else r).long() for r in rows]
        engines[cand] = (step, fpt, factor, threads)
        first[cand] = run_steps(step, xs[cand], 2, threads)                    # warm-up; compiles here
    times = {c: [] for c in names}
    for _ in range(repeats):
        for cand in names:
            times[cand].append(run_steps(engines[cand][0], xs[cand], steps, engines[cand][3]))
    out = []
    for cand in names:
        step, fpt, factor, threads = engines[cand]
        tokens = steps * batch * factor * window
        tok_s = [tokens / t for t in times[cand]]
        ratio = [tokens / t / (steps * batch * window / b) for t, b in zip(times[cand], times["hf eager"])]
        med = statistics.median(tok_s)
        step_s = statistics.median(times[cand]) / steps
        out.append({"size": name, "loop": cand, "n_params": n_params(build_model(cfg)), "tokens_per_s": med,
                    "tokens_per_s_repeats": tok_s, "ratio_to_hf_eager": statistics.median(ratio),
                    "flops_per_token": fpt, "pct_matmul_peak": 100 * med * fpt / peak[threads], "mfu": None,
                    "batch": batch * factor, "window": window, "steps": steps, "repeats": repeats,
                    "threads": threads, "vocab_used": int(len(used)), "compile_s": max(0.0, first[cand] - 2 * step_s)})
    return out


def final_loss(which: str, data: str, seed: int, n_steps: int) -> float:
    """Mean loss of the last 20 of n_steps steps of kn's step on the Part 3.1 data (same tokens for every seed)."""
    cfg, batch, window, _ = MODELS["part3.1"]
    step, _ = kn_engine(cfg, which, total_steps=n_steps, seed=seed)
    source = batches(data, cfg, batch, window)
    losses = [step(torch.from_numpy(source(t)[0]).long()).item() for t in range(n_steps)]
    return float(np.mean(losses[-20:]))


def equal_loss(data: str, n_steps: int) -> dict:
    """kn's engine (SDPA) against the baseline's eager attention, same optimizer and tokens: the
    difference in final loss beside the spread over seeds."""
    now = [final_loss("now", data, seed, n_steps) for seed in (0, 1, 2)]
    eager = final_loss("eager", data, 0, n_steps)
    return {"steps": n_steps, "model": "part3.1", "kn_seeds_0_1_2": now, "eager_attention_seed_0": eager,
            "difference": now[0] - eager, "seed_spread_std": float(np.std(now, ddof=1))}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--candidates", nargs="+", default=list(CANDIDATES))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per repeat")
    ap.add_argument("--loss-steps", type=int, default=150, help="steps of the equal-loss check (0: skip)")
    ap.add_argument("--out", default="benchmarks/results/throughput_cpu.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    names = ["hf eager"] + [c for c in args.candidates if c != "hf eager"]
    load, t0 = [os.getloadavg()], time.perf_counter()
    peak = {t: matmul_peak(t) for t in {1, 2, DEFAULT_THREADS}}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = {kind: dataset(kind, Path(tmp)) for kind in {MODELS[m][3] for m in args.models} | {"bios"}}
        for name in args.models:
            rows += measure_model(name, data[MODELS[name][3]], names, args.repeats, args.steps, peak)
            for r in rows[-len(names):]:
                print(f"{name:12s} {r['loop']:22s} {r['tokens_per_s']:9,.0f} tok/s  x{r['ratio_to_hf_eager']:.2f}  "
                      f"{r['pct_matmul_peak']:5.1f}% of the start peak  compile {r['compile_s']:.0f} s")
            load.append(os.getloadavg())
        check = equal_loss(data["bios"], args.loss_steps) if args.loss_steps else None
    peak_after = {t: matmul_peak(t) for t in {1, 2, DEFAULT_THREADS}}
    load.append(os.getloadavg())
    for r in rows:   # % of the better of the two peak measurements: the machine's load varied between them
        r["pct_matmul_peak"] = 100 * r["tokens_per_s"] * r["flops_per_token"] / max(peak[r["threads"]], peak_after[r["threads"]])
    print(f"fp32 matmul peak: {peak[1] / 1e9:.1f} GFLOP/s (1 thread), {peak[2] / 1e9:.1f} (2 threads); load {load}")
    if check:
        print(f"equal loss after {check['steps']} steps: kn {check['kn_seeds_0_1_2']}, eager attention "
              f"{check['eager_attention_seed_0']:.4f} (seed std {check['seed_spread_std']:.4f})")
    write_json(args.out, config=vars(args), seed=0, wall_time=time.perf_counter() - t0, device="cpu",
               cpu_capability=torch.backends.cpu.get_cpu_capability(), peak_flops=PEAK_FLOPS,
               matmul_peak_flops={"start": peak, "end": peak_after}, load_average=load, equal_loss=check,
               rows=rows, note="measured on a shared 2-core machine under load (load_average: 1, 5, 15 min, "
                               "before and after each model); ratios come from interleaved repeats")


if __name__ == "__main__":
    main()
