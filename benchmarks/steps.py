"""Cost of a training step: kn's engine as kn.train runs it now against two baselines, in one run.

Engines on one model, each timed in turn, repeat after repeat (A, B, C, A, B, C, ...), so that
other load on the machine hits all of them alike:
  neox eager   kn's GPT-2 config (GPTNeoXForCausalLM) with eager attention, fp32, torch AdamW,
               model(input_ids, labels).loss: the loop one writes first (the baseline)
  hf gpt2      transformers' GPT2LMHeadModel of the same size, eager attention, fp32, torch AdamW
  kn fp32      kn's step in fp32 with SDPA, full vocabulary: what kn ran before issue 27
  kn           kn's step in kn.precision's choice (auto, measured here), full vocabulary
  kn trimmed   the same with trim_vocab (kn.vocab): rows only for the tokens the data use
  kn compiled  kn's step in kn.precision's choice, compiled (torch.compile, fused AdamW): what a
               long CPU run takes where it measures faster (kn.train.compile_setting)
  kn grouped   capacity models only: kn.group's step, the cpu lr grid's K models (one per lr) as one
               vmapped model, compiled, fp32 and eager attention as the capacity grid runs on the CPU; its
               steps/s count model-steps (K per step), its wall and CPU seconds are per model-step
Models: "part3.1", the extraction cpu profile (2 layers, 4 heads, 128 wide, 2048 tokens, 600
people multi5+permute, batch 16 x 256), and "capacity-16" / "capacity-48", the capacity cpu
profile's smallest and largest GPT-2 (2 layers, 2 heads, bioD, batch 2 x 128, issue 27's batch).
Per engine: median wall and CPU seconds per step over the repeats, steps/s, the median of each
repeat's ratio to each baseline, and % of the matmul peak measured here (torch.mm 2048^2, fp32 and
bf16, same threads) at the model's FLOPs (kn.train.flops_per_token plus the full output head). The
equal-loss check trains the kn engines on part3.1 for --loss-steps steps on 3 seeds each and
compares the final loss (mean of the last 50 steps) with the spread between seeds. Recorded: load
average before and after each model, CPU model and flags, threads. Asserts nothing.
Run on idle cores (about 30-40 min on 1 thread):
    OMP_NUM_THREADS=1 python benchmarks/steps.py
Smoke (seconds):
    python benchmarks/steps.py --repeats 1 --steps-scale 0.01 --loss-steps 4 --out /tmp/steps.json
"""
import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from kn.batches import Batches
from kn.models import ModelConfig, build_model, hf_config, n_params
from kn.precision import choose, set_attention
from kn.profiles import settings
from kn.results import cpu_info, write_json
from kn.train import accelerator, flops_per_token, lr_lambda, optimizer_for, training_step
from kn.train_config import TrainConfig
from kn.vocab import VocabMap, trim
from throughput import LR, plain_step   # the benchmark beside this one (run as benchmarks/steps.py)

MODELS = {   # name -> (model, batch, window, data, timed steps per engine per repeat: ~1 s at fp32)
    "part3.1": (ModelConfig(n_layer=2, n_head=4, n_embd=128, vocab_size=2048, context=256), 16, 256, "bios", 4),
    "capacity-16": (ModelConfig(n_layer=2, n_head=2, n_embd=16, vocab_size=209, context=128), 2, 128, "biod", 300),
    "capacity-48": (ModelConfig(n_layer=2, n_head=2, n_embd=48, vocab_size=209, context=128), 2, 128, "biod", 200),
}
ENGINES = ("neox eager", "hf gpt2", "kn fp32", "kn", "kn trimmed", "kn compiled", "kn grouped")
GROUP = len(settings("capacity", "cpu")["lr_grid"])   # kn grouped: models per step
BASELINES = ("neox eager", "hf gpt2")


def dataset(kind: str, root: Path) -> str:
    """The cpu profiles' data: bios (600 people, multi5+permute, 2048 tokens) or capacity's bioD."""
    out = root / kind
    if kind == "bios":
        from kn.data.dataset import BiosConfig, make_dataset
        make_dataset(BiosConfig(n=600, augment="multi5+permute", vocab_size=2048), out)
    else:
        from kn.data.biod import BioDConfig, write_biod
        write_biod(BioDConfig(n=1000, k=4, c=4, d=100, l=1, t=100, n_first=32, n_middle=32, n_last=32), out)
    return str(out)


def batches(data: str, cfg: ModelConfig, batch: int, window: int) -> tuple[Batches, VocabMap]:
    """The run's batches and the map of the tokens they use (as kn.batches.vocab_in_use; a bioD folder:
    its first epoch's)."""
    from kn.tokenize import load_tokenizer
    tok = load_tokenizer(Path(data) / "tokenizer")
    source = Batches(TrainConfig(data=data, out=".", model=cfg, batch_size=batch, window=window, passes=1000),
                     tok.eos_token_id, tok.pad_token_id)
    return source, VocabMap.of([source.bios.ids, [tok.eos_token_id]], cfg.vocab_size)


