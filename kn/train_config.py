"""The settings of one training run (kn.train), validated once with a message naming the field and
what is allowed: `TrainConfig` (a frozen dataclass, recorded in train.json and every checkpoint) and
`load_config` (a TOML file: top-level keys plus a [model] table).
"""
from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass, field, fields
from numbers import Integral, Real
from pathlib import Path
from typing import ClassVar

from kn.errors import DataError
from kn.models import ModelConfig
from kn.precision import check_setting
from kn.results import renamed

MODES = ("pretrain", "mixed", "finetune")
MAX_PASSES = 100_000       # the papers' longest runs are 1000 exposures; more is a typo that would train for weeks


@dataclass(frozen=True)
class TrainConfig:
    data: str                          # dataset folder made by `kn data bios|import|biod` (kn.data.biod.write_biod)
    out: str                           # run folder: model/, checkpoint/, metrics.jsonl, train.json
    mode: str = "pretrain"             # pretrain | mixed | finetune
    model: ModelConfig = field(default_factory=ModelConfig)
    init: str | None = None            # finetune: the pretrained model folder
    passes: float = 100.0              # passes over every biography (finetune: every train QA); a person with
                                       # k biographies is seen k * passes times (ExtractionConfig's exposures)
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
    compile: str = "auto"              # auto (kn.train.compile_setting) | on | off
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
    # settings renamed after runs were recorded, old name -> new (recorded configs, checkpoints and TOML files)
    RENAMED: ClassVar[dict] = {"exposures": "passes"}

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
        return {"passes": (0 < self.passes <= MAX_PASSES, f"a number > 0 and <= {MAX_PASSES:,}"),
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
         "number": ("passes", "qa_fraction", "lr", "min_lr_ratio", "warmup", "weight_decay", "grad_clip",
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
    raw = renamed(raw, TrainConfig.RENAMED)
    known = {f.name for f in fields(TrainConfig)}
    unknown = set(raw) - known
    if unknown:
        raise DataError(f"config: unknown keys {sorted(unknown)}; allowed: {sorted(known)}")
    try:
        return TrainConfig(**raw)
    except TypeError as e:
        raise DataError(f"config: {e}") from None

