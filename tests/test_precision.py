"""kn.precision: which candidates a machine leaves open, a measured choice that leaves the run
untouched and is recorded, curves deterministic per precision, a resume that keeps its precision.
Run: pytest tests/test_precision.py
"""
import json

import pytest
import torch

import kn.precision
from kn.errors import DataError
from kn.models import ModelConfig, build_model
from kn.precision import Precision, candidates, choose
from kn.results import hardware
from kn.train import train
from kn.train_config import TrainConfig

TINY = ModelConfig(n_layer=1, n_head=2, n_embd=32, context=64)


def with_flags(monkeypatch, flags):
    monkeypatch.setattr(kn.precision, "cpu_info", lambda: {"cpu_model": "test", "cpu_flags": flags})


def test_candidates_follow_the_hardware_and_the_settings(monkeypatch):
    with_flags(monkeypatch, ["avx2"])
    assert candidates("auto", "auto", "cpu") == [("fp32", "sdpa"), ("fp32", "eager")]
    assert candidates("bf16", "eager", "cpu") == [("bf16", "eager")]          # asked for: allowed anywhere
    with_flags(monkeypatch, ["avx2", "avx512_bf16"])
    assert candidates("auto", "auto", "cpu") == [(d, a) for d in ("fp32", "bf16") for a in ("sdpa", "eager")]
    assert candidates("fp32", "auto", "cpu") == [("fp32", "sdpa"), ("fp32", "eager")]
    assert candidates("auto", "auto", "cuda") == [("bf16", "sdpa")]


def test_measured_choice_leaves_the_run_alone_and_is_recorded(monkeypatch):
    with_flags(monkeypatch, ["avx512_bf16"])
    model = build_model(ModelConfig(n_layer=1, n_head=2, n_embd=16, vocab_size=40, context=16), seed=0)
    x = torch.randint(0, 40, (2, 16))
    before, rng = {k: v.clone() for k, v in model.state_dict().items()}, torch.get_rng_state()
    p = choose(model, (x, x, None), "auto", "auto", "cpu")
    assert set(p.seconds_per_step) == {"fp32+sdpa", "fp32+eager", "bf16+sdpa", "bf16+eager"}
    assert p.name in p.seconds_per_step and "measured" in p.reason
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())   # timed on copies
    assert torch.equal(torch.get_rng_state(), rng)
    assert choose(model, (x, x, None), "auto", "auto", "cpu") is p                   # once per shape
    assert p.record() in hardware()["precision"]
    fixed = choose(model, (x, x, None), "fp32", "sdpa", "cpu")
    assert (fixed.name, fixed.seconds_per_step) == ("fp32+sdpa", {})


def test_bad_settings_name_the_field(data, tmp_path):
    for key, value in (("precision", "fp16"), ("attention", "flash"), ("trim_vocab", "yes")):
        with pytest.raises(DataError, match=f"^{key}: got"):
            TrainConfig(data=data, out=str(tmp_path), **{key: value})


def cfg(data, out, **kw):
    return TrainConfig(**(dict(data=data, out=str(out), model=TINY, window=64, batch_size=8, passes=1, lr=3e-3,
                                log_every=5, checkpoint_every=4) | kw))


@pytest.mark.parametrize("precision, attention", [("fp32", "sdpa"), ("bf16", "eager")])
def test_same_seed_and_precision_same_curve(data, tmp_path, precision, attention):
    runs = [train(cfg(data, tmp_path / str(i), precision=precision, attention=attention), progress=False)
            for i in range(2)]
    assert [h["loss"] for h in runs[0]["history"]] == [h["loss"] for h in runs[1]["history"]]
    assert runs[0]["precision"]["dtype"] == precision and runs[0]["precision"]["attention"] == attention


def test_bf16_changes_the_curve_and_a_resume_keeps_its_precision(data, tmp_path):
    fp32 = train(cfg(data, tmp_path / "a", precision="fp32", attention="eager"), progress=False)
    bf16 = train(cfg(data, tmp_path / "b", precision="bf16", attention="eager"), progress=False)
    assert [h["loss"] for h in fp32["history"]] != [h["loss"] for h in bf16["history"]]
    part = train(cfg(data, tmp_path / "c", precision="bf16", attention="eager", max_steps=7), progress=False)
    rest = train(cfg(data, tmp_path / "c", precision="bf16", attention="eager"), resume=True, progress=False)
    assert part["steps"] == 7 and rest["precision"] == bf16["precision"]
    later = [h["loss"] for h in bf16["history"] if h["step"] > 10]              # the windows after the resume's first
    assert later and [h["loss"] for h in rest["history"] if h["step"] > 10] == later


