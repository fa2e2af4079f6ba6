"""kn.evaluate: teacher-forced span scores (loss, exact, first), QA accuracy by split and attribute,
memorization, field losses, and greedy generation, checked on mock models with known answers and
cross-checked against greedy generation on tiny GPT-NeoX models (random and briefly trained).

Run: pytest tests/test_evaluate.py
"""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from kn.data.bios import make_bios
from kn.data.people import sample_people
from kn.data.qa import make_qa
from kn.data.records import ATTRIBUTES
from kn.errors import DataError
from kn.evaluate import (accuracy, doc_rows, field_losses, greedy_generate, majority_baseline, memorization,
                         score_spans, span_scores)
from kn.tokenize import encode_documents, train_tokenizer


class LookupLM(torch.nn.Module):
    """Mock LM: a huge logit on table[prefix] (the prefix of the row up to each position), else uniform."""

    def __init__(self, table: dict, vocab: int):
        super().__init__()
        self.table, self.vocab = table, vocab

    def forward(self, input_ids, attention_mask=None):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        for r, row in enumerate(input_ids.tolist()):
            for p in range(len(row)):
                nxt = self.table.get(tuple(row[:p + 1]))
                if nxt is not None:
                    logits[r, p, nxt] = 100.0
        return SimpleNamespace(logits=logits)


def truth_table(enc, eos, docs=None) -> dict:
    """prefix -> true next token for eos + document + eos of the given documents."""
    table = {}
    for i in range(len(enc)) if docs is None else docs:
        seq = [eos] + enc.doc(i).tolist() + [eos]
        table.update({tuple(seq[:p + 1]): seq[p + 1] for p in range(len(seq) - 1)})
    return table


def corrupt(table, enc, eos, i, pos, vocab):
    """Make the model wrong where it predicts document token `pos` of document i."""
    prefix = tuple([eos] + enc.doc(i).tolist()[:pos])
    table[prefix] = (table[prefix] + 1) % vocab


def tiny_neox(vocab, hidden=32, layers=1, seed=0):
    torch.manual_seed(seed)
    cfg = GPTNeoXConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=2 * hidden, vocab_size=vocab, rotary_pct=1.0, use_parallel_residual=False,
                        attention_dropout=0.0, hidden_dropout=0.0, max_position_embeddings=128)
    return GPTNeoXForCausalLM(cfg).float().eval()


@pytest.fixture(scope="module")
def data():
    people = sample_people(24, seed=3)
    qa_docs, bio_docs = make_qa(people), make_bios(people, "single", seed=0)
    tok = train_tokenizer(qa_docs.texts() + bio_docs.texts(), vocab_size=400)
    qa, bios = encode_documents(qa_docs, tok), encode_documents(bio_docs, tok)
    return SimpleNamespace(tok=tok, qa=qa, bios=bios, attribute=qa_docs.meta["attribute"], people=people,
                           eos=tok.eos_token_id, pad=tok.pad_token_id, V=len(tok))


def test_doc_rows_shift_by_one_and_end_with_eos(data):
    ids, mask, targets = doc_rows(data.qa, np.array([0, 1]), data.eos, data.pad)
    for r in range(2):
        doc, n = data.qa.doc(r).tolist(), data.qa.lengths()[r]
        assert ids[r, 0] == data.eos and ids[r, 1:n + 1].tolist() == doc and mask[r].sum() == n + 1
        assert targets[r, :n].tolist() == doc and targets[r, n] == data.eos


def test_perfect_mock_is_exact_with_zero_loss(data):
    sc = span_scores(LookupLM(truth_table(data.qa, data.eos), data.V), data.qa, "answer", data.eos, data.pad,
                     batch_size=7, require_end=True)
    assert sc["exact"].all() and sc["first"].all() and np.all(sc["loss"] < 1e-6)
    s, e = data.qa.spans["answer"][:, 0].T
    assert np.array_equal(sc["n_tokens"], e - s)


