"""kn.data.importer and read_bios: biographies from other generators, record by record, into a dataset
folder that kn.train and kn.extraction accept.   Run: OMP_NUM_THREADS=1 pytest tests/test_import.py

Issue 26 ("nothing lost", at the end): spans that point at other text, one person's conflicting
pronouns, the reasons when every record fails, lines that are not UTF-8, nest too deep, hold an id
past int64 or are too long, memory that stays near the file's size, SIGTERM and SIGKILL mid-write.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import kn
from kn.cli import main
from kn.data.bior import generate_bior
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
    from kn.train import train
    from kn.train_config import TrainConfig
    root, ds = imported
    tiny = ModelConfig(n_layer=2, n_head=2, n_embd=32, context=64, vocab_size=len(ds.tokenizer))
    cfg = TrainConfig(data=str(root / "d"), out=str(root / "run"), mode="mixed", model=tiny, window=64,
                      batch_size=4, max_steps=3, device="cpu", passes=1.0)
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


# ---- issue 26: nothing lost in `kn data import` ------------------------------------------------

def test_a_given_span_must_cover_its_value(tmp_path):
    with pytest.raises(DataError, match=r"in.jsonl:2: field 'spans.birth_city': got \[0, 12\].*covers 'Ada Lyn Moor'"):
        read_one(tmp_path, GOOD, {**GOOD, "spans": {"birth_city": [0, 12]}})
    with pytest.raises(DataError, match="in.jsonl:2: field 'spans.name'"):
        read_one(tmp_path, GOOD, {**GOOD, "spans": {"name": [[0, 12], [41, 45]]}})       # one of two is wrong
    loose = {**GOOD, "text": TEXT.replace("Oslo", "OSLO"),
             "spans": {"birth_city": [41, 45], "company_city": [113, 128]}}
    (rec,), _ = read_one(tmp_path, loose)        # case and the value's own final '.' are not differences
    assert spanned(rec)["birth_city"] == ["OSLO"] and spanned(rec)["company_city"] == ["Washington, D.C"]


def test_kn_bior_records_read_back_unchanged(tmp_path):
    """bioR spans cover another surface form of the value (a date format, 'MIT'): still accepted."""
    recs = generate_bior(sample_people(40, seed=2), seed=3, n_per_person=3)
    assert any(r["text"][s:e] != r["attributes"]["birth_date"] for r in recs for s, e in r["spans"]["birth_date"])
    write_jsonl(recs, tmp_path / "bior.jsonl")
    assert load_bios(tmp_path / "bior.jsonl") == recs


def test_conflicting_pronouns_of_one_person(tmp_path):
    recs = [{**GOOD, "person": 1, "pronoun": "she"}, {**GOOD, "person": 1}, {**GOOD, "person": 1, "pronoun": "He"},
            {**GOOD, "person": 1, "pronoun": "SHE"}, {**GOOD, "person": 1, "pronoun": "he"}]
    with pytest.raises(DataError, match=r"in.jsonl:3: field 'pronoun': got 'he'; allowed: 'she', as given for the "
                                        r"same person at .*in.jsonl:1$"):
        read_one(tmp_path, *recs)
    bios, skipped = read_one(tmp_path, *recs, skip_bad=True)
    assert len(bios) == 3 and [m.split(": ")[0][-1] for m in skipped] == ["3", "5"]
    assert {b["pronoun"] for b in bios} == {"she", None}


def test_every_record_bad_says_the_first_reasons(tmp_path, capsys, caplog):
    person = {k: v for k, v in ADA.items() if k != "company_name"} | {"company1name": "Acme Inc."}
    path = tmp_path / "clash.jsonl"
    write_jsonl([{"person": person, "attributes": {"company": "Acme Inc."}, "text": TEXT}] * 100, path)
    assert main(["data", "import", str(path), "--out", str(tmp_path / "d"), "--vocab-size", "300", "--skip-bad"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "holds no readable biography records (100 skipped; first: " in err
    clash = "fields ['company1name', 'company'] all stand for company_name"
    assert all(f"clash.jsonl:{i}: {clash}" in err for i in (1, 2, 3))
    assert "clash.jsonl:4:" not in err
    assert any("clash.jsonl:1: fields" in r.getMessage() for r in caplog.records)       # logged as met, too


NESTED = {"x": json.loads("[" * 100 + "]" * 100)}     # parses in Python, but deeper than MAX_DEPTH
BAD_LINES = [
    (json.dumps(GOOD).encode()[:40] + b"\xff\xfe" + json.dumps(GOOD).encode()[40:], "not valid UTF-8 \\(byte 41"),
    (b"[" * 200_000 + b"]" * 200_000, "JSON nested deeper than 64"),
    (json.dumps({**GOOD, **NESTED}).encode(), "JSON nested deeper than 64"),
    (json.dumps({**GOOD, "person": 2 ** 64}).encode(), "field 'person': got 18446744073709551616.*int64"),
    (json.dumps({"person": {"id": -2 ** 63 - 1, **ADA}, "text": TEXT}).encode(), "field 'person.id'.*int64"),
    (b'{"person": ' + b"9" * 5000 + b"}", "not valid JSON \\(Exceeds the limit"),
    (json.dumps({**GOOD, "source": "\ud800"}).encode(), "field 'source': holds a lone surrogate"),
    (json.dumps({**GOOD, "text": TEXT + " " * 3_000_000}).encode(), "line of 3,000,[0-9]{3} bytes; allowed: at most 1,048"),
]
LINE_IDS = ["utf8", "deep-200000", "deep-100", "id-2**64", "id-below-int64", "5000-digits", "surrogate", "3MB-line"]


def write_lines(path, *lines):
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


@pytest.mark.parametrize("line, message", BAD_LINES, ids=LINE_IDS)
def test_bad_line_names_its_line_and_is_skipped(tmp_path, line, message):
    path = write_lines(tmp_path / "in.jsonl", json.dumps({**GOOD, "person": 1}).encode(), line,
                       json.dumps({**GOOD, "person": 1}).encode())
    with pytest.raises(DataError, match=f"in.jsonl:2: {'.*' if 'field' in message else ''}{message}") as e:
        read_bios(path)
    assert "\n" not in str(e.value)
    bios, skipped = read_bios(path, skip_bad=True)
    assert len(bios) == 2 and len(skipped) == 1 and skipped[0].startswith(f"{path}:2: ")


def test_skip_bad_import_of_every_bad_line(tmp_path, capsys):
    """The whole import under --skip-bad: each bad line counted, none crashes it (an id past int64
    used to pass reading and crash the import)."""
    good = json.dumps({**GOOD, "person": 1}).encode()
    path = write_lines(tmp_path / "in.jsonl", good, *[line for line, _ in BAD_LINES])
    assert main(["data", "import", str(path), "--out", str(tmp_path / "d"), "--vocab-size", "300", "--skip-bad"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["skipped"] == len(BAD_LINES) and summary["bios"] == 1


# Peak memory (KB) of this process image: VmHWM, which exec resets (ru_maxrss keeps the forking parent's).
PEAK = """
def peak():
    return int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")))
