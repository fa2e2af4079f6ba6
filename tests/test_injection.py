"""Tests of kn.data.injection: fictional-knowledge paragraphs, paraphrases and probes (Chang et al.).

Checks determinism of the written files, that memorization probes are sentences of the paragraph,
that semantic and compositional probes are not, paraphrases, unique names, config validation and
the load round trip. Fast (about a second):

    pytest tests/test_injection.py
"""
import json
from pathlib import Path

import pytest

from kn.data.injection import (COMPOSE_NP, COMPOSE_PREDICATE, LINKED_TYPES, MAIN_TYPES, MAX_PROBES, PROBE_KINDS,
                               SUFFIXES, TEMPLATES, InjectionConfig, generate_injection, load_injection, write_injection)
from kn.errors import DataError

POOLS = Path(__file__).resolve().parents[1] / "kn" / "data" / "pools"


@pytest.fixture(scope="module")
def records():
    return generate_injection(InjectionConfig(n_paragraphs=60, seed=3))


def probes(rec, kind):
    return [p for p in rec["probes"] if p["kind"] == kind]


def sentences(text):
    return [s + "." for s in text[:-1].split(". ")]


def test_same_seed_same_bytes_other_seed_other_text(tmp_path):
    cfg = InjectionConfig(n_paragraphs=30, seed=7)
    a = write_injection(generate_injection(cfg), tmp_path / "a", cfg) / "injection.jsonl"
    b = write_injection(generate_injection(cfg), tmp_path / "b", cfg) / "injection.jsonl"
    assert a.read_bytes() == b.read_bytes()
    other = generate_injection(InjectionConfig(n_paragraphs=30, seed=8))
    assert all(r["text"] != o["text"] for r, o in zip(generate_injection(cfg), other))


def test_record_shape(records):
    for i, rec in enumerate(records):
        assert rec["paragraph"] == i
        assert 8 <= len(sentences(rec["text"])) <= 12
        assert len(rec["facts"]) == len(sentences(rec["text"]))
        assert [p["kind"] for p in rec["probes"]] == [k for k in PROBE_KINDS for _ in range(5)]
    assert {r["type"] for r in records} == set(MAIN_TYPES)


def test_every_fact_value_stated_once_per_sentence(records):
    for rec in records:
        sents = sentences(rec["text"])
        for value in rec["facts"].values():
            assert any(s.endswith(" " + value + ".") for s in sents), value


def test_memorization_probe_is_a_sentence_of_the_paragraph(records):
    for rec in records:
        text = rec["text"]
        for p in probes(rec, "memorization"):
            sentence = p["prompt"] + " " + p["target"] + "."
            assert sentence in sentences(text)
            assert p["target"] == rec["facts"][p["fact"]]
            assert not p["prompt"].endswith(" ") and not p["target"].startswith(" ")


def test_semantic_probe_is_a_new_phrasing_with_the_same_target(records):
    for rec in records:
        for mem, sem in zip(probes(rec, "memorization"), probes(rec, "semantic"), strict=True):
            assert sem["fact"] == mem["fact"] and sem["target"] == mem["target"]
            assert sem["prompt"] != mem["prompt"]
            assert sem["prompt"] + " " + sem["target"] not in rec["text"]


def test_compositional_probe_needs_two_facts(records):
    for rec in records:
        name, text = rec["entity"], rec["text"]
        for p in probes(rec, "compositional"):
            link, attr = p["fact"].split(".")
            assert p["target"] == rec["facts"][p["fact"]]
            assert p["prompt"] + " " + p["target"] not in text
            assert name in p["prompt"] and rec["facts"][link] not in p["prompt"]
            stated = [s for s in sentences(text) if s.endswith(" " + p["target"] + ".")]
            assert len(stated) == 1 and name not in stated[0] and rec["facts"][link] in stated[0]
            assert any(name in s and s.endswith(rec["facts"][link] + ".") for s in sentences(text))


