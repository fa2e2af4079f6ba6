"""kn.probing: a linear probe reads a linear code and not noise; targets and Q-probe inputs match the
biographies; P-probing reads the token just before each value and Q-probing the name's last token
(checked on mock models that 'see' the next or the current token); ceiling and reachable accuracy
on hand-built cases (one with ceiling 0); per-person items follow the person ids; p_probe and
q_probe run end to end on a tiny trained model, leave it untouched and are deterministic; bad
parameters raise DataError naming them. (The chapter's probes, kn.probe_select: tests/test_probe_select.py.)

Run: pytest tests/test_probing.py
"""
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from kn.data.dataset import BiosConfig, make_dataset
from kn.data.records import ATTRIBUTES
from kn.errors import DataError
from kn.models import ModelConfig
from kn.probing import (ProbeConfig, ProbeData, fit_linear_probe, head_scores, load_probe_data, name_rows, p_probe,
                        probe_data, q_probe, q_table)
from kn.train import train
from kn.train_config import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = dict(steps=4, batch_size=16, progress=False)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A kn.extraction-style run: data/ and pretrain/ (filled by the fixtures below)."""
    return tmp_path_factory.mktemp("run")


@pytest.fixture(scope="module")
def folder(run_dir):
    out = run_dir / "data"
    ds = make_dataset(BiosConfig(n=40, augment="multi2+permute", vocab_size=500), out)
    return out, ds


@pytest.fixture(scope="module")
def data(folder):
    return probe_data(folder[1])


@pytest.fixture(scope="module")
def model(folder, run_dir):
    run = run_dir / "pretrain"
    cfg = TrainConfig(data=str(folder[0]), out=str(run), model=ModelConfig(n_layer=2, n_head=2, n_embd=64, context=64),
                      window=64, batch_size=8, passes=3, lr=3e-3, log_every=10, device="cpu")
    train(cfg, progress=False)
    return AutoModelForCausalLM.from_pretrained(str(run / "model"))


class NextTokenEcho(torch.nn.Module):
    """Mock LM: the last hidden state at position p is the input embedding at p + shift (1: the next token)."""

    def __init__(self, vocab: int, width: int = 32, shift: int = 1):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(vocab, width)
        self.shift = shift

    def get_input_embeddings(self):
        return self.emb

    @property
    def base_model(self):
        return self

    def forward(self, inputs_embeds, attention_mask=None):
        if self.shift == 0:
            return SimpleNamespace(last_hidden_state=inputs_embeds)
        h = torch.cat([inputs_embeds[:, 1:], torch.zeros_like(inputs_embeds[:, :1])], 1)
        return SimpleNamespace(last_hidden_state=h)


def last_name_token(data):
    """Each person's name's last token in their biography, [n]."""
    return data.bios.ids[data.bios.offsets[:-1] + data.bios.spans["name"][:, 0, 1] - 1]


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
    assert ids.shape[1] == last.max() + 1                         # no column for a trailing EOS
    for r in range(len(data)):
        s, e = data.bios.spans["name"][r, 0]
        assert ids[r, 1:last[r] + 1].tolist() == data.bios.doc(r)[s:e].tolist()
        assert ids[r, 0] == data.eos_id and ids[r, last[r]] == data.bios.doc(r)[e - 1] != data.eos_id
        assert mask[r].sum() == last[r] + 1 and (ids[r, last[r] + 1:] == data.pad_id).all()


def test_q_probe_reads_the_names_last_token(data):
    """Targets = the name's last token; a model whose hidden state is the current token's embedding:
    read at the name's last token the probe fits them all, read at an EOS it could only guess."""
    cls = np.unique(last_name_token(data), return_inverse=True)[1]
    assert np.bincount(cls[data.is_train]).max() / data.is_train.sum() < 0.5   # majority guess fails
    labels = np.repeat(cls[:, None], 6, 1)
    res = q_probe(NextTokenEcho(int(data.bios.ids.max()) + 1, width=64, shift=0),
                  replace(data, labels={"first": labels, "whole": labels}), rank=0, steps=300, lr=1e-2,
                  kinds="whole", progress=False)
    seen = np.isin(cls[~data.is_train], cls[data.is_train])
    for a in ATTRIBUTES:
        assert res["train"]["whole"][a] > 0.95 and res["reachable"]["whole"][a] > 0.95
        assert res["n_reachable"]["whole"][a] == seen.sum() > 0 and res["ceiling"]["whole"][a] == seen.mean() < 1
    assert "the name's last token" in res["position"]


def test_head_scores_by_hand():
    #            train: 4 people (one unlabelled)  test: 5 people (one unlabelled)
    is_train = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0], bool)
    labels = np.array([0, 1, 1, -1, 1, 2, 0, -1, 1])
    pred = np.array([0, 1, 0, 5, 1, 0, 0, 3, 2])
    s = head_scores(pred, labels, is_train)
    assert s["train"] == pytest.approx(2 / 3) and s["test"] == 0.5
    assert s["ceiling"] == 0.75 and s["n_reachable"] == 3 and s["reachable"] == pytest.approx(2 / 3)
    assert s["items"] == {"correct": [1, 0, 1, None, 0], "reachable": [1, 0, 1, None, 1]}
    none = head_scores(np.array([0, 0, 0, 2]), np.array([0, 0, 1, 2]), np.array([1, 1, 0, 0], bool))
    assert none["ceiling"] == 0 and none["n_reachable"] == 0 and np.isnan(none["reachable"]) and none["test"] == 0.5
    assert none["items"] == {"correct": [0, 1], "reachable": [0, 0]}


