"""kn.tokenize: the corpus-trained tokenizer, composed token ids, token spans and packing.

Run: pytest tests/test_tokenize.py
"""
import numpy as np
import pytest

from kn.data.bios import bio_records, make_bios
from kn.data.people import sample_people
from kn.data.qa import make_qa, qa_records, split_people
from kn.data.records import ATTRIBUTES
from kn.errors import DataError
from kn.tokenize import (encode_documents, encode_records, load_tokenizer, pack, ragged_gather, sample_index,
                         train_tokenizer)


@pytest.fixture(scope="module")
def corpus():
    people = sample_people(200, seed=5)
    bios = make_bios(people, "multi2+permute+fullname", seed=0)
    qa = make_qa(people)
    bio_recs = bio_records(bios, people)
    qa_recs = qa_records(qa, people, split_people(len(people)))
    tok = train_tokenizer([r["text"] for r in bio_recs + qa_recs], vocab_size=1000)
    return tok, bios, qa, bio_recs, qa_recs


def test_composed_ids_equal_tokenizing_the_text(corpus):
    tok, bios, qa, bio_recs, qa_recs = corpus
    for docs, recs in [(bios, bio_recs), (qa, qa_recs)]:
        enc = encode_documents(docs, tok)
        ref = tok([r["text"] for r in recs], add_special_tokens=False)["input_ids"]
        assert all(list(enc.doc(i)) == ref[i] for i in range(len(recs)))


def test_token_spans_agree_two_ways(corpus):
    """Spans from piece sums equal spans from the tokenizer's character offsets."""
    tok, bios, qa, bio_recs, qa_recs = corpus
    for docs, recs in [(bios, bio_recs), (qa, qa_recs)]:
        a, b = encode_documents(docs, tok), encode_records(recs, tok)
        for key in a.spans:
            m = a.spans[key].shape[1]
            assert np.array_equal(a.spans[key], b.spans[key][:, :m]), key


def test_name_has_the_same_tokens_in_bio_and_question(corpus):
    """FINDINGS trap 3: '?' after a name, or the name at a document start, must not change its tokens."""
    tok, bios, qa, bio_recs, qa_recs = corpus
    eb, eq = encode_documents(bios, tok), encode_documents(qa, tok)
    by_person = {}
    for i in range(len(bio_recs)):
        for s, e in eb.spans["name"][i]:
            if s >= 0:
                by_person.setdefault(int(eb.person[i]), set()).add(tuple(eb.doc(i)[s:e]))
    for i in range(len(qa_recs)):
        s, e = eq.spans["name"][i, 0]
        by_person[int(eq.person[i])].add(tuple(eq.doc(i)[s:e]))
    assert all(len(v) == 1 for v in by_person.values())


def test_save_and_load_as_transformers_tokenizer(corpus, tmp_path):
    tok = corpus[0]
    tok.save_pretrained(str(tmp_path / "tok"))
    loaded = load_tokenizer(tmp_path / "tok")
    text = corpus[3][0]["text"]
    assert loaded(text)["input_ids"] == tok(text)["input_ids"]
    assert loaded.eos_token == "<eos>" and loaded.pad_token == "<pad>" and loaded.mask_token == "<mask>"
    with pytest.raises(DataError, match="tokenizer"):
        load_tokenizer(tmp_path)


def test_pack_shuffles_globally_and_keeps_every_token(corpus):
    tok, bios, _, bio_recs, _ = corpus
    enc = encode_documents(bios, tok)
    eos = tok.eos_token_id
    w = pack(enc, eos, window=64, seed=0, drop_last=False)
    assert w.shape[1] == 64 and w.dtype == np.int32
    stream = w.ravel()
    assert (stream != eos).sum() == len(enc.ids)
    assert np.array_equal(pack(enc, eos, window=64, seed=0, drop_last=False), w)
    assert not np.array_equal(pack(enc, eos, window=64, seed=1, drop_last=False), w)
    # documents are in shuffled order: the bios of one person (adjacent in enc) rarely share a window
    docs = np.split(stream, np.nonzero(stream == eos)[0] + 1)
    lengths = enc.lengths()
    first = [tuple(d[:-1]) for d in docs[:20] if len(d) > 1]
    where = [next(i for i in range(len(enc)) if tuple(enc.doc(i)) == f) for f in first]
    assert where != sorted(where)
    assert lengths.sum() + len(enc) <= len(stream)


