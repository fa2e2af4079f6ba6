"""A biography dataset on disk: people, biographies, QA, tokenizer and token arrays.

`build_bios(cfg)` makes everything a Part 3.1 experiment reads; `write_bios(ds, out)` saves it:

    out/bios.jsonl      one biography per line (kn.data.records schema)
    out/qa.jsonl        six QAs per person with split "train" | "valid" | "test"
    out/tokenizer/      byte-level BPE trained on this corpus, or on 50k of its texts (kn.tokenize.sample_index)
    out/tokens.npz      bios_* and qa_* arrays: ids, offsets, person, spans (kn.tokenize.Encoded)
    out/meta.json       config, counts, seed, git commit, hardware, wall time (kn.results);
                        the only file that differs between two runs with the same config

`load_encoded(out, "bios")` reads the token arrays back; `read_meta(out)` reads meta.json, checked.
`out` (symlinks resolved) must be a new or empty folder, or hold a dataset (its meta.json), which
is replaced only when asked (overwrite=True, `--overwrite`); a folder holding anything else (but
folders kn wrote, such as kn.dynamics' injection/) is refused before any work. meta.json goes first and comes back last, every file is written under a temporary name,
and .kn-unfinished marks a write in progress, so a write that stopped part-way leaves a folder that
readers refuse and the next write may replace. kn.tokenize (transformers: seconds to import) is
imported where it is used, so that `--out` is checked first.
"""
from __future__ import annotations

import json
import reprlib
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kn.data.bios import STYLE, bio_records, check_style, make_bios, parse_augment
from kn.data.compose import concat
from kn.data.folder import check_dataset_out, dataset_folder, save_tokenizer
from kn.data.people import People, populations, sample_people
from kn.data.qa import make_qa, qa_records, split_people, valid_people
from kn.data.records import ATTRIBUTES, JsonRecords, write_jsonl
from kn.errors import DataError, check_count, check_number
from kn.results import atomic_file, done, write_json

if TYPE_CHECKING:
    from kn.tokenize import Encoded

KINDS = ("bioS", "bioR")
MIN_VOCAB = 300                 # kn.tokenize.train_tokenizer: 256 bytes, the specials and some merges
META_KINDS = ("bioD", "import")  # meta.json "kind"; absent for `kn data bios`


@dataclass(frozen=True)
class BiosConfig:
    kind: str = "bioS"            # bioS | bioR
    n: int = 1000                 # people (the plain group when n_celebrity > 0)
    augment: str = "single"       # bioS augmentation of the plain / minority group
    seed: int = 0
    train_fraction: float = 0.5   # share of people whose QAs are train_people
    vocab_size: int = 4096
    n_celebrity: int = 0          # Result 6: extra people with celebrity_augment biographies
    celebrity_augment: str = "multi5+permute"
    valid_fraction: float = 0.0   # share of train_people held out as the validation slice (split "valid")
    value_position: str = "kn"    # bioS style (kn.data.bios.STYLE; the defaults are kn's bioS, as before they existed)
    pronouns: str = "gendered"
    length: str = "kn"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise DataError(f"kind: got {self.kind!r}; allowed: {', '.join(KINDS)}")
        check_count("n", self.n, 1)
        check_count("seed", self.seed)
        check_count("n_celebrity", self.n_celebrity)
        parse_augment(self.augment)
        parse_augment(self.celebrity_augment)
        if self.kind == "bioR" and self.augment != "single" and not self.augment.startswith("multi"):
            raise DataError(f"augment: bioR takes 'single' or 'multiM', got {self.augment!r}")
        split_people(1, self.train_fraction)
        valid_people(np.ones(1, bool), self.valid_fraction)
        check_style(**self.style)
        if self.kind == "bioR" and (changed := [k for k, v in self.style.items() if v != STYLE[k][0]]):
            raise DataError(f"{changed[0]}: a bioS style option; bioR takes only its default, {STYLE[changed[0]][0]!r}")

    @property
    def style(self) -> dict:
        """The bioS style options (kn.data.bios.STYLE) of this config."""
        return {k: getattr(self, k) for k in STYLE}


