"""Examples and statistics of the datasets, for the data chapter.

`summarize_bios(n, seed, ...)` generates one population, renders it under several augmentations and
as bioR, trains one tokenizer on all of it, and returns plain dicts: an example per variant, the
token-length distribution, distinct sentence counts and attribute frequencies. The chapter plots
them; `study(profile, seed)` makes the chapter's three summaries at the profile's "data" table
(kn.profiles) and writes them with kn.results (results/data/<profile>/summary.json).
"""
from __future__ import annotations

import time

import re

import numpy as np

from kn.data.bior import generate_bior
from kn.data.biod import BioDConfig, bound_inputs, generate_biod, render, texts
from kn.data.injection import InjectionConfig, generate_injection
from kn.data.bios import bio_records, make_bios
from kn.data.people import sample_people
from kn.data.pools import load_pools
from kn.data.qa import make_qa, qa_records, split_people
from kn.data.records import ATTRIBUTES
from kn.profiles import settings
from kn.results import results_dir, write_json
from kn.tokenize import train_tokenizer

VARIANTS = ("single", "fullname", "permute", "multi5+permute")


def _sentences(text: str) -> list[str]:
    return re.split(r"(?<=\.) (?=[A-Z])", text)


def summarize_bios(n: int, seed: int = 0, vocab_size: int = 4096, variants=VARIANTS) -> dict:
    """Per variant (bioS augmentations and bioR): an example, tokens per biography, diversity."""
    people = sample_people(n, seed)
    corpora = {f"bioS {v}": bio_records(make_bios(people, v, seed), people) for v in variants}
    corpora["bioR"] = generate_bior(people, seed)
    qa = qa_records(make_qa(people), people, split_people(n, 0.5, seed))
    tok = train_tokenizer((r["text"] for recs in list(corpora.values()) + [qa] for r in recs), vocab_size=vocab_size)
    out = {"people": n, "vocab_size": len(tok), "variants": {}, "qa_examples": [r["text"] for r in qa[:6]]}
    for name, recs in corpora.items():
        lengths = np.array([len(x) for x in tok([r["text"] for r in recs], add_special_tokens=False)["input_ids"]])
        sents = {s for r in recs for s in _sentences(r["text"])}
        out["variants"][name] = {
            "bios": len(recs), "example": recs[0]["text"], "tokens_per_bio": lengths.tolist(),
            "mean_tokens": float(lengths.mean()), "distinct_sentences": len(sents),
            "bios_per_person": len(recs) / n,
        }
    out["attribute_frequencies"] = attribute_frequencies(people)
    return out


def attribute_frequencies(people) -> dict:
    """Share of the most common value of each attribute (the majority-guess baseline)."""
    pools = load_pools()
    freq = {}
    for attr in ATTRIBUTES:
        values, counts = np.unique(np.array(people.values(attr, pools), dtype=object), return_counts=True)
        top = counts.argmax()
        freq[attr] = {"distinct": int(len(values)), "top_value": str(values[top]),
                      "top_share": float(counts[top] / counts.sum())}
    return freq


def summarize_biod(n: int, seed: int = 0) -> dict:
    """A bioD(N, K=4, C=2, D=100, L=2, T=50) example and its sizes (Part 3.3)."""
    cfg = BioDConfig(n=n, k=4, c=2, d=100, l=2, t=50, seed=seed)
    docs = render(generate_biod(cfg))
    return {"example": texts(cfg, docs)[0], "tokens_per_bio": int(docs.lengths()[0]), "sizes": bound_inputs(cfg)}


def summarize_injection(n_paragraphs: int, seed: int = 0) -> dict:
    """One fictional-knowledge paragraph, a paraphrase and a probe of each kind (Chang et al.)."""
    rec = generate_injection(InjectionConfig(n_paragraphs=n_paragraphs, seed=seed))[0]
    probes = {}
    for p in rec["probes"]:
        probes.setdefault(p["kind"], f"{p['prompt']} → {p['target']}")
    return {"paragraphs": n_paragraphs, "text": rec["text"], "paraphrase": rec["paraphrases"][0], "probes": probes}


def study(profile: str, seed: int = 0) -> dict:
    """The chapter's summaries, made again (seconds) and written to summary.json. Returns summary
    (summarize_bios'), biod, injection, path (of the file) and wall_time (seconds)."""
    cfg, t0 = settings("data", profile), time.perf_counter()
    summary = summarize_bios(cfg["n"], seed=seed)
    biod, injection = summarize_biod(cfg["n_biod"], seed=seed), summarize_injection(cfg["n_paragraphs"], seed=seed)
    path = write_json(results_dir("data", profile) / "summary.json", config=cfg, seed=seed,
                      wall_time=time.perf_counter() - t0, profile=profile, biod=biod, injection=injection, **summary)
    return {"summary": summary, "biod": biod, "injection": injection, "path": path, "wall_time": time.perf_counter() - t0}
