"""Data generation speed: bioS N people, multi5+permute, generated, tokenized and packed.

Prints biographies/s per stage and peak memory, and writes a result file; asserts nothing.
Baseline in the same run: re-tokenizing every text with the fast tokenizer (what composing from
pre-tokenized pieces replaces).   Run: python benchmarks/datagen.py --n 100000
"""
import argparse
import resource
import time

from kn.data.bios import make_bios
from kn.data.people import sample_people
from kn.results import write_json
from kn.tokenize import encode_documents, pack, train_tokenizer


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--augment", default="multi5+permute")
    ap.add_argument("--baseline", type=int, default=50_000, help="bios re-tokenized by the baseline (0: skip)")
    ap.add_argument("--out", default="benchmarks/results/datagen.json")
    args = ap.parse_args()

    people, t_people = timed(lambda: sample_people(args.n, seed=0))
    docs, t_compose = timed(lambda: make_bios(people, args.augment, seed=0))
    texts, t_text = timed(docs.texts)
    tok, t_train = timed(lambda: train_tokenizer(texts[:50_000], vocab_size=4096))
    enc, t_encode = timed(lambda: encode_documents(docs, tok))
    windows, t_pack = timed(lambda: pack(enc, tok.eos_token_id, window=512, seed=0))
    n_bios = len(docs)
    total = t_people + t_compose + t_text + t_train + t_encode + t_pack
    rows = {"people": t_people, "compose pieces": t_compose, "texts": t_text, "train tokenizer (50k bios)": t_train,
            "compose token ids + spans": t_encode, "pack 512 windows": t_pack, "total": total}
    baseline = None
    if args.baseline:
        sub = texts[:args.baseline]
        _, t_base = timed(lambda: tok(sub, add_special_tokens=False))
        baseline = {"bios": len(sub), "seconds": t_base, "bios_per_s": len(sub) / t_base}
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"bioS N={args.n:,} {args.augment}: {n_bios:,} biographies, {len(enc.ids):,} tokens, {len(windows):,} windows")
    for name, t in rows.items():
        print(f"  {name:28s} {t:7.2f} s   {n_bios / t:12,.0f} bios/s")
    if baseline:
        print(f"  baseline: tokenizer(texts)   {baseline['seconds']:7.2f} s   {baseline['bios_per_s']:12,.0f} bios/s "
              f"({baseline['bios']:,} bios) vs composed {n_bios / t_encode:,.0f} bios/s")
    print(f"  peak memory {peak_mb:,.0f} MB")
    write_json(args.out, config=vars(args), seed=0, wall_time=total, seconds=rows, bios=n_bios,
               tokens=int(len(enc.ids)), bios_per_s=n_bios / total, peak_memory_mb=peak_mb, baseline=baseline)


if __name__ == "__main__":
    main()