def test_ceiling_zero_when_every_value_is_new(data):
    """One class per person (like birth dates at small N): no test person is reachable."""
    labels = np.repeat(np.arange(len(data))[:, None], 6, 1)
    res = q_probe(NextTokenEcho(int(data.bios.ids.max()) + 1), replace(data, labels={"first": labels, "whole": labels}),
                  rank=0, steps=20, progress=False)
    for kind in ("first", "whole"):
        assert all(res["ceiling"][kind][a] == 0 and res["n_reachable"][kind][a] == 0 and res[kind][a] == 0
                   and np.isnan(res["reachable"][kind][a]) for a in ATTRIBUTES)   # only train classes are named
        assert all(not any(res["items"][kind][a]["reachable"]) for a in ATTRIBUTES)


def test_items_follow_person_ids(data):
    """Per-person flags line up with the ids: shuffle the rows and each id keeps its own flags."""
    cls = np.unique(last_name_token(data), return_inverse=True)[1]
    labels = np.repeat(cls[:, None], 6, 1)
    order = np.random.default_rng(0).permutation(len(data))
    shuffled = ProbeData(data.bios.take(order), {k: labels[order] for k in ("first", "whole")},
                         data.is_train[order], data.eos_id, data.pad_id)
    echo = NextTokenEcho(int(data.bios.ids.max()) + 1, width=64, shift=0)
    res = q_probe(echo, shuffled, rank=0, steps=300, lr=1e-2, kinds="whole", progress=False)
    person = res["items"]["person"]
    assert sorted(person) == data.bios.person[~data.is_train].tolist() and person != sorted(person)
    seen = dict(zip(data.bios.person.tolist(), np.isin(cls, cls[data.is_train]).tolist()))
    for a in ATTRIBUTES:
        items = res["items"]["whole"][a]
        assert items["reachable"] == [int(seen[p]) for p in person]
        assert np.mean(items["correct"]) == pytest.approx(res["whole"][a])
        assert np.mean(items["reachable"]) == pytest.approx(res["ceiling"]["whole"][a])
        hit = [c for c, r in zip(items["correct"], items["reachable"]) if r]
        assert len(hit) == res["n_reachable"]["whole"][a]
        assert np.mean(hit) == pytest.approx(res["reachable"]["whole"][a])


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
    assert (np.diag(np.array(res["reachable"]["first"])) > 0.9).all()
    assert res["items"]["person"] == data.bios.person[~train].tolist()
    assert [np.mean(res["items"]["first"][a]["reachable"]) for a in ATTRIBUTES] == pytest.approx(covered)
    off = grid[~np.eye(6, dtype=bool)].mean()
    assert np.diag(grid).mean() > off + 0.3 and "whole" not in res
    ahead = res["items_ahead"]                   # the cells above the diagonal, per test person (Result 4's row)
    assert ahead["cells"] == [[j, k] for j in range(6) for k in range(6) if j < k] and "whole" not in ahead
    assert ahead["person"] == res["items"]["person"]
    for (j, k), cell in zip(ahead["cells"], ahead["first"]):
        assert np.mean([v for v in cell if v is not None]) == pytest.approx(grid[j, k])


def test_p_probe_end_to_end(model, data):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = p_probe(model, data, **FAST)
    for kind in ("first", "whole"):
        grid = np.array(res[kind])
        assert grid.shape == (6, 6) and ((grid >= 0) & (grid <= 1)).all()
        for key in ("train", "reachable", "n_reachable"):
            assert np.array(res[key][kind]).shape == (6, 6)
        assert set(res["chance"][kind]) == set(res["ceiling"][kind]) == set(res["items"][kind]) == set(ATTRIBUTES)
    assert res["positions"] == res["targets"] == list(ATTRIBUTES) and res["rank"] == 2 and res["steps"] == 4
    assert res["n_train"] + res["n_test"] == 40
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())


def test_q_probe_end_to_end_and_deterministic(model, data):
    res = q_probe(model, data, **FAST)
    assert res["rank"] == 16
    for kind in ("first", "whole"):
        assert set(res[kind]) == set(ATTRIBUTES) and all(0 <= v <= 1 for v in res[kind].values())
        for key in ("ceiling", "reachable", "n_reachable", "chance"):
            assert set(res[key][kind]) == set(ATTRIBUTES)
    np.testing.assert_equal(q_probe(model, data, **FAST), res)    # NaN (nobody reachable) equals NaN
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


def test_q_table_rows_per_run_and_attribute():
    per = lambda v: {a: v for a in ATTRIBUTES}  # noqa: E731
    q = {"targets": list(ATTRIBUTES), "whole": per(0.25), "ceiling": {"whole": per(0.5)},
         "reachable": {"whole": {**per(0.5), "birth_date": float("nan")}},
         "n_reachable": {"whole": {**per(4), "birth_date": 0}}, "chance": {"whole": per(0.1)}}
    header, rows = q_table({"single": {"q": q}, "multi5": {"q": q}})
    assert len(header) == len(rows[0]) == 6 and len(rows) == 12
    assert [r[:2] for r in rows[5:7]] == [["single", ATTRIBUTES[5]], ["multi5", ATTRIBUTES[0]]]
    by_attribute = {r[1]: r[2:] for r in rows[:6]}
    assert by_attribute["birth_date"] == ["25%", "50%", "– (0)", "10%"] and by_attribute["major"][2] == "50% (4)"