@dataclass
class BiosDataset:
    config: BiosConfig
    people: People | None         # everyone, in person-id order (celebrities first); None when imported
    groups: list[str]             # per person: plain | celebrity | minority
    is_train: np.ndarray          # per person: QA in train_people
    bios: JsonRecords | list[dict]   # an import's: kn.data.records.Biographies
    qa: JsonRecords | list[dict]     # an import's: kn.data.importer.QARecords
    tokenizer: object
    bios_tokens: Encoded
    qa_tokens: Encoded
    is_valid: np.ndarray | None = None  # per person: in the validation slice (a subset of is_train)


def _bior_multi(augment: str) -> int:
    return parse_augment(augment).multi


def build_bios(cfg: BiosConfig) -> BiosDataset:
    """Generate people, biographies, QA and the tokenizer, and encode everything."""
    from kn.tokenize import encode_corpora, encode_documents, encode_records, sample_index, train_tokenizer
    check_count("vocab_size", cfg.vocab_size, MIN_VOCAB)     # before the work, not after it in train_tokenizer
    if cfg.n_celebrity:
        celeb, plain = populations(cfg.n_celebrity, cfg.n, cfg.seed)
        groups_parts = [("celebrity", celeb, cfg.celebrity_augment), ("minority", plain, cfg.augment)]
    else:
        groups_parts = [("plain", sample_people(cfg.n, cfg.seed), cfg.augment)]
    bios, docs, group_of = JsonRecords([]), [], []
    for g, (group, people, augment) in enumerate(groups_parts):
        if cfg.kind == "bioS" or group == "celebrity":
            d = make_bios(people, augment, cfg.seed + g, **cfg.style)
            docs.append(d)
            bios += bio_records(d, people, group=group)
        else:
            from kn.data.bior import generate_bior
            bios += JsonRecords.of(generate_bior(people, cfg.seed + g, n_per_person=_bior_multi(augment)))
        group_of += [group] * len(people)
    everyone = People(**{f: np.concatenate([getattr(p, f) for _, p, _ in groups_parts])
                         for f in People.__dataclass_fields__})
    is_train = split_people(len(everyone), cfg.train_fraction, cfg.seed)
    if cfg.n_celebrity:  # Result 6: QA finetuning on celebrities only, evaluation on the minority
        is_train = np.array([g == "celebrity" for g in group_of])
    is_valid = valid_people(is_train, cfg.valid_fraction, cfg.seed)
    qa_docs = make_qa(everyone)
    qa = qa_records(qa_docs, everyone, is_train, is_valid=is_valid)
    records = bios + qa
    tokenizer = train_tokenizer((records[i]["text"] for i in sample_index(len(records), seed=cfg.seed)),
                                vocab_size=cfg.vocab_size)
    if cfg.kind == "bioS":
        bios_tokens, qa_tokens = encode_corpora([concat(docs) if len(docs) > 1 else docs[0], qa_docs], tokenizer)
    else:
        bios_tokens = encode_records(bios, tokenizer, keys=("name",) + ATTRIBUTES)
        qa_tokens = encode_documents(qa_docs, tokenizer)
    return BiosDataset(cfg, everyone, group_of, is_train, bios, qa, tokenizer, bios_tokens, qa_tokens, is_valid)


def save_encoded(enc: Encoded, prefix: str) -> dict:
    arrays = {f"{prefix}_ids": enc.ids, f"{prefix}_offsets": enc.offsets, f"{prefix}_person": enc.person}
    arrays.update({f"{prefix}_span_{k}": v for k, v in enc.spans.items()})
    return arrays


def _check_meta(meta: dict) -> None:
    """DataError naming the first field of a dataset's meta.json that kn reads and that is not what
    kn wrote: provenance.config, kind, counts.people, the config's n_celebrity, biod, junk_ratio."""
    def need(name, value, kind, allowed):
        if not isinstance(value, kind):
            raise DataError(f"{name}: got {reprlib.repr(value)}; allowed: {allowed}")
    need("provenance", meta["provenance"], dict, "an object")
    need("provenance.config", meta["provenance"].get("config"), dict, "an object")
    if "n_celebrity" in meta["provenance"]["config"]:
        check_count("provenance.config.n_celebrity", meta["provenance"]["config"]["n_celebrity"])
    kind = meta.get("kind")
    if kind is not None and kind not in META_KINDS:
        raise DataError(f"kind: got {reprlib.repr(kind)}; allowed: {', '.join(META_KINDS)}, or absent (bioS, bioR)")
    if kind != "bioD":
        need("counts", meta.get("counts"), dict, "an object")
        check_count("counts.people", meta["counts"].get("people"))
        return
    from kn.data.biod import BioDConfig       # transformers: seconds to import, where only bioD needs it
    need("biod", meta.get("biod"), dict, "an object of BioDConfig fields")
    try:
        BioDConfig(**meta["biod"])
    except (DataError, TypeError) as e:
        raise DataError(f"biod: {e}") from None
    check_number("junk_ratio", meta.get("junk_ratio", 0.0))


