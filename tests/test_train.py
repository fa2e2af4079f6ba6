"""kn.train: loss falls, resume equals an uninterrupted run bit for bit, SIGTERM checkpoints,
saved models load with from_pretrained, configs are validated.   Run: pytest tests/test_train.py
"""
import json
from dataclasses import asdict

import pytest
import torch
from transformers import AutoModelForCausalLM

from kn.batches import qa_rows, train_qas
from kn.data.dataset import load_encoded
from kn.errors import DataError
from kn.models import ModelConfig
from kn.train import train
from kn.train_config import TrainConfig, load_config

TINY = ModelConfig(n_layer=2, n_head=2, n_embd=32, context=64)


def cfg(data, out, **kw):
    base = dict(data=data, out=str(out), model=TINY, window=64, batch_size=8, passes=2, lr=3e-3, log_every=5)
    return TrainConfig(**(base | kw))


def weights(path):
    return AutoModelForCausalLM.from_pretrained(str(path)).state_dict()


def test_pretraining_loss_falls(data, tmp_path):
    s = train(cfg(data, tmp_path / "run", passes=4), progress=False)
    losses = [h["loss"] for h in s["history"]]
    assert losses[-1] < losses[0] - 1.0
    assert s["steps"] == s["total_steps"] and (tmp_path / "run" / "model" / "config.json").is_file()
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(s["history"]) and "tokens_per_s" in json.loads(lines[0])


def test_resume_equals_uninterrupted(data, tmp_path):
    full = train(cfg(data, tmp_path / "a", checkpoint_every=4), progress=False)
    part = train(cfg(data, tmp_path / "b", checkpoint_every=4, max_steps=7), progress=False)
    assert part["steps"] == 7
    state = tmp_path / "b" / "checkpoint" / "state.json"
    first_s = json.loads(state.read_text())["train_s"]
    rest = train(cfg(data, tmp_path / "b", checkpoint_every=4), resume=True, progress=False)
    assert rest["steps"] == full["steps"]
    a, b = weights(tmp_path / "a" / "model"), weights(tmp_path / "b" / "model")
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = weights(tmp_path / "b" / "checkpoint" / "model")
    assert all(torch.equal(a[k], c[k]) for k in a)
    total_s = json.loads(state.read_text())["train_s"]                 # every part of the resumed run counted
    assert total_s > first_s > 0
    assert json.loads((tmp_path / "b" / "train.json").read_text())["provenance"]["wall_time_s"] == round(total_s, 3)


def test_sigterm_writes_a_checkpoint_and_resume_finishes(data, tmp_path, monkeypatch, sigterm_at_step):
    config = cfg(data, tmp_path / "s", passes=6, log_every=1)
    sigterm_at_step(3)
    first = train(config, progress=False)
    monkeypatch.undo()                                     # the steps run on to the end again
    assert first["interrupted"] and first["steps"] < first["total_steps"]
    assert (tmp_path / "s" / "checkpoint" / "state.pt").is_file()
    done = train(config, resume=True, progress=False)
    assert not done["interrupted"] and done["steps"] == done["total_steps"]


def test_mixed_and_finetune_full_and_lora(data, tmp_path):
    pre = train(cfg(data, tmp_path / "pre"), progress=False)
    mixed = train(cfg(data, tmp_path / "mix", mode="mixed", qa_fraction=0.5), progress=False)
    assert mixed["total_steps"] > pre["total_steps"]  # half the windows are QA: twice the rows
    ft = train(cfg(data, tmp_path / "ft", mode="finetune", init=str(tmp_path / "pre" / "model")), progress=False)
    lora = train(cfg(data, tmp_path / "lora", mode="finetune", init=str(tmp_path / "pre" / "model"),
                     lora_rank=2, lora_embed_rank=4), progress=False)
    assert lora["n_params"]["all"] < ft["n_params"]["all"] / 10
    merged = weights(tmp_path / "lora" / "model")
    base = weights(tmp_path / "pre" / "model")
    assert set(merged) == set(base)                                     # LoRA merged: a plain model
    assert not torch.equal(merged["gpt_neox.layers.0.attention.query_key_value.weight"],
                           base["gpt_neox.layers.0.attention.query_key_value.weight"])
    assert torch.equal(merged["gpt_neox.layers.0.mlp.dense_h_to_4h.weight"],
                       base["gpt_neox.layers.0.mlp.dense_h_to_4h.weight"])


