"""Fault injection (issue 12): each case of the issue, reproduced, must now lose nothing and say why.

1 sweep CSVs: a truncated last line, rows with other columns, two sweeps on one CSV, a kill mid-write
2 run folders: resume with other settings, a new run over an old one, a kill mid checkpoint swap,
  a second writer
3 LoRA: same seed, same losses whatever torch's global RNG state
5 dataset folders: --out onto a dataset, bioD into a bioS folder, a rewrite that stops part-way
6 bad values: one line naming the value, before any work
7 interrupted train: exit code 75; metrics.jsonl after SIGKILL + resume; provenance of a dirty tree
26 (issue 26) resume on changed data, damaged checkpoints, edited or impossible results, bad CSV rows, a full disk;
   --out (a folder without a dataset, a symlink, the input inside it) refused before slow imports; a full
   disk as one line, nothing that looks whole (dataset files, papermill's notebook); kn book and kn run
   stop their children on SIGTERM; a truncated tokens.npz, meta.json of the wrong shape, a [model] typo

Kills are real (SIGKILL of a child process at the chosen moment).
Run: OMP_NUM_THREADS=1 pytest tests/test_faults.py
"""
import errno
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kn.errors import DataError
from kn.results import append_csv, read_csv, write_json
from kn.sweep import locks_folder, point_key, read_rows, run_sweep

POINTS = [{"x": x} for x in range(4)]


def square(point):
    return {"y": point["x"] ** 2, "tag": f"p{point['x']}"}


def table(path):
    return sorted((r["x"], r["y"], r["tag"]) for r in read_rows(path))


WANT = [(x, x * x, f"p{x}") for x in range(4)]