def test_a_checkpoint_from_before_the_choice_refuses_another_precision(data, tmp_path):
    """A checkpoint recording no precision ran in fp32 with SDPA on the CPU: a resume that sets bf16 is refused."""
    run = tmp_path / "old"
    train(cfg(data, run, precision="fp32", attention="sdpa", max_steps=4), progress=False)
    state_file = run / "checkpoint" / "state.json"
    state = json.loads(state_file.read_text())
    state["config"] = {k: v for k, v in state["config"].items() if k not in ("precision", "attention", "trim_vocab")}
    state_file.write_text(json.dumps({k: v for k, v in state.items() if k not in ("precision", "checksum")}))
    with pytest.raises(DataError, match="^resume: the checkpoint ran in fp32\\+sdpa"):
        train(cfg(data, run, precision="bf16", attention="sdpa"), resume=True, progress=False)
    assert train(cfg(data, run, precision="fp32", attention="sdpa"), resume=True, progress=False)["steps"] > 4


def test_a_resume_may_leave_precision_and_attention_to_the_checkpoint(data, tmp_path):
    """A run set to fp32 + SDPA resumes under "auto" (kn.capacity's points changed so), keeping the
    checkpoint's choice; another explicit kernel is refused."""
    run = tmp_path / "r"
    train(cfg(data, run, precision="fp32", attention="sdpa", max_steps=4), progress=False)
    with pytest.raises(DataError, match="^resume: "):
        train(cfg(data, run, precision="fp32", attention="eager"), resume=True, progress=False)
    rest = train(cfg(data, run, precision="fp32", attention="auto"), resume=True, progress=False)
    assert rest["steps"] > 4 and (rest["precision"]["dtype"], rest["precision"]["attention"]) == ("fp32", "sdpa")


def test_compile_setting_leaves_short_cpu_runs_eager():
    from kn.train import COMPILE_MIN_STEPS, compile_setting
    assert compile_setting("auto", "cpu", COMPILE_MIN_STEPS - 1) == "off"           # short runs and tests: eager
    assert compile_setting("auto", "cpu", COMPILE_MIN_STEPS) == "auto"              # longer: by expected time
    assert compile_setting("auto", "cuda", 10) == "on" and compile_setting("off", "cuda", 10 ** 6) == "off"


def test_compiled_choice_is_measured_and_recorded():
    """compile "auto": a short run stays eager, unmeasured; a long one gets both attentions compiled, the
    faster against the eager winner; recorded with its timings."""
    model = build_model(ModelConfig(n_layer=1, n_head=2, n_embd=16, vocab_size=40, context=16), seed=0)
    x = torch.randint(0, 40, (2, 16))
    short = choose(model, (x, x, None), "fp32", "auto", "cpu", "auto", total_steps=1000)
    assert not short.compiled and "too short to compile" in short.reason
    assert not any(k.endswith("+compiled") for k in short.seconds_per_step)
    p = choose(model, (x, x, None), "fp32", "auto", "cpu", "auto", total_steps=10 ** 9)
    assert {"fp32+sdpa+compiled", "fp32+eager+compiled", "fp32+sdpa", "fp32+eager"} <= set(p.seconds_per_step)
    assert p.name in p.seconds_per_step and "compiled" in p.reason and p.record() in hardware()["precision"]
    assert p.name.endswith("+compiled") == p.compiled
    assert choose(model, (x, x, None), "fp32", "sdpa", "cpu", "on").compiled                # as set: not measured


