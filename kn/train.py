"""Training (papers.md, Part 3.1 "Models and training"): pretraining, mixed training, QA finetuning.

  pretrain  packed 512-token windows of biographies, re-shuffled every pass
  mixed     every window is all-bio or all-QA (train_people's QAs); qa_fraction of windows are QA
  finetune  QAs of train_people, one per row, loss on the answer and its closing '.', full or LoRA
            (peft: rank r on the attention's query/key/value projection, rank r' on the embedding)
A bioD folder (Part 3.3) pretrains on biographies re-rendered every epoch, junk mixed in if asked.

Training length is counted in exposures: passes over every biography (pretrain, mixed) or over
every train QA (finetune). AdamW, linear warmup then cosine to min_lr_ratio * lr. Device
placement and data parallel come from `accelerate` (`accelerate launch` works); torch.compile is
used on GPU. Precision (fp32 or bf16 autocast) and the attention kernel are chosen at the start of
a run by kn.precision (`precision`, `attention`: auto measures on the machine at hand) and
recorded in train.json and the checkpoint. With `trim_vocab` a new model (pretrain, mixed) has
rows only for the tokens its data use (kn.vocab); its saved models have the tokenizer's rows. A checkpoint (every `checkpoint_every` steps and on SIGTERM/SIGINT)
is a `save_pretrained` folder plus state.pt (trainable weights, optimizer, scheduler, RNG, step)
and state.json (step, config, the data's fingerprint, the last logged loss and, last, the sha256 of
every other file), written under a temporary name and swapped in with the old one renamed aside,
so a crash at any moment leaves a complete one that the next run recovers; `resume=True`
continues bit-exactly on CPU, and refuses settings that differ from the checkpoint's, data that
changed since (`data_fingerprint`), files that do not match their checksums, and a first logged
loss that is not finite or is MAX_RESUME_RISE above the checkpoint's (which is left as it was).
A run folder is locked (fcntl, out/train.lock) against a second writer, and a new run refuses a
folder that holds a checkpoint or a model unless `overwrite=True`. LoRA's initialisation is
drawn from the config's seed.
One loop, `fit`, trains every model of the book: `train` above, kn.dynamics' continued pretraining
(evaluation hook) and kn.bidirectional's masked LM (its own batches): all of them get the
checkpoints, resume, run-folder lock and signal handling described here.
A run can be measured along the way (`measured_curve`): trained in segments that resume, bit-identical
to one run, measured at log-spaced steps (`curve_stops`).
Entry points: `TrainConfig`, `load_config`, `train`, `fit` (with `Fit`, `Hooks`), `epoch_batches`, `accelerator`,
`train_to`, `measured_curve`.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
import pickle
import shutil
import signal
import time
import tomllib
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, fields, replace
from typing import ClassVar
from numbers import Integral, Real
from pathlib import Path

import numpy as np
import torch

from kn.curves import curve_every, curve_evaluator, curve_rows
from kn.data.biod import BioD, BioDConfig, generate_biod, junk_count, junk_docs, mix, render
from kn.data.dataset import load_encoded, read_meta
from kn.errors import DataError
from kn.models import ModelConfig, build_model, n_params, remove_mlp_bias
from kn.precision import Precision, check_setting, choose, legacy, set_attention
from kn.results import atomic_file, done, folder_path, read_json, write_json
from kn.tokenize import Encoded, equal_exposure, load_tokenizer, pack
from kn.vocab import VocabMap, expand, trim

MODES = ("pretrain", "mixed", "finetune")
IGNORE = -100
EXIT_INTERRUPTED = 75      # `kn train` exit code when a signal stopped it (sysexits EX_TEMPFAIL): checkpoint written
MAX_EXPOSURES = 100_000    # the papers' longest runs are 1000 exposures; more is a typo that would train for weeks
MAX_RESUME_RISE = 2.0      # nats: a resumed run continues its curve (bit-exactly on CPU); a first logged loss
                           # this far above the checkpoint's last (7.4x the perplexity) is a damaged state, not noise
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    data: str                          # dataset folder made by `kn data bios|import|biod` (kn.data.biod.write_biod)
    out: str                           # run folder: model/, checkpoint/, metrics.jsonl, train.json
    mode: str = "pretrain"             # pretrain | mixed | finetune
    model: ModelConfig = field(default_factory=ModelConfig)
    init: str | None = None            # finetune: the pretrained model folder
    exposures: float = 100.0           # passes over every biography (finetune: every train QA)
    qa_fraction: float = 0.8           # mixed: share of windows that are QA
    batch_size: int = 32               # windows (or QAs) per optimizer step
    window: int = 512
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup: float = 0.05               # < 1: fraction of the steps; >= 1: steps
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    lora_rank: int = 0                 # finetune: 0 = full finetune
    lora_embed_rank: int = 0
    seed: int = 0
    device: str = "auto"               # auto | cpu | cuda
    compile: str = "auto"              # auto (GPU only) | on | off
    threads: int = 1                   # CPU runs: torch threads (0 = torch's default); the count changes the curve
    precision: str = "auto"            # auto (measured: bf16 where the hardware has it, if faster) | fp32 | bf16
    attention: str = "auto"            # auto (measured) | sdpa | eager
    trim_vocab: bool = False           # pretrain, mixed: embedding and head only for the tokens the data use
    checkpoint_every: int = 0          # steps; 0 = only at the end and on SIGTERM/SIGINT
    log_every: int = 20
    max_steps: int | None = None       # stop early (e.g. to test resume); the schedule is unchanged
    curve_points: int = 0              # pretrain/mixed/finetune: about this many learning-curve points (kn.curves)
    curve_people: int = 200            # people of each group a curve point scores (a fixed sample)
    warmup_people: float = 0.0         # pretrain/mixed curriculum: share of people trained on first (0 = none)
    warmup_people_steps: float = 0.0   # share of the steps spent on them before everyone is trained on
    # settings added after runs were recorded, at the value those runs had (kn.results.same_config)
    ADDED_SETTINGS: ClassVar[dict] = {"precision": "fp32", "attention": "sdpa", "trim_vocab": False}

    def __post_init__(self):
        if isinstance(self.model, dict):
            allowed = [f.name for f in fields(ModelConfig)]
            if unknown := sorted(set(self.model) - set(allowed)):
                raise DataError(f"model: unknown keys {unknown}; allowed: {', '.join(allowed)}")
            object.__setattr__(self, "model", ModelConfig(**self.model))
        if not isinstance(self.model, ModelConfig):
            raise DataError(f"model: got {self.model!r}; allowed: a ModelConfig or a [model] table")
        check_types(self)
        if self.mode not in MODES:
            raise DataError(f"mode: got {self.mode!r}; allowed: {', '.join(MODES)}")
        if self.mode == "finetune" and not self.init:
            raise DataError("init: finetune needs the pretrained model folder (init = '.../model')")
        for name, (ok, allowed) in self.ranges().items():
            if not ok:
                raise DataError(f"{name}: got {getattr(self, name)!r}; allowed: {allowed}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise DataError(f"device: got {self.device!r}; allowed: auto, cpu, cuda")
        if self.compile not in ("auto", "on", "off"):
            raise DataError(f"compile: got {self.compile!r}; allowed: auto, on, off")
        check_setting("precision", self.precision)
        check_setting("attention", self.attention)
        if not isinstance(self.trim_vocab, bool):
            raise DataError(f"trim_vocab: got {self.trim_vocab!r}; allowed: true or false")
        if self.trim_vocab and self.mode == "finetune":
            raise DataError("trim_vocab: a finetune starts from a saved model with the tokenizer's rows; "
                            "allowed: false in finetune mode (trim the pretraining run instead)")
        if self.warmup_people and self.mode == "finetune":
            raise DataError("warmup_people: a warm-up on a subset of people is for pretrain or mixed, not finetune")
        if self.window > self.model.context:
            raise DataError(f"window: {self.window} exceeds the model context {self.model.context}")

    def ranges(self) -> dict:
        """{field: (within range, what is allowed)}."""
        return {"exposures": (0 < self.exposures <= MAX_EXPOSURES, f"a number > 0 and <= {MAX_EXPOSURES:,}"),
                "batch_size": (self.batch_size >= 1, "an integer >= 1"),
                "window": (self.window >= 8, "an integer >= 8"),
                "lr": (self.lr > 0, "a number > 0"), "qa_fraction": (0 <= self.qa_fraction < 1, "0 <= x < 1"),
                "lora_rank": (self.lora_rank >= 0, "an integer >= 0 (0 = full finetune)"),
                "lora_embed_rank": (self.lora_embed_rank >= 0, "an integer >= 0"),
                "warmup": (self.warmup >= 0, "a number >= 0 (< 1: fraction of the steps, >= 1: steps)"),
                "min_lr_ratio": (0 <= self.min_lr_ratio <= 1, "0 <= x <= 1"),
                "weight_decay": (self.weight_decay >= 0, "a number >= 0"),
                "grad_clip": (self.grad_clip >= 0, "a number > 0, or 0 for no clipping"),
                "seed": (self.seed >= 0, "an integer >= 0"), "log_every": (self.log_every >= 1, "an integer >= 1"),
                "threads": (self.threads >= 0, "an integer >= 0 (0 = torch's default)"),
                "checkpoint_every": (self.checkpoint_every >= 0, "an integer >= 0 (0 = only at the end)"),
                "max_steps": (self.max_steps is None or self.max_steps >= 1, "an integer >= 1, or unset"),
                "curve_points": (self.curve_points >= 0, "an integer >= 0 (0 = no learning curve)"),
                "curve_people": (self.curve_people >= 1, "an integer >= 1"),
                "warmup_people": (0 <= self.warmup_people < 1, "0 <= x < 1 (0 = no warm-up on a subset)"),
                "warmup_people_steps": (0 <= self.warmup_people_steps < 1, "0 <= x < 1")}


KINDS = {"int": ("batch_size", "window", "lora_rank", "lora_embed_rank", "seed", "checkpoint_every", "log_every",
                 "max_steps", "threads", "curve_points", "curve_people"),
         "number": ("exposures", "qa_fraction", "lr", "min_lr_ratio", "warmup", "weight_decay", "grad_clip",
                    "warmup_people", "warmup_people_steps"),
         "str": ("data", "out", "mode", "device", "compile", "init", "precision", "attention")}
OPTIONAL = ("init", "max_steps")


def check_types(cfg: TrainConfig) -> None:
    """DataError naming the first field whose value is not an integer / finite number / string."""
    test = {"int": lambda v: isinstance(v, Integral) and not isinstance(v, bool),
            "number": lambda v: isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v),
            "str": lambda v: isinstance(v, (str, os.PathLike))}
    for kind, names in KINDS.items():
        for name in names:
            v = getattr(cfg, name)
            if not (test[kind](v) or (v is None and name in OPTIONAL)):
                allowed = {"int": "an integer", "number": "a finite number", "str": "a string"}[kind]
                raise DataError(f"{name}: got {v!r}; allowed: {allowed}")


def load_config(path: str | Path, **overrides) -> TrainConfig:
    """A TrainConfig from a TOML file (top-level keys plus a [model] table)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"config: no such file {str(path)!r}")
    try:
        raw = tomllib.loads(path.read_text()) | overrides
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"config: {str(path)!r} is not valid TOML ({e})") from None
    known = {f.name for f in fields(TrainConfig)}
    unknown = set(raw) - known
    if unknown:
        raise DataError(f"config: unknown keys {sorted(unknown)}; allowed: {sorted(known)}")
    try:
        return TrainConfig(**raw)
    except TypeError as e:
        raise DataError(f"config: {e}") from None


