"""Tests for kn.data.biod: bioD(N, K, C, D, L, T), junk data and the domain token.

Checks unique names and N0, uniform value choices, distinct diversity strings, determinism in the
seed (arrays and written bytes), the folder `kn data biod` writes and `kn train` trains on, the
rendered documents (sentences, order per epoch, field masks, text = tokenizer ids), the tokenizer
round trip through save_pretrained, junk data, the junk:useful mix ratio, and that bad parameters
raise DataError naming the parameter.
Run: pytest tests/test_biod.py
"""
import json

import numpy as np
import pytest
from scipy.stats import chisquare
from transformers import AutoTokenizer

from kn.data.biod import (
    DOMAIN, EOS, JUNK_PERSON, NAME, VALUE, VALUE1, BioDConfig, bound_inputs, field_masks,
    generate_biod, junk_count, junk_docs, make_tokenizer, mix, render, texts, to_records,
    write_biod,
)
from kn.errors import DataError

CFG = BioDConfig(n=300, k=4, c=2, d=20, l=2, t=30, n_first=10, n_middle=10, n_last=20, seed=1)


@pytest.fixture(scope="module")
def biod():
    return generate_biod(CFG)


@pytest.fixture(scope="module")
def docs(biod):
    return render(biod, epoch=0)


def sentence_rows(cfg, docs):
    """[B, K, S] token ids of each document's sentences, in document order."""
    start = int(cfg.domain_token)
    per_doc = docs.ids.reshape(len(docs), -1)[:, start:-1]
    return per_doc.reshape(len(docs), cfg.k, cfg.sentence_length)


def test_names_unique_and_n0(biod):
    assert CFG.n0 == 10 * 10 * 20 == bound_inputs(CFG)["N0"]
    assert len(np.unique(biod.names, axis=0)) == CFG.n
    assert (biod.names < [10, 10, 20]).all() and (biod.names >= 0).all()


def test_names_unique_when_n_is_most_of_n0():
    cfg = BioDConfig(n=1900, k=1, c=1, d=2, l=1, t=2, n_first=10, n_middle=10, n_last=20)
    assert len(np.unique(generate_biod(cfg).names, axis=0)) == 1900


def test_value_choices_uniform():
    cfg = BioDConfig(n=20_000, k=3, c=2, d=50, l=2, t=20, seed=5)
    counts = np.bincount(generate_biod(cfg).choices.ravel(), minlength=cfg.d)
    assert chisquare(counts).pvalue > 1e-3


def test_diversity_strings_distinct(biod):
    assert biod.diversity.shape == (CFG.k, CFG.d, CFG.l)
    assert ((biod.diversity >= 0) & (biod.diversity < CFG.t)).all()
    for k in range(CFG.k):
        assert len(np.unique(biod.diversity[k], axis=0)) == CFG.d
    full = BioDConfig(n=5, k=2, c=1, d=9, l=2, t=3)        # D = T**L: every string once
    assert all(len(np.unique(s, axis=0)) == 9 for s in generate_biod(full).diversity)


def test_seed_determinism(biod, tmp_path):
    again = generate_biod(CFG)
    for name in ("names", "diversity", "choices"):
        assert np.array_equal(getattr(biod, name), getattr(again, name))
    write_biod(CFG, tmp_path / "a", records=True)
    write_biod(BioDConfig(**CFG.__dict__), tmp_path / "b", records=True)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert {"biod.jsonl", "meta.json", "tokenizer/tokenizer.json"} <= {str(f) for f in files}
    for f in files:                                         # meta.json: the same but for its write time
        a, b = ((tmp_path / d / f).read_bytes() for d in "ab")
        if str(f) == "meta.json":
            a, b = ({k: v for k, v in json.loads(x).items() if k != "provenance"} for x in (a, b))
        assert a == b, f
    other = generate_biod(BioDConfig(**{**CFG.__dict__, "seed": 2}))
    assert not np.array_equal(biod.names, other.names)
    assert not np.array_equal(biod.choices, other.choices)