def baseline(cfg: ModelConfig, which: str, seed: int = 0):
    """(x -> loss) of a fresh baseline model: eager attention, fp32, torch AdamW at a constant lr."""
    from transformers import AutoModelForCausalLM, GPT2Config
    torch.manual_seed(seed)
    if which == "hf gpt2":
        conf = GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.context, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
                          n_head=cfg.n_head, n_inner=cfg.mlp_width, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                          bos_token_id=0, eos_token_id=0)
    model = AutoModelForCausalLM.from_config(conf if which == "hf gpt2" else hf_config(cfg), attn_implementation="eager")
    return plain_step(model), None


def kn_engine(cfg: ModelConfig, which: str, x0: torch.Tensor, vocab: VocabMap, total_steps: int, seed: int = 0):
    """(x -> loss, kn.precision choice) of kn's step as kn.train.fit builds it."""
    model = build_model(cfg, seed=seed)
    if which == "kn trimmed":
        trim(model, vocab)
    setting = ("fp32", "sdpa") if which == "kn fp32" else ("auto", "auto")
    precision = choose(model, (x0, x0, None), *setting, "cpu", "on" if which == "kn compiled" else "off")
    set_attention(model, precision.attention)
    acc, opt = accelerator("cpu"), optimizer_for(model, LR, fused=precision.compiled)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(total_steps))
    model, opt = acc.prepare(model, opt)
    fn = training_step(model, opt, sched, acc, 1.0, precision)
    return (lambda x: fn(x, x)), precision


def grouped_engine(cfg: ModelConfig, x0: torch.Tensor, total_steps: int, seed: int = 0):
    """(x -> summed loss, kn.precision choice) of kn.group's step over GROUP models, one per lr of the
    cpu grid, as kn.group.train_lrs builds it for the capacity grid (fp32 and eager attention on the CPU,
    compiled)."""
    from kn.group import GroupAdamW, Stacked, group_step
    s = settings("capacity", "cpu")
    lrs = s["lr_grid"]
    stacked = Stacked([build_model(cfg, seed=seed) for _ in lrs])
    precision = choose(stacked, (x0, x0, None), "fp32", "eager", "cpu", "on")
    set_attention(stacked, precision.attention)
    fn = group_step(stacked, GroupAdamW(stacked, lrs, s["weight_decay"], 1.0, precision.compiled), precision, "cpu")
    lam, step = lr_lambda(total_steps), iter(range(10 ** 9))
    return (lambda x: fn(x, x, lam(next(step))).sum()), precision


def make(engine: str, cfg: ModelConfig, x0: torch.Tensor, vocab: VocabMap, total_steps: int = 10_000, seed: int = 0):
    """(step, precision or None, token map or None) of one engine."""
    if engine in BASELINES:
        return *baseline(cfg, engine, seed), None
    if engine == "kn grouped":
        return *grouped_engine(cfg, x0, total_steps, seed), None
    table = torch.from_numpy(vocab.to_model) if engine == "kn trimmed" else None
    x0 = table[x0] if table is not None else x0
    return *kn_engine(cfg, engine, x0, vocab, total_steps, seed), table