# ----------------------------------------------------------------------------- data


class Batches:
    """Deterministic batches: the rows of step t are a function of (seed, t) only, so a resumed run
    sees exactly the data an uninterrupted one would.

    A bioD folder (meta.json "kind": "bioD", written by kn.data.biod.write_biod) is
    re-rendered every epoch (sentence order re-drawn), with fresh junk at its junk_ratio; one
    epoch is then one exposure of every useful biography. With warmup_people (a curriculum, as
    the subset warm-up of Zucchet et al. 2025), the first warmup_people_steps of the steps train on
    that share of the people only (their bios and, mixed, their train QAs), drawn by seed; the
    number of steps is the same.
    """

    def __init__(self, cfg: TrainConfig, eos_id: int, pad_id: int):
        self.cfg, self.eos, self.pad = cfg, eos_id, pad_id
        self.biod, self.junk_ratio = load_biod(cfg.data) or (None, 0.0)
        if self.biod is not None and cfg.mode != "pretrain":
            raise DataError(f"mode: a bioD folder trains in pretrain mode only, got {cfg.mode!r}")
        if cfg.mode == "finetune":
            self.bios = None
        else:
            self.bios = self.docs(0) if self.biod is not None else load_bios(cfg.data)
        qa = load_encoded(cfg.data, "qa") if cfg.mode != "pretrain" else None
        self.qa = train_qas(cfg.data, qa) if qa is not None else None
        if cfg.mode == "finetune":
            self.rows_per_epoch = len(self.qa)
        else:
            n_bio = int(self.bios.lengths().sum() + len(self.bios)) // cfg.window
            self.n_bio = n_bio
            self.rows_per_epoch = int(round(n_bio / (1 - cfg.qa_fraction))) if cfg.mode == "mixed" else n_bio
        if self.rows_per_epoch < cfg.batch_size:
            raise DataError(f"batch_size: {cfg.batch_size} exceeds the {self.rows_per_epoch} rows of one pass over the data")
        self.steps_per_epoch = self.rows_per_epoch // cfg.batch_size
        self.total_steps = max(1, int(round(cfg.exposures * self.steps_per_epoch)))
        self._batch = epoch_batches(self.epoch_rows, self.steps_per_epoch, cfg.batch_size)
        self.warm_steps = int(round(cfg.warmup_people_steps * self.total_steps)) if cfg.warmup_people else 0
        if self.warm_steps:
            self._warm = self.subset_batches(cfg.warmup_people)

    def subset_batches(self, share: float):
        """step -> batch over round(share * people) people drawn by seed: the curriculum's warm-up."""
        if self.biod is not None:
            raise DataError("warmup_people: a warm-up on a subset of people needs biographies, not a bioD folder")
        people = np.unique(self.bios.person)
        keep = np.random.default_rng([self.cfg.seed, 6]).permutation(people)[:max(1, round(share * len(people)))]
        bios = self.bios.take(np.flatnonzero(np.isin(self.bios.person, keep)))
        qa = None if self.qa is None else self.qa.take(np.flatnonzero(np.isin(self.qa.person, keep)))
        if qa is not None and not len(qa):
            raise DataError(f"warmup_people: {share:g} of the people holds no train_people; allowed: a larger share")
        n_bio = int(bios.lengths().sum() + len(bios)) // self.cfg.window
        rows = int(round(n_bio / (1 - self.cfg.qa_fraction))) if self.cfg.mode == "mixed" else n_bio
        if rows < self.cfg.batch_size:
            raise DataError(f"warmup_people: {share:g} of the people makes {rows} rows a pass, fewer than batch_size "
                            f"{self.cfg.batch_size}; allowed: a larger share")
        return epoch_batches(lambda e: self.rows(e, bios, qa, rows), rows // self.cfg.batch_size, self.cfg.batch_size)

    def epoch_rows(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(input ids [R, T], labels [R, T]) of one pass, shuffled by (seed, epoch)."""
        return self.rows(epoch, self.bios, self.qa, self.rows_per_epoch)

    def rows(self, epoch: int, bios: Encoded | None, qa: Encoded | None, rows_per_epoch: int):
        """epoch_rows of the given bios and train QAs: rows_per_epoch rows (finetune: every QA)."""
        cfg, seed = self.cfg, self.cfg.seed * 100_003 + epoch
        if cfg.mode == "finetune":
            ids, labels = qa_rows(qa, self.eos, self.pad)
            order = np.random.default_rng([seed, 4]).permutation(len(ids))
            return ids[order], labels[order]
        bio = pack(self.docs(epoch) if self.biod is not None else bios, self.eos, cfg.window, seed)
        if cfg.mode == "pretrain":
            return bio, bio
        n_qa = rows_per_epoch - len(bio)
        qa_windows, k = [], 0
        while sum(len(w) for w in qa_windows) < n_qa:   # repack train QAs until there are enough
            qa_windows.append(pack(qa, self.eos, cfg.window, seed * 7919 + k, drop_last=False))
            k += 1
        rows = np.concatenate([bio, *qa_windows])[: rows_per_epoch]
        rows = rows[np.random.default_rng([seed, 5]).permutation(len(rows))]
        return rows, rows

    def docs(self, epoch: int) -> Encoded:
        """bioD: the documents of one epoch (useful, plus junk), without their trailing <eos>,
        which `pack` puts back: no double EOS."""
        useful = render(self.biod, epoch)
        if self.junk_ratio > 0:
            cfg, seed = self.biod.cfg, self.cfg.seed * 100_003 + epoch
            junk = junk_docs(cfg, junk_count(cfg, useful.n_tokens, self.junk_ratio) + 1, epoch)
            useful = mix(useful, junk, self.junk_ratio, seed)
        keep = np.ones(len(useful.ids), dtype=bool)
        keep[useful.offsets[1:] - 1] = False                       # every document's last token is <eos>
        return Encoded(useful.ids[keep], useful.offsets - np.arange(len(useful.offsets)), useful.person)

    def __call__(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        return self._warm(step) if step < self.warm_steps else self._batch(step)


def epoch_batches(epoch_rows, steps_per_epoch: int, batch_size: int):
    """step -> (ids, labels): rows i*B to (i+1)*B of epoch_rows(epoch), (epoch, i) = divmod(step,
    steps_per_epoch); an epoch's rows are built once, when one of its steps is first asked for."""
    held = {}

    def batch(step: int) -> tuple[np.ndarray, np.ndarray]:
        epoch, i = divmod(step, steps_per_epoch)
        if epoch not in held:
            held.clear()
            held[epoch] = epoch_rows(epoch)
        ids, labels = held[epoch]
        return ids[i * batch_size: (i + 1) * batch_size], labels[i * batch_size: (i + 1) * batch_size]
    return batch


def load_biod(data: str) -> tuple[BioD, float] | None:
    """(bioD, junk_ratio) of a folder whose meta.json has "kind": "bioD"; None for other folders."""
    meta = read_meta(data) if (Path(data) / "meta.json").is_file() else {}
    if meta.get("kind") != "bioD":
        return None
    return generate_biod(BioDConfig(**meta["biod"])), float(meta.get("junk_ratio", 0.0))


def load_bios(data: str) -> Encoded:
    """The biographies one pass trains on. In a celebrity dataset (Result 6) every person is seen
    equally often: a minority person's one biography is repeated as often as a celebrity has
    biographies (kn.tokenize.equal_exposure)."""
    bios = load_encoded(data, "bios")
    config = read_meta(data)["provenance"]["config"]
    return equal_exposure(bios) if config.get("n_celebrity") else bios


def train_qas(data: str, qa: Encoded) -> Encoded:
    """The QA documents of train_people (qa.jsonl's split "train": not the validation slice)."""
    from kn.data.records import read_jsonl
    keep = np.array([r["split"] == "train" for r in read_jsonl(Path(data) / "qa.jsonl")])
    if len(keep) != len(qa):
        raise DataError(f"data: qa.jsonl and tokens.npz disagree ({len(keep)} vs {len(qa)} QAs); rebuild the dataset")
    idx = np.nonzero(keep)[0]
    if not len(idx):
        raise DataError("data: no QA of train_people (train_fraction is 0)")
    return qa.take(idx)


def qa_rows(qa: Encoded, eos_id: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """One QA per row after an EOS, right-padded; labels only on the answer and the token after it."""
    lengths = qa.lengths()
    width = int(lengths.max()) + 1
    ids = np.full((len(qa), width), pad_id, dtype=np.int64)
    labels = np.full((len(qa), width), IGNORE, dtype=np.int64)
    ids[:, 0] = eos_id
    cols = np.arange(width - 1)
    inside = cols[None, :] < lengths[:, None]
    ids[:, 1:][inside] = qa.ids
    s, e = qa.spans["answer"][:, 0, 0], qa.spans["answer"][:, 0, 1]
    answer = (cols[None, :] >= s[:, None]) & (cols[None, :] <= np.minimum(e, lengths - 1)[:, None])
    labels[:, 1:][answer] = ids[:, 1:][answer]
    return ids, labels


# ----------------------------------------------------------------------------- model and optimizer


def lr_lambda(total_steps: int, warmup: float = 0.05, min_lr_ratio: float = 0.1):
    """step -> lr multiplier: linear warmup (warmup < 1: that fraction of the steps; >= 1: steps), then
    a cosine from 1 down to min_lr_ratio at total_steps."""
    warm = max(1, int(warmup * total_steps if warmup < 1 else warmup))

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = min(1.0, (step - warm) / max(1, total_steps - warm))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))
    return f


def make_model(cfg: TrainConfig, vocab_size: int, vocab: VocabMap | None = None):
    """A new model (pretrain, mixed; cut to `vocab` when given) or the init model (finetune),
    LoRA-wrapped if asked."""
    if cfg.mode != "finetune":
        model = build_model(replace(cfg.model, vocab_size=vocab_size), seed=cfg.seed)
        return trim(model, vocab) if vocab is not None else model
    from transformers import AutoModelForCausalLM
    if not Path(cfg.init, "config.json").is_file():
        raise DataError(f"init: no model (config.json) in {cfg.init!r}")
    model = AutoModelForCausalLM.from_pretrained(cfg.init, attn_implementation="sdpa")
    if getattr(model.config, "intermediate_size", 1) == 0:
        remove_mlp_bias(model)          # attention-only stays attention-only when finetuned
    if cfg.lora_rank:
        model = add_lora(model, cfg.lora_rank, cfg.lora_embed_rank, seed=cfg.seed)
    return model


def vocab_in_use(batches: Batches, eos_id: int, vocab_size: int) -> VocabMap | None:
    """The map of the tokens a pretrain or mixed run trains on (biographies, train QAs, EOS); None
    when it uses every token."""
    if batches.biod is not None:
        raise DataError("trim_vocab: a bioD folder is rendered anew every epoch, so the tokens it uses are not "
                        "known up front; allowed: false for bioD data")
    arrays = [batches.bios.ids, [eos_id]] + ([batches.qa.ids] if batches.qa is not None else [])
    vocab = VocabMap.of(arrays, vocab_size)
    return vocab if len(vocab.used) < vocab_size else None


def add_lora(model, rank: int, embed_rank: int = 0, seed: int = 0):
    """peft LoRA: rank `rank` on the attention's query/value (GPT-NeoX fuses q, k, v in one matrix),
    rank `embed_rank` on the input embedding; the adapters' random init is drawn from `seed`
    (torch's global RNG is left as it was)."""
    from peft import LoraConfig, get_peft_model
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    attn = ["query_key_value"] if "query_key_value" in names else ["q_proj", "v_proj"]
    emb = "embed_in" if "embed_in" in names else "embed_tokens"
    targets = attn + ([emb] if embed_rank else [])
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets, lora_dropout=0.0,
                        rank_pattern={emb: embed_rank} if embed_rank else {},
                        alpha_pattern={emb: 2 * embed_rank} if embed_rank else {})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(model, config)


