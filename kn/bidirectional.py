"""Part 3.1, Result 7 (papers.md): a bidirectional model (BERT-like, whole-word masked LM).

Pretraining masks whole words of the packed biography windows (a word starts at a token that
begins with a space); QA finetuning shows "question Answer:" followed by one [MASK] per answer
token and the closing '.', and trains the model to fill the masks with the answer; evaluation fills
the masks of test_people's questions and scores exact match of all answer tokens (the answer's
length is given, which only helps the model). The paper: extraction stays poor (<= ~40%) even with
augmentation, except birth date and major. Both stages keep a learning curve (kn.curves' sample and
fields, scored by filling masks: train_people QA, each value of the person's first biography masked
and filled, validation-slice QA); test_people are scored only when asked, on the final model.
Entry points: `BidirectionalConfig`, `run_bidirectional`, `twins` (the masked model and a GPT-2 of
equal budget and recipe); kn.bidirectional_search searches the recipe.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from kn.batches import epoch_batches, train_qas
from kn.checkpoints import can_resume
from kn.curves import CurveSample, curve_every, curve_rows, curve_sample, curve_values
from kn.data.bios import parse_augment
from kn.data.dataset import BiosConfig, load_encoded, run_dataset
from kn.data.records import ATTRIBUTES, read_jsonl
from kn.errors import DataError
from kn.extraction import ExtractionConfig, from_profile as extraction_profile, person_items
from kn.models import ModelConfig, build_model, n_params
from kn.profiles import settings
from kn.results import done, write_json
from kn.tokenize import Encoded, load_tokenizer, pack
from kn.train import Fit, Hooks, accelerator, fit, stop_if_interrupted
from kn.vocab import IGNORE


@dataclass(frozen=True)
class BidirectionalConfig:
    data: BiosConfig = field(default_factory=BiosConfig)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(arch="bert"))
    exposures: float = 100.0          # times each person's knowledge is seen in pretraining
    mask_rate: float = 0.15           # share of words masked
    batch_size: int = 16
    window: int = 128
    lr: float = 1e-3
    finetune_exposures: float = 30.0
    finetune_lr: float = 1e-3
    seed: int = 0
    device: str = "auto"              # auto | cpu | cuda
    curve_points: int = 30            # learning-curve points of each stage (kn.curves; 0 = none)
    curve_people: int = 200           # train_people and validation people a curve point scores

    def __post_init__(self):
        if self.model.arch != "bert":
            raise DataError(f"model: a bidirectional run needs arch 'bert', got {self.model.arch!r}")
        if not 0 < self.mask_rate < 1:
            raise DataError(f"mask_rate: got {self.mask_rate!r}; allowed: a number in (0, 1)")
        if self.device not in ("auto", "cpu", "cuda"):
            raise DataError(f"device: got {self.device!r}; allowed: auto, cpu, cuda")


def word_starts(tokenizer) -> np.ndarray:
    """Boolean [V]: the token starts a word (byte-level 'Ġ' prefix) or is punctuation on its own."""
    starts = np.zeros(len(tokenizer), dtype=bool)
    for tok, i in tokenizer.get_vocab().items():
        starts[i] = tok.startswith("Ġ") or not tok[:1].isalnum()
    return starts


def mask_words(ids: np.ndarray, starts: np.ndarray, rate: float, mask_id: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Whole-word masking of windows [R, T]: each word masked with probability `rate`, all its tokens."""
    word = np.cumsum(starts[ids], axis=1)                                   # word index per token
    chosen = rng.random((ids.shape[0], int(word.max()) + 1)) < rate
    masked = np.take_along_axis(chosen, word, axis=1)
    return np.where(masked, mask_id, ids), np.where(masked, ids, IGNORE)