@pytest.mark.parametrize("times, compile, chosen", [
    # every open candidate is timed compiled: a bf16 eager winner can lose to fp32 compiled
    ({"bf16+eager": 1.0, "bf16+eager+compiled": 0.9, "fp32+eager+compiled": 0.5}, "auto", "fp32+eager+compiled"),
    # the eager winner's own compiled step stays within MARGIN of the fastest ...
    ({"bf16+eager": 1.0, "bf16+eager+compiled": 0.52, "fp32+eager+compiled": 0.5}, "auto", "bf16+eager+compiled"),
    # ... unless it is not itself MARGIN faster than eager: then the fastest, which is
    ({"bf16+eager": 1.0, "bf16+eager+compiled": 0.97, "fp32+eager+compiled": 0.93}, "auto", "fp32+eager+compiled"),
    # nothing compiled MARGIN faster than eager: eager kept
    ({"bf16+eager": 1.0, "bf16+eager+compiled": 0.99, "fp32+eager+compiled": 0.97}, "auto", "bf16+eager"),
    # compile "on": compiled whatever eager does, the own kernel unless another is MARGIN faster
    ({"bf16+eager+compiled": 1.0, "fp32+eager+compiled": 0.97}, "on", "bf16+eager+compiled"),
    ({"bf16+eager+compiled": 1.0, "fp32+eager+compiled": 0.9}, "on", "fp32+eager+compiled"),
])
def test_compiled_choice_takes_the_fastest_within_the_margin(monkeypatch, times, compile, chosen):
    monkeypatch.setattr(kn.precision, "_timed", lambda model, batch, cands, device, fill=0.0: times)
    winner = Precision("bf16", "eager", "measured")
    p = kn.precision._compiled(None, None, winner, [("fp32", "eager"), ("bf16", "eager")], compile, "cpu")
    assert p.name == chosen and p.seconds_per_step == times
    assert ("eager kept" in p.reason) == (not p.compiled)


def test_compiled_runs_repeat_and_resume_bit_exactly(data, tmp_path):
    """A compiled run (torch.compile, fused AdamW) gives the same curve twice, records it, and a stopped one
    resumes compiled (compile "auto" keeps the checkpoint's choice) onto the same curve."""
    kw = dict(precision="fp32", attention="eager")
    runs = [train(cfg(data, tmp_path / str(i), compile="on", **kw), progress=False) for i in range(2)]
    assert [h["loss"] for h in runs[0]["history"]] == [h["loss"] for h in runs[1]["history"]]
    assert runs[0]["precision"]["compiled"] and runs[0]["precision"]["attention"] == "eager"
    eager = train(cfg(data, tmp_path / "e", compile="off", **kw), progress=False)
    assert not eager["precision"]["compiled"] and eager["history"] != runs[0]["history"]
    train(cfg(data, tmp_path / "c", compile="on", max_steps=7, **kw), progress=False)
    rest = train(cfg(data, tmp_path / "c", compile="auto", **kw), resume=True, progress=False)
    assert rest["precision"]["compiled"]
    train(cfg(data, tmp_path / "d", compile="off", max_steps=7, **kw), progress=False)          # eager, then
    train(cfg(data, tmp_path / "d", compile="on", **kw), resume=True, progress=False)           # compiled:
    saved = torch.load(tmp_path / "d" / "checkpoint" / "state.pt", weights_only=False)["optimizer"]
    assert all(g["fused"] for g in saved["param_groups"])               # its AdamW too, not the checkpoint's
    later = [h["loss"] for h in runs[0]["history"] if h["step"] > 10]
    assert later and [h["loss"] for h in rest["history"] if h["step"] > 10] == later


def test_resumed_precision_keeps_the_old_compile_rule_and_notes_a_change():
    """A checkpoint recording no `compiled` ran by the rule of then (compile "on", or "auto" on a GPU);
    compile set at a resume overrides the record and says so in the reason."""
    from kn.train import Fit, resumed_precision
    old = {"precision": {"dtype": "fp32", "attention": "sdpa", "reason": "r", "seconds_per_step": {}}}
    spec = Fit(total_steps=10, lr=1e-3)
    assert resumed_precision(old | {"config": {"compile": "on"}}, spec, "cpu").compiled
    assert not resumed_precision(old | {"config": {"compile": "auto"}}, spec, "cpu").compiled
    assert resumed_precision({"config": {"compile": "auto"}}, spec, "cuda").compiled          # legacy(): a GPU run
    now = {"precision": old["precision"] | {"compiled": True}}
    off = resumed_precision(now, Fit(total_steps=10, lr=1e-3, compile="off"), "cpu")
    assert not off.compiled and off.reason.endswith("compile=off set at a resume")
    assert resumed_precision(now, Fit(total_steps=10, lr=1e-3, compile="on"), "cpu").reason == "r"