def optimizer_for(model, lr: float, weight_decay: float = 0.1) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases, norms and embeddings."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 and "embed" not in name else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = torch.cuda.is_available() and all(p.is_cuda for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6, fused=fused or None)


def accelerator(device: str = "auto"):
    """The Accelerator of a run on device auto | cpu | cuda. Its own mixed precision is off: the
    run's autocast is kn.precision's choice (training_step)."""
    from accelerate import Accelerator
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    return Accelerator(cpu=not use_cuda, mixed_precision="no")


# ----------------------------------------------------------------------------- checkpoints


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
        import copy
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
                    fingerprint: str | None = None, loss: float | None = None, precision: dict | None = None) -> None:
    """Model, state.pt (with the evaluations so far), then state.json (the mark of a complete
    checkpoint: the run's settings, the data's fingerprint, the last logged loss, the precision it
    runs in and the files' checksums) in path.tmp; swapped in."""
    tmp = _aside(path, "tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, tokenizer, tmp / "model")
    rng = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
    torch.save({"trainable": trainable_state(model), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "rng": rng, "step": step, "evals": {t: v.cpu() for t, v in evals.items()}}, tmp / "state.pt")
    state = {"step": step, "config": config, "data": fingerprint, "loss": loss, "precision": precision,
             "checksum": checksums(tmp)}
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
    saved = _state(checkpoint).get("checksum")
    if saved is None:
        log.warning("checkpoint %s has no checksums (written before them): its files are not checked", checkpoint)
        return
    now = checksums(checkpoint)
    bad = [k for k in saved if saved[k] != now.get(k)]
    if bad:
        raise DataError(f"checkpoint: {bad} in {str(checkpoint)!r} do not match the checksums in its state.json "
                        "(damaged since it was written); start again with overwrite=True (--overwrite)")


def _state(checkpoint: Path) -> dict:
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
    saved = _state(checkpoint).get("data")
    if fingerprint is not None and saved is not None and saved != fingerprint:
        raise DataError(f"resume: the data in {str(data)!r} changed since the checkpoint (fingerprint "
                        f"{saved[:12]} -> {fingerprint[:12]}); start again with overwrite=True (--overwrite)")


def checkpoint_step(path: Path) -> int | None:
    """The step of a complete checkpoint folder (its state.json is readable), else None."""
    try:
        return int(_state(path)["step"])
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
    returns (step, evaluations so far)."""
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
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return int(state["step"]), state.get("evals", {})


# ----------------------------------------------------------------------------- run folders


RUN_FILES = ("checkpoint", "checkpoint.tmp", "checkpoint.old", "model", "model.tmp", "model.old", "metrics.jsonl",
             "train.json", "train.diff")
BOOKKEEPING = ("out", "max_steps", "log_every", "checkpoint_every", "device", "compile")   # may change on resume


@contextmanager
def run_lock(out: Path):
    """Hold an fcntl lock on out/train.lock for the run; DataError if another process holds it."""
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / "train.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DataError(f"out: another process is training in {str(out)!r} (it holds train.lock); "
                        "wait for it to finish or choose another folder") from None
    try:
        yield
    finally:
        os.close(fd)


def _flat(config: dict) -> dict:
    """A config as JSON values, one level of nesting spelled model.n_embd."""
    config = json.loads(json.dumps(config, default=str))
    return {f"{k}.{kk}" if isinstance(v, dict) else k: vv for k, v in config.items()
            for kk, vv in (v.items() if isinstance(v, dict) else [(None, v)])}


def check_same_settings(checkpoint: Path, config: dict) -> None:
    """DataError naming the settings that differ from the checkpoint's (BOOKKEEPING may differ)."""
    saved = _flat(_state(checkpoint)["config"])
    now = _flat(config)
    changed = [k for k in saved if k.split(".")[0] not in BOOKKEEPING and saved[k] != now.get(k)]
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


def check_vocab(batches: "Batches", vocab_size: int) -> None:
    """DataError if the token ids do not fit the tokenizer (tokens.npz from another dataset)."""
    for name in ("bios", "qa"):
        enc = getattr(batches, name)
        if enc is not None and len(enc.ids) and int(enc.ids.max()) >= vocab_size:
            raise DataError(f"data: {name} token ids reach {int(enc.ids.max())} but the tokenizer has {vocab_size} "
                            "tokens: tokens.npz and tokenizer/ come from different datasets; rebuild the folder")


class StopFlag:
    """Turns SIGTERM/SIGINT into a flag the loop checks after each step (then checkpoints)."""

    def __init__(self):
        self.set, self._old = False, {}

    def __enter__(self):
        if _main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.set = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


# ----------------------------------------------------------------------------- the loop


def flops_per_token(cfg: ModelConfig, non_embedding_params: int, context: int) -> float:
    """Training FLOPs per token: 6N plus attention 12 * layers * width * context (PaLM, App. B)."""
    return 6 * non_embedding_params + 12 * cfg.n_layer * cfg.n_embd * context


def use_compile(setting: str, device) -> bool:
    """Whether a run compiles its model: "on", or "auto" on a GPU. On the CPU, compiling the cpu
    profile's models took 54-100 s for 1.03-1.19x (benchmarks/throughput.py): not by default."""
    return setting == "on" or (setting == "auto" and torch.device(device).type == "cuda")


@contextmanager
def cpu_threads(n: int, device):
    """torch's threads set to n for a CPU run (0: left as they are), restored afterwards. One thread
    by default: on a 2-core machine shared with other jobs, two threads ran the cpu profile's
    models 8-40x slower (benchmarks/throughput.py), and a fixed count keeps the curve the same
    from machine to machine (the count changes float sums)."""
    before = torch.get_num_threads()
    if n and torch.device(device).type == "cpu":
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def training_step(model, opt, sched, acc, grad_clip: float = 1.0, compile: bool = False,
                  precision: Precision | None = None):
    """One optimizer step as a function (x, labels, mask) -> detached loss, under `precision`'s
    autocast (None: fp32); nothing syncs the host."""
    forward = torch.compile(model) if compile else model
    precision = precision or Precision("fp32", "sdpa", "")

    def step(x, y, mask=None):
        with precision.autocast(acc.device):
            loss = forward(input_ids=x, attention_mask=mask, labels=y).loss
        acc.backward(loss)
        if grad_clip:
            acc.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach().clone()   # a fresh scalar: ModernBERT's detached loss kept every step's activations alive
    return step


@dataclass(frozen=True)
class Fit:
    """Plain values of one optimisation run: AdamW, schedule (kn.train.lr_lambda) and bookkeeping."""
    total_steps: int
    lr: float
    warmup: float = 0.05               # < 1: fraction of the steps; >= 1: steps
    min_lr_ratio: float = 0.1          # 1.0: constant lr after the warmup
    weight_decay: float = 0.1
    grad_clip: float = 1.0             # 0: no clipping
    compile: str = "auto"              # auto (GPU only) | on | off
    threads: int = 1                   # CPU: torch threads for the run (0 = torch's default), then restored
    precision: str = "auto"            # kn.precision: auto | fp32 | bf16
    attention: str = "auto"            # kn.precision: auto | sdpa | eager
    checkpoint_every: int = 0          # steps; 0 = only at the end and on SIGTERM/SIGINT
    log_every: int = 20
    max_steps: int | None = None       # stop early; the schedule is unchanged

    def __post_init__(self):
        check_setting("precision", self.precision)
        check_setting("attention", self.attention)


@dataclass(frozen=True)
class Hooks:
    """What a run adds to plain next-token training: measurements along the way (kn.dynamics) and an
    attention mask over padding (finetune QAs, masked LM)."""
    evaluate: Callable | None = None   # model -> tensor, on theta_t (before step t's update), no grad
    eval_every: int = 1                # evaluate at steps t % eval_every == 0 and at total_steps
    pad_id: int | None = None          # attention_mask = ids != pad_id


class Interrupted(Exception):
    """A run stopped by SIGTERM/SIGINT after writing its checkpoint: running it again resumes."""


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True, overwrite: bool = False) -> dict:
    """Run one training job; returns the summary also written to out/train.json. A folder holding
    a checkpoint or a model needs resume=True (same settings) or overwrite=True (starts again)."""
    acc = accelerator(cfg.device)
    tokenizer = load_tokenizer(Path(cfg.data) / "tokenizer") if cfg.mode != "finetune" else load_tokenizer(cfg.init)
    batches = Batches(cfg, tokenizer.eos_token_id, tokenizer.pad_token_id)
    check_vocab(batches, len(tokenizer))
    vocab = vocab_in_use(batches, tokenizer.eos_token_id, len(tokenizer)) if cfg.trim_vocab else None
    model = make_model(cfg, len(tokenizer), vocab)
    fpt = flops_per_token(_config_of(model), n_params(model, trainable_only=False)["non_embedding"], cfg.window)
    spec = Fit(batches.total_steps, cfg.lr, cfg.warmup, cfg.min_lr_ratio, cfg.weight_decay, cfg.grad_clip,
               cfg.compile, cfg.threads, cfg.precision, cfg.attention, cfg.checkpoint_every, cfg.log_every,
               cfg.max_steps)
    hooks = Hooks(pad_id=tokenizer.pad_token_id if cfg.mode == "finetune" else None)
    if every := curve_every(batches.total_steps, cfg.curve_points):
        if batches.biod is not None:
            raise DataError("curve_points: learning curves score QAs; a bioD folder has none (set curve_points = 0)")
        evaluate = curve_evaluator(cfg.data, cfg.curve_people, tokenizer.eos_token_id, tokenizer.pad_token_id, cfg.seed)
        hooks = replace(hooks, evaluate=(lambda m: evaluate(expand(m))) if vocab else evaluate, eval_every=every)
    s = fit(model, vocab.batches(batches) if vocab else batches, spec, cfg.out, asdict(cfg), tokenizer, acc, hooks,
            resume, overwrite, progress, cfg.mode, data=cfg.data)
    summary = {"mode": cfg.mode, **{k: s[k] for k in ("steps", "total_steps", "interrupted", "final_loss",
                                                      "tokens_per_s")},
               "n_params": n_params(expand(model)) if vocab else s["n_params"],     # as saved: the tokenizer's rows
               "vocab": vocab.record() if vocab else {"tokenizer": len(tokenizer), "trimmed": False},
               "flops_per_token": fpt, "mfu": mfu(s["tokens_per_s"] * fpt, acc.device),
               **{k: s[k] for k in ("precision", "device", "world_size", "history")}}
    if every:
        summary["curve"] = curve_rows(s["evals"])
    if acc.is_main_process:
        write_json(Path(cfg.out) / "train.json", config=asdict(cfg), seed=cfg.seed, wall_time=s["wall_time"], **summary)
    return summary


