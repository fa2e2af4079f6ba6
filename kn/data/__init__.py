"""Datasets of the knowledge papers (papers.md): bioS and bioR-style biographies, QA, populations,
bioD with junk data and a domain token, and fictional-knowledge injection data.

    kn.data.records    the JSONL record schema, reading and writing, spans
    kn.data.pools      value pools and templates (data files in kn/data/pools/)
    kn.data.people     people with unique names and uniform attributes; populations
    kn.data.compose    documents as rows of pieces: text, char spans and token spans from one source
    kn.data.bios       bioS, its augmentations (multiM, permute[P], fullname) and harder styles (variant hard)
    kn.data.bior       bioR-style biographies; rewrites by a local model
    kn.data.qa         the six QA templates; train_people / test_people
    kn.data.dataset    a dataset folder: bios, QA, tokenizer, token arrays, meta
    kn.data.biod       bioD(N,K,C,D,L,T), junk data, domain token (Part 3.3)
    kn.data.injection  fictional-knowledge paragraphs, paraphrases and probes (Chang et al.)
"""
from kn.data.records import ATTRIBUTES  # noqa: F401
from kn.errors import DataError  # noqa: F401