def test_mock_wrong_inside_or_after_the_answer(data):
    s, e = data.qa.spans["answer"][:, 0].T
    i = int(np.nonzero(e - s >= 2)[0][0])
    table = truth_table(data.qa, data.eos)
    corrupt(table, data.qa, data.eos, i, s[i] + 1, data.V)  # second answer token
    sc = span_scores(LookupLM(table, data.V), data.qa, "answer", data.eos, data.pad, require_end=True)
    assert not sc["exact"][i] and sc["first"][i] and sc["loss"][i] > 50
    assert sc["exact"].sum() == len(data.qa) - 1

    table = truth_table(data.qa, data.eos)
    assert data.tok.decode([data.qa.doc(i)[e[i]]]) == "."
    corrupt(table, data.qa, data.eos, i, e[i], data.V)  # the '.' after the answer
    model = LookupLM(table, data.V)
    with_end = span_scores(model, data.qa, "answer", data.eos, data.pad, require_end=True)
    without = span_scores(model, data.qa, "answer", data.eos, data.pad, require_end=False)
    assert not with_end["exact"][i] and without["exact"][i] and without["loss"][i] < 1e-6


def test_span_at_document_end_is_followed_by_eos(data):
    """The '.' span ends each QA; its next token is the EOS the scorer appends."""
    qa = data.qa
    n = qa.lengths()
    qa.spans["dot"] = np.stack([n - 1, n], axis=1)[:, None, :]
    try:
        table = truth_table(qa, data.eos)
        model = LookupLM(table, data.V)
        assert span_scores(model, qa, "dot", data.eos, data.pad, require_end=True)["exact"].all()
        table[tuple([data.eos] + qa.doc(0).tolist())] = data.pad  # wrong only at the final EOS
        sc = span_scores(LookupLM(table, data.V), qa, "dot", data.eos, data.pad, require_end=True)
        assert not sc["exact"][0] and sc["exact"][1:].all()
    finally:
        del qa.spans["dot"]


def test_uniform_logits_give_n_log_v(data):
    sc = span_scores(LookupLM({}, data.V), data.bios, "name", data.eos, data.pad, all_occurrences=True)
    present = sc["n_tokens"] > 0
    assert np.allclose(sc["loss"][present], sc["n_tokens"][present] * math.log(data.V), atol=1e-4, rtol=0)
    assert np.isnan(sc["loss"][~present]).all() and not sc["exact"][~present].any()


def test_padding_does_not_change_scores(data):
    model = tiny_neox(data.V)
    short = int(np.argmin(data.bios.lengths()))
    alone = span_scores(model, data.bios, "major", data.eos, data.pad, batch_size=1)
    batched = span_scores(model, data.bios, "major", data.eos, data.pad, batch_size=len(data.bios))
    assert data.bios.lengths().max() > data.bios.lengths()[short]
    assert np.allclose(alone["loss"], batched["loss"], atol=1e-4, rtol=0)
    assert np.array_equal(alone["exact"], batched["exact"])


def agree_with_generation(model, data):
    """exact (teacher-forced) vs greedy generation of answer + '.', document by document."""
    sc = span_scores(model, data.qa, "answer", data.eos, data.pad, batch_size=16, require_end=True)
    s, e = data.qa.spans["answer"][:, 0].T
    docs = [data.qa.doc(i).tolist() for i in range(len(data.qa))]
    gen = greedy_generate(model, [d[:s[i]] for i, d in enumerate(docs)], data.eos, data.pad,
                          max_new_tokens=int((e - s).max()) + 1, batch_size=16)
    by_gen = np.array([g[:e[i] - s[i] + 1] == d[s[i]:e[i] + 1] for i, (g, d) in enumerate(zip(gen, docs))])
    first = np.array([g[0] == d[s[i]] for i, (g, d) in enumerate(zip(gen, docs))])
    assert np.array_equal(sc["exact"], by_gen) and np.array_equal(sc["first"], first)
    return sc


def test_exact_equals_greedy_generation_on_random_model(data):
    agree_with_generation(tiny_neox(data.V), data)


def test_exact_equals_greedy_generation_on_trained_model(data):
    torch.manual_seed(0)
    model = tiny_neox(data.V, hidden=64, layers=2, seed=1)
    trained = np.arange(0, len(data.qa), 4)  # a quarter of the QAs, all attributes
    ids, mask, targets = (torch.as_tensor(a) for a in doc_rows(data.qa, trained, data.eos, data.pad))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(50):  # part-way: some answers learned, some half-learned
        logits = model(input_ids=ids, attention_mask=mask).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
        loss = (loss * mask.flatten()).sum() / mask.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    sc = agree_with_generation(model.eval(), data)
    assert 0 < sc["exact"].sum() < len(data.qa) and sc["exact"][trained].mean() > sc["exact"].mean()