def fit(model, batches, spec: Fit, out: str | Path, config: dict, tokenizer, acc, hooks: Hooks = Hooks(),
        resume: bool = False, overwrite: bool = False, progress: bool = True, desc: str = "train",
        data: str | Path | None = None) -> dict:
    """Train `model` on batches(step) -> (ids [B, T], labels [B, T]) in run folder `out`, locked for
    the run. `config` holds the run's settings: a resumed run must have the same (BOOKKEEPING
    aside), and the same data when `data` names their folder. A folder holding a checkpoint or a
    model needs resume=True or overwrite=True. Returns steps, total_steps, interrupted, final_loss,
    tokens_per_s, n_params, device, world_size, history (the logged steps of this call), wall_time
    and evals (step -> tensor, with hooks.evaluate)."""
    out = folder_path(out, "out")
    with run_lock(out) if acc.is_main_process else nullcontext(), cpu_threads(spec.threads, acc.device):
        fingerprint = data_fingerprint(data) if data is not None and acc.is_main_process else None
        if acc.is_main_process:
            prepare_run(out, config, resume, overwrite, fingerprint, data)
        acc.wait_for_everyone()
        checkpoint = out / "checkpoint" if resume and checkpoint_step(out / "checkpoint") is not None else None
        return _fit(model, batches, spec, out, config, tokenizer, acc, hooks, checkpoint, progress, desc, fingerprint)