def span_mask_rows(docs: Encoded, span: np.ndarray, pad_id: int, mask_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded rows of docs with the tokens of span [B, 2] (start, end) replaced by [MASK];
    labels are those tokens."""
    lengths = docs.lengths()
    ids = np.full((len(docs), int(lengths.max())), pad_id, dtype=np.int64)
    cols = np.arange(ids.shape[1])
    ids[cols[None, :] < lengths[:, None]] = docs.ids
    inside = (cols[None, :] >= span[:, :1]) & (cols[None, :] < span[:, 1:])
    return np.where(inside, mask_id, ids), np.where(inside, ids, IGNORE)


def qa_mask_rows(qa: Encoded, pad_id: int, mask_id: int) -> tuple[np.ndarray, np.ndarray]:
    """QA rows with the answer tokens replaced by [MASK]; labels are the answer tokens."""
    return span_mask_rows(qa, qa.spans["answer"][:, 0], pad_id, mask_id)


def value_mask_rows(bios: Encoded, pad_id: int, mask_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, labels, attribute index): one row per biography and attribute present in it, the
    value's first occurrence masked (the masked model's bio memorization)."""
    rows, spans, attribute = [], [], []
    for k, a in enumerate(ATTRIBUTES):
        have = np.flatnonzero(bios.spans[a][:, 0, 0] >= 0)
        rows.append(have), spans.append(bios.spans[a][have, 0]), attribute.append(np.full(len(have), k))
    ids, labels = span_mask_rows(bios.take(np.concatenate(rows)), np.concatenate(spans), pad_id, mask_id)
    return ids, labels, np.concatenate(attribute)


def _mean_over_attributes(exact: np.ndarray, attribute: np.ndarray) -> float:
    return float(np.mean([exact[attribute == k].mean() for k in np.unique(attribute)]))


def masked_curve(sample: CurveSample, pad_id: int, mask_id: int):
    """model -> tensor [3] (kn.curves.FIELDS) of the masked model on a curve sample, by filling masks."""
    qa_ids, qa_labels = qa_mask_rows(sample.qa, pad_id, mask_id)
    if len(sample.bios):
        bio_ids, bio_labels, bio_attribute = value_mask_rows(sample.bios, pad_id, mask_id)

    def evaluate(model) -> torch.Tensor:
        exact = fill_accuracy(model, qa_ids, qa_labels, pad_id)
        return curve_values(lambda: _mean_over_attributes(exact[~sample.is_valid], sample.attribute[~sample.is_valid]),
                            lambda: _mean_over_attributes(fill_accuracy(model, bio_ids, bio_labels, pad_id), bio_attribute),
                            lambda: _mean_over_attributes(exact[sample.is_valid], sample.attribute[sample.is_valid]),
                            sample)
    return evaluate


def _fit(model, rows_for_epoch, steps_per_epoch: int, epochs: float, cfg: BidirectionalConfig, lr: float, tok,
         out: Path, settings: dict, evaluate=None) -> dict:
    """Train `model` on rows_for_epoch(e) -> (ids, labels), loss on the masked tokens, with kn.train.fit
    in run folder `out` (resumed when it holds a run with the same settings), scored by `evaluate`
    (model -> tensor [3]) at cfg.curve_points steps. Returns loss (the mean of the last epoch's
    steps), steps, tokens_per_s, cpu_minutes (the steps' tokens at that rate) and curve (kn.curves rows)."""
    total = max(1, int(round(epochs * steps_per_epoch)))
    resume = can_resume(out, settings)
    spec = Fit(total_steps=total, lr=lr, compile="off", log_every=1)            # every step's loss, for the mean below
    every = curve_every(total, cfg.curve_points) if evaluate else 0
    hooks = Hooks(pad_id=tok.pad_token_id, evaluate=evaluate if every else None, eval_every=max(1, every))
    s = stop_if_interrupted(fit(model, epoch_batches(rows_for_epoch, steps_per_epoch, cfg.batch_size), spec, out,
                                settings, tok, accelerator(cfg.device), hooks, resume=resume, overwrite=not resume,
                                progress=False, desc=out.name), out)
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    tokens = total * cfg.batch_size * rows_for_epoch(0)[0].shape[1]
    return {"loss": float(torch.tensor(losses[-steps_per_epoch:]).mean()), "steps": total,
            "tokens_per_s": s["tokens_per_s"], "cpu_minutes": tokens / s["tokens_per_s"] / 60 if s["tokens_per_s"] else None,
            "curve": curve_rows(s.get("evals", {}))}


@torch.no_grad()
def fill_accuracy(model, ids: np.ndarray, labels: np.ndarray, pad_id: int, batch_size: int = 128) -> np.ndarray:
    """Per row: every masked answer token predicted exactly."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(ids), batch_size):
        x = torch.from_numpy(ids[i:i + batch_size]).to(device).long()
        y = torch.from_numpy(labels[i:i + batch_size]).to(device).long()
        pred = model(input_ids=x, attention_mask=x != pad_id).logits.argmax(-1)
        out.append(((pred == y) | (y == IGNORE)).all(dim=1).cpu())
    return torch.cat(out).numpy()


def _stage(out: Path, recorded: dict, train) -> tuple:
    """(model, stage) of a training stage in run folder out: loaded when out/<out.name>.json records a
    finished stage with these settings and out/model is there, else train() -> (model, stage),
    recorded last (it marks the stage finished)."""
    from transformers import AutoModelForMaskedLM
    record_path = out / f"{out.name}.json"
    if (record := done(record_path, recorded)) is not None and "stage" in record and (out / "model").is_dir():
        return AutoModelForMaskedLM.from_pretrained(str(out / "model")), record["stage"]
    record_path.unlink(missing_ok=True)
    model, stage = train()
    write_json(record_path, config=recorded, seed=recorded["seed"], stage=stage)
    return model, stage


def _pretrained(cfg: BidirectionalConfig, data: Path, tok, out: Path, evaluate=None) -> tuple:
    """(model, stage) of the masked-LM pretraining (stage: _fit's dict), in run folder out (_stage)."""
    keys = ("data", "model", "exposures", "mask_rate", "batch_size", "window", "lr", "seed", "curve_points",
            "curve_people")
    recorded = json.loads(json.dumps({k: v for k, v in asdict(cfg).items() if k in keys}, default=str))

    def train():
        model = build_model(replace(cfg.model, vocab_size=len(tok), context=max(cfg.model.context, cfg.window)),
                            seed=cfg.seed)
        bios, starts = load_encoded(data, "bios"), word_starts(tok)

        def bio_rows(epoch):
            windows = pack(bios, tok.eos_token_id, cfg.window, cfg.seed * 100_003 + epoch)
            return mask_words(windows, starts, cfg.mask_rate, tok.mask_token_id,
                              np.random.default_rng([cfg.seed, epoch, 6]))
        passes = cfg.exposures / parse_augment(cfg.data.augment).per_person
        steps_per_epoch = max(1, len(bio_rows(0)[0]) // cfg.batch_size)
        return model, _fit(model, bio_rows, steps_per_epoch, passes, cfg, cfg.lr, tok, out, recorded, evaluate)
    return _stage(out, recorded, train)


def _finetuned(cfg: BidirectionalConfig, data: Path, tok, out: Path, evaluate=None) -> tuple:
    """(model, finetuning stage, pretraining stage): masked QA finetuning of the pretrained model on
    train_people's QAs (not the validation slice), in run folders out/pretrain and out/finetune."""
    model, pretrain = _pretrained(cfg, data, tok, out / "pretrain", evaluate)
    ids, labels = qa_mask_rows(train_qas(str(data), load_encoded(data, "qa")), tok.pad_token_id, tok.mask_token_id)
    recorded = json.loads(json.dumps(asdict(cfg), default=str))

    def qa_epoch(epoch):
        order = np.random.default_rng([cfg.seed, epoch, 7]).permutation(len(ids))
        return ids[order], labels[order]

    def train():
        return model, _fit(model, qa_epoch, max(1, len(ids) // cfg.batch_size), cfg.finetune_exposures, cfg,
                           cfg.finetune_lr, tok, out / "finetune", recorded, evaluate)
    return *_stage(out / "finetune", recorded, train), pretrain


def run_bidirectional(cfg: BidirectionalConfig, out: str | Path, test: bool = True, data: str | Path | None = None) -> dict:
    """Dataset (in `data`, default out/data) -> whole-word MLM pretraining (run folder out/pretrain)
    -> masked QA finetuning (out/finetune) -> exact match of train_people and the validation slice,
    and of test_people when `test`; out/result.json (out/valid.json without test). A run stopped by a
    signal resumes when run again; a finished one is read back and only scored."""
    out = Path(out)
    t0 = time.perf_counter()
    if data is None:
        data = run_dataset(cfg.data, out / "data")
    elif done(Path(data) / "meta.json", cfg.data) is None:
        raise DataError(f"data: {str(data)!r} does not hold this run's dataset (its meta.json records another "
                        "config, or none); pass the folder made for it, or none to make one in out/data")
    data = Path(data)
    tok = load_tokenizer(data / "tokenizer")
    pad, mask = tok.pad_token_id, tok.mask_token_id
    evaluate = masked_curve(curve_sample(data, cfg.curve_people, cfg.seed), pad, mask) if cfg.curve_points else None
    model, finetune, pretrain = _finetuned(cfg, data, tok, out, evaluate)
    qa_all = load_encoded(data, "qa")
    recs = list(read_jsonl(data / "qa.jsonl"))
    splits = [s for s in ("train", "valid", "test") if (s != "test" or test) and any(r["split"] == s for r in recs)]
    scored = np.flatnonzero([r["split"] in splits for r in recs])
    ids, labels = qa_mask_rows(qa_all.take(scored), pad, mask)
    exact = np.zeros(len(recs), bool)
    exact[scored] = fill_accuracy(model, ids, labels, pad)
    attribute = np.array([ATTRIBUTES.index(r["attribute"]) for r in recs])
    result = {"qa": {}, "pretrain_loss": pretrain["loss"], "finetune_loss": finetune["loss"], "n_params": n_params(model),
              "curves": {k: v["curve"] for k, v in (("pretrain", pretrain), ("finetune", finetune))},
              "training": {k: {f: x for f, x in v.items() if f != "curve"}
                           for k, v in (("pretrain", pretrain), ("finetune", finetune))}}
    for split in splits:
        sel = np.array([r["split"] == split for r in recs])
        per = {a: float(exact[sel & (attribute == k)].mean()) for k, a in enumerate(ATTRIBUTES)}
        result["qa"][split] = {"mean": float(np.mean(list(per.values()))), "per_attribute": per}
    if test:
        result["qa"]["items"] = person_items(recs, exact, "test")
    write_json(out / ("result.json" if test else "valid.json"), config=json.loads(json.dumps(asdict(cfg), default=str)),
               seed=cfg.seed, wall_time=time.perf_counter() - t0, **result)
    return result


def twins(profile: str, augment: str = "multi5+permute", seed: int = 0,
          recipe: dict | None = None) -> tuple[BidirectionalConfig, ExtractionConfig]:
    """The masked model and its autoregressive twin for Result 7: the same people (the extraction
    profile's, at the bidirectional table's n), model size, exposures, windows, batch, lr and QA
    finetuning (passes and lr), so that their gap is a test of the objective alone; the masked model's
    learning curve at the table's curve_points. The masked model learns only from the ~15% of words
    it masks: it needed ~5x the autoregressive budget to store the biographies, so both get the
    bidirectional table's exposures. `recipe` (lr, exposures,
    finetune_exposures, finetune_lr: kn.bidirectional_search's choice) replaces them for both."""
    s = settings("bidirectional", profile)
    r = {"exposures": s["exposures"], "finetune_exposures": s["finetune_exposures"], "finetune_lr": s["finetune_lr"]}
    e = extraction_profile(profile, setting="pretrain_finetune", augment=augment, seed=seed, n=s["n"],
                           finetune_lr_grid=(), **(r | (recipe or {})))
    model = replace(e.model, arch="bert", mlp_ratio=e.model.mlp_ratio * 2 / 3)   # gated MLP: GPT-2's parameters
    bert = BidirectionalConfig(data=e.data, model=model, exposures=e.exposures, batch_size=e.batch_size,
                               window=e.window, lr=e.lr, finetune_exposures=e.finetune_exposures,
                               finetune_lr=e.finetune_lr, seed=seed, curve_points=s["curve_points"])
    return bert, e