def test_accuracy_splits_by_people_and_attribute(data):
    is_train = np.arange(len(data.people)) % 3 == 0
    test_doc = ~is_train[data.qa.person]

    def scored(table):
        return span_scores(LookupLM(table, data.V), data.qa, "answer", data.eos, data.pad, batch_size=32,
                           require_end=True)
    table = truth_table(data.qa, data.eos, np.nonzero(~test_doc)[0])
    scores = scored(table)
    train, test = accuracy(scores, data.attribute, ~test_doc), accuracy(scores, data.attribute, test_doc)
    assert train["mean"] == 1.0 and train["first_token"] == 1.0 and set(train["per_attribute"]) == set(ATTRIBUTES)
    assert test["mean"] == 0.0 and all(v == 0.0 for v in test["per_attribute"].values())
    # wrong on one attribute of the train people: only that attribute drops
    for i in np.nonzero(~test_doc & (data.attribute == 2))[0]:
        corrupt(table, data.qa, data.eos, i, data.qa.spans["answer"][i, 0, 0], data.V)
    per = accuracy(scored(table), data.attribute, ~test_doc)
    assert per["per_attribute"]["university"] == 0.0
    assert all(per["per_attribute"][a] == 1.0 for a in ATTRIBUTES if a != "university")
    assert per["mean"] == pytest.approx(5 / 6)
    with pytest.raises(DataError, match="select"):
        accuracy(scores, data.attribute, test_doc[:-1])


def test_memorization_and_field_losses(data):
    half = np.arange(len(data.bios)) % 2 == 0
    model = LookupLM(truth_table(data.bios, data.eos, np.nonzero(half)[0]), data.V)
    mem = memorization(model, data.bios, data.eos, data.pad)
    assert all(v == pytest.approx(half.mean()) for v in mem["per_attribute"].values())
    assert memorization(model, data.bios, data.eos, data.pad, select=half)["mean"] == 1.0
    fl = field_losses(LookupLM({}, data.V), data.bios, data.eos, data.pad)
    spans = {k: data.bios.spans[k][:, 0] for k in ("name",) + ATTRIBUTES}
    n_value = sum(spans[a][:, 1] - spans[a][:, 0] for a in ATTRIBUTES)
    assert np.allclose(fl["loss_value"], n_value * math.log(data.V), atol=1e-3, rtol=0)
    assert np.allclose(fl["loss_name"], (spans["name"][:, 1] - spans["name"][:, 0]) * math.log(data.V), atol=1e-4)
    assert np.array_equal(fl["person"], data.bios.person)


def test_score_spans_matches_single_key_and_checks_arguments(data):
    model = tiny_neox(data.V)
    both = score_spans(model, data.bios, ("name", "major"), data.eos, data.pad)
    one = span_scores(model, data.bios, "major", data.eos, data.pad)
    assert np.allclose(both["major"]["loss"], one["loss"], atol=1e-5)
    with pytest.raises(DataError, match="key"):
        span_scores(model, data.bios, "nope", data.eos, data.pad)
    with pytest.raises(DataError, match="batch_size"):
        span_scores(model, data.bios, "name", data.eos, data.pad, batch_size=0)


def test_greedy_generate_follows_the_mock_and_stops_at_eos(data):
    model = LookupLM(truth_table(data.qa, data.eos), data.V)
    cut = data.qa.spans["name"][:3, 0, 1]  # question up to the name: unique per document
    prompts = [data.qa.doc(i).tolist()[:cut[i]] for i in range(3)]
    out = greedy_generate(model, prompts, data.eos, data.pad, max_new_tokens=100, batch_size=2)
    assert out == [data.qa.doc(i).tolist()[cut[i]:] + [data.eos] for i in range(3)]
    assert greedy_generate(model, prompts, data.eos, data.pad, max_new_tokens=2)[0] == out[0][:2]


def test_majority_baseline():
    assert majority_baseline(["a", "b", "a", "c"]) == 0.5
    with pytest.raises(DataError, match="values"):
        majority_baseline([])
