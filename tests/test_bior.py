"""Tests for kn.data.bior: the bioR-style generator and the rewrite-model path.

Checks determinism, that every span points at a surface form of its canonical value, that the text
is more varied than bioS (orders, fillers, length, date formats, short names), that no template or
filler leaks a pool value, and the rewrite path with a tiny random GPT-2 built offline.
Run: pytest tests/test_bior.py
"""
import json
import re
import statistics

import pytest

from kn.data.bior import PROMPT, generate_bior, keep_rewrite, load_templates, rewrite_prompt, rewrite_with_model
from kn.data.bios import bio_records, make_bios
from kn.data.forms import load_abbreviations, surface_forms
from kn.data.people import sample_people
from kn.data.pools import load_pools
from kn.data.records import ATTRIBUTES, find_spans
from kn.errors import DataError

_SENTENCE_END = re.compile(r"(?<!Mr)(?<!Ms)\. ")


@pytest.fixture(scope="module")
def people():
    return sample_people(200, seed=3)


@pytest.fixture(scope="module")
def bios(people):
    return generate_bior(people, seed=0)


def attribute_order(rec):
    return tuple(sorted(ATTRIBUTES, key=lambda a: rec["spans"][a][0][0]))


def sentence_bounds(text):
    ends = [m.start() + 1 for m in _SENTENCE_END.finditer(text)] + [len(text)]
    return list(zip([0] + [e + 1 for e in ends[:-1]], ends))


def test_deterministic_in_seed(people, bios):
    again = generate_bior(people, seed=0)
    assert json.dumps(again) == json.dumps(bios)
    assert json.dumps(generate_bior(people, seed=1)) != json.dumps(bios)


def test_schema(people, bios):
    assert len(bios) == len(people)
    rec = bios[0]
    assert list(rec) == ["person", "name", "pronoun", "group", "attributes", "text", "spans"]
    assert rec["group"] == "plain" and rec["pronoun"] in ("he", "she")
    assert rec["attributes"] == {a: people.values(a)[0] for a in ATTRIBUTES}
    assert [r["person"] for r in bios] == people.ids.tolist()


def test_spans_are_surface_forms(bios):
    for rec in bios:
        for attr in ATTRIBUTES:
            assert len(rec["spans"][attr]) == 1, (attr, rec["text"])
            (s, e), = rec["spans"][attr]
            assert rec["text"][s:e] in surface_forms(attr, rec["attributes"][attr]), (attr, rec["text"])


def test_name_spans(bios):
    for rec in bios:
        text, name = rec["text"], rec["name"]
        assert rec["spans"]["name"] == find_spans(text, name)
        assert all(text[s:e] == name for s, e in rec["spans"]["name"])
        first_end = sentence_bounds(text)[0][1]
        assert rec["spans"]["name"][0][1] <= first_end, text  # the full name is in the first sentence


def test_later_mentions_use_matching_title(bios):
    titled = 0
    for rec in bios:
        last = rec["name"].split()[-1]
        wrong = "Mr." if rec["pronoun"] == "she" else "Ms."
        assert f"{wrong} {last}" not in rec["text"]
        titled += ("Mr. " + last in rec["text"]) or ("Ms. " + last in rec["text"])
    assert titled >= 20


def test_more_varied_than_bios(people, bios):
    orders = {attribute_order(r) for r in bios}
    assert len(orders) >= 10
    with_filler = 0
    for rec in bios:
        starts = [s for a in ATTRIBUTES for s, _ in rec["spans"][a]]
        bounds = sentence_bounds(rec["text"])
        with_filler += any(not any(s <= x < e for x in starts) for s, e in bounds)
    assert with_filler >= 0.5 * len(bios)
    words = [len(r["text"].split()) for r in bios]
    bios_words = [len(r["text"].split()) for r in bio_records(make_bios(people, "single", seed=0), people)]
    assert statistics.pstdev(words) > max(5, 2 * statistics.pstdev(bios_words))
    assert len({attribute_order(r) for r in bio_records(make_bios(people), people)}) == 1


def test_date_formats_and_short_names(bios):
    formats, short = [], 0
    for rec in bios:
        (s, e), = rec["spans"]["birth_date"]
        formats.append(surface_forms("birth_date", rec["attributes"]["birth_date"]).index(rec["text"][s:e]))
        for attr in ("university", "company_name"):
            (s, e), = rec["spans"][attr]
            short += rec["text"][s:e] != rec["attributes"][attr]
    assert len(set(formats)) >= 3
    assert formats.count(0) >= 0.4 * len(bios)  # the canonical form stays the most common
    assert short >= 5


def test_n_per_person(people):
    recs = generate_bior(people.subset(slice(0, 5)), seed=2, n_per_person=3)
    assert [r["person"] for r in recs] == [p for p in people.ids[:5].tolist() for _ in range(3)]
    assert len({r["text"] for r in recs}) == 15
    with pytest.raises(DataError, match="n_per_person"):
        generate_bior(people, seed=0, n_per_person=0)
    with pytest.raises(DataError, match="seed"):
        generate_bior(people, seed=-1)