def test_written_meta_and_records(tmp_path):
    out = write_biod(CFG, tmp_path, junk_ratio=0.5, records=True)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["kind"] == "bioD" and meta["biod"] == CFG.__dict__ and meta["junk_ratio"] == 0.5
    assert meta["N0"] == CFG.n0 and meta["n_records"] == CFG.n
    assert meta["provenance"]["config"] == {**CFG.__dict__, "junk_ratio": 0.5}
    rec = json.loads((out / "biod.jsonl").read_text().splitlines()[7])
    assert rec["person"] == 7 and rec["text"].count(rec["name"] + " 's") == CFG.k
    for k in range(CFG.k):
        assert f"{rec['name']} 's ID {k} is {rec['values'][f'ID {k}']} ." in rec["text"]
    with pytest.raises(DataError, match="^out: .*already holds a dataset"):
        write_biod(CFG, tmp_path)
    write_biod(CFG, tmp_path, overwrite=True)               # records=False: the folder trains without them
    assert not (tmp_path / "biod.jsonl").exists() and "n_records" not in json.loads((out / "meta.json").read_text())


def test_cli_folder_trains(tmp_path, capsys):
    """The README's two steps: `kn data biod --out F`, then `kn train` with data = F."""
    from kn.batches import load_biod
    from kn.cli import main
    data = tmp_path / "biod"
    args = ["data", "biod", "--n", "60", "--k", "2", "--c", "1", "--d", "10", "--l", "2", "--t", "20", "--seed", "3",
            "--junk-ratio", "0.5", "--out", str(data)]
    assert main(args) == 0
    biod, junk_ratio = load_biod(str(data))
    assert junk_ratio == 0.5 and biod.cfg == BioDConfig(n=60, k=2, c=1, d=10, l=2, t=20, seed=3)
    assert np.array_equal(biod.names, generate_biod(biod.cfg).names)
    assert len((data / "biod.jsonl").read_text().splitlines()) == 60
    assert main(args) == 2                                  # a dataset is there: refused without --overwrite
    config = tmp_path / "run.toml"
    config.write_text(f'data = "{data}"\nout = "{tmp_path}/run"\npasses = 2\nwindow = 32\nbatch_size = 8\n'
                      '[model]\nn_layer = 1\nn_head = 2\nn_embd = 16\ncontext = 32\n')
    capsys.readouterr()
    assert main(["train", "--config", str(config)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["mode"] == "pretrain" and summary["steps"] > 0 and np.isfinite(summary["final_loss"])
    assert (tmp_path / "run" / "train.json").is_file()


def test_render_sentences_and_order(biod, docs):
    assert len(docs) == CFG.n and docs.ids.dtype == np.int32 and docs.mask.dtype == np.int8
    assert (docs.lengths() == CFG.doc_length()).all()
    assert (docs.ids[docs.offsets[1:] - 1] == EOS).all()
    rows0, rows1 = sentence_rows(CFG, docs), sentence_rows(CFG, render(biod, epoch=1))
    assert not np.array_equal(rows0, rows1)                 # order re-drawn per epoch
    assert np.array_equal(np.sort(rows0.view([("", rows0.dtype)] * rows0.shape[2]), axis=1),
                          np.sort(rows1.view([("", rows1.dtype)] * rows1.shape[2]), axis=1))
    assert np.array_equal(docs.ids, render(biod, epoch=0).ids)   # deterministic
    chunk = render(biod, epoch=1, people=slice(100, 150))
    assert np.array_equal(chunk.ids, render(biod, epoch=1).ids[100 * CFG.doc_length():150 * CFG.doc_length()])


def test_render_masks(docs):
    per_doc = docs.mask.reshape(len(docs), -1)
    assert ((per_doc == NAME).sum(1) == 3 * CFG.k).all()           # the name in every sentence
    assert (((per_doc == VALUE) | (per_doc == VALUE1)).sum(1) == CFG.k * CFG.c * CFG.l).all()
    assert ((per_doc == VALUE1).sum(1) == CFG.k * CFG.l).all()
    masks = field_masks(docs)
    assert (masks["name1"].reshape(len(docs), -1).sum(1) == 3).all()
    assert (masks["name1"].reshape(len(docs), -1)[:, :3]).all()
    words = np.array(texts(CFG, docs)[0].split(" "))
    first = masks["value1"][:CFG.doc_length()]
    assert all(w.startswith("t") for w in words[first])
    assert all(w[0] in "fml" for w in words[masks["name"][:CFG.doc_length()]])


def test_text_matches_tokenizer(docs):
    tok = make_tokenizer(CFG)
    text = texts(CFG, docs)
    enc = tok(text[:20], add_special_tokens=False)["input_ids"]
    assert all(enc[i] == docs.doc(i).tolist() for i in range(20))
    assert tok.decode(docs.doc(3)) == text[3]
    assert len(text[0].split(" ")) == CFG.doc_length()


def test_tokenizer_round_trip(docs, tmp_path):
    make_tokenizer(CFG).save_pretrained(str(tmp_path))
    tok = AutoTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
    text = texts(CFG, docs)[0]
    assert tok(text, add_special_tokens=False)["input_ids"] == docs.doc(0).tolist()
    assert tok.decode(docs.doc(0)) == text
    assert tok.convert_tokens_to_ids(["<eos>", "<domain>"]) == [EOS, DOMAIN]
    assert tok.eos_token_id == EOS and tok.pad_token_id is not None


def test_domain_token(biod):
    on = render(generate_biod(BioDConfig(**{**CFG.__dict__, "domain_token": True})))
    starts = on.ids[on.offsets[:-1]]
    assert (starts == DOMAIN).all() and (on.lengths() == CFG.doc_length() + 1).all()
    off = render(biod)
    assert not (off.ids == DOMAIN).any()
    assert np.array_equal(on.ids.reshape(len(on), -1)[:, 1:], off.ids.reshape(len(off), -1))


def test_junk_docs():
    cfg = BioDConfig(**{**CFG.__dict__, "domain_token": True})
    a, b = junk_docs(cfg, 50, epoch=0), junk_docs(cfg, 50, epoch=1)
    assert not (a.ids == DOMAIN).any() and (a.person == JUNK_PERSON).all()
    assert not np.array_equal(a.ids, b.ids)
    assert np.array_equal(a.ids, junk_docs(cfg, 50, epoch=0).ids)
    assert (a.lengths() == cfg.doc_length(domain=False)).all()
    assert ((a.mask.reshape(50, -1) == NAME).sum(1) == 3 * cfg.k).all()


def test_mix_ratio(docs):
    ratio = 7
    junk = junk_docs(CFG, junk_count(CFG, docs.n_tokens, ratio) + 10, epoch=0)
    mixed = mix(docs, junk, ratio, seed=0)
    useful = mixed.person != JUNK_PERSON
    assert useful.sum() == len(docs)
    junk_tokens = mixed.lengths()[~useful].sum()
    assert abs(junk_tokens / docs.n_tokens - ratio) < CFG.doc_length() / docs.n_tokens
    assert mixed.n_tokens == len(mixed.ids) == len(mixed.mask)
    assert np.array_equal(mix(docs, junk, ratio, seed=0).ids, mixed.ids)
    first_useful = np.flatnonzero(useful)[0]
    assert np.array_equal(mixed.doc(first_useful), docs.doc(mixed.person[first_useful]))
    with pytest.raises(DataError, match="junk"):
        mix(docs, junk_docs(CFG, 5), ratio)


@pytest.mark.parametrize("field, value, allowed", [
    ("n", 5000, "N0=2000"), ("d", 901, "t\\*\\*l = 900"), ("c", 0, "positive integer"),
    ("k", -1, "positive integer"), ("t", 2.5, "positive integer"), ("seed", -3, "non-negative"),
    ("domain_token", 1, "True or False"),
])
def test_bad_parameters(field, value, allowed):
    with pytest.raises(DataError, match=f"^{field}: .*{allowed}"):
        BioDConfig(**{**CFG.__dict__, field: value})