def read_meta(folder: str | Path) -> dict:
    """A dataset's meta.json, checked for the fields kn reads; DataError naming the file and field."""
    path = Path(folder) / "meta.json"
    try:
        meta = json.loads(path.read_text())
    except ValueError:
        meta = None
    if not isinstance(meta, dict) or "provenance" not in meta:
        raise DataError(f"data: {str(path)!r} is not a kn dataset's meta.json (a JSON object with provenance); "
                        "build the dataset with `kn data bios`, `biod` or `import`")
    try:
        _check_meta(meta)
    except DataError as e:
        raise DataError(f"data: {str(path)!r}: {e}; build the dataset again with --overwrite") from None
    return meta


def load_encoded(out: str | Path, prefix: str) -> Encoded:
    """Read `bios` or `qa` token arrays written by `write_bios`."""
    from kn.tokenize import Encoded
    path = Path(out) / "tokens.npz"
    if not path.is_file():
        raise DataError(f"out: no tokens.npz in {str(out)!r}; build the dataset with `kn data bios`")
    if not (Path(out) / "meta.json").is_file():
        raise DataError(f"out: no meta.json in {str(out)!r}: its dataset was not written to the end; "
                        "build it again with --overwrite")
    try:
        with np.load(path) as z:
            spans = {k[len(prefix) + 6:]: z[k] for k in z.files if k.startswith(f"{prefix}_span_")}
            return Encoded(z[f"{prefix}_ids"], z[f"{prefix}_offsets"], z[f"{prefix}_person"], spans)
    except (zipfile.BadZipFile, EOFError, ValueError, KeyError) as e:
        raise DataError(f"data: {str(path)!r} is truncated or not kn's token arrays ({type(e).__name__}: {e}); "
                        "build the dataset again with --overwrite") from None


def write_bios(ds: BiosDataset, out: str | Path, wall_time: float | None = None, overwrite: bool = False,
               **meta) -> Path:
    """Write the folder, meta.json last; `meta` adds keys to meta.json (e.g. an import's skipped records)."""
    with dataset_folder(out, overwrite) as out:
        for name, records in (("bios.jsonl", ds.bios), ("qa.jsonl", ds.qa)):
            with atomic_file(out / name) as tmp:
                write_jsonl(records, tmp)
        save_tokenizer(ds.tokenizer, out)
        with atomic_file(out / "tokens.npz") as tmp, open(tmp, "wb") as f:  # np.savez: no timestamps, byte-identical
            np.savez(f, **save_encoded(ds.bios_tokens, "bios"), **save_encoded(ds.qa_tokens, "qa"))
        write_json(out / "meta.json", config=asdict(ds.config), seed=ds.config.seed, wall_time=wall_time,
                   counts={"people": len(ds.is_train), "bios": len(ds.bios), "qa": len(ds.qa),
                           "bio_tokens": int(len(ds.bios_tokens.ids)), "vocab_size": len(ds.tokenizer),
                           "train_people": int(ds.is_train.sum()), "test_people": int((~ds.is_train).sum()),
                           "valid_people": 0 if ds.is_valid is None else int(ds.is_valid.sum())}, **meta)
    return out


def make_dataset(cfg: BiosConfig, out: str | Path, overwrite: bool = False) -> BiosDataset:
    """Build and write (`out` is checked first); the wall time goes into meta.json."""
    check_dataset_out(out, overwrite)
    t0 = time.perf_counter()
    ds = build_bios(cfg)
    write_bios(ds, out, wall_time=time.perf_counter() - t0, overwrite=overwrite)
    return ds


def run_dataset(cfg: BiosConfig, out: str | Path) -> Path:
    """`out`, a run's own data folder, holding cfg's dataset: made there unless its meta.json already
    records cfg (results.done); one made for another config is made again."""
    out = Path(out)
    if done(out / "meta.json", cfg) is None:
        make_dataset(cfg, out, overwrite=True)
    return out
