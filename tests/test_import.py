"""kn.data.importer and read_bios: biographies from other generators, record by record, into a dataset
folder that kn.train and kn.extraction accept.   Run: OMP_NUM_THREADS=1 pytest tests/test_import.py
"""
import json

import numpy as np
import pytest

from kn.cli import main
from kn.data.bios import bio_records, make_bios
from kn.data.dataset import BiosConfig, load_encoded, make_dataset
from kn.data.importer import ImportConfig, build_import, import_bios
from kn.data.people import sample_people
from kn.data.records import ATTRIBUTES, load_bios, read_bios, write_jsonl
from kn.errors import DataError

ADA = {"name": "Ada Lyn Moor", "birth_date": "May 3, 1990", "birth_city": "Oslo", "university": "MIT",
       "major": "Physics", "company_name": "Acme Inc.", "company_city": "Washington, D.C."}
TEXT = ("Ada Lyn Moor was born on May 3, 1990, in Oslo. She studied Physics at MIT. "
        "She worked for Acme Inc. She lived in Washington, D.C.")
TEXT2 = "Born in Oslo on May 3, 1990, Ada Lyn Moor read Physics at MIT, then joined Acme Inc. in Washington, D.C."


def read_one(tmp_path, *recs, skip_bad=False):
    path = tmp_path / "in.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in recs))
    return read_bios(path, skip_bad=skip_bad)


def spanned(rec):
    return {k: [rec["text"][s:e] for s, e in v] for k, v in rec["spans"].items()}


def test_kn_records_read_back_unchanged(tmp_path):
    people = sample_people(20, seed=3)
    recs = bio_records(make_bios(people, "multi2+permute", seed=1), people)
    write_jsonl(recs, tmp_path / "bios.jsonl")
    assert load_bios(tmp_path / "bios.jsonl") == recs


def test_flat_record_spans_found_and_full_stop_kept_out(tmp_path):
    (rec,), _ = read_one(tmp_path, {**ADA, "text": TEXT})
    assert spanned(rec) == {"name": ["Ada Lyn Moor"], "birth_date": ["May 3, 1990"], "birth_city": ["Oslo"],
                            "university": ["MIT"], "major": ["Physics"], "company_name": ["Acme Inc"],
                            "company_city": ["Washington, D.C"]}
    assert rec["attributes"]["company_name"] == "Acme Inc." and rec["person"] == 0 and rec["pronoun"] is None


def test_span_as_pair_or_list_of_pairs(tmp_path):
    city = [[41, 45]]
    (a,), _ = read_one(tmp_path, {**ADA, "text": TEXT, "spans": {"birth_city": city[0]}})
    (b,), _ = read_one(tmp_path, {**ADA, "text": TEXT, "spans": {"b_city": city}})
    assert a["spans"]["birth_city"] == b["spans"]["birth_city"] == city and spanned(a)["birth_city"] == ["Oslo"]
    (c,), _ = read_one(tmp_path, {**ADA, "text": TEXT, "spans": {"company_city": [113, 129]}})
    assert spanned(c)["company_city"] == ["Washington, D.C"]      # a given span's final '.' is left out too


@pytest.mark.parametrize("given", ["She", "SHE", "she"])
def test_pronoun_in_any_case(tmp_path, given):
    (rec,), _ = read_one(tmp_path, {**ADA, "text": TEXT, "pronoun": given})
    assert rec["pronoun"] == "she"