def check_resumed_loss(loss: float, before: float | None, start: int, step: int) -> None:
    """DataError if the first logged loss after resuming at `start` is not finite or is more than
    MAX_RESUME_RISE above `before`, the checkpoint's last logged loss."""
    if math.isfinite(loss) and (before is None or loss <= before + MAX_RESUME_RISE):
        return
    was = "none logged" if before is None else f"{before:.4g}"
    raise DataError(f"resume: the loss over steps {start + 1}-{step} is {loss:.4g} against {was} before the checkpoint "
                    f"at step {start} (allowed: finite, at most {MAX_RESUME_RISE:g} nats more), so its state is "
                    "damaged; the checkpoint is left as it was; start again with overwrite=True (--overwrite)")


def _fit(model, batches, spec: Fit, out: Path, config: dict, tokenizer, acc, hooks: Hooks, checkpoint: Path | None,
         progress: bool, desc: str, fingerprint: str | None = None) -> dict:
    """The loop of `fit`, in a prepared and locked folder, from `checkpoint` or from step 0. After a
    resume, no checkpoint is written before the first logged loss passed check_resumed_loss."""
    from tqdm.auto import tqdm

    model = model.to(acc.device)
    opt = optimizer_for(model, spec.lr, spec.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(spec.total_steps, spec.warmup, spec.min_lr_ratio))
    start, evals, last_loss = 0, {}, None
    rank, world = acc.process_index, acc.num_processes
    if checkpoint is not None:
        start, evals = load_checkpoint(checkpoint, model, opt, sched)
        last_loss = _state(checkpoint).get("loss")
        precision = resumed_precision(_state(checkpoint), spec, acc.device)
        if acc.is_main_process:
            truncate_metrics(out / "metrics.jsonl", start)
        log.info("resumed %s at step %d", out, start)
    else:
        precision = run_precision(model, _tensors(batches(0), rank, world, acc.device, hooks.pad_id), spec, acc)
        if acc.is_main_process:
            (out / "metrics.jsonl").write_text("")
    set_attention(model, precision.attention)
    log.info("%s: %s (%s)", out, precision.name, precision.reason)
    model, opt = acc.prepare(model, opt)
    raw = acc.unwrap_model(model)
    step_fn = training_step(model, opt, sched, acc, spec.grad_clip, use_compile(spec.compile, acc.device), precision)
    end = min(spec.total_steps, spec.max_steps or spec.total_steps)

    model.train()
    t_start = time.perf_counter()
    loss_sum, tokens_done, n_logged, window_t0 = torch.zeros((), device=acc.device), 0, 0, time.perf_counter()
    history, unchecked = [], checkpoint is not None            # the first loss after a resume is checked
    bar = tqdm(total=end, initial=start, disable=not (progress and acc.is_main_process), desc=desc, unit="step")
    with StopFlag() as stop:
        step = start
        while step < end and not stop.set:
            if hooks.evaluate and step % hooks.eval_every == 0:
                evals[step] = _evaluate(model, acc, hooks.evaluate, precision)
            x, y, mask = _tensors(batches(step), rank, world, acc.device, hooks.pad_id)
            loss_sum += step_fn(x, y, mask)
            tokens_done += int(x.numel()) * world
            n_logged += 1
            step += 1
            if step % spec.log_every == 0 or step == end:
                mean = (loss_sum / n_logged).item()                       # the one host sync per log
                if unchecked:
                    check_resumed_loss(mean, last_loss, start, step)
                    unchecked = False
                last_loss = mean
                dt = time.perf_counter() - window_t0
                rec = {"step": step, "loss": mean, "lr": sched.get_last_lr()[0], "tokens_per_s": tokens_done / dt,
                       "elapsed_s": time.perf_counter() - t_start}
                history.append(rec)
                if acc.is_main_process:
                    with open(out / "metrics.jsonl", "a") as f:
                        f.write(json.dumps(rec) + "\n")
                bar.set_postfix(loss=f"{mean:.3f}", tok_s=f"{rec['tokens_per_s']:,.0f}")
                loss_sum.zero_(); tokens_done, n_logged, window_t0 = 0, 0, time.perf_counter()
            bar.update(1)
            if acc.is_main_process and spec.checkpoint_every and step % spec.checkpoint_every == 0 and step < end \
                    and not unchecked:
                save_checkpoint(out / "checkpoint", raw, tokenizer, opt, sched, step, config, evals, fingerprint,
                                last_loss, precision.record())
        interrupted = stop.set and step < end
    bar.close()
    if unchecked and n_logged:                                  # stopped before the first log after a resume
        check_resumed_loss((loss_sum / n_logged).item(), last_loss, start, step)
    if hooks.evaluate and step == spec.total_steps:
        evals[step] = _evaluate(model, acc, hooks.evaluate, precision)
    wall = time.perf_counter() - t_start
    if acc.is_main_process:
        save_checkpoint(out / "checkpoint", raw, tokenizer, opt, sched, step, config, evals, fingerprint, last_loss,
                        precision.record())
        if not interrupted:
            save_model(raw, tokenizer, out / "model")
    if interrupted:
        log.info("stopped by signal at step %d; resume with resume=True", step)
    tok_s = float(np.mean([h["tokens_per_s"] for h in history[1:]] or [h["tokens_per_s"] for h in history] or [0.0]))
    summary = {"steps": step, "total_steps": spec.total_steps, "interrupted": interrupted,
               "final_loss": history[-1]["loss"] if history else None, "tokens_per_s": tok_s,
               "n_params": n_params(raw), "precision": precision.record(), "device": str(acc.device),
               "world_size": world, "history": history, "wall_time": wall}
    return summary | ({"evals": evals} if hooks.evaluate else {})


