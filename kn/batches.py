"""What a training run (kn.train) trains on, as deterministic batches: the rows of step t are a
function of (seed, t) only, so a resumed run sees exactly the data an uninterrupted one would.

  pretrain  packed 512-token windows of biographies, re-shuffled every pass
  mixed     every window is all-bio or all-QA (train_people's QAs); qa_fraction of windows are QA
  finetune  QAs of train_people, one per row, loss on the answer and its closing '.'
A bioD folder (Part 3.3, kn.data.biod) is re-rendered every epoch, junk mixed in if asked.
Entry points: `Batches` (step -> (ids, labels)), `epoch_batches`, the readers `load_biod`,
`load_bios`, `train_qas`, `qa_rows`, and the checks `check_vocab`, `vocab_in_use`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from kn.data.biod import BioD, BioDConfig, generate_biod, junk_count, junk_docs, mix, render
from kn.data.dataset import load_encoded, read_meta
from kn.data.records import read_jsonl
from kn.errors import DataError
from kn.tokenize import Encoded, equal_exposure, pack
from kn.train_config import TrainConfig
from kn.vocab import IGNORE, VocabMap


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
        self.total_steps = max(1, int(round(cfg.passes * self.steps_per_epoch)))
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



def vocab_in_use(batches: Batches, eos_id: int, vocab_size: int) -> VocabMap | None:
    """The map of the tokens a pretrain or mixed run trains on (biographies, train QAs, EOS); None
    when it uses every token."""
    if batches.biod is not None:
        raise DataError("trim_vocab: a bioD folder is rendered anew every epoch, so the tokens it uses are not "
                        "known up front; allowed: false for bioD data")
    arrays = [batches.bios.ids, [eos_id]] + ([batches.qa.ids] if batches.qa is not None else [])
    vocab = VocabMap.of(arrays, vocab_size)
    return vocab if len(vocab.used) < vocab_size else None



def check_vocab(batches: Batches, vocab_size: int) -> None:
    """DataError if the token ids do not fit the tokenizer (tokens.npz from another dataset)."""
    for name in ("bios", "qa"):
        enc = getattr(batches, name)
        if enc is not None and len(enc.ids) and int(enc.ids.max()) >= vocab_size:
            raise DataError(f"data: {name} token ids reach {int(enc.ids.max())} but the tokenizer has {vocab_size} "
                            "tokens: tokens.npz and tokenizer/ come from different datasets; rebuild the folder")