def test_nested_person_with_several_texts_and_extra_keys(tmp_path):
    person = {"id": "P-7", **{k: v for k, v in ADA.items() if k not in ("company_name", "birth_city")},
              "employer": "Acme Inc.", "attributes": {"birth_city": "Oslo", "hobby": "chess"}}
    rec = {"person": person, "pronoun": "She", "source": "gen-x", "score": 0.5, "tags": ["a", "b"],
           "texts": [TEXT, {"text": TEXT2, "spans": {"name": [29, 41]}}]}
    bios, skipped = read_one(tmp_path, rec)
    assert len(bios) == 2 and not skipped and {b["person"] for b in bios} == {0}
    assert [b["text"] for b in bios] == [TEXT, TEXT2]
    assert all(b["attributes"] == {a: ADA[a] for a in ATTRIBUTES} for b in bios)
    assert spanned(bios[1])["name"] == ["Ada Lyn Moor"] and spanned(bios[1])["company_name"] == ["Acme Inc"]
    assert bios[0]["extra"] == {"source": "gen-x", "score": "0.5", "tags": '["a", "b"]',
                                "attributes.hobby": "chess", "source_person": "P-7"}


def test_alias_read_only_where_the_attribute_is_missing(tmp_path):
    (rec,), _ = read_one(tmp_path, {**ADA, "text": TEXT, "birthday": 3, "company": {"size": 10}})
    assert rec["attributes"]["birth_date"] == "May 3, 1990"
    assert rec["extra"] == {"birthday": "3", "company": '{"size": 10}'}


def test_people_numbered_by_first_appearance(tmp_path):
    bob = {**ADA, "name": "Bob Tan", "text": TEXT.replace("Ada Lyn Moor", "Bob Tan")}
    bios, _ = read_one(tmp_path, bob, {**ADA, "text": TEXT}, {**bob, "text": bob["text"] + " Bob Tan."})
    assert [b["person"] for b in bios] == [0, 1, 0]


GOOD = {**ADA, "text": TEXT}
BAD = [
    ("not json", "not valid JSON"),
    ({**GOOD, "name": ""}, "field 'name'"),
    ({k: v for k, v in GOOD.items() if k != "text"}, "field 'text'"),
    ({**{k: v for k, v in GOOD.items() if k != "text"}, "texts": []}, "field 'texts'"),
    ({**GOOD, "texts": [TEXT]}, "'text' and 'texts'"),
    ({**{k: v for k, v in GOOD.items() if k != "text"}, "texts": [TEXT, 7]}, "field 'texts\\[1\\]'"),
    ({**GOOD, "pronoun": "it"}, "field 'pronoun'"),
    ({k: v for k, v in GOOD.items() if k != "major"}, "field 'major': missing"),
    ({**GOOD, "university": "Yale"}, "field 'university': got 'Yale'"),
    ({**GOOD, "major": 12}, "field 'major'"),
    ({**GOOD, "spans": {"birth_city": [41]}}, "field 'spans.birth_city'"),
    ({**GOOD, "spans": {"birth_city": [[41, 999]]}}, "field 'spans.birth_city'.*text's length"),
    ({**GOOD, "spans": {"birth_city": [40, 45]}}, "field 'spans.birth_city'.*space"),
    ({**{k: v for k, v in GOOD.items() if k != "text"}, "texts": [TEXT, TEXT], "spans": {"name": [0, 12]}},
     "field 'spans'.*one per text"),
    ({**{k: v for k, v in GOOD.items() if k not in ("birth_date", "text")}, "birthday": 3, "birthmonth": "May",
      "birthyear": 1990, "text": TEXT}, "field 'birthday'.*day-of-month"),
    ({**{k: v for k, v in GOOD.items() if k != "company_name"}, "company": "Acme Inc.", "employer": "Acme Inc."},
     "fields \\['company', 'employer'\\]"),
    ({**GOOD, "attributes": ["Oslo"]}, "field 'attributes'"),
    ({"person": {"name": "Someone Else"}, **GOOD}, "field 'person.name'"),
    ({**GOOD, "person": 1.5}, "field 'person'"),
    ({**GOOD, "birth_city": "Paris", "text": TEXT.replace("Oslo", "Paris")}, "field 'birth_city'.*same person at .*:1"),
    ({**GOOD, "person_id": 9}, "field 'name'.*unique"),
]


