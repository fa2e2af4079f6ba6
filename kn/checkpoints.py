"""A training run's folder (kn.train): checkpoints, the saved model and the lock.

A checkpoint is a `save_pretrained` folder plus state.pt (trainable weights, optimizer, scheduler,
RNG, step) and state.json (step, config, the data's fingerprint, the last logged loss and, last,
the sha256 of every other file), written under a temporary name and swapped in with the old one
renamed aside, so a crash at any moment leaves a complete one that `recover_checkpoint` finds.
`prepare_run` refuses settings that differ from the checkpoint's (BOOKKEEPING aside), data that
changed since (`data_fingerprint`) and a folder holding a run unless resuming or overwriting;
`run_lock` holds out/train.lock (fcntl) against a second writer; `can_resume` says whether a
folder's checkpoint continues a run with given settings.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import pickle
import shutil
from pathlib import Path

import torch

from kn.errors import DataError
from kn.locks import file_lock
from kn.results import atomic_file, read_json, renamed
from kn.train_config import TrainConfig
from kn.vocab import expand

log = logging.getLogger(__name__)


def trainable_state(model) -> dict:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def _aside(path: Path, suffix: str) -> Path:
    return path.with_name(f"{path.name}.{suffix}")


def swap_in(tmp: Path, path: Path) -> None:
    """Replace folder `path` by `tmp`: the old one is renamed aside first and deleted last, so at
    every moment one complete folder exists under path, path.tmp or path.old (recover_checkpoint)."""
    old = _aside(path, "old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def save_model(model, tokenizer, path: Path) -> None:
    """A from_pretrained folder (LoRA merged into a copy), written atomically."""
    tmp = _aside(path, "tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    to_save = expand(model) if hasattr(model, "kn_vocab") else model     # a trimmed model: the tokenizer's rows
    if hasattr(model, "merge_and_unload"):
        to_save = copy.deepcopy(model)
        base = to_save.get_base_model()
        head, emb = base.get_output_embeddings(), base.get_input_embeddings()
        if head is not None and head.weight is getattr(emb, "base_layer", emb).weight and hasattr(emb, "base_layer"):
            # The tied head was trained against the frozen embedding, not the LoRA-updated one: keep
            # it apart, or merging the embedding update would move the head too.
            head.weight = torch.nn.Parameter(head.weight.detach().clone())
            base.config.tie_word_embeddings = False
        to_save = to_save.merge_and_unload()
    to_save.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    swap_in(tmp, path)


def save_checkpoint(path: Path, model, tokenizer, opt, sched, step: int, config: dict, evals: dict,
                    fingerprint: str | None = None, loss: float | None = None, precision: dict | None = None,
                    train_s: float | None = None) -> None:
    """Model, state.pt (with the evaluations so far), then state.json (the mark of a complete
    checkpoint: the run's settings, the data's fingerprint, the last logged loss, the precision it
    runs in, its training seconds so far over every part of a resumed run, and the files' checksums)
    in path.tmp; swapped in."""
    tmp = _aside(path, "tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, tokenizer, tmp / "model")
    rng = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
    torch.save({"trainable": trainable_state(model), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "rng": rng, "step": step, "evals": {t: v.cpu() for t, v in evals.items()}}, tmp / "state.pt")
    state = {"step": step, "config": config, "data": fingerprint, "loss": loss, "precision": precision,
             "train_s": train_s, "checksum": checksums(tmp)}
    (tmp / "state.json").write_text(json.dumps(state, indent=2, default=str))
    swap_in(tmp, path)


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()        # read in chunks


def checksums(checkpoint: Path) -> dict:
    """{file: sha256} of a checkpoint's files but state.json (state.pt, model/*)."""
    return {str(p.relative_to(checkpoint)): file_sha256(p) for p in sorted(checkpoint.rglob("*"))
            if p.is_file() and p.name != "state.json"}


def check_checksums(checkpoint: Path) -> None:
    """DataError naming the files of `checkpoint` that differ from the checksums in its state.json
    (none recorded: a checkpoint from before checksums, read as it is)."""
    saved = read_state(checkpoint).get("checksum")
    if saved is None:
        log.warning("checkpoint %s has no checksums (written before them): its files are not checked", checkpoint)
        return
    now = checksums(checkpoint)
    bad = [k for k in saved if saved[k] != now.get(k)]
    if bad:
        raise DataError(f"checkpoint: {bad} in {str(checkpoint)!r} do not match the checksums in its state.json "
                        "(damaged since it was written); start again with overwrite=True (--overwrite)")


def read_state(checkpoint: Path) -> dict:
    return json.loads((checkpoint / "state.json").read_text())


def data_fingerprint(data: str | Path) -> str:
    """sha256 of what a run trains on: the tokenizer's files and tokens.npz, or for a bioD folder
    (re-rendered from its config) the tokenizer's files and meta.json's bioD config."""
    data = Path(data)
    meta = read_json(data / "meta.json") if (data / "meta.json").is_file() else {}
    files = sorted((data / "tokenizer").glob("*"))
    h = hashlib.sha256()
    if meta.get("kind") == "bioD":
        h.update(json.dumps([meta.get("biod"), meta.get("junk_ratio", 0.0)], sort_keys=True).encode())
    else:
        files.append(data / "tokens.npz")
    for p in files:
        if p.is_file():
            h.update(f"{p.name} {file_sha256(p)}\n".encode())
    return h.hexdigest()


def check_same_data(checkpoint: Path, fingerprint: str | None, data) -> None:
    """DataError if the data's fingerprint differs from the one the checkpoint recorded."""
    saved = read_state(checkpoint).get("data")
    if fingerprint is not None and saved is not None and saved != fingerprint:
        raise DataError(f"resume: the data in {str(data)!r} changed since the checkpoint (fingerprint "
                        f"{saved[:12]} -> {fingerprint[:12]}); start again with overwrite=True (--overwrite)")


def checkpoint_step(path: Path) -> int | None:
    """The step of a complete checkpoint folder (its state.json is readable), else None."""
    try:
        return int(read_state(path)["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def recover_checkpoint(path: Path) -> Path | None:
    """After a crash mid-swap: the newest complete of path, path.tmp and path.old becomes `path`, the
    rest is removed. Returns `path`, or None when there is no checkpoint; DataError for a broken one."""
    names = [path, _aside(path, "tmp"), _aside(path, "old")]
    steps = {p: checkpoint_step(p) for p in names}
    best = max((p for p in names if steps[p] is not None), key=steps.get, default=None)
    if best is None and path.exists():
        raise DataError(f"checkpoint: {str(path)!r} is incomplete (no readable state.json); "
                        "start again with overwrite=True (--overwrite)")
    if best not in (None, path):
        log.warning("recovered checkpoint %s (step %d) left by an interrupted save", best, steps[best])
        shutil.rmtree(path, ignore_errors=True)
        os.replace(best, path)
    for p in names[1:]:
        shutil.rmtree(p, ignore_errors=True)
    return None if best is None else path


def load_checkpoint(path: Path, model, opt, sched) -> tuple[int, dict]:
    """Weights, optimizer, scheduler and RNG from a checkpoint whose files match their checksums;
    returns (step, evaluations so far). The optimizer keeps its own kernel (fused or not, chosen for
    this run): the saved param groups carry the old run's."""
    try:
        state = torch.load(path / "state.pt", weights_only=False)
    except (EOFError, OSError, RuntimeError, ValueError, pickle.UnpicklingError) as e:
        raise DataError(f"checkpoint: {str(path / 'state.pt')!r} is empty or unreadable ({type(e).__name__}: "
                        f"{str(e)[:80]}); start again with overwrite=True (--overwrite)") from None
    check_checksums(path)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state["trainable"].items():
            params[name].copy_(value)
    fused = [g.get("fused") for g in opt.param_groups]
    opt.load_state_dict(state["optimizer"])
    for g, f in zip(opt.param_groups, fused):
        g["fused"] = f
    sched.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return int(state["step"]), state.get("evals", {})



# ----------------------------------------------------------------------------- run folders


RUN_FILES = ("checkpoint", "checkpoint.tmp", "checkpoint.old", "model", "model.tmp", "model.old", "metrics.jsonl",
             "train.json", "train.diff")
BOOKKEEPING = ("out", "max_steps", "log_every", "checkpoint_every", "device", "compile")   # may change on resume
CHOSEN = ("precision", "attention")   # may become "auto" on resume: the checkpoint's choice is kept (kn.precision)


def run_lock(out: Path):
    """Hold the lock on out/train.lock for the run (kn.locks); DataError if another process holds it."""
    return file_lock(out / "train.lock", wait=False, busy=f"out: another process is training in {str(out)!r} (it holds "
                     "train.lock); wait for it to finish or choose another folder")


def _flat(config: dict) -> dict:
    """A config as JSON values, one level of nesting spelled model.n_embd."""
    config = json.loads(json.dumps(config, default=str))
    return {f"{k}.{kk}" if isinstance(v, dict) else k: vv for k, v in config.items()
            for kk, vv in (v.items() if isinstance(v, dict) else [(None, v)])}


def check_same_settings(checkpoint: Path, config: dict) -> None:
    """DataError naming the settings that differ from the checkpoint's (BOOKKEEPING may differ, CHOSEN
    may become "auto"). A TrainConfig's setting renamed since the checkpoint was written is compared
    under its new name."""
    renames = {old: new for old, new in TrainConfig.RENAMED.items() if new in config and old not in config}
    saved = _flat(renamed(read_state(checkpoint)["config"], renames))
    now = _flat(config)
    changed = [k for k in saved if k.split(".")[0] not in BOOKKEEPING and saved[k] != now.get(k)
               and not (k in CHOSEN and now.get(k) == "auto")]
    if changed:
        diff = ", ".join(f"{k}: {saved[k]!r} -> {now.get(k)!r}" for k in changed)
        raise DataError(f"resume: the settings differ from the checkpoint's in {changed} ({diff}); resume with "
                        "the checkpoint's settings, or start again with overwrite=True (--overwrite)")


def prepare_run(out: Path, config: dict, resume: bool, overwrite: bool, fingerprint: str | None = None,
                data=None) -> None:
    """Make `out` ready: with overwrite, empty it of an earlier run; otherwise recover a checkpoint
    left by a crash, refuse a folder holding a run unless resuming, and refuse changed settings
    or data (`fingerprint` of the folder `data`)."""
    if overwrite:
        for name in RUN_FILES:
            p = out / name
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
        return
    checkpoint = recover_checkpoint(out / "checkpoint")
    held = f"a checkpoint at step {checkpoint_step(checkpoint)}" if checkpoint else \
        "a model" if (out / "model").exists() else None
    if held and not (resume and checkpoint):
        what = "resume=True (--resume) to continue it, or " if checkpoint else ""
        raise DataError(f"out: {str(out)!r} already holds {held}; pass {what}overwrite=True (--overwrite) "
                        "to start again")
    if checkpoint:
        check_same_settings(checkpoint, config)
        check_same_data(checkpoint, fingerprint, data)


def can_resume(out: Path, config: dict) -> bool:
    """Whether out holds a checkpoint of a run with these settings: continue it rather than start again."""
    try:
        checkpoint = recover_checkpoint(out / "checkpoint")
        if checkpoint is not None:
            check_same_settings(checkpoint, config)
    except DataError:
        return False
    return checkpoint is not None


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the metrics lines up to `step`: a killed run may have logged past its last checkpoint."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines(keepends=True)
            if line.endswith("\n") and json.loads(line)["step"] <= step]
    with atomic_file(path) as tmp:
        tmp.write_text("".join(keep))


