"""kn.group: runs that differ only in lr trained as one vmapped model end where each run alone ends, write
the run folders kn.train writes, resume bit-exactly (also one member alone), and refuse runs that differ in
more than lr.   Run: OMP_NUM_THREADS=1 pytest tests/test_group.py
"""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from kn.data.biod import BioDConfig, write_biod
from kn.errors import DataError
from kn.group import train_lrs
from kn.models import ModelConfig
from kn.train import train, train_to
from kn.train_config import TrainConfig

LRS = (1e-3, 1e-2)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("group")
    return str(write_biod(BioDConfig(n=40, k=2, c=1, d=4, l=1, t=8, n_first=10, n_middle=10, n_last=10), root / "d"))


def cfg(data, out, lr, **kw):
    model = ModelConfig(n_layer=1, n_head=2, n_embd=16, context=32)
    return TrainConfig(**{"data": data, "out": str(out), "model": model, "window": 32, "batch_size": 4, "passes": 4, "lr": lr, "log_every": 5, "precision": "fp32",
                          "attention": "eager", "compile": "off"} | kw)


def weights(folder):
    return AutoModelForCausalLM.from_pretrained(str(folder / "model")).state_dict()


def test_group_ends_where_each_run_alone_ends(data, tmp_path):
    alone = [train(cfg(data, tmp_path / f"a{k}", lr), progress=False) for k, lr in enumerate(LRS)]
    group = train_lrs([cfg(data, tmp_path / f"g{k}", lr) for k, lr in enumerate(LRS)])
    assert alone[0]["final_loss"] - alone[1]["final_loss"] > 0.1        # the lrs train differently
    for k, (a, g) in enumerate(zip(alone, group)):
        assert g["steps"] == a["steps"] == a["total_steps"] > 10
        assert [h["loss"] for h in g["history"]] == pytest.approx([h["loss"] for h in a["history"]], abs=1e-5)
        assert [h["lr"] for h in g["history"]] == pytest.approx([h["lr"] for h in a["history"]], rel=1e-9)
        wa, wg = weights(tmp_path / f"a{k}"), weights(tmp_path / f"g{k}")
        assert max((wa[n] - wg[n]).abs().max().item() for n in wa) < 1e-5
        record = json.loads((tmp_path / f"g{k}" / "train.json").read_text())
        assert record["provenance"]["config"]["lr"] == LRS[k] and record["group"]["lrs"] == list(LRS)
        assert len((tmp_path / f"g{k}" / "metrics.jsonl").read_text().splitlines()) == len(a["history"])
        assert train_to(cfg(data, tmp_path / f"g{k}", LRS[k]))["final_loss"] == g["final_loss"]   # found done


def test_group_resumes_bit_exactly_and_a_member_alone(data, tmp_path):
    full = train_lrs([cfg(data, tmp_path / f"f{k}", lr) for k, lr in enumerate(LRS)])
    train_lrs([cfg(data, tmp_path / f"r{k}", lr, max_steps=7, checkpoint_every=3) for k, lr in enumerate(LRS)])
    rest = train_lrs([cfg(data, tmp_path / f"r{k}", lr, checkpoint_every=3) for k, lr in enumerate(LRS)])
    for k in range(len(LRS)):
        assert rest[k]["final_loss"] == full[k]["final_loss"]
        wf, wr = weights(tmp_path / f"f{k}"), weights(tmp_path / f"r{k}")
        assert all(torch.equal(wf[n], wr[n]) for n in wf)
    train_lrs([cfg(data, tmp_path / f"s{k}", lr, max_steps=7) for k, lr in enumerate(LRS)])
    train(cfg(data, tmp_path / "s1", LRS[1]), resume=True, progress=False)   # the member's checkpoint, alone
    ws, wf = weights(tmp_path / "s1"), weights(tmp_path / "f1")
    assert max((ws[n] - wf[n]).abs().max().item() for n in ws) < 1e-5


def test_group_refuses_runs_that_differ_in_more_than_lr(data, tmp_path):
    with pytest.raises(DataError, match="^train_lrs: .* also differs in batch_size"):
        train_lrs([cfg(data, tmp_path / "a", 1e-3), cfg(data, tmp_path / "b", 1e-2, batch_size=2)])
    with pytest.raises(DataError, match="^train_lrs: each run needs its own out folder"):
        train_lrs([cfg(data, tmp_path / "a", 1e-3), cfg(data, tmp_path / "a", 1e-2)])
    with pytest.raises(DataError, match="^train_lrs: grouped runs pretrain"):
        train_lrs([cfg(data, tmp_path / "a", 1e-3, curve_points=2), cfg(data, tmp_path / "b", 1e-2, curve_points=2)])