@pytest.mark.parametrize("bad, message", BAD, ids=[m.split("'")[1] if "'" in m else m for _, m in BAD])
def test_bad_record_names_its_line_and_field(tmp_path, bad, message):
    with pytest.raises(DataError, match=f"in.jsonl:2: .*{message}") as e:
        read_one(tmp_path, GOOD, bad)
    assert "\n" not in str(e.value)


def test_skip_bad_counts_and_the_cli_reports_it(tmp_path, capsys):
    bad = [b for b, _ in BAD[:5]]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join([json.dumps(GOOD)] + [b if isinstance(b, str) else json.dumps(b) for b in bad]) + "\n")
    bios, skipped = read_bios(path, skip_bad=True)
    assert len(bios) == 1 and len(skipped) == 5 and skipped[0].startswith(f"{path}:2:")
    assert main(["data", "import", str(path), "--out", str(tmp_path / "d"), "--vocab-size", "300"]) == 2
    err = capsys.readouterr().err
    assert f"{path}:2:" in err and "Traceback" not in err and not (tmp_path / "d").exists()
    assert main(["data", "import", str(path), "--out", str(tmp_path / "d"), "--vocab-size", "300", "--skip-bad"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["skipped"] == 5 and summary["bios"] == 1
    assert json.loads((tmp_path / "d" / "meta.json").read_text())["skipped"] == 5
    again = ["data", "import", str(path), "--out", str(tmp_path / "d"), "--vocab-size", "300", "--skip-bad"]
    assert main(again) == 2 and "overwrite" in capsys.readouterr().err      # an existing dataset is kept
    assert main(again + ["--overwrite"]) == 0


def test_full_stop_value_in_qa_and_tokens(tmp_path):
    bob = {**ADA, "name": "Bob Tan", "company_name": "Zed Ltd.", "text": TEXT.replace("Ada Lyn Moor", "Bob Tan")
           .replace("Acme Inc.", "Zed Ltd.")}
    path = tmp_path / "in.jsonl"
    write_jsonl([GOOD, bob], path)
    ds, _ = build_import(ImportConfig(str(path), vocab_size=300))
    qa = [r for r in ds.qa if r["attribute"] == "company_name"]
    assert [r["text"].split("Answer: ")[1] for r in qa] == ["Acme Inc.", "Zed Ltd."]
    assert [r["answer"] for r in qa] == ["Acme Inc.", "Zed Ltd."]
    tok, k = ds.tokenizer, ATTRIBUTES.index("company_name")
    for i, rec in enumerate(qa):
        doc = ds.qa_tokens.doc(i * len(ATTRIBUTES) + k)
        s, e = ds.qa_tokens.spans["answer"][i * len(ATTRIBUTES) + k, 0]
        assert tok.decode(doc[s:e]).strip() == rec["answer"][:-1] and tok.decode(doc[e:]) == "."


def foreign_records(n=40, seed=5):
    """n people with two bioS texts each, written as another generator might: a nested person dict
    with its own id and alias keys, a capitalised pronoun, spans as [s, e] pairs for the city."""
    people = sample_people(n, seed=seed)
    bios = bio_records(make_bios(people, "multi2", seed=seed), people)
    out = []
    for a, b in zip(bios[::2], bios[1::2]):
        attrs = dict(a["attributes"])
        person = {"id": f"P{a['person']:03d}", "name": a["name"], "birthday": attrs.pop("birth_date"),
                  "employer": attrs.pop("company_name"), **attrs}
        out.append({"person": person, "pronoun": a["pronoun"].capitalize(), "generator": "test",
                    "texts": [{"text": a["text"], "spans": {"birth_city": a["spans"]["birth_city"][0]}}, b["text"]]})
    return out


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("imported")
    write_jsonl(foreign_records(), root / "foreign.jsonl")
    ds, _ = import_bios(ImportConfig(str(root / "foreign.jsonl"), seed=2, train_fraction=0.5, vocab_size=600), root / "d")
    return root, ds


def test_import_folder_layout_split_and_token_spans(imported):
    root, ds = imported
    assert {p.name for p in (root / "d").iterdir()} >= {"bios.jsonl", "qa.jsonl", "tokenizer", "tokens.npz", "meta.json"}
    assert len(ds.bios) == 80 and len(ds.qa) == 40 * 6
    splits = {}
    for r in ds.qa:
        splits.setdefault(r["person"], set()).add(r["split"])
    assert all(len(s) == 1 for s in splits.values()) and sum(s == {"train"} for s in splits.values()) == 20
    enc = load_encoded(root / "d", "bios")
    for i, rec in enumerate(ds.bios):
        for key in ("name",) + ATTRIBUTES:
            s, e = enc.spans[key][i, 0]
            (cs, ce), *_ = rec["spans"][key]
            assert ds.tokenizer.decode(enc.doc(i)[s:e]).strip() == rec["text"][cs:ce]


def test_import_is_byte_identical_for_one_seed(imported, tmp_path):
    root, _ = imported
    import_bios(ImportConfig(str(root / "foreign.jsonl"), seed=2, vocab_size=600), tmp_path / "again")
    import_bios(ImportConfig(str(root / "foreign.jsonl"), seed=3, vocab_size=600), tmp_path / "other")
    for name in ("bios.jsonl", "qa.jsonl", "tokens.npz", "tokenizer/tokenizer.json"):
        assert (root / "d" / name).read_bytes() == (tmp_path / "again" / name).read_bytes()
    assert (root / "d" / "qa.jsonl").read_bytes() != (tmp_path / "other" / "qa.jsonl").read_bytes()


def test_importing_kn_bios_reproduces_its_folder(tmp_path):
    """One dataset two ways: `kn data bios`, and its bios.jsonl re-imported with the same seed."""
    make_dataset(BiosConfig(n=30, augment="multi2", vocab_size=500, seed=4), tmp_path / "kn")
    import_bios(ImportConfig(str(tmp_path / "kn" / "bios.jsonl"), seed=4, vocab_size=500), tmp_path / "imp")
    for name in ("bios.jsonl", "qa.jsonl", "tokenizer/tokenizer.json"):
        assert (tmp_path / "kn" / name).read_bytes() == (tmp_path / "imp" / name).read_bytes()
    for prefix in ("bios", "qa"):
        assert np.array_equal(load_encoded(tmp_path / "kn", prefix).ids, load_encoded(tmp_path / "imp", prefix).ids)


def test_train_and_evaluate_on_an_imported_folder(imported, one_thread):
    from kn.extraction import ExtractionConfig, evaluate_model, run_extraction
    from kn.models import ModelConfig
    from kn.train import TrainConfig, train
    root, ds = imported
    tiny = ModelConfig(n_layer=2, n_head=2, n_embd=32, context=64, vocab_size=len(ds.tokenizer))
    cfg = TrainConfig(data=str(root / "d"), out=str(root / "run"), mode="mixed", model=tiny, window=64,
                      batch_size=4, max_steps=3, device="cpu", exposures=1.0)
    summary = train(cfg, progress=False)
    assert summary["steps"] == 3 and np.isfinite(summary["final_loss"])
    result = evaluate_model(root / "run" / "model", root / "d")
    assert result["qa"]["n_train"] == result["qa"]["n_test"] == 20 * 6
    assert set(result["memorization"]["per_attribute"]) == set(ATTRIBUTES)
    ext = ExtractionConfig(data_dir=str(root / "d"), model=tiny, window=64, batch_size=8, exposures=1.0)
    r = run_extraction(ext, root / "extraction", progress=False)
    assert r["qa"]["n_test"] == 120 and not (root / "extraction" / "data").exists()
    with pytest.raises(DataError, match="^data_dir:"):
        run_extraction(ExtractionConfig(data_dir=str(root / "missing")), root / "x", progress=False)