def test_merged_lora_model_computes_what_was_trained(data, tmp_path):
    """An embedding LoRA with tied embeddings: the saved, merged model gives the trained model's logits."""
    from kn.checkpoints import save_model
    from kn.models import build_model
    from kn.tokenize import load_tokenizer
    from kn.train import add_lora
    torch.manual_seed(0)
    model = add_lora(build_model(TINY), rank=2, embed_rank=4)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.3)                                         # a trained-looking update
    x = torch.randint(0, TINY.vocab_size, (2, 16))
    want = model(input_ids=x).logits
    save_model(model, load_tokenizer(f"{data}/tokenizer"), tmp_path / "m")
    got = AutoModelForCausalLM.from_pretrained(str(tmp_path / "m"))(input_ids=x).logits
    assert torch.allclose(got, want, atol=1e-4)


def test_qa_rows_label_only_the_answer(data):
    qa = train_qas(data, load_encoded(data, "qa"))
    ids, labels = qa_rows(qa, eos_id=0, pad_id=1)
    for i in range(5):
        s, e = qa.spans["answer"][i, 0]
        labelled = (labels[i] != -100).nonzero()[0]
        assert list(labelled) == list(range(s + 1, e + 2))                # answer tokens and the '.'
        assert list(ids[i, 1:len(qa.doc(i)) + 1]) == list(qa.doc(i))


@pytest.mark.parametrize("kw, field", [({"mode": "distill"}, "mode"), ({"mode": "finetune"}, "init"),
                                       ({"passes": 0}, "passes"), ({"qa_fraction": 1.0}, "qa_fraction"),
                                       ({"window": 1024}, "window"), ({"device": "tpu"}, "device")])
def test_bad_config(data, tmp_path, kw, field):
    with pytest.raises(DataError, match=f"^{field}"):
        cfg(data, tmp_path, **kw)


def test_batch_larger_than_data(data, tmp_path):
    with pytest.raises(DataError, match="^batch_size"):
        train(cfg(data, tmp_path / "x", batch_size=10_000), progress=False)


def test_toml_config(tmp_path, data):
    """A TOML file's keys and [model] table; `exposures`, TrainConfig's name for passes before it was
    renamed, still reads as passes, and giving both is a one-line error."""
    path = tmp_path / "run.toml"
    model = "[model]\nn_layer = 1\nn_head = 2\nn_embd = 32\ncontext = 64\n"
    path.write_text(f'data = "{data}"\nout = "{tmp_path}/o"\npasses = 3\n' + model)
    c = load_config(path, window=64)
    assert c.model.n_layer == 1 and c.passes == 3
    path.write_text(f'data = "{data}"\nout = "{tmp_path}/o"\nexposures = 4\n' + model)
    assert load_config(path, window=64).passes == 4
    path.write_text(f'data = "{data}"\nout = "{tmp_path}/o"\nexposures = 4\npasses = 3\n' + model)
    with pytest.raises(DataError, match="^exposures: renamed passes, and both are given; allowed: passes only$"):
        load_config(path, window=64)
    path.write_text('data = "x"\nout = "y"\nlearning_rate = 1\n')
    with pytest.raises(DataError, match="unknown keys"):
        load_config(path)



def test_checkpoint_from_before_a_rename_resumes(tmp_path):
    """A checkpoint whose state.json records `exposures` (passes' old name) is the same run as the
    config with that many passes; another number of passes is refused, naming passes."""
    from kn.checkpoints import check_same_settings
    config = asdict(TrainConfig(data="d", out="o", passes=5))
    (tmp_path / "state.json").write_text(json.dumps({"step": 3, "config": {("exposures" if k == "passes" else k): v
                                                                           for k, v in config.items()}}))
    check_same_settings(tmp_path, config)
    with pytest.raises(DataError, match=r"^resume: .*\['passes'\]"):
        check_same_settings(tmp_path, config | {"passes": 6})