def test_pack_bad_window(corpus):
    tok, bios = corpus[0], corpus[1]
    with pytest.raises(DataError, match="^window"):
        pack(encode_documents(bios, tok), tok.eos_token_id, window=1)


def test_vocab_size_checked():
    with pytest.raises(DataError, match="^vocab_size"):
        train_tokenizer(["a b c"], vocab_size=10)


def test_spans_cover_all_attributes(corpus):
    tok, bios = corpus[0], corpus[1]
    enc = encode_documents(bios, tok)
    assert set(enc.spans) == {"name", *ATTRIBUTES}
    for a in ATTRIBUTES:
        s, e = enc.spans[a][:, 0, 0], enc.spans[a][:, 0, 1]
        assert (e > s).all() and (e <= enc.lengths()).all()


def test_equal_exposure_repeats_the_fewer_and_refuses_counts_that_do_not_divide():
    from kn.tokenize import Encoded, equal_exposure
    docs = Encoded(np.arange(6, dtype=np.int32), np.array([0, 1, 2, 4, 6]), np.array([0, 0, 1, 2]))
    out = equal_exposure(docs)
    assert out.person.tolist() == [0, 0, 1, 1, 2, 2]
    assert [out.doc(i).tolist() for i in range(len(out))][2:] == [[2, 3], [2, 3], [4, 5], [4, 5]]
    with pytest.raises(DataError, match="divide"):
        equal_exposure(Encoded(np.arange(5, dtype=np.int32), np.arange(6), np.array([0, 0, 0, 1, 1])))


def test_tokenizer_from_a_sample_encodes_every_text_at_the_same_length():
    """A tokenizer trained on a seeded sample (3,000 of 16,500 texts) round-trips every text, has no
    unknown token, and gives within 1% of the tokens per biography of one trained on every text."""
    people = sample_people(1500, seed=0)
    bios, qa = make_bios(people, "multi5+permute", seed=0), make_qa(people)
    texts = bios.texts() + qa.texts()
    keep = sample_index(len(texts), 3000, seed=0)
    assert len(set(keep)) == 3000 and keep == sorted(keep) == sample_index(len(texts), 3000, seed=0)
    assert keep != sample_index(len(texts), 3000, seed=1)
    assert sample_index(100, 3000) == list(range(100))                          # small corpora: every text
    sample = [texts[i] for i in keep]
    full, part = (train_tokenizer(t, vocab_size=2048) for t in (texts, sample))
    ids = part(texts, add_special_tokens=False)["input_ids"]
    assert part.unk_token_id is None and [d.removeprefix(" ") for d in part.batch_decode(ids)] == texts  # prefix space
    per_bio = [sum(map(len, tok(bios.texts(), add_special_tokens=False)["input_ids"])) for tok in (full, part)]
    assert abs(per_bio[1] / per_bio[0] - 1) <= 0.01, per_bio


def test_ragged_gather_concatenates_the_slices():
    rng = np.random.default_rng(0)
    for _ in range(200):
        flat = rng.integers(0, 100, rng.integers(5, 50)).astype(np.int32)
        lengths = rng.integers(0, 5, rng.integers(0, 8))           # empty segments and no segments too
        starts = np.array([rng.integers(0, len(flat) - n + 1) for n in lengths], dtype=np.int64)
        want = np.concatenate([flat[s:s + n] for s, n in zip(starts, lengths)] + [flat[:0]])
        got = ragged_gather(flat, starts, lengths)
        assert got.dtype == flat.dtype and got.tolist() == want.tolist()