def test_surface_forms():
    assert surface_forms("birth_date", "October 2, 1996") == [
        "October 2, 1996", "2 October 1996", "2nd October 1996", "October 2nd, 1996"]
    assert surface_forms("birth_date", "March 11, 1901")[2] == "11th March 1901"
    assert "MIT" in surface_forms("university", "Massachusetts Institute of Technology")
    assert surface_forms("major", "Physics") == ["Physics"]
    with pytest.raises(DataError, match="canonical date"):
        surface_forms("birth_date", "2 October 1996")
    with pytest.raises(DataError, match="attribute"):
        surface_forms("height", "tall")


def test_abbreviations_match_pools():
    pools = load_pools()
    canon = {"university": set(pools.universities), "company_name": set(pools.companies)}
    for attr, table in load_abbreviations().items():
        shorts = [s for forms in table.values() for s in forms]
        assert set(table) <= canon[attr]
        assert len(set(shorts)) == len(shorts) and not set(shorts) & canon[attr]


def test_templates_leak_no_values():
    """No literal template text or filler word spells a pool value (whole word, case-sensitive)."""
    pools, t = load_pools(), load_templates()
    parts = [p for group in list(t["single"].values()) + list(t["pair"].values()) + [t["filler"]]
             for tmpl in group for p in tmpl[0::2]]
    text = " | ".join(parts + [w for words in t["vocab"].values() for w in words])
    values = set(pools.birth_cities + pools.universities + pools.majors + pools.companies + pools.company_cities)
    leaks = [v for v in values if re.search(rf"\b{re.escape(v)}\b", text)]
    assert leaks == []
    assert all(len(t["single"][a]) >= 30 for a in ATTRIBUTES)


# ---- rewrite-model path --------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, bios):
    """A 1-layer random GPT-2 and a word-level tokenizer trained on a few bios, saved offline."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([r["text"] for r in bios[:50]],
                            trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]", "[EOS]"]))
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]",
                                                     pad_token="[PAD]", eos_token="[EOS]")
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=32, n_positions=256, vocab_size=len(tokenizer),
                                     bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                                     pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_gpt2")
    transformers.GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def valid_rewrite(prompt, bios):
    """A rewrite holding the name and all six canonical values, for the record named in `prompt`."""
    name = re.match(r"Write a 50 words biography about a person whose name is ([^.]+)\.", prompt).group(1)
    a = next(r for r in bios if r["name"] == name)["attributes"]
    return (f"{name}, born on {a['birth_date']} in {a['birth_city']}, studied {a['major']} at "
            f"{a['university']} and now works for {a['company_name']} in {a['company_city']}.")


def test_rewrite_prompt(bios):
    import random
    rng = random.Random(0)
    prompts = [rewrite_prompt(r, rng) for r in bios[:20]]
    for p, r in zip(prompts, bios):
        assert p.startswith(PROMPT.format(name=r["name"]))
        assert all(r["attributes"][a] in p for a in ATTRIBUTES)
    orders = {tuple(sorted(ATTRIBUTES, key=lambda a: p.index(r["attributes"][a]))) for p, r in zip(prompts, bios)}
    assert len(orders) > 5


def test_random_model_outputs_are_dropped(tiny_model, bios):
    kept, dropped = rewrite_with_model(bios[:3], tiny_model, seed=0, max_new_tokens=24, batch_size=2)
    assert kept == [] and dropped == 3


def test_valid_rewrite_is_kept_with_spans(tiny_model, bios, monkeypatch):
    calls = []

    def fake(model, tokenizer, prompts, max_new_tokens, sample, device):
        calls.append(len(prompts))
        # only the first record's first attempt is garbage; the retry succeeds
        return ["garbage" if len(calls) == 1 and i == 0 else valid_rewrite(p, bios) for i, p in enumerate(prompts)]

    monkeypatch.setattr("kn.data.bior.generate_texts", fake)
    kept, dropped = rewrite_with_model(bios[:3], tiny_model, batch_size=8, attempts=2)
    assert calls == [3, 1] and dropped == 0
    assert [r["person"] for r in kept] == [r["person"] for r in bios[:3]]
    for rec, src in zip(kept, bios):
        assert rec["attributes"] == src["attributes"] and rec["name"] == src["name"]
        assert all(rec["text"][s:e] == rec["attributes"][a] for a in ATTRIBUTES for s, e in rec["spans"][a])
        assert all(rec["text"][s:e] == rec["name"] for s, e in rec["spans"]["name"])
    assert keep_rewrite(bios[0], "garbage") is None


def test_rewrite_bad_model_dir(tmp_path, bios):
    with pytest.raises(DataError, match="no such folder"):
        rewrite_with_model(bios[:1], str(tmp_path / "missing"))
    with pytest.raises(DataError, match="not a model folder"):
        rewrite_with_model(bios[:1], str(tmp_path))
