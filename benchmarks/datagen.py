"""Data generation speed: `kn data bios --n N --augment multi5+permute`, in CPU and wall seconds.

First the command's own path end to end (kn.data.dataset.make_dataset: people, biographies and QA
as JSONL lines, the tokenizer on a 50k-text sample, token ids and spans, the files), its CPU time
(user + sys) including this process's imports; then the same stages one by one, and packing into
512-token windows (training's first step, not part of the command). Issue 27 asks for <= 40 CPU s
at N = 100,000 on one core. Baseline in the same run: re-tokenizing texts with the fast tokenizer
(what composing from pre-tokenized pieces replaces). Asserts nothing.
Run on one core: RAYON_NUM_THREADS=1 taskset -c 0 python benchmarks/datagen.py --n 100000
"""
import argparse
import os
import resource
import tempfile
import time

from kn.data.bios import bio_records, make_bios
from kn.data.dataset import BiosConfig, BiosDataset, make_dataset, write_bios
from kn.data.people import sample_people
from kn.data.qa import make_qa, qa_records, split_people, valid_people
from kn.results import write_json
from kn.tokenize import encode_corpora, pack, sample_index, train_tokenizer

IMPORT_CPU = time.process_time()


def timed(fn):
    """(fn(), CPU seconds (user + sys of this process), wall seconds)."""
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - c0, time.perf_counter() - w0


def stages(n: int, augment: str, out: str) -> tuple:
    """The steps of make_dataset one by one: (name -> (CPU s, wall s), encoded bios, sampled texts, tokenizer)."""
    rows = {}

    def step(name, fn):
        value, cpu, wall = timed(fn)
        rows[name] = (cpu, wall)
        return value

    cfg = BiosConfig(n=n, augment=augment)
    people = step("people", lambda: sample_people(n, seed=0))
    docs = step("bioS pieces", lambda: make_bios(people, augment, seed=0))
    bios = step("bios JSONL lines", lambda: bio_records(docs, people))
    is_train = split_people(n, cfg.train_fraction, seed=0)
    is_valid = valid_people(is_train, cfg.valid_fraction, seed=0)
    qa_docs = step("QA pieces", lambda: make_qa(people))
    qa = step("QA JSONL lines", lambda: qa_records(qa_docs, people, is_train, is_valid=is_valid))
    records = bios + qa
    texts = step("tokenizer sample (decode)", lambda: [records[i]["text"] for i in sample_index(len(records), seed=0)])
    tok = step("train tokenizer", lambda: train_tokenizer(texts, vocab_size=cfg.vocab_size))
    bios_tokens, qa_tokens = step("token ids + spans", lambda: encode_corpora([docs, qa_docs], tok))
    ds = BiosDataset(cfg, people, ["plain"] * n, is_train, bios, qa, tok, bios_tokens, qa_tokens, is_valid)
    step("write files", lambda: write_bios(ds, out))
    return rows, bios_tokens, texts, tok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--augment", default="multi5+permute")
    ap.add_argument("--baseline", type=int, default=50_000, help="texts re-tokenized by the baseline (0: skip)")
    ap.add_argument("--out", default="benchmarks/results/datagen.json")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        ds, cpu, wall = timed(lambda: make_dataset(BiosConfig(n=args.n, augment=args.augment), f"{tmp}/whole"))
        command = {"cpu_s": IMPORT_CPU + cpu, "cpu_s_without_imports": cpu, "wall_s": wall}
        n_bios, n_qa = len(ds.bios), len(ds.qa)
        del ds                                   # the stages below start from the same memory as the command
        rows, enc, texts, tok = stages(args.n, args.augment, f"{tmp}/stages")
    windows, pack_cpu, pack_wall = timed(lambda: pack(enc, tok.eos_token_id, window=512, seed=0))
    baseline = None
    if args.baseline:
        sub = texts[:args.baseline]
        _, b_cpu, b_wall = timed(lambda: tok(sub, add_special_tokens=False))
        baseline = {"texts": len(sub), "cpu_s": b_cpu, "wall_s": b_wall, "texts_per_cpu_s": len(sub) / b_cpu}
    n_texts = n_bios + n_qa
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cores = len(os.sched_getaffinity(0))
    print(f"bioS N={args.n:,} {args.augment}: {n_bios:,} biographies + {n_qa:,} QAs, {len(enc.ids):,} bio tokens, "
          f"{len(windows):,} windows; {cores} core(s) allowed")
    print(f"  kn data bios, end to end: {command['cpu_s']:.2f} CPU s ({IMPORT_CPU:.2f} of them imports), "
          f"{wall:.2f} s wall, {n_texts / command['cpu_s']:,.0f} texts per CPU s")
    for name, (c, w) in rows.items():
        print(f"  {name:28s} {c:7.2f} CPU s {w:7.2f} s wall")
    print(f"  {'(pack 512 windows)':28s} {pack_cpu:7.2f} CPU s {pack_wall:7.2f} s wall")
    if baseline:
        print(f"  baseline: tokenizer(texts) {baseline['texts_per_cpu_s']:,.0f} texts per CPU s ({baseline['texts']:,} texts)"
              f" vs {n_texts / rows['token ids + spans'][0]:,.0f} composed")
    print(f"  peak memory {peak_mb:,.0f} MB")
    write_json(args.out, config=vars(args), seed=0, wall_time=wall, command=command, bios=n_bios, texts=n_texts,
               tokens=int(len(enc.ids)), cores=cores, peak_memory_mb=peak_mb, baseline=baseline,
               stages={k: {"cpu_s": c, "wall_s": w} for k, (c, w) in rows.items()},
               pack={"cpu_s": pack_cpu, "wall_s": pack_wall}, load_average=list(os.getloadavg()))


if __name__ == "__main__":
    main()
