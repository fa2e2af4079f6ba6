"""kn.bidirectional: whole-word masking, masked QA rows, a smoke MLM pretrain -> finetune run, and an
interrupted run resumed to the same result.   Run: OMP_NUM_THREADS=1 pytest tests/test_bidirectional.py
"""
from dataclasses import replace

import numpy as np
import pytest

from kn.bidirectional import BidirectionalConfig, mask_words, qa_mask_rows, run_bidirectional, word_starts
from kn.data.dataset import BiosConfig, build_bios
from kn.data.records import ATTRIBUTES
from kn.errors import DataError
from kn.models import ModelConfig


@pytest.fixture(scope="module")
def ds():
    return build_bios(BiosConfig(n=30, vocab_size=500))


def test_masks_whole_words(ds):
    tok = ds.tokenizer
    starts = word_starts(tok)
    ids = np.array([ds.bios_tokens.doc(i)[:40] for i in range(5)])
    masked, labels = mask_words(ids, starts, 0.3, tok.mask_token_id, np.random.default_rng(0))
    assert (masked == tok.mask_token_id).any() and ((labels != -100) == (masked == tok.mask_token_id)).all()
    for row, lab in zip(ids, labels):
        word = np.cumsum(starts[row])
        for w in np.unique(word):             # a word is masked entirely or not at all
            assert len(set((lab[word == w] != -100).tolist())) == 1


def test_qa_rows_mask_exactly_the_answer(ds):
    tok = ds.tokenizer
    ids, labels = qa_mask_rows(ds.qa_tokens, tok.pad_token_id, tok.mask_token_id)
    for i in range(12):
        s, e = ds.qa_tokens.spans["answer"][i, 0]
        assert (ids[i, s:e] == tok.mask_token_id).all() and list(labels[i, s:e]) == list(ds.qa_tokens.doc(i)[s:e])
        assert tok.decode(labels[i, s:e]).strip() == ds.qa[i]["answer"]


def small():
    return BidirectionalConfig(data=BiosConfig(n=40, augment="multi2", vocab_size=500),
                               model=ModelConfig(arch="bert", n_layer=2, n_head=2, n_embd=64, context=64),
                               exposures=4, window=64, batch_size=8, finetune_exposures=2, device="cpu")


def test_smoke_run(tmp_path):
    cfg = small()
    r = run_bidirectional(cfg, tmp_path)
    assert set(r["qa"]["test"]["per_attribute"]) == set(ATTRIBUTES)
    assert 0 <= r["qa"]["train"]["mean"] <= 1 and np.isfinite(r["pretrain_loss"])
    assert (tmp_path / "result.json").is_file()
    stamp = (tmp_path / "pretrain" / "pretrain.json").stat().st_mtime_ns
    again = run_bidirectional(replace(cfg, finetune_exposures=1), tmp_path)   # only finetuning changed
    assert again["pretrain_loss"] == r["pretrain_loss"]
    assert (tmp_path / "pretrain" / "pretrain.json").stat().st_mtime_ns == stamp
    other = run_bidirectional(replace(cfg, lr=3e-3), tmp_path)                 # pretraining changed: retrained
    assert (tmp_path / "pretrain" / "pretrain.json").stat().st_mtime_ns != stamp and np.isfinite(other["pretrain_loss"])


def test_needs_bert_and_a_known_device():
    with pytest.raises(DataError, match="^model"):
        BidirectionalConfig(model=ModelConfig(arch="gpt2"))
    with pytest.raises(DataError, match="^device: got 'tpu'"):
        replace(small(), device="tpu")


def test_interrupted_run_resumes_to_the_same_result(tmp_path, monkeypatch, sigterm_at_step):
    """A SIGTERM during pretraining stops the run after a checkpoint (kn.train.fit); running it again
    resumes, and losses and exact match equal those of an uninterrupted run."""
    import kn.train
    full = run_bidirectional(small(), tmp_path / "full")
    sigterm_at_step(3)
    with pytest.raises(kn.train.Interrupted, match="step 3 of"):
        run_bidirectional(small(), tmp_path / "cut")
    monkeypatch.undo()
    assert not (tmp_path / "cut" / "pretrain" / "pretrain.json").exists()
    again = run_bidirectional(small(), tmp_path / "cut")
    assert (again["pretrain_loss"], again["finetune_loss"]) == (full["pretrain_loss"], full["finetune_loss"])
    assert again["qa"] == full["qa"]