def run_steps(step, xs: list, n: int) -> tuple[float, float]:
    """(wall s, CPU s) of n steps over the batches xs."""
    w0, c0 = time.perf_counter(), time.process_time()
    for i in range(n):
        step(xs[i % len(xs)]).item()
    return time.perf_counter() - w0, time.process_time() - c0


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    """FLOP/s of an n x n torch.mm in `dtype` on torch's threads now: the best of `reps`."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    best = 0.0
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t0))
    return best


def measure_model(name: str, data: str, engines: list, repeats: int, scale: float, peak: dict) -> list[dict]:
    """Interleaved timing of every engine on one model (its timed steps x scale per repeat); one row per engine."""
    cfg, batch, window, kind, steps = MODELS[name]
    steps = max(1, round(steps * scale))
    skip = "kn trimmed" if kind == "biod" else "kn grouped"   # kn.train trims no bioD run; kn.group: capacity only
    engines = [e for e in engines if e != skip]
    per = {e: GROUP if e == "kn grouped" else 1 for e in engines}                    # models a step trains
    source, vocab = batches(data, cfg, batch, window)
    rows = [torch.from_numpy(source(i)[0]).long() for i in range(4)]
    made = {e: make(e, cfg, rows[0], vocab) for e in engines}
    xs = {e: [t[r] if t is not None else r for r in rows] for e, (_, _, t) in made.items()}
    for e in engines:
        run_steps(made[e][0], xs[e], 2)                                      # warm-up
    wall, cpu = {e: [] for e in engines}, {e: [] for e in engines}
    for _ in range(repeats):
        for e in engines:
            w, c = run_steps(made[e][0], xs[e], steps)
            wall[e].append(w / steps / per[e])
            cpu[e].append(c / steps / per[e])
    base = n_params(build_model(cfg), trainable_only=False)["non_embedding"]
    fpt = flops_per_token(cfg, base + cfg.vocab_size * cfg.n_embd, cfg.context)    # + the full output head
    out = []
    for e in engines:
        s = statistics.median(wall[e])
        dtype = made[e][1].dtype if made[e][1] is not None else "fp32"
        row = {"model": name, "engine": e, "batch": batch, "window": window, "models_per_step": per[e],
               "wall_s_per_step": s,
               "cpu_s_per_step": statistics.median(cpu[e]), "steps_per_s": 1 / s, "wall_s_repeats": wall[e],
               "precision": made[e][1].record() if made[e][1] is not None else None,
               "vocab_rows": vocab.rows if e == "kn trimmed" else cfg.vocab_size, "flops_per_token": fpt,
               "pct_fp32_peak": 100 * fpt * batch * window / s / peak["fp32"],
               "pct_own_peak": 100 * fpt * batch * window / s / peak[dtype]}
        for b in BASELINES:
            if b in wall:
                row[f"x_{b.replace(' ', '_')}"] = statistics.median(w0 / w1 for w0, w1 in zip(wall[b], wall[e]))
        out.append(row)
    return out


def equal_loss(data: str, engines: list, n_steps: int) -> dict:
    """Final loss (mean of the last 50 steps) of each kn engine on part3.1, seeds 0-2, same tokens."""
    cfg, batch, window, _, _ = MODELS["part3.1"]
    source, vocab = batches(data, cfg, batch, window)
    out = {}
    for e in [e for e in engines if e.startswith("kn") and e != "kn grouped"]:   # kn.group: tests/test_group.py
        finals = []
        for seed in (0, 1, 2):
            step, _, table = make(e, cfg, torch.from_numpy(source(0)[0]).long(), vocab, n_steps, seed)
            losses = []
            for t in range(n_steps):
                x = torch.from_numpy(source(t)[0]).long()
                losses.append(step(table[x] if table is not None else x).item())
            finals.append(float(np.mean(losses[-50:])))
        out[e] = {"final_loss_seeds_0_1_2": finals, "mean": float(np.mean(finals)), "seed_std": float(np.std(finals, ddof=1))}
    return {"steps": n_steps, "model": "part3.1", "engines": out}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--engines", nargs="+", default=list(ENGINES), choices=list(ENGINES))
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--steps-scale", type=float, default=1.0, help="x each model's timed steps per repeat")
    ap.add_argument("--loss-steps", type=int, default=1000, help="steps of the equal-loss check (0: skip)")
    ap.add_argument("--out", default="benchmarks/results/steps_cpu.json")
    args = ap.parse_args()
    t0, load = time.perf_counter(), [os.getloadavg()]
    peak = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        kinds = {MODELS[m][3] for m in args.models} | ({"bios"} if args.loss_steps else set())
        data = {kind: dataset(kind, Path(tmp)) for kind in kinds}
        for name in args.models:
            rows += measure_model(name, data[MODELS[name][3]], args.engines, args.repeats, args.steps_scale, peak)
            load.append(os.getloadavg())
            for r in [r for r in rows if r["model"] == name]:
                ratios = "  ".join(f"{k}={v:.2f}" for k, v in r.items() if k.startswith("x_"))
                print(f"{name:12s} {r['engine']:11s} {r['steps_per_s']:8.2f} steps/s  cpu {r['cpu_s_per_step']:.4f} s  "
                      f"{r['pct_own_peak']:5.1f}% of peak  {ratios}  {(r['precision'] or {}).get('dtype', 'fp32')}")
        check = equal_loss(data["bios"], args.engines, args.loss_steps) if args.loss_steps else None
        load.append(os.getloadavg())
    if check:
        for e, v in check["engines"].items():
            print(f"equal loss after {check['steps']} steps: {e:11s} {v['mean']:.4f} (seed std {v['seed_std']:.4f})")
    write_json(args.out, config=vars(args), seed=0, wall_time=time.perf_counter() - t0, device="cpu",
               cpu=cpu_info(), threads=torch.get_num_threads(), cpu_capability=torch.backends.cpu.get_cpu_capability(),
               matmul_peak_flops=peak, load_average=load, equal_loss=check, rows=rows,
               note="ratios are medians of per-repeat ratios from interleaved repeats; load_average: 1, 5, 15 min "
                    "at the start and after each model")


if __name__ == "__main__":
    main()