def test_paraphrases_distinct_and_complete(records):
    for rec in records:
        paras = rec["paraphrases"]
        assert len(paras) == 10 and len(set(paras) | {rec["text"]}) == 11
        for para in paras:
            assert sorted(s.rsplit(" ", 1)[-1] for s in sentences(para)) == \
                sorted(s.rsplit(" ", 1)[-1] for s in sentences(rec["text"]))
            assert all(v in para for v in rec["facts"].values())
            assert not set(sentences(para)) & set(sentences(rec["text"]))  # every template changed


def test_names_unique_and_not_in_bios_pools():
    recs = generate_injection(InjectionConfig(n_paragraphs=1000, n_paraphrases=1))
    entities = [r["entity"] for r in recs]
    assert len(set(entities)) == len(entities)
    pool_words = set()
    for f in POOLS.glob("*.t*"):
        pool_words |= set(f.read_text(encoding="utf-8").replace("\t", " ").split())
    common = {"Mount", "Lake"} | {w for ws in SUFFIXES.values() for w in ws}
    invented = {w for r in recs for v in [r["entity"], *r["facts"].values()] for w in v.split()
                if w[0].isupper() and w not in common}
    assert invented and not invented & pool_words


@pytest.mark.parametrize("n", [1, 3, MAX_PROBES])
def test_n_probes_respected(n):
    for rec in generate_injection(InjectionConfig(n_paragraphs=12, n_paraphrases=2, n_probes=n)):
        assert [len(probes(rec, k)) for k in PROBE_KINDS] == [n, n, n]
        assert len({p["fact"] for p in probes(rec, "compositional")}) == n


@pytest.mark.parametrize("field,value", [("n_paragraphs", 0), ("n_paraphrases", -1), ("n_probes", 0),
                                         ("n_probes", MAX_PROBES + 1), ("n_paragraphs", 2.5),
                                         ("n_paraphrases", True), ("seed", "1"), ("seed", -3)])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(DataError, match=field):
        InjectionConfig(**{field: value})


def test_write_meta_and_load_round_trip(tmp_path, records):
    cfg = InjectionConfig(n_paragraphs=60, seed=3)
    out = write_injection(records, tmp_path, cfg)
    assert load_injection(out) == records
    assert load_injection(out / "injection.jsonl") == records
    meta = json.loads((out / "meta.json").read_text())
    assert meta["counts"]["paragraphs"] == 60 and meta["counts"]["paraphrases"] == 600
    assert meta["counts"]["probes"] == {k: 300 for k in PROBE_KINDS}
    assert meta["provenance"]["config"]["seed"] == 3


@pytest.mark.parametrize("field", ["entity", "text", "paraphrases", "probes", "facts"])
def test_load_rejects_missing_field(tmp_path, records, field):
    rec = {k: v for k, v in records[0].items() if k != field}
    (tmp_path / "injection.jsonl").write_text(json.dumps(rec) + "\n")
    with pytest.raises(DataError, match=field):
        load_injection(tmp_path)


def test_load_rejects_bad_probe(tmp_path, records):
    rec = dict(records[0], probes=[{"kind": "recall", "prompt": "a", "target": "b"}])
    (tmp_path / "injection.jsonl").write_text(json.dumps(rec) + "\n")
    with pytest.raises(DataError, match="kind"):
        load_injection(tmp_path)
    with pytest.raises(DataError, match="path"):
        load_injection(tmp_path / "missing.jsonl")


def test_templates_close_on_their_value_and_differ():
    """Every template ends in its value; no phrasing of a fact hides inside another."""
    for key, templates in TEMPLATES.items():
        assert len(templates) >= 2, key
        rendered = [t.replace("{s}", "Subj").replace("{v}", "Val") for t in templates]
        for t, r in zip(templates, rendered):
            assert t.endswith(" {v}") and t.count("{v}") == 1 and "{s}" in t, t
            assert sum(r in other for other in rendered) == 1, r
    for kind, (_, facts) in MAIN_TYPES.items():
        for attr, vkind in facts:
            assert f"{kind}.{attr}" in TEMPLATES
            if vkind.startswith("@"):
                assert f"{kind}.{attr}" in COMPOSE_NP
                assert all(f"{vkind[1:]}.{a}" in COMPOSE_PREDICATE for a, _ in LINKED_TYPES[vkind[1:]][1])
