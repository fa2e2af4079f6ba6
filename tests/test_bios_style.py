"""kn.data.bios styles (issue 22): each option changes the text as it says, kn's default is unchanged
(the recorded sha256 in test_data.py guard the bytes), spans still point at the values, results made
before the options existed still match, and a bad value is a one-line DataError.

Run: pytest tests/test_bios_style.py
"""
import re

import numpy as np
import pytest

from kn.cli import main
from kn.data.bios import STYLE, THEY_VERBS, VARIANTS, bio_records, make_bios, variant_style
from kn.data.dataset import BiosConfig, build_bios
from kn.data.people import sample_people
from kn.data.pools import load_pools
from kn.data.records import ATTRIBUTES
from kn.errors import DataError
from kn.extraction import from_profile
from kn.results import as_recorded, same_config

THEY_WORDS = re.compile(r"\b(they|their|them)\b", re.IGNORECASE)


@pytest.fixture(scope="module")
def people():
    return sample_people(300, seed=5)


def texts(people, augment="multi2+permute", **style):
    return bio_records(make_bios(people, augment, 3, **style), people)


def sentences(text):
    return re.split(r"(?<=\.) (?=[A-Z])", text)


def mid_share(records) -> float:
    """Share of value spans not followed by the sentence's full stop."""
    after = [r["text"][e:e + 1] for r in records for a in ATTRIBUTES for _, e in r["spans"][a]]
    return float(np.mean([c != "." for c in after]))


def test_kn_style_is_the_default(people):
    default = texts(people)
    assert texts(people, value_position="kn", pronouns="gendered", length="kn") == default
    assert variant_style() == variant_style("kn") == {k: v[0] for k, v in STYLE.items()}


def test_mid_puts_more_values_mid_sentence_or_possessive(people):
    kn, mid = texts(people), texts(people, value_position="mid")
    assert mid_share(mid) > 2 * mid_share(kn) and mid_share(mid) > 0.25
    assert any("'s " in r["text"][e:e + 4] for r in mid for a in ATTRIBUTES for _, e in r["spans"][a])
    pools = load_pools()
    n_mid = sum(not t.endswith("{value}.") for a in ATTRIBUTES for t in pools.templates[a])
    assert n_mid == 32 and all(len(pools.mid_templates[a]) == 10 for a in ATTRIBUTES)


def test_mixed_pronouns_write_they_after_he_or_she(people):
    kn, mixed = texts(people), texts(people, pronouns="mixed")
    assert not any(THEY_WORDS.search(r["text"]) for r in kn)
    later = [s for r in mixed for s in sentences(r["text"])[1:]]
    share = np.mean([bool(THEY_WORDS.search(s)) for s in later])
    assert 0.4 < share < 0.6                                            # THEY_SHARE of the sentences after the first
    assert all(r["name"] in sentences(r["text"])[0] and not THEY_WORDS.search(sentences(r["text"])[0]) for r in mixed)
    assert not re.search(r"\b[Tt]hey (?:\w+ly )?(was|is|has)\b", " ".join(later))   # the verb agrees


def test_every_verb_after_a_subject_slot_is_known():
    """A present-tense verb after {Subj} the THEY_VERBS table lacks would read "they lists"."""
    pools = load_pools()
    templates = [t for a in ATTRIBUTES for t in pools.templates[a] + pools.mid_templates[a]]
    verbs = [m.group(1) for t in templates
             for m in re.finditer(r"\{[Ss]ubj\} (?:(?:proudly|originally|first|still|always|never) )?(\w+)", t)]
    assert len(verbs) > 250
    assert [v for v in verbs if v.endswith("s") and v not in THEY_VERBS] == []


def test_long_adds_filler_sentences(people):
    kn, long = texts(people), texts(people, length="long")
    ratio = np.mean([len(r["text"]) for r in long]) / np.mean([len(r["text"]) for r in kn])
    assert 1.15 < ratio < 1.45
    fillers = {" " + f for f in load_pools().fillers}
    assert any(f in r["text"] for r in long for f in fillers) and not any(f in r["text"] for r in kn for f in fillers)
    n_sentences = [sum(len(sentences(r["text"])) for r in recs) for recs in (kn, long)]
    assert 1.25 < n_sentences[1] / n_sentences[0] < 1.42 and mid_share(long) == mid_share(kn)


@pytest.mark.parametrize("variant", ["hard", "mid", "they", "long"])
def test_spans_point_at_values_in_every_variant(people, variant):
    for r in texts(people, **VARIANTS[variant]):
        assert {a: [r["text"][s:e] for s, e in r["spans"][a]] for a in ATTRIBUTES} == \
               {a: [r["attributes"][a]] for a in ATTRIBUTES}


def test_hard_dataset_tokens_point_at_values_and_repeat_for_a_seed():
    cfg = BiosConfig(n=40, augment="multi2+permute", vocab_size=600, **variant_style("hard"))
    ds = build_bios(cfg)
    for i, rec in enumerate(ds.bios):
        doc = ds.bios_tokens.doc(i)
        for attr in ATTRIBUTES:
            s, e = ds.bios_tokens.spans[attr][i, 0]
            assert ds.tokenizer.decode(doc[s:e]).strip() == rec["attributes"][attr]
    assert [r["text"] for r in build_bios(cfg).bios] == [r["text"] for r in ds.bios]


def test_results_before_the_options_match_kns_default():
    recorded = as_recorded(from_profile("smoke", setting="pretrain_finetune", augment="single"))
    for key in STYLE:
        del recorded["data"][key]
    assert same_config(recorded, from_profile("smoke", setting="pretrain_finetune", augment="single"))
    assert not same_config(recorded, from_profile("smoke", setting="pretrain_finetune", augment="single",
                                                  **variant_style("hard")))


def test_bad_style_values_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(DataError, match=r"^value_position: got 'middle'; allowed: kn, mid$"):
        BiosConfig(value_position="middle")
    with pytest.raises(DataError, match=r"^variant: got 'harder'; allowed: kn, mid, they, long, hard$"):
        variant_style("harder")
    with pytest.raises(DataError, match=r"^pronouns: a bioS style option; bioR takes only its default"):
        BiosConfig(kind="bioR", pronouns="mixed")
    with pytest.raises(DataError, match=r"^colour: unknown bioS style option"):
        make_bios(sample_people(3), colour="red")
    assert main(["data", "bios", "--n", "20", "--variant", "hard", "--length", "longer", "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("kn: error: length: got 'longer'") and not (tmp_path / "d").exists()