def child(script: str, *args) -> subprocess.CompletedProcess:
    """Run `script` in a fresh Python (one thread) from the repository root."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=Path(__file__).resolve().parents[1], timeout=600)


# ----------------------------------------------------------------------------- 1 sweep CSVs


def test_truncated_last_line_is_dropped_and_the_point_rerun(tmp_path, caplog):
    out = tmp_path / "r.csv"
    run_sweep(POINTS, square, out)
    out.write_bytes(out.read_bytes()[:-4])                  # the last row lost its tail: "...,p3\r\n" -> "...,"
    assert len(read_rows(out)) == 3 and "unfinished last line" in caplog.text
    rows = run_sweep(POINTS, square, out)
    assert [r["x"] for r in rows] == [3]                    # not glued onto the cut row: rerun and appended
    assert table(out) == WANT


def test_row_with_other_columns_is_refused(tmp_path):
    out = tmp_path / "r.csv"
    append_csv(out, {"key": "a", "x": 1, "y": 2})
    append_csv(out, {"y": 3, "key": "b", "x": 2})           # same columns in another order: written in header order
    with pytest.raises(DataError, match=r"^results: .*new: \['z'\], missing: \['y'\]"):
        append_csv(out, {"key": "c", "x": 3, "z": 4})
    assert read_csv(out) == [{"key": "a", "x": "1", "y": "2"}, {"key": "b", "x": "2", "y": "3"}]


def logged_square(point):
    """square, logging (pid, x) of each call to calls.log beside the CSV (path in the point)."""
    with open(point["log"], "a") as f:
        f.write(f"{os.getpid()} {point['x']}\n")
    time.sleep(0.4)
    return {"y": point["x"] ** 2, "tag": f"p{point['x']}"}


def test_two_sweeps_on_one_csv_run_each_point_once(tmp_path):
    out, calls = tmp_path / "r.csv", tmp_path / "calls.log"
    points = [{"x": x, "log": str(calls)} for x in range(8)]
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=run_sweep, args=(points, logged_square, out)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    assert [p.exitcode for p in procs] == [0, 0]
    lines = [line.split() for line in calls.read_text().splitlines()]
    assert sorted(int(x) for _, x in lines) == list(range(8))          # each point computed once
    assert len({pid for pid, _ in lines}) == 2                          # and the work was shared
    assert sorted(r["key"] for r in read_csv(out)) == sorted(point_key(p) for p in points)
    assert not locks_folder(out).exists()


KILL_MID_ROW = r"""
import os, signal, sys
from kn.sweep import run_sweep
real, rows = os.write, []
def write(fd, data):                     # the third row: half of it reaches the file, then SIGKILL
    rows.append(1)
    if len(rows) == 3:
        real(fd, data[:len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    return real(fd, data)
os.write = write
square = lambda p: {"y": p["x"] ** 2, "tag": f"p{p['x']}"}
run_sweep([{"x": x} for x in range(4)], square, sys.argv[1])
"""


def test_kill_mid_csv_write_loses_only_that_row(tmp_path):
    out = tmp_path / "r.csv"
    r = child(KILL_MID_ROW, out)
    assert r.returncode == -signal.SIGKILL
    assert not out.read_bytes().endswith(b"\n")             # a torn row is on disk
    assert len(read_rows(out)) == 2
    assert [r["x"] for r in run_sweep(POINTS, square, out)] == [2, 3]   # the killed point's lock died with it
    assert table(out) == WANT and not locks_folder(out).exists()


# ----------------------------------------------------------------------------- 2, 3, 6, 7 training


def cfg(data, out, **kw):
    from kn.models import ModelConfig
    from kn.train_config import TrainConfig
    base = dict(data=data, out=str(out), model=ModelConfig(n_layer=1, n_head=2, n_embd=32, context=64), window=64,
                batch_size=8, passes=2, lr=3e-3, log_every=1, checkpoint_every=4,
                precision="fp32", attention="sdpa")   # auto may choose otherwise in a child process than here
    return TrainConfig(**(base | kw))


def weights(path):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(str(path)).state_dict()


def same_weights(a, b):
    import torch
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def metric_steps(run):
    return [json.loads(line)["step"] for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]


def test_resume_with_changed_settings_is_refused(data, tmp_path, one_thread):
    from kn.train import train
    train(cfg(data, tmp_path / "r", max_steps=5), progress=False)
    with pytest.raises(DataError, match=r"^resume: .*\['lr'\] \(lr: 0.003 -> 0.01\)"):
        train(cfg(data, tmp_path / "r", lr=1e-2), resume=True, progress=False)
    with pytest.raises(DataError, match=r"model.n_embd"):
        train(cfg(data, tmp_path / "r", model={"n_layer": 1, "n_head": 2, "n_embd": 64, "context": 64}),
              resume=True, progress=False)
    done = train(cfg(data, tmp_path / "r", log_every=2), resume=True, progress=False)   # bookkeeping may change
    assert done["steps"] == done["total_steps"]


def test_new_run_over_a_checkpoint_is_refused_unless_overwrite(data, tmp_path, one_thread):
    from kn.train import train
    train(cfg(data, tmp_path / "r", max_steps=9), progress=False)
    before = (tmp_path / "r" / "checkpoint" / "state.pt").read_bytes()
    with pytest.raises(DataError, match=r"^out: .* already holds a checkpoint at step 9; pass resume=True"):
        train(cfg(data, tmp_path / "r", max_steps=3), progress=False)
    assert (tmp_path / "r" / "checkpoint" / "state.pt").read_bytes() == before
    again = train(cfg(data, tmp_path / "r", max_steps=3), progress=False, overwrite=True)
    assert again["steps"] == 3 and metric_steps(tmp_path / "r") == [1, 2, 3]


def test_second_writer_is_locked_out(data, tmp_path, one_thread):
    import fcntl
    from kn.train import train
    (tmp_path / "r").mkdir()
    with open(tmp_path / "r" / "train.lock", "w") as f:       # another process training in this folder
        fcntl.flock(f, fcntl.LOCK_EX)
        with pytest.raises(DataError, match=r"^out: another process is training in"):
            train(cfg(data, tmp_path / "r"), progress=False)
    assert not (tmp_path / "r" / "checkpoint").exists()


TRAIN_CHILD = r"""
import json, os, signal, sys
import torch
torch.set_num_threads(1)
import kn.train
from kn.train import train
from kn.train_config import TrainConfig
kill, kw = sys.argv[1], json.loads(sys.argv[2])
if kill == "swap":      # SIGKILL after the old checkpoint went aside, before the new one is renamed in
    real = os.replace
    def replace(src, dst):
        if str(src).endswith("checkpoint.tmp") and os.path.exists(str(dst) + ".old"):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(src, dst)
    os.replace = replace
else:                   # SIGKILL before optimizer step `kill`
    real, calls = kn.train.training_step, []
    def training_step(*a, **k):
        step = real(*a, **k)
        def wrapped(*b):
            calls.append(1)
            if len(calls) == int(kill):
                os.kill(os.getpid(), signal.SIGKILL)
            return step(*b)
        return wrapped
    kn.train.training_step = training_step
train(TrainConfig(**kw), progress=False)
"""


def killed_run(data, out, kill):
    from dataclasses import asdict
    c = asdict(cfg(data, out))
    r = child(TRAIN_CHILD, kill, json.dumps(c))
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]


def test_kill_mid_checkpoint_swap_resumes_from_the_new_checkpoint(data, tmp_path, one_thread):
    from kn.train import train
    full = train(cfg(data, tmp_path / "full"), progress=False)
    killed_run(data, tmp_path / "k", "swap")                                  # killed while saving step 8
    run = tmp_path / "k"
    assert not (run / "checkpoint").exists() and (run / "checkpoint.old").is_dir()
    rest = train(cfg(data, run), resume=True, progress=False)
    assert rest["history"][0]["step"] == 9                                    # not 0 (before), not 4 (the old one)
    assert rest["steps"] == full["steps"] and same_weights(tmp_path / "full" / "model", run / "model")
    assert not (run / "checkpoint.old").exists() and not (run / "checkpoint.tmp").exists()


def test_metrics_have_no_duplicate_steps_after_sigkill_and_resume(data, tmp_path, one_thread):
    from kn.train import train
    killed_run(data, tmp_path / "k", 7)                # steps 1-6 logged, checkpoint at step 4
    assert metric_steps(tmp_path / "k") == [1, 2, 3, 4, 5, 6]
    done = train(cfg(data, tmp_path / "k"), resume=True, progress=False)
    assert metric_steps(tmp_path / "k") == list(range(1, done["total_steps"] + 1))


def test_same_seed_lora_finetunes_are_identical(data, tmp_path, one_thread):
    import torch
    from kn.train import train
    train(cfg(data, tmp_path / "pre"), progress=False)
    runs = []
    for name, global_seed in (("a", 1), ("b", 2)):                            # torch's global RNG in two states
        torch.manual_seed(global_seed)
        runs.append(train(cfg(data, tmp_path / name, mode="finetune", init=str(tmp_path / "pre" / "model"),
                              lora_rank=2, lora_embed_rank=2, seed=3), progress=False))
    assert [h["loss"] for h in runs[0]["history"]] == [h["loss"] for h in runs[1]["history"]]
    assert same_weights(tmp_path / "a" / "model", tmp_path / "b" / "model")
    other = train(cfg(data, tmp_path / "c", mode="finetune", init=str(tmp_path / "pre" / "model"),
                      lora_rank=2, lora_embed_rank=2, seed=4), progress=False)
    assert [h["loss"] for h in other["history"]] != [h["loss"] for h in runs[0]["history"]]


@pytest.mark.parametrize("kw, field", [({"max_steps": -5}, "max_steps"), ({"grad_clip": -1.0}, "grad_clip"),
                                       ({"passes": 1e12}, "passes"), ({"seed": -1}, "seed"),
                                       ({"batch_size": 8.5}, "batch_size"), ({"lr": float("nan")}, "lr"),
                                       ({"log_every": True}, "log_every"), ({"model": {"width": 3}}, "model")])
def test_nonsense_values_are_one_line_naming_them(data, tmp_path, kw, field):
    with pytest.raises(DataError, match=f"^{field}: ") as e:
        cfg(data, tmp_path, **kw)
    assert "\n" not in str(e.value)


def write_toml(path, data, out, **values):
    values = {"data": str(data), "out": str(out), "passes": 1, "window": 64, "batch_size": 8} | values
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()) +
                    "[model]\nn_layer = 1\nn_head = 2\nn_embd = 32\ncontext = 64\n")
    return str(path)


def cli(capsys, *argv):
    from kn.cli import main
    rc = main(list(argv))
    return rc, capsys.readouterr()


def test_cli_bad_files_are_one_line(data, tmp_path, capsys):
    toml = tmp_path / "bad.toml"
    toml.write_text('data = "x"\nout = \n')
    rc, io = cli(capsys, "train", "--config", str(toml))
    assert rc == 2 and io.err.startswith("kn: error: config: ") and "not valid TOML" in io.err
    rc, io = cli(capsys, "train", "--config", write_toml(toml, data, tmp_path / "o", batch_size=8.5))
    assert rc == 2 and io.err == "kn: error: batch_size: got 8.5; allowed: an integer\n"
    rc, io = cli(capsys, "train", "--config", write_toml(toml, data, tmp_path / "o", seed=-1))
    assert rc == 2 and io.err == "kn: error: seed: got -1; allowed: an integer >= 0\n"
    (tmp_path / "file").write_text("")
    rc, io = cli(capsys, "train", "--config", write_toml(toml, data, tmp_path / "file" / "run"))
    assert rc == 2 and io.err.startswith("kn: error: out: ") and io.err.count("\n") == 1
    rc, io = cli(capsys, "data", "bios", "--n", "20", "--out", str(tmp_path / "file" / "d"))
    assert rc == 2 and io.err.startswith("kn: error: out: ") and "is a file" in io.err


def test_empty_state_pt_is_one_line(data, tmp_path, capsys):
    toml = write_toml(tmp_path / "run.toml", data, tmp_path / "o", max_steps=2)
    assert cli(capsys, "train", "--config", toml)[0] == 0
    (tmp_path / "o" / "checkpoint" / "state.pt").write_bytes(b"")
    rc, io = cli(capsys, "train", "--config", toml, "--resume")
    assert rc == 2 and io.err.startswith("kn: error: checkpoint: ") and "empty or unreadable" in io.err


def test_small_vocab_fails_before_any_work(tmp_path, capsys, monkeypatch):
    import kn.data.dataset

    def no_work(*a, **k):
        raise AssertionError("generated people before checking vocab_size")
    monkeypatch.setattr(kn.data.dataset, "sample_people", no_work)
    rc, io = cli(capsys, "data", "bios", "--n", "20", "--vocab-size", "10", "--out", str(tmp_path / "d"))
    assert rc == 2 and io.err == "kn: error: vocab_size: got 10; allowed: an integer >= 300\n"
    assert not (tmp_path / "d").exists()


def test_interrupted_train_exits_75_and_resume_exits_0(data, tmp_path, capsys, monkeypatch, sigterm_at_step):
    from kn.train import EXIT_INTERRUPTED
    toml = write_toml(tmp_path / "run.toml", data, tmp_path / "o", passes=3)
    sigterm_at_step(3)
    rc, io = cli(capsys, "train", "--config", toml)
    assert rc == EXIT_INTERRUPTED == 75 and json.loads(io.out.splitlines()[-1])["interrupted"]
    monkeypatch.undo()                                     # the steps run on to the end again
    assert cli(capsys, "train", "--config", toml)[0] == 2                      # not silently restarted
    assert cli(capsys, "train", "--config", toml, "--resume")[0] == 0


# ----------------------------------------------------------------------------- 5 dataset folders


def test_out_onto_a_dataset_is_refused_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "d"
    assert cli(capsys, "data", "bios", "--n", "20", "--vocab-size", "400", "--out", str(out))[0] == 0
    before = (out / "bios.jsonl").read_bytes()
    rc, io = cli(capsys, "data", "bios", "--n", "30", "--vocab-size", "400", "--out", str(out))
    assert rc == 2 and "already holds a dataset" in io.err and (out / "bios.jsonl").read_bytes() == before
    assert cli(capsys, "data", "bios", "--n", "30", "--vocab-size", "400", "--out", str(out), "--overwrite")[0] == 0
    assert json.loads((out / "meta.json").read_text())["counts"]["people"] == 30


def test_biod_into_a_bios_folder(data, tmp_path, capsys):
    import shutil
    from kn.train import train
    out = tmp_path / "d"
    shutil.copytree(data, out)
    args = ["data", "biod", "--n", "20", "--k", "2", "--d", "10", "--t", "10", "--out", str(out)]
    rc, io = cli(capsys, *args)
    assert rc == 2 and "already holds a dataset" in io.err
    assert cli(capsys, *args, "--overwrite")[0] == 0
    assert not (out / "tokens.npz").exists() and not (out / "bios.jsonl").exists()   # no bioS ids left to train on
    summary = train(cfg(str(out), tmp_path / "run"), progress=False)   # a bioD folder now: bioD ids, bioD tokenizer
    vocab = json.loads((out / "meta.json").read_text())["vocab_size"]
    assert summary["steps"] > 0 and summary["n_params"]["all"] > 0
    assert json.loads((tmp_path / "run" / "model" / "config.json").read_text())["vocab_size"] == vocab


def test_rewrite_that_stops_part_way_is_refused_by_readers(tmp_path, monkeypatch):
    import kn.data.dataset as dataset
    from kn.data.dataset import BiosConfig, load_encoded, make_dataset
    out = tmp_path / "d"
    make_dataset(BiosConfig(n=20, vocab_size=400), out)

    def crash(*a, **k):
        raise KeyboardInterrupt                              # stopped while writing tokens.npz
    monkeypatch.setattr(dataset.np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        make_dataset(BiosConfig(n=30, vocab_size=400), out, overwrite=True)
    monkeypatch.undo()
    assert not (out / "meta.json").exists() and not (out / "tokens.npz").exists()     # no 0-byte tokens.npz
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]
    make_dataset(BiosConfig(n=30, vocab_size=400), out)    # an unfinished folder needs no --overwrite
    assert len(load_encoded(out, "bios")) == 30
    (out / "meta.json").unlink()
    with pytest.raises(DataError, match="^out: no meta.json .* not written to the end"):
        load_encoded(out, "bios")


# ----------------------------------------------------------------------------- 7 provenance


def test_dirty_tree_keeps_its_diff(tmp_path, monkeypatch):
    import kn.results
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "a.py").write_text("x = 1\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git[:3] + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-qm", "init"], check=True)
    monkeypatch.setattr(kn.results, "PACKAGE", repo / "pkg")
    (repo / "pkg" / "a.py").write_text("x = 2\n")
    (repo / "pkg" / "new.py").write_text("y = 3\n")
    (repo / "results.json").write_text("{}")                 # results elsewhere in the tree do not count
    prov = json.loads(write_json(tmp_path / "out" / "r.json", value=1).read_text())["provenance"]
    patch = (tmp_path / "out" / "r.diff").read_text()
    assert prov["git_dirty"] and prov["git_diff"] == "r.diff" and len(prov["git_commit"]) == 40
    assert prov["git_diff_sha256"] == hashlib.sha256(patch.encode()).hexdigest()
    assert "+x = 2" in patch and "+y = 3" in patch and "results.json" not in patch
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-qm", "clean"], check=True)
    prov = json.loads(write_json(tmp_path / "out" / "r.json", value=1).read_text())["provenance"]
    assert not prov["git_dirty"] and prov["git_diff"] is None and not (tmp_path / "out" / "r.diff").exists()


# ---- issue 26: resume, checksums, validated results


def files_of(folder):
    """{relative path: bytes} of every file under `folder`."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


@pytest.mark.parametrize("seed, vocab_size, refused", [(0, 500, False), (1, 500, True), (1, 600, True)])
def test_resume_refuses_data_regenerated_in_place(data, tmp_path, seed, vocab_size, refused):
    """Built to fail: another seed trained on another tokenizer's ids without a word, another
    vocabulary died in a traceback. The same data made again resumes."""
    import shutil
    from kn.data.dataset import BiosConfig, make_dataset
    from kn.train import train
    d, run = tmp_path / "d", tmp_path / "r"
    shutil.copytree(data, d)
    train(cfg(str(d), run, max_steps=5), progress=False)
    make_dataset(BiosConfig(n=60, augment="multi2+permute", vocab_size=vocab_size, seed=seed), d, overwrite=True)
    if not refused:
        assert train(cfg(str(d), run), resume=True, progress=False)["history"][0]["step"] == 6
        return
    before = files_of(run / "checkpoint")
    with pytest.raises(DataError, match=r"^resume: the data in '.*/d' changed since the checkpoint \(fingerprint "
                                        r"[0-9a-f]{12} -> [0-9a-f]{12}\); start again with overwrite=True") as e:
        train(cfg(str(d), run), resume=True, progress=False)
    assert "\n" not in str(e.value) and files_of(run / "checkpoint") == before


def flip_exponent_bit(state_pt):
    """Flip the top exponent bit of the first value of the final layer norm's weight, in state.pt's bytes."""
    import torch
    state = torch.load(state_pt, weights_only=False)
    weight = next(v for k, v in state["trainable"].items() if k.endswith("final_layer_norm.weight"))
    raw, target = bytearray(state_pt.read_bytes()), weight.numpy().tobytes()
    at = raw.find(target)
    assert at >= 0 and raw.find(target, at + 1) < 0
    raw[at + 3] ^= 0x40                                      # float32, little-endian: bit 30, the exponent's top bit
    state_pt.write_bytes(bytes(raw))


def test_flipped_bit_in_a_checkpoint_is_refused(data, tmp_path, capsys):
    """Built to fail: the damaged checkpoint resumed 'successfully' to a NaN or 1e33 loss, interrupted false."""
    toml = write_toml(tmp_path / "run.toml", data, tmp_path / "o", passes=2, max_steps=5, checkpoint_every=4)
    assert cli(capsys, "train", "--config", toml)[0] == 0
    flip_exponent_bit(tmp_path / "o" / "checkpoint" / "state.pt")
    before = files_of(tmp_path / "o")
    toml = write_toml(tmp_path / "run.toml", data, tmp_path / "o", passes=2, checkpoint_every=4)
    rc, io = cli(capsys, "train", "--config", toml, "--resume")
    assert rc == 2 and io.err.count("\n") == 1
    assert io.err.startswith("kn: error: checkpoint: ['state.pt'] in ") and "do not match the checksums" in io.err
    assert files_of(tmp_path / "o") == before                       # checkpoint, model and train.json as they were


def damage_before_checksum(checkpoint, how):
    """A checkpoint whose state was damaged before it was written (its checksums match): the final
    layer norm's weight with a flipped exponent bit (a NaN loss) or 50x too large (a finite jump)."""
    import hashlib
    import torch
    if how == "nan":
        flip_exponent_bit(checkpoint / "state.pt")
    else:
        state = torch.load(checkpoint / "state.pt", weights_only=False)
        name = next(k for k in state["trainable"] if k.endswith("final_layer_norm.weight"))
        state["trainable"][name] *= 50
        torch.save(state, checkpoint / "state.pt")
    meta = json.loads((checkpoint / "state.json").read_text())
    meta.setdefault("checksum", {})["state.pt"] = hashlib.sha256((checkpoint / "state.pt").read_bytes()).hexdigest()
    (checkpoint / "state.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("how, loss", [("nan", "nan"), ("jump", r"\d[\d.e+]*")])
def test_resumed_loss_that_is_not_finite_or_jumps_stops(data, tmp_path, how, loss):
    """Built to fail: a state damaged before its checksum was taken trained on to a NaN or huge loss."""
    from kn.train import train
    run = tmp_path / "r"
    before_loss = train(cfg(data, run, max_steps=5), progress=False)["history"][-1]["loss"]
    damage_before_checksum(run / "checkpoint", how)
    before = files_of(run)
    with pytest.raises(DataError, match=rf"^resume: the loss over steps 6-6 is {loss} against {before_loss:.4g} "
                                        r"before the checkpoint at step 5 \(allowed: finite, at most 2 nats more\)"):
        train(cfg(data, run), resume=True, progress=False)
    assert files_of(run) == before                                   # checkpoint, model and train.json as they were


def part31(test_share, train=1.0, n=200, seed=0):
    """The fields of a Part 3.1 result: n test people answering each QA right with probability test_share."""
    import numpy as np
    from kn.data.records import ATTRIBUTES
    table = (np.random.default_rng(seed).random((n, len(ATTRIBUTES))) < test_share).astype(int)
    items = {"person": list(range(n))} | {a: table[:, k].tolist() for k, a in enumerate(ATTRIBUTES)}
    return {"qa": {"test": {"mean": float(table.mean(axis=0).mean())}, "train": {"mean": train}, "items": items},
            "memorization": {"mean": 1.0}}


def claim(source):
    from kn.claims import claims_table
    return next(r for r in claims_table() if r["source"] == source)


def test_hand_edited_result_is_refused(tmp_path, monkeypatch):
    """Built to fail: editing train_people's QA from 11.3% to 95% flipped R2 from inconclusive to reproduced."""
    from kn.results import done
    monkeypatch.setenv("KN_RESULTS_ROOT", str(tmp_path))
    path = write_json(tmp_path / "augmentation" / "cpu" / "single.json", config={"n": 1}, **part31(0.027, train=0.113))
    assert claim("Part 3.1, R2")["verdict"] == "inconclusive" and done(path, {"n": 1})
    path.write_text(path.read_text().replace('"mean": 0.113', '"mean": 0.95'))
    message = rf"^result: '{path}' does not match its checksum \(edited by hand or damaged\)"
    with pytest.raises(DataError, match=message):
        claim("Part 3.1, R2")
    with pytest.raises(DataError, match=message):                 # not taken as done, nor computed over
        done(path, {"n": 1})


def test_committed_results_carry_checksums_and_one_without_is_refused(tmp_path, monkeypatch):
    """Built to fail: no result file had a checksum, so deleting one would pass unnoticed."""
    import kn.results
    from kn.results import read_json
    committed = sorted(kn.results.COMMITTED.rglob("*.json"))
    assert committed and all(json.loads(p.read_text()).get("checksum") for p in committed)
    assert all(read_json(p) for p in committed)
    monkeypatch.setattr(kn.results, "COMMITTED", tmp_path)
    path = write_json(tmp_path / "augmentation" / "cpu" / "single.json", value=1)
    record = json.loads(path.read_text())
    del record["checksum"]
    path.write_text(json.dumps(record, indent=2))
    with pytest.raises(DataError, match=rf"^result: '{path}' has no checksum"):
        read_json(path)


def impossible(fault):
    r = part31(0.999)
    if fault == "item 7":
        r["qa"]["items"]["major"][3] = 7
        r["qa"]["test"]["mean"] = (5 + (sum(r["qa"]["items"]["major"]) / 200)) / 6   # the mean of the items, 7 and all
    else:
        r["qa"]["test"]["mean"] = 0.5                                               # not the mean of its items
    return r


@pytest.mark.parametrize("fault, field", [("item 7", r"qa.items.major\[3\] is 7; allowed: 0, 1, -1"),
                                          ("mean", r"qa.test.mean is 0.5 but its items give 0.99")])
def test_impossible_result_values_are_refused(tmp_path, monkeypatch, fault, field):
    """Built to fail: a per-person item 7 gave '100.3% [100.0, 101.0]' test_people."""
    monkeypatch.setenv("KN_RESULTS_ROOT", str(tmp_path))
    path = write_json(tmp_path / "mixed_training" / "cpu" / "single.json", **impossible(fault))
    with pytest.raises(DataError, match=rf"^result: '{path}': {field}"):
        claim("Part 3.1, R1")


@pytest.mark.parametrize("fault, rerun", [("nan", [2]), ("empty", [2]), ("columns", [2]), ("header", [])])
def test_malformed_csv_row_is_dropped_and_its_point_rerun(tmp_path, caplog, fault, rerun):
    """Built to fail: a NaN or empty result or a short row counted as done; a repeated header was a row."""
    out = tmp_path / "r.csv"
    run_sweep(POINTS, square, out)
    lines = out.read_bytes().decode().splitlines(keepends=True)         # header, then x = 0, 1, 2, 3
    edit = {"nan": lambda s: s.replace(",4,", ",nan,"), "empty": lambda s: s.replace(",4,", ",,"),
            "columns": lambda s: s.replace(",p2", ""), "header": lambda s: lines[0] + s}
    lines[3] = edit[fault](lines[3])
    out.write_bytes("".join(lines).encode())
    assert len(read_rows(out)) == 4 - len(rerun) and "dropped" in caplog.text
    assert [r["x"] for r in run_sweep(POINTS, square, out)] == rerun
    assert table(out) == WANT


def test_full_disk_leaves_no_partial_file_and_names_it(tmp_path, monkeypatch):
    """Built to fail: a half row stayed in the CSV, and neither error named the file."""
    import errno
    out = tmp_path / "r.csv"
    append_csv(out, {"key": "a", "x": 1, "note": "first"})
    before, real = out.read_bytes(), os.write

    def half_then_full(fd, data):
        real(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")
    with monkeypatch.context() as m:
        m.setattr(os, "write", half_then_full)
        with pytest.raises(OSError, match=rf"No space left on device: '{out}'") as e:
            append_csv(out, {"key": "b", "x": 2, "note": "a longer second row, cut half-way"})
    assert e.value.errno == errno.ENOSPC and out.read_bytes() == before
    assert read_csv(out) == [{"key": "a", "x": "1", "note": "first"}]

    path = write_json(tmp_path / "r.json", value=1)
    before, real_text = path.read_bytes(), Path.write_text

    def full(self, text, *a, **k):
        if not self.name.startswith(".r.json.tmp"):
            return real_text(self, text, *a, **k)
        real_text(self, text[: len(text) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")
    with monkeypatch.context() as m:
        m.setattr(Path, "write_text", full)
        with pytest.raises(OSError, match=rf"No space left on device: '{path}'"):
            write_json(path, value=2)
    assert path.read_bytes() == before and not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


# ---- issue 26: --out, OS errors, meta.json, children

BIOS = ["data", "bios", "--n", "20", "--vocab-size", "400"]
BIOD = ["data", "biod", "--n", "20", "--k", "2", "--d", "10", "--t", "10"]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A 20-person bioS dataset folder; tests that change it take a copy_of it."""
    from kn.data.dataset import BiosConfig, make_dataset
    out = tmp_path_factory.mktemp("small") / "d"
    make_dataset(BiosConfig(n=20, vocab_size=400), out)
    return out


def copy_of(folder, tmp_path):
    return Path(shutil.copytree(folder, tmp_path / "d"))


def enospc(path):
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def names(folder):
    return sorted(p.name for p in Path(folder).iterdir())


def data_commands(small):
    return {"bios": BIOS, "biod": BIOD, "import": ["data", "import", str(small / "bios.jsonl"), "--vocab-size", "300"]}


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_out_onto_a_folder_without_a_dataset_is_refused(small, tmp_path, capsys, overwrite):
    out = tmp_path / "mine"
    (out / "tokenizer").mkdir(parents=True)
    (out / "tokenizer" / "my_vocab.txt").write_text("mine")
    (out / "bios.jsonl").write_text("mine\n")
    for command in data_commands(small).values():
        rc, io = cli(capsys, *command, "--out", str(out), *overwrite)
        assert rc == 2 and io.err == (f"kn: error: out: {str(out)!r} is not empty and holds no kn dataset "
                                      "(it has: bios.jsonl, tokenizer/); choose an empty or new folder\n")
    assert (out / "tokenizer" / "my_vocab.txt").read_text() == "mine" and (out / "bios.jsonl").read_text() == "mine\n"
    assert names(out) == ["bios.jsonl", "tokenizer"]


def test_out_through_a_symlink_checks_the_folder_it_points_at(tmp_path, capsys):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "meta.json").write_text('{"mine": true}')                   # not a kn dataset's meta.json
    (tmp_path / "link").symlink_to(theirs)
    rc, io = cli(capsys, *BIOD, "--out", str(tmp_path / "link"), "--overwrite")
    assert rc == 2 and io.err == (f"kn: error: out: {str(theirs)!r} is not empty and holds no kn dataset "
                                  "(it has: meta.json); choose an empty or new folder\n")
    assert names(theirs) == ["meta.json"] and (theirs / "meta.json").read_text() == '{"mine": true}'
    (tmp_path / "empty").mkdir()
    (tmp_path / "to_empty").symlink_to(tmp_path / "empty")
    assert cli(capsys, *BIOD, "--out", str(tmp_path / "to_empty"))[0] == 0
    assert (tmp_path / "empty" / "meta.json").is_file()


def test_import_into_the_folder_of_its_input_is_refused(small, tmp_path, capsys):
    out = copy_of(small, tmp_path)
    before = (out / "bios.jsonl").read_bytes()
    rc, io = cli(capsys, "data", "import", str(out / "bios.jsonl"), "--out", str(out), "--vocab-size", "300",
                 "--overwrite")
    assert rc == 2 and io.err == (f"kn: error: out: {str(out)!r} holds the input {str(out / 'bios.jsonl')!r}; "
                                  "write the dataset to a folder outside it\n")
    assert (out / "bios.jsonl").read_bytes() == before


REFUSED_CHILD = r"""
import sys
from kn.cli import main
rc = main(sys.argv[1:])
print(rc, sorted(m for m in ("torch", "transformers", "tokenizers") if m in sys.modules))
"""


@pytest.mark.parametrize("command", ["bios", "biod", "import"])
def test_out_is_refused_before_any_slow_import(small, tmp_path, command):
    out = tmp_path / "theirs"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    r = child(REFUSED_CHILD, *data_commands(small)[command], "--out", out)
    assert r.stdout.splitlines()[-1] == "2 []" and "holds no kn dataset (it has: notes.txt)" in r.stderr
    assert names(out) == ["notes.txt"]


def test_disk_full_mid_dataset_is_one_line_and_leaves_nothing_that_looks_whole(tmp_path, capsys, monkeypatch):
    import kn.data.dataset

    def full(f, **arrays):
        f.write(b"PK\x03\x04 half an archive")
        raise enospc(f.name)
    monkeypatch.setattr(kn.data.dataset.np, "savez", full)
    out = tmp_path / "d"
    rc, io = cli(capsys, *BIOS, "--out", str(out))
    assert rc == 1 and re.fullmatch(rf"kn: error: {re.escape(str(out))}/tokens\.npz: "     # the file it was writing
                                    r"No space left on device\n", io.err)
    assert names(out) == [".kn-unfinished", "bios.jsonl", "qa.jsonl", "tokenizer"]     # no meta.json: readers refuse
    monkeypatch.undo()
    assert cli(capsys, *BIOS, "--out", str(out))[0] == 0          # kn's unfinished folder needs no --overwrite
    assert (out / "meta.json").is_file() and not (out / ".kn-unfinished").exists()


def test_disk_full_mid_tokenizer_leaves_no_tokenizer(tmp_path, capsys, monkeypatch):
    import kn.data.biod

    class FullDisk:
        def save_pretrained(self, path):
            Path(path).mkdir()
            (Path(path) / "tokenizer.json").write_text('{"model": {"vo')
            raise enospc(Path(path) / "tokenizer.json")
    monkeypatch.setattr(kn.data.biod, "make_tokenizer", lambda cfg: FullDisk())
    rc, io = cli(capsys, *BIOD, "--out", str(tmp_path / "d"))
    assert rc == 1 and io.err.endswith("/tokenizer.json: No space left on device\n") and io.err.count("\n") == 1
    assert names(tmp_path / "d") == [".kn-unfinished", "biod.jsonl"]                # no tokenizer, no meta.json


NOTEBOOK = {"cells": [{"cell_type": "code", "metadata": {"tags": ["parameters"]}, "source": ['profile = "smoke"'],
                       "outputs": [], "execution_count": None}],
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
            "nbformat": 4, "nbformat_minor": 4}


def test_disk_full_while_papermill_writes_leaves_no_notebook(tmp_path, monkeypatch):
    import papermill
    from kn.book import run_chapter
    (tmp_path / "ch.ipynb").write_text(json.dumps(NOTEBOOK))

    def full(src, out, **kw):
        Path(out).write_text('{"cells": [')
        raise enospc(out)
    monkeypatch.setattr(papermill, "execute_notebook", full)
    with pytest.raises(OSError, match="No space left"):
        run_chapter("ch", "smoke", book=tmp_path)
    assert names(tmp_path) == ["ch.ipynb"]
    monkeypatch.setattr(papermill, "execute_notebook", lambda src, out, **kw: shutil.copy(src, out))
    assert run_chapter("ch", "smoke", output=tmp_path / "ch.smoke.ipynb", book=tmp_path) == tmp_path / "ch.smoke.ipynb"
    assert names(tmp_path) == ["ch.ipynb", "ch.smoke.ipynb"]


def started(path, parent, timeout=120):
    """Wait until `path` exists (a child of `parent` started), failing if the parent exits first."""
    t0 = time.time()
    while not path.exists():
        assert parent.poll() is None, parent.stderr.read()[-2000:]
        assert time.time() - t0 < timeout
        time.sleep(0.1)


def sigterm(parent):
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(30) == -signal.SIGTERM
    time.sleep(4)                                   # the children would have written `late` by now


def spawn(script, *args):
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"), cwd=Path(__file__).resolve().parents[1])


BOOK_CHILD = r"""
import sys
from pathlib import Path
import kn.book
root = Path(sys.argv[1])
sys.executable = str(root / "bin" / "python")       # build_book runs the jupyter-book beside it: the fake
kn.book.build_book(root)
"""


def test_sigterm_to_kn_book_stops_jupyter_book(tmp_path):
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: intro\n")
    (tmp_path / "_config.yml").write_text("parse:\n  myst_substitutions:\n    book_profile: smoke\n")
    fake = tmp_path / "bin" / "jupyter-book"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\ntouch {tmp_path}/started\nsleep 3\ntouch {tmp_path}/late\n")
    fake.chmod(0o755)
    parent = spawn(BOOK_CHILD, tmp_path)
    started(tmp_path / "started", parent)
    sigterm(parent)
    assert not (tmp_path / "late").exists()


RUN_CHILD = r"""
import sys
from pathlib import Path
from kn.book import run_chapter
book = Path(sys.argv[1])
run_chapter("slow", "smoke", output=book / "out.ipynb", book=book)
"""
SLOW_CELL = """import os, subprocess, time
open("kernel.pid", "w").write(str(os.getpid()))
subprocess.Popen(["sh", "-c", "touch started; sleep 3; touch late"])
time.sleep(60)"""


def test_sigterm_to_kn_run_stops_the_kernel_and_its_children(tmp_path):
    import psutil
    slow = {**NOTEBOOK["cells"][0], "metadata": {}, "source": [SLOW_CELL]}
    (tmp_path / "slow.ipynb").write_text(json.dumps(NOTEBOOK | {"cells": NOTEBOOK["cells"] + [slow]}))
    parent = spawn(RUN_CHILD, tmp_path)
    started(tmp_path / "started", parent)
    kernel = int((tmp_path / "kernel.pid").read_text())
    sigterm(parent)
    assert names(tmp_path) == ["kernel.pid", "slow.ipynb", "started"]       # no late, no notebook, whole or not
    assert not psutil.pid_exists(kernel) or psutil.Process(kernel).status() == psutil.STATUS_ZOMBIE


def test_truncated_tokens_npz_is_one_line_naming_it(small, tmp_path):
    from kn.data.dataset import load_encoded
    out = copy_of(small, tmp_path)
    npz = out / "tokens.npz"
    npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])
    with pytest.raises(DataError, match=rf"^data: {re.escape(repr(str(npz)))} is truncated .*--overwrite$") as e:
        load_encoded(out, "bios")
    assert "\n" not in str(e.value)


def with_config(meta, **kw):
    return meta | {"provenance": meta["provenance"] | {"config": meta["provenance"]["config"] | kw}}


@pytest.mark.parametrize("change, problem", [
    (lambda m: [m], r" is not a kn dataset's meta\.json"),
    (lambda m: m | {"provenance": None}, r": provenance: got None; allowed: an object"),
    (lambda m: m | {"kind": ["bioD"]}, r": kind: got \['bioD'\]; allowed: bioD, import"),
    (lambda m: with_config(m, n_celebrity="0"), r": provenance\.config\.n_celebrity: got '0'; allowed: an integer >= 0"),
], ids=["list", "provenance-null", "kind-list", "n_celebrity-string"])
def test_meta_json_of_the_wrong_shape_is_one_line_naming_the_field(small, tmp_path, change, problem):
    from kn.batches import load_biod, load_bios
    out = copy_of(small, tmp_path)
    meta = out / "meta.json"
    meta.write_text(json.dumps(change(json.loads(meta.read_text()))))
    for read in (load_biod, load_bios):
        with pytest.raises(DataError, match=rf"^data: {re.escape(repr(str(meta)))}{problem}") as e:
            read(str(out))
        assert "\n" not in str(e.value)


def test_model_key_typo_says_the_allowed_keys(tmp_path, capsys):
    toml = tmp_path / "run.toml"
    toml.write_text(f'data = "{tmp_path}"\nout = "{tmp_path / "o"}"\n[model]\nn_layers = 1\n')
    rc, io = cli(capsys, "train", "--config", str(toml))
    assert rc == 2 and io.err == ("kn: error: model: unknown keys ['n_layers']; allowed: arch, n_layer, n_head, "
                                  "n_embd, mlp_ratio, vocab_size, context, tie_embeddings\n")


def test_disk_full_in_a_sweep_is_one_line_exit_1(tmp_path, monkeypatch, capsys):
    """ENOSPC while `kn sweep` appends a row: one line naming the CSV, exit 1, no part of a row left."""
    import kn.results
    from kn.cli import main
    monkeypatch.setenv("KN_RESULTS_ROOT", str(tmp_path / "results"))
    monkeypatch.setenv("KN_RUNS_ROOT", str(tmp_path / "runs"))

    def full(fd, text, size, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    monkeypatch.setattr(kn.results, "_write_all", full)
    assert main(["sweep", "capacity", "--profile", "smoke"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("kn: error: ") and err[-1].endswith("grid.csv: No space left on device")
    grid = tmp_path / "results" / "capacity" / "smoke" / "grid.csv"
    assert not grid.exists() or read_rows(grid) == []