"""
linux_only = pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="peak memory from /proc/self/status")
READ_PEAK = PEAK + """
import sys
from kn.data.records import read_bios
before = peak()
bios, skipped = read_bios(sys.argv[1], skip_bad=True)
print(len(bios), len(skipped), peak() - before)
"""


def run_kn(code: str, *args, **kw) -> subprocess.CompletedProcess | subprocess.Popen:
    """`code` in a fresh Python that imports this checkout's kn."""
    env = {**os.environ, "PYTHONPATH": str(Path(kn.__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    if kw.pop("background", False):
        return subprocess.Popen([sys.executable, "-c", code, *args], env=env, stderr=subprocess.PIPE, text=True, **kw)
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, check=True)


@linux_only
def test_a_long_line_is_refused_without_reading_it_whole(tmp_path):
    """A 30 MB line costs no more than a chunk of it (it took GBs: the text, its JSON, its tokens)."""
    path = tmp_path / "long.jsonl"
    with open(path, "wb") as f:
        f.write(json.dumps(GOOD).encode() + b"\n")
        f.write(json.dumps({**GOOD, "name": "Bob Tan", "text": "Bob Tan " + "x" * 30_000_000}).encode() + b"\n")
    n_bios, n_skipped, grew_kb = map(int, run_kn(READ_PEAK, str(path)).stdout.split())
    assert (n_bios, n_skipped) == (1, 1) and grew_kb < 8_000


IMPORT_PEAK = PEAK + """
import sys
from kn.data.importer import ImportConfig, build_import
build_import(ImportConfig(sys.argv[2], vocab_size=1000))      # modules, pools and allocator arenas first
before = peak()
ds, _ = build_import(ImportConfig(sys.argv[1], vocab_size=1000))
print(len(ds.bios), peak() - before)
"""


@linux_only
def test_import_memory_stays_near_the_file_size(tmp_path):
    """Peak memory grows by ~10x the file (token arrays 2x, biographies as compact JSON 1x, QAs made as
    written, texts tokenized in batches), not the ~35x of records held as dicts: 4000 people after a
    warm-up on 1000 others (at 60,000 people: 7x)."""
    people = sample_people(5000, seed=4)
    recs = bio_records(make_bios(people, "single", seed=4), people)
    write_jsonl(recs[:1000], tmp_path / "warm.jsonl")
    write_jsonl(recs[1000:], tmp_path / "big.jsonl")
    n, grew_kb = map(int, run_kn(IMPORT_PEAK, str(tmp_path / "big.jsonl"), str(tmp_path / "warm.jsonl")).stdout.split())
    size_kb = (tmp_path / "big.jsonl").stat().st_size / 1024
    assert n == 4000 and grew_kb < 20 * size_kb, (grew_kb, size_kb)


def test_chunked_encoding_equals_one_batch(tmp_path, monkeypatch):
    from kn.data import importer
    from kn.tokenize import encode_documents, encode_records
    write_jsonl(foreign_records(20), tmp_path / "f.jsonl")
    monkeypatch.setattr(importer, "CHUNK", 7)              # people per QA batch
    monkeypatch.setattr(importer, "BATCH_CHARS", 2000)     # two or three biographies per batch
    ds, _ = build_import(ImportConfig(str(tmp_path / "f.jsonl"), vocab_size=400))
    bios = list(ds.bios)
    whole = encode_records(bios, ds.tokenizer, keys=("name",) + ATTRIBUTES)
    ids, names, values, _ = importer.people_of(ds.bios)
    whole_qa = encode_documents(importer.qa_documents(ids, names, values), ds.tokenizer)
    for got, want in ((ds.bios_tokens, whole), (ds.qa_tokens, whole_qa)):
        assert np.array_equal(got.ids, want.ids) and np.array_equal(got.offsets, want.offsets)
        assert np.array_equal(got.person, want.person)
        assert all(np.array_equal(got.spans[k], want.spans[k]) for k in want.spans)
    assert len(list(ds.qa)) == len(ds.qa) == 20 * 6 and len(bios) == len(ds.bios) == 40


SLOW_WRITE = """
import sys, time
import kn.data.dataset as dataset
write = dataset.write_jsonl
def slow(records, path):      # write, then wait with the temporary file in place to be stopped
    n = write(records, path)
    time.sleep(120)
    return n
dataset.write_jsonl = slow
from kn.cli import main
sys.exit(main(sys.argv[1:]))
"""


def stopped_mid_write(tmp_path, sig) -> tuple[subprocess.Popen, str]:
    """`kn data import` in a subprocess, sent `sig` once its bios.jsonl temporary file is written."""
    write_jsonl(foreign_records(), tmp_path / "in.jsonl")
    out = tmp_path / "d"
    proc = run_kn(SLOW_WRITE, "data", "import", str(tmp_path / "in.jsonl"), "--out", str(out), "--vocab-size", "300",
                  background=True)
    deadline = time.monotonic() + 120
    while not any(p.name.startswith(".bios.jsonl.tmp-") and p.stat().st_size for p in out.glob(".*")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "no write"
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    return proc, err


def test_sigterm_mid_write_leaves_no_temporary_file(tmp_path, capsys):
    proc, err = stopped_mid_write(tmp_path, signal.SIGTERM)
    assert proc.returncode == 75 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("kn: error: import stopped by SIGTERM")
    assert not list((tmp_path / "d").glob("*.tmp-*"))
    assert main(["data", "import", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "d"), "--vocab-size", "300"]) == 0


def test_a_rerun_removes_the_temporaries_of_a_killed_import(tmp_path, capsys):
    proc, _ = stopped_mid_write(tmp_path, signal.SIGKILL)
    out = tmp_path / "d"
    assert proc.returncode == -signal.SIGKILL and (out / f".bios.jsonl.tmp-{proc.pid}").is_file()
    live = out / f".qa.jsonl.tmp-{os.getppid()}"              # a process that is still running: kept
    live.write_text("")
    assert main(["data", "import", str(tmp_path / "in.jsonl"), "--out", str(out), "--vocab-size", "300"]) == 0
    assert sorted(p.name for p in out.glob(".*tmp-*")) == [live.name] and (out / "meta.json").is_file()


@pytest.mark.parametrize("command", ["bios", "import"])
def test_valid_fraction_makes_a_validation_slice_apart_from_test_people(command, tmp_path, capsys):
    """`kn data bios|import --valid-fraction`: validation people are train_people held out, never
    test_people; a folder without the slice is refused by an lr grid in one line, before training."""
    from kn.data.records import read_jsonl
    from kn.extraction import from_profile, run_extraction
    people = sample_people(40, seed=2)
    write_jsonl(bio_records(make_bios(people, "single", seed=2), people), tmp_path / "in.jsonl")
    args = {"bios": ["data", "bios", "--n", "40"], "import": ["data", "import", str(tmp_path / "in.jsonl")]}[command]
    for name, extra in (("valid", ["--valid-fraction", "0.25"]), ("none", [])):
        assert main([*args, "--vocab-size", "400", "--out", str(tmp_path / name), *extra]) == 0
    split = {r["person"]: r["split"] for r in read_jsonl(tmp_path / "valid" / "qa.jsonl")}
    assert sum(s == "valid" for s in split.values()) == 5 and sum(s == "test" for s in split.values()) == 20
    none = {r["person"]: r["split"] for r in read_jsonl(tmp_path / "none" / "qa.jsonl")}
    assert {p for p, s in split.items() if s == "test"} == {p for p, s in none.items() if s == "test"}
    assert json.loads((tmp_path / "valid" / "meta.json").read_text())["counts"]["valid_people"] == 5
    assert main([*args, "--out", str(tmp_path / "bad"), "--valid-fraction", "1"]) == 2
    assert "valid_fraction: got 1.0; allowed: a number in [0, 1)" in capsys.readouterr().err
    cfg = from_profile("smoke", setting="pretrain_finetune", data_dir=str(tmp_path / "none"))
    with pytest.raises(DataError, match="^finetune_lr_grid: choosing among lrs needs a validation slice, and '.*none' has"):
        run_extraction(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "pretrain").exists()                      # refused before any training