def _tensors(batch: tuple, rank: int, world: int, device, pad_id: int | None) -> tuple:
    """(x, labels, attention mask or None) of this rank's rows (data parallel) of batch (ids, labels)."""
    ids, labels = batch[0][rank::world], batch[1][rank::world]
    x = torch.from_numpy(ids).to(device, non_blocking=True).long()
    y = torch.from_numpy(labels).to(device, non_blocking=True).long()
    return x, y, None if pad_id is None else x != pad_id


def run_precision(model, batch: tuple, spec: Fit, acc) -> Precision:
    """kn.precision.choose on the main process, the same for every process of a data-parallel run."""
    choice = [choose(model, batch, spec.precision, spec.attention, acc.device) if acc.is_main_process else None]
    if acc.num_processes > 1:
        from accelerate.utils import broadcast_object_list
        broadcast_object_list(choice)
    return choice[0]


def resumed_precision(state: dict, spec: Fit, device) -> Precision:
    """The precision a checkpoint's run chose (kn.precision.legacy when it records none); DataError
    when the run sets another (auto allows any: a resumed run continues in what it ran in)."""
    p = Precision(**state["precision"]) if state.get("precision") else legacy(device)
    if spec.precision not in ("auto", p.dtype) or spec.attention not in ("auto", p.attention):
        raise DataError(f"resume: the checkpoint ran in {p.name}, which precision={spec.precision!r}, "
                        f"attention={spec.attention!r} exclude; resume with settings that allow it, or start "
                        "again with overwrite=True (--overwrite)")
    return p


