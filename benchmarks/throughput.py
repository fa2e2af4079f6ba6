"""Training throughput: kn's training step against a plain Hugging Face loop, same model and batch.

Sizes: tiny (~2.5M), ~17M and ~100M parameter GPT-2s (rotary, GPT-NeoX classes). The plain loop is
what one writes first: model(input_ids, labels).loss, backward, AdamW step, with bf16 autocast and
torch.compile on GPU. kn's step (kn.train.training_step) adds accelerate, fused AdamW on GPU and
grad clipping. Prints tokens/s and MFU (GPU only) and writes a result file; asserts nothing.
Run: python benchmarks/throughput.py [--sizes tiny 17M 100M] [--steps 20]
"""
import argparse
import time

import torch
from accelerate import Accelerator

from kn.models import ModelConfig, build_model, n_params
from kn.results import write_json
from kn.train import PEAK_FLOPS, TrainConfig, flops_per_token, lr_lambda, mfu, optimizer_for, training_step

SIZES = {
    "tiny": ModelConfig(n_layer=4, n_head=4, n_embd=192, vocab_size=4096),     # ~2.6M
    "17M": ModelConfig(n_layer=6, n_head=8, n_embd=512, vocab_size=4096),      # ~17M
    "100M": ModelConfig(n_layer=12, n_head=12, n_embd=768, vocab_size=4096),   # ~88M (GPT2-12-12)
}


def plain_loop(cfg, x, steps, device, compile_):
    model = build_model(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    fwd = torch.compile(model) if compile_ else model

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = fwd(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def kn_loop(cfg, x, steps, device, compile_):
    acc = Accelerator(cpu=device.type != "cuda", mixed_precision="bf16" if device.type == "cuda" else "no")
    model = build_model(cfg).to(acc.device)
    tcfg = TrainConfig(data=".", out=".", model=cfg, window=x.shape[1])
    opt = optimizer_for(model, tcfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(tcfg, 10_000))
    model, opt = acc.prepare(model, opt)
    fn = training_step(model, opt, sched, acc, compile=compile_)
    return lambda: fn(x, x)


def measure(make, cfg, x, steps, device, compile_, warmup):
    step = make(cfg, x, steps, device, compile_)
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return x.numel() * steps / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", nargs="+", default=list(SIZES))
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default: 30 on GPU, 3 on CPU)")
    ap.add_argument("--batch", type=int, default=None, help="512-token windows per step (default: 64 GPU, 4 CPU)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.type == "cuda"
    steps, batch = args.steps or (30 if gpu else 3), args.batch or (64 if gpu else 4)
    rows = []
    for name in args.sizes:
        cfg = SIZES[name]
        x = torch.randint(0, cfg.vocab_size, (batch, 512), device=device)
        counts = n_params(build_model(cfg))
        fpt = flops_per_token(cfg, counts["non_embedding"], 512)
        for label, make in [("plain HF loop", plain_loop), ("kn", kn_loop)]:
            tok_s = measure(make, cfg, x, steps, device, gpu, warmup=3 if gpu else 1)
            rows.append({"size": name, "loop": label, "n_params": counts, "tokens_per_s": tok_s,
                         "mfu": mfu(tok_s * fpt, device), "batch": batch, "steps": steps})
            m = rows[-1]["mfu"]
            print(f"{name:5s} {label:14s} {counts['all'] / 1e6:6.1f}M params  {tok_s:12,.0f} tok/s  "
                  f"MFU {'-' if m is None else f'{100 * m:.1f}%'}")
    dev = torch.cuda.get_device_name(0) if gpu else "cpu"
    out = args.out or f"benchmarks/results/throughput_{'gpu' if gpu else 'cpu'}.json"
    write_json(out, config=vars(args), seed=0, device=dev, peak_flops=PEAK_FLOPS, rows=rows)


if __name__ == "__main__":
    main()
