"""kn.vocab: a model cut to the tokens its data use computes the full model's softmax (expand), saves
with the tokenizer's rows, and trains to the untrimmed model's loss within the seed spread.
Run: pytest tests/test_vocab.py
"""
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from kn.errors import DataError
from kn.models import ModelConfig, build_model
from kn.train import train
from kn.train_config import TrainConfig
from kn.vocab import VocabMap, expand, trim

TINY = ModelConfig(n_layer=1, n_head=2, n_embd=32, context=64)


@pytest.mark.parametrize("tie", [True, False])
def test_expanded_model_computes_the_trimmed_softmax(tie):
    """Over tokenizer ids, the expanded model's log-probabilities of the tokens in use equal the trimmed
    model's, and the unused tokens together hold the rest's probability."""
    vmap = VocabMap.of([[3, 7, 8, 20, 41], [7, 2]], 50)
    model = trim(build_model(ModelConfig(n_layer=1, n_head=2, n_embd=16, vocab_size=50, tie_embeddings=tie)), vmap)
    with torch.no_grad():                                   # move the rows off their initial values
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    full = expand(model)
    ids = torch.tensor([[3, 7, 8, 20, 41, 2, 7, 3]])
    with torch.no_grad():
        trimmed = model(input_ids=torch.from_numpy(vmap.to_model)[ids]).logits.log_softmax(-1)
        whole = full(input_ids=ids).logits.log_softmax(-1)
    assert full.config.vocab_size == 50 and whole.shape[-1] == 50 and trimmed.shape[-1] == len(vmap.used) + 1
    torch.testing.assert_close(whole[..., torch.from_numpy(vmap.used)], trimmed[..., :-1], atol=1e-5, rtol=0)
    unused = np.setdiff1d(np.arange(50), vmap.used)
    torch.testing.assert_close(whole[..., torch.from_numpy(unused)].logsumexp(-1), trimmed[..., -1], atol=1e-5, rtol=0)


def cfg(data, out, **kw):
    base = dict(data=data, out=str(out), model=TINY, window=64, batch_size=8, lr=3e-3, log_every=50,
                precision="fp32", attention="sdpa")
    return TrainConfig(**(base | kw))


def test_trimmed_run_saves_the_tokenizer_rows(data, tmp_path):
    s = train(cfg(data, tmp_path / "t", passes=1, trim_vocab=True), progress=False)
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "t" / "model"))
    assert s["vocab"]["trimmed"] and s["vocab"]["in_use"] < s["vocab"]["tokenizer"] == model.config.vocab_size
    assert model.get_input_embeddings().weight.shape[0] == s["vocab"]["tokenizer"]
    assert s["n_params"]["all"] == sum(p.numel() for p in model.parameters())
    assert TrainConfig(data=data, out=str(tmp_path / "u")).trim_vocab is False   # off unless asked
    with pytest.raises(DataError, match="trim_vocab"):
        cfg(data, tmp_path / "f", mode="finetune", init=str(tmp_path / "t" / "model"), trim_vocab=True)


@pytest.mark.heavy
def test_trimmed_and_untrimmed_reach_the_same_loss(data, tmp_path):
    """>= 1,000 steps on 3 seeds (a tiny model on the test corpus, 56% of its tokens in use): the mean
    final loss (last 100 steps) of the trimmed runs is within 2 seed standard deviations of the
    untrimmed runs'. benchmarks/steps.py (equal loss) compares them on the Part 3.1 cpu model."""
    final = {}
    for trim_vocab in (False, True):
        final[trim_vocab] = []
        for seed in (0, 1, 2):
            s = train(cfg(data, tmp_path / f"{trim_vocab}{seed}", seed=seed, passes=9, batch_size=4, window=32,
                          trim_vocab=trim_vocab), progress=False)        # small steps: the count is what matters
            assert s["total_steps"] >= 1000
            final[trim_vocab].append(np.mean([h["loss"] for h in s["history"][-2:]]))
    spread = np.sqrt((np.var(final[False], ddof=1) + np.var(final[True], ddof=1)) / 2)
    assert abs(np.mean(final[True]) - np.mean(final[False])) <= 2 * spread, final
