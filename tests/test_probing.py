"""kn.probing: a linear probe reads a linear code and not noise; targets and Q-probe inputs match the
biographies; P-probing reads the token just before each value (checked on a mock model that
'sees' the next token); p_probe and q_probe run end to end on a tiny trained model, leave it
untouched and are deterministic; bad parameters raise DataError naming them.

Run: pytest tests/test_probing.py
"""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from kn.data.dataset import BiosConfig, make_dataset
from kn.data.records import ATTRIBUTES
from kn.errors import DataError
from kn.models import ModelConfig
from kn.probing import (ProbeConfig, ProbeData, fit_linear_probe, load_probe_data, name_rows, p_probe, probe_data,
                        q_probe)
from kn.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = dict(steps=4, batch_size=16, progress=False)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    ds = make_dataset(BiosConfig(n=40, augment="multi2+permute", vocab_size=500), out)
    return out, ds


@pytest.fixture(scope="module")
def data(folder):
    return probe_data(folder[1])


@pytest.fixture(scope="module")
def model(folder, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(data=str(folder[0]), out=str(run), model=ModelConfig(n_layer=2, n_head=2, n_embd=64, context=64),
                      window=64, batch_size=8, exposures=3, lr=3e-3, log_every=10, device="cpu")
    train(cfg, progress=False)
    return AutoModelForCausalLM.from_pretrained(str(run / "model"))


class NextTokenEcho(torch.nn.Module):
    """Mock LM: the last hidden state at position p is the input embedding at p + 1."""

    def __init__(self, vocab: int, width: int = 32):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(vocab, width)

    def get_input_embeddings(self):
        return self.emb

    @property
    def base_model(self):
        return self

    def forward(self, inputs_embeds, attention_mask=None):
        h = torch.cat([inputs_embeds[:, 1:], torch.zeros_like(inputs_embeds[:, :1])], 1)
        return SimpleNamespace(last_hidden_state=h)


def test_linear_probe_reads_a_linear_code():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 400)
    x = 3 * rng.normal(size=(5, 16))[y] + 0.3 * rng.normal(size=(400, 16))
    assert fit_linear_probe(x, y, np.arange(400) < 200, steps=150) > 0.95


def test_linear_probe_on_noise_is_near_chance():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 400)
    acc = fit_linear_probe(rng.normal(size=(400, 16)), y, np.arange(400) < 200, steps=150)
    assert acc < 0.25 + 0.12


def test_targets_match_values_and_tokens(folder, data):
    ds = folder[1]
    assert len(data) == 40 and data.bios.person.tolist() == list(range(40))
    for k, a in enumerate(ATTRIBUTES):
        values = np.array(ds.people.values(a))
        same = data.labels["whole"][:, k][:, None] == data.labels["whole"][:, k][None, :]
        assert (same == (values[:, None] == values[None, :])).all()
        start = data.bios.spans[a][:, 0, 0]
        first = data.bios.ids[data.bios.offsets[:-1] + start]
        same = data.labels["first"][:, k][:, None] == data.labels["first"][:, k][None, :]
        assert (same == (first[:, None] == first[None, :])).all()
    from_disk = load_probe_data(folder[0])
    assert all((from_disk.labels[k] == data.labels[k]).all() for k in data.labels)
    assert (from_disk.is_train == data.is_train).all() and (from_disk.bios.ids == data.bios.ids).all()


def test_q_probe_input_is_the_name_from_the_bio(data):
    ids, mask, last = name_rows(data.bios, data.eos_id, data.pad_id)
    for r in range(len(data)):
        s, e = data.bios.spans["name"][r, 0]
        assert ids[r, 1:last[r]].tolist() == data.bios.doc(r)[s:e].tolist()
        assert ids[r, 0] == ids[r, last[r]] == data.eos_id and mask[r].sum() == last[r] + 1


@pytest.mark.parametrize("rank, steps", [(0, 300), (2, 100)])
def test_p_probe_reads_the_token_before_each_value(data, rank, steps):
    """With hidden state = next token's embedding, 'first' is read off exactly at its own position."""
    res = p_probe(NextTokenEcho(int(data.bios.ids.max()) + 1), data, rank=rank, steps=steps, lr=1e-2,
                  kinds="first", progress=False)
    grid = np.array(res["first"])
    labels, train = data.labels["first"], data.is_train
    covered = [np.isin(labels[~train, k], labels[train, k]).mean() for k in range(6)]  # seen in train
    assert covered == [res["ceiling"]["first"][a] for a in ATTRIBUTES]
    assert (np.diag(grid) >= np.array(covered) - 0.1).all()  # test values unseen in train: unreachable
    off = grid[~np.eye(6, dtype=bool)].mean()
    assert np.diag(grid).mean() > off + 0.3 and "whole" not in res


def test_p_probe_end_to_end(model, data):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = p_probe(model, data, **FAST)
    for kind in ("first", "whole"):
        grid = np.array(res[kind])
        assert grid.shape == (6, 6) and ((grid >= 0) & (grid <= 1)).all()
        assert np.array(res["train"][kind]).shape == (6, 6)
        assert set(res["chance"][kind]) == set(ATTRIBUTES)
    assert res["positions"] == res["targets"] == list(ATTRIBUTES) and res["rank"] == 2 and res["steps"] == 4
    assert res["n_train"] + res["n_test"] == 40
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())


def test_q_probe_end_to_end_and_deterministic(model, data):
    res = q_probe(model, data, **FAST)
    assert res["rank"] == 16
    for kind in ("first", "whole"):
        assert set(res[kind]) == set(ATTRIBUTES) and all(0 <= v <= 1 for v in res[kind].values())
    assert q_probe(model, data, **FAST) == res
    assert q_probe(model, data, **FAST, seed=1)["config"]["seed"] == 1


@pytest.mark.parametrize("overrides, name", [({"kinds": ("last",)}, "kinds"), ({"rank": -1}, "rank"),
                                             ({"batch_size": 0}, "batch_size"), ({"lr": 0}, "lr")])
def test_bad_parameters_name_themselves(model, data, overrides, name):
    with pytest.raises(DataError, match=f"^{name}:"):
        ProbeConfig(**overrides)
    with pytest.raises(DataError, match=f"^{name}:"):
        p_probe(model, data, progress=False, **overrides)


def test_bad_data_and_features():
    with pytest.raises(DataError, match="^data:"):
        q_probe(torch.nn.Linear(2, 2), [1, 2, 3], progress=False)
    with pytest.raises(DataError, match="^overrides:.*'depth'"):
        q_probe(torch.nn.Linear(2, 2), ProbeData(None, {}, np.ones(2, bool), 0, 1), depth=3, progress=False)
    with pytest.raises(DataError, match="^is_train:"):
        fit_linear_probe(np.zeros((4, 2)), np.zeros(4, int), np.ones(4, bool))