def _evaluate(model, acc, evaluate, precision: Precision):
    """evaluate(model) in eval mode, under the run's autocast, without gradients."""
    model.eval()
    with torch.no_grad(), precision.autocast(acc.device):
        value = evaluate(model)
    model.train()
    return value


def stop_if_interrupted(summary: dict, out: str | Path) -> dict:
    """The summary of a finished `fit`; Interrupted if a signal stopped it (its checkpoint is written)."""
    if summary["interrupted"]:
        raise Interrupted(f"stopped by a signal at step {summary['steps']} of {summary['total_steps']}; "
                          f"run again to resume from the checkpoint in {str(out)!r}")
    return summary


def train_to(cfg: TrainConfig, stop: int | None = None) -> dict:
    """The run of cfg trained to `stop` steps (None: to the end), resuming what is there; its train.json."""
    c = replace(cfg, max_steps=stop)
    return done(Path(c.out) / "train.json", c) or stop_if_interrupted(train(c, resume=True, progress=False), c.out)


def curve_stops(total_steps: int, n: int) -> list[int]:
    """n optimizer steps, log-spaced from total/2^(n-1)... up to total_steps (the last), distinct."""
    return sorted({max(1, int(round(total_steps / 2 ** (n - 1 - i)))) for i in range(n)})