def test_fit_is_built_by_keyword_from_the_config(monkeypatch, tmp_path, data):
    """Fit takes keywords only (no 13 positional values to misorder); train's Fit holds the config's
    values under the same names."""
    import kn.train
    from kn.train import Fit
    with pytest.raises(TypeError):
        Fit(10, 1e-3)
    seen = []
    monkeypatch.setattr(kn.train, "fit", lambda model, batches, spec, *a, **k: seen.append(spec) or {})
    c = cfg(data, tmp_path / "f", lr=2e-3, warmup=3, min_lr_ratio=0.5, weight_decay=0.2, grad_clip=0.5, threads=0,
            checkpoint_every=7, log_every=3, max_steps=9, precision="fp32", attention="eager", compile="off")
    with pytest.raises(KeyError):                                            # the stub returns no summary
        train(c, progress=False)
    assert seen[0] == Fit(total_steps=seen[0].total_steps, lr=2e-3, warmup=3, min_lr_ratio=0.5, weight_decay=0.2,
                          grad_clip=0.5, compile="off", threads=0, precision="fp32", attention="eager",
                          checkpoint_every=7, log_every=3, max_steps=9)

def test_cli_train(tmp_path, data, capsys):
    from kn.cli import main
    path = tmp_path / "run.toml"
    path.write_text(f'data = "{data}"\nout = "{tmp_path}/o"\npasses = 1\nwindow = 64\nbatch_size = 8\n'
                    'precision = "fp32"\ntrim_vocab = true\n[model]\nn_layer = 1\nn_head = 2\nn_embd = 32\ncontext = 64\n')
    assert main(["train", "--config", str(path)]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["mode"] == "pretrain" and out["vocab"]["trimmed"] and out["precision"].startswith("fp32+")
    for bad in ('mode = "distill"', 'precision = "fp16"'):
        path.write_text(f'data = "x"\nout = "y"\n{bad}\n')
        assert main(["train", "--config", str(path)]) == 2


def test_recover_checkpoint_keeps_the_newest_complete_one(tmp_path):
    from kn.checkpoints import recover_checkpoint

    def ckpt(name, step=None):
        (tmp_path / name).mkdir()
        if step is not None:                                   # state.json is written last: its absence = incomplete
            (tmp_path / name / "state.json").write_text(json.dumps({"step": step}))
    ckpt("checkpoint.old", 4)
    ckpt("checkpoint.tmp", 8)                                  # killed after the old one went aside
    assert recover_checkpoint(tmp_path / "checkpoint") == tmp_path / "checkpoint"
    assert json.loads((tmp_path / "checkpoint" / "state.json").read_text())["step"] == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    ckpt("checkpoint.tmp")                                     # killed while writing the next one
    assert recover_checkpoint(tmp_path / "checkpoint") == tmp_path / "checkpoint"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    (tmp_path / "checkpoint" / "state.json").unlink()
    with pytest.raises(DataError, match="^checkpoint: .* incomplete"):
        recover_checkpoint(tmp_path / "checkpoint")
    assert recover_checkpoint(tmp_path / "none") is None


def test_schedule_from_plain_values():
    from kn.train import lr_lambda
    f = lr_lambda(100, warmup=0.1, min_lr_ratio=0.2)                     # 10 warmup steps, then cosine to 0.2
    assert [f(0), f(4), f(9)] == pytest.approx([0.1, 0.5, 1.0])
    after = [f(t) for t in range(10, 101)]
    assert all(a >= b for a, b in zip(after, after[1:])) and f(100) == pytest.approx(0.2)
    assert lr_lambda(50, warmup=5)(4) == 1.0 and lr_lambda(50, warmup=0, min_lr_ratio=1.0)(30) == 1.0


def test_cpu_run_uses_its_threads_and_restores_them(data, tmp_path, monkeypatch):
    """threads=1 (the default) holds for the steps of a CPU run; torch's setting is restored after."""
    import kn.train
    seen, real = [], kn.train.training_step

    def spy(*args, **kw):
        step = real(*args, **kw)
        return lambda *a: (seen.append(torch.get_num_threads()), step(*a))[1]
    monkeypatch.setattr(kn.train, "training_step", spy)
    torch.set_num_threads(2)
    try:
        train(cfg(data, tmp_path / "t", device="cpu"), progress=False)
        assert set(seen) == {1} and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
    with pytest.raises(DataError, match="^threads: got -1"):
        cfg(data, tmp_path, threads=-1)


def test_checkpoint_from_before_checksums_resumes(data, tmp_path):
    """A checkpoint without checksums, data fingerprint, loss, precision or training seconds (written before
    them) is read as it is, and continues in kn's precision of then (fp32 and SDPA on the CPU)."""
    run = tmp_path / "r"
    train(cfg(data, run, max_steps=3, checkpoint_every=2, log_every=1), progress=False)
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert set(state) == {"step", "config", "data", "loss", "precision", "train_s", "checksum"}
    assert "state.pt" in state["checksum"]
    (run / "checkpoint" / "state.json").write_text(json.dumps({"step": state["step"], "config": state["config"]}))
    done = train(cfg(data, run, checkpoint_every=2, log_every=1), resume=True, progress=False)
    assert done["history"][0]["step"] == 4 and done["steps"] == done["total_steps"]
    assert (done["precision"]["dtype"], done["precision"]["attention"]) == ("fp32", "sdpa")


def test_warm_up_on_a_subset_trains_on_those_people_only_then_everyone(data):
    """The curriculum (warmup_people): a warm-up pass holds no token of a biography outside the
    subset; after the warm-up the batches are those of a run without it, and the steps are the same."""
    import numpy as np
    from kn.batches import Batches
    from kn.tokenize import load_tokenizer
    tok = load_tokenizer(f"{data}/tokenizer")
    plain = Batches(cfg(data, "unused", mode="pretrain", passes=3), tok.eos_token_id, tok.pad_token_id)
    warm = Batches(cfg(data, "unused", mode="pretrain", passes=3, warmup_people=0.25, warmup_people_steps=0.4),
                   tok.eos_token_id, tok.pad_token_id)
    assert warm.total_steps == plain.total_steps and warm.warm_steps == round(0.4 * plain.total_steps) > 0
    bios = load_encoded(data, "bios")
    people = np.unique(bios.person)
    kept = np.random.default_rng([0, 6]).permutation(people)[:round(0.25 * len(people))]
    allowed = np.isin(np.arange(len(tok)), bios.take(np.flatnonzero(np.isin(bios.person, kept))).ids)
    allowed[tok.eos_token_id] = True
    seen = np.isin(np.arange(len(tok)), np.concatenate([warm(s)[0].ravel() for s in range(warm.warm_steps)]))
    everyone = np.isin(np.arange(len(tok)), np.concatenate([plain(s)[0].ravel() for s in range(warm.warm_steps)]))
    assert not (seen & ~allowed).any() and (everyone & ~allowed).any()   # no token of the others' bios (names)
    for s in (warm.warm_steps, warm.total_steps - 1):
        assert all((a == b).all() for a, b in zip(warm(s), plain(s)))


def test_warm_up_needs_bios_and_enough_people(data, tmp_path):
    with pytest.raises(DataError, match="^warmup_people: a warm-up on a subset of people is for pretrain or mixed"):
        cfg(data, tmp_path / "ft", mode="finetune", init=str(tmp_path), warmup_people=0.5, warmup_people_steps=0.5)
    with pytest.raises(DataError, match="^warmup_people: got 1.0; allowed: 0 <= x < 1"):
        cfg(data, tmp_path, warmup_people=1.0)
    with pytest.raises(DataError, match="^curve_points: got -1"):
        cfg(data, tmp_path, curve_points=-1)
