"""kn.models: names, configs, parameter counts (two ways), bad configs.   Run: pytest tests/test_models.py"""
import pytest
import torch

from kn.errors import DataError
from kn.models import ModelConfig, build_model, formula_params, n_params, parse_name


@pytest.mark.parametrize("cfg", [ModelConfig(n_layer=2, n_head=2, n_embd=64, vocab_size=300),
                                 ModelConfig(n_layer=3, n_head=4, n_embd=128, mlp_ratio=2, vocab_size=500),
                                 ModelConfig(n_layer=1, n_head=2, n_embd=32, mlp_ratio=0, vocab_size=100)])
def test_parameter_count_matches_formula(cfg):
    assert n_params(build_model(cfg)) == formula_params(cfg)


def test_paper_names():
    cfg = parse_name("GPT2-12-12")
    assert (cfg.arch, cfg.n_layer, cfg.n_head, cfg.n_embd) == ("gpt2", 12, 12, 768)
    # GPT2-small without embeddings has ~85M parameters
    assert 84e6 < formula_params(parse_name("GPT2-12-12", vocab_size=50257))["non_embedding"] < 86e6
    with pytest.raises(DataError, match="^model"):
        parse_name("gpt3-1-1")


@pytest.mark.parametrize("arch", ["gpt2", "llama", "mistral", "bert"])
def test_every_arch_builds_and_runs(arch):
    model = build_model(ModelConfig(arch=arch, n_layer=1, n_head=2, n_embd=32, vocab_size=100, context=64))
    out = model(input_ids=torch.randint(0, 100, (2, 16)))
    assert out.logits.shape == (2, 16, 100)
    counts = n_params(model)
    assert 0 < counts["non_embedding"] < counts["all"]


def test_gpt2_is_rotary_without_dropout():
    c = build_model(ModelConfig(n_layer=1, n_head=2, n_embd=32, vocab_size=100)).config
    rotary = (getattr(c, "rope_parameters", None) or {}).get("partial_rotary_factor", getattr(c, "rotary_pct", None))
    assert rotary == 1.0 and c.attention_dropout == 0 and c.hidden_dropout == 0 and not c.use_parallel_residual


def test_same_seed_same_init():
    cfg = ModelConfig(n_layer=1, n_head=2, n_embd=32, vocab_size=100)
    a, b = build_model(cfg, seed=3).state_dict(), build_model(cfg, seed=3).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("kwargs, field", [({"arch": "rnn"}, "arch"), ({"n_layer": 0}, "n_layer"),
                                           ({"n_embd": 30, "n_head": 4}, "n_embd"), ({"mlp_ratio": -1}, "mlp_ratio")])
def test_bad_config(kwargs, field):
    with pytest.raises(DataError, match=f"^{field}"):
        ModelConfig(**kwargs)