def measured_curve(cfg: TrainConfig, n: int, measure: Callable[[], float], path: str | Path, config: dict) -> list:
    """[[step, measure()], ...] at curve_stops(total, n) but the last (the caller measures the finished
    run), the run of cfg trained to each stop in turn; kept in `path` (with `config`) so that a stopped
    run keeps its stops. DataError if the run is already past a stop that is not measured."""
    path = Path(path)
    curve = read_json(path)["curve"] if path.is_file() else []
    tok = load_tokenizer(Path(cfg.data) / "tokenizer")
    total = Batches(cfg, tok.eos_token_id, tok.pad_token_id).total_steps
    for stop in curve_stops(total, n)[:-1]:
        if stop > (curve[-1][0] if curve else 0):
            if (checkpoint_step(Path(cfg.out) / "checkpoint") or 0) > stop:
                raise DataError(f"curve: the run in {cfg.out!r} is past step {stop} and cannot be measured there; "
                                "remove the folder to train it again")
            train_to(cfg, stop)
            curve.append([stop, measure()])
            write_json(path, config=config, curve=curve)
    return curve


def _config_of(model) -> ModelConfig:
    """Layers and width of a loaded model (what the FLOP count needs)."""
    c = model.config
    return ModelConfig(n_layer=c.num_hidden_layers, n_head=c.num_attention_heads, n_embd=c.hidden_size,
                       mlp_ratio=c.intermediate_size / c.hidden_size, vocab_size=c.vocab_size,
                       context=c.max_position_embeddings)


PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}  # dense bf16


def mfu(flops_per_s: float, device) -> float | None:
    """Model FLOPs utilisation against the bf16 dense peak of the GPU (None on CPU or unknown GPUs)."""
    if torch.device(device).type != "cuda":
        return None
    name = torch.cuda.get_device_name(torch.device(device))
    peak = next((v for k, v in PEAK_FLOPS.items() if k in name), None)
    return None if peak is None else flops_per_s / peak
