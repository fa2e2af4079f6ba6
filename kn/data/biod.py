"""bioD(N, K, C, D, L, T) biographies, junk data and the domain token (papers.md, Part 3.3).

N people with unique names out of N0 = n_first * n_middle * n_last candidates (a name is three
words, `f12 m7 l993`); K attributes; attribute k has a diversity set of D distinct strings of L
value tokens out of T; a person's value for attribute k is C chunks drawn uniformly and
independently from that set. A biography is K sentences, one per attribute, in an order re-drawn
for each person and epoch:

    f12 m7 l993 's ID 0 is t5 t9 , t2 t7 .

The vocabulary is word level, so words of the text and token ids are in 1-1 correspondence
(`text.split(" ")`). The name is written in every sentence, i.e. K times per biography; every
occurrence is masked as name (`NAME`); `field_masks` also gives the first occurrence alone, the
one the bound's loss_name counts. Junk data (Results 10-11) are biographies with fresh random
names and uniformly random values, re-drawn every epoch; the domain token (Result 12) starts
each useful biography when `domain_token` is set.

Entry points: `BioDConfig`, `generate_biod`, `render`, `junk_docs`, `mix`, `make_tokenizer`,
`texts`, `to_records`, `write_biod`, `bound_inputs`. Sampling and rendering are vectorised.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from kn.data.folder import dataset_folder, save_tokenizer
from kn.data.records import write_jsonl
from kn.errors import DataError, check_count, check_number
from kn.results import atomic_file, write_json
from kn.tokenize import Encoded, ragged_gather

SPECIALS = ("<eos>", "<pad>", "<domain>", "<unk>")
STRUCTURE = ("'s", "ID", "is", ",", ".")
EOS, PAD, DOMAIN, UNK, POSS, ID, IS, COMMA, PERIOD = range(9)
ATTR0 = 9                                   # id of attribute word "0"
NAME_WORDS = 3                              # first, middle, last
OTHER, NAME, VALUE, VALUE1 = 0, 1, 2, 3     # field-mask codes; VALUE1 = value token of chunk 1
JUNK_PERSON = -1                            # `person` of a junk document

# Independent random streams: default_rng([seed, stream, ...]).
_NAMES, _DIVERSITY, _CHOICES, _ORDER, _JUNK, _MIX = range(6)


@dataclass(frozen=True)
class BioDConfig:
    n: int                  # N, people
    k: int                  # K, attributes
    c: int                  # C, chunks per value
    d: int                  # D, strings in each attribute's diversity set
    l: int                  # L, tokens per string
    t: int                  # T, value tokens
    n_first: int = 400      # name pools; N0 = n_first * n_middle * n_last
    n_middle: int = 400
    n_last: int = 1000
    seed: int = 0
    domain_token: bool = False  # start each useful biography with <domain>

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "domain_token":
                if not isinstance(v, bool):
                    raise DataError(f"domain_token: got {v!r}; allowed: True or False")
            elif not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < (0 if f.name == "seed" else 1):
                low = "a non-negative integer" if f.name == "seed" else "a positive integer"
                raise DataError(f"{f.name}: got {v!r}; allowed: {low}")
            else:
                object.__setattr__(self, f.name, int(v))   # numpy integers -> int (no overflow in t**l)
        if self.n > self.n0:
            raise DataError(f"n: N={self.n} exceeds the name space N0={self.n0} "
                            f"(n_first*n_middle*n_last); allowed 1..N0")
        if self.d > self.t ** self.l:
            raise DataError(f"d: D={self.d} distinct strings of L={self.l} tokens out of T={self.t}; "
                            f"d must be at most t**l = {self.t ** self.l}")

    @property
    def n0(self) -> int:
        return self.n_first * self.n_middle * self.n_last

    @property
    def sentence_length(self) -> int:
        """Tokens per sentence: name (3), 's ID k is (4), C chunks of L with C-1 commas, '.'."""
        return 3 + 4 + self.c * self.l + self.c

    def doc_length(self, domain: bool | None = None) -> int:
        """Tokens per biography, <eos> included (and <domain> if `domain`, default the config's)."""
        domain = self.domain_token if domain is None else domain
        return int(domain) + self.k * self.sentence_length + 1


@dataclass
class BioD:
    """A sampled bioD: names [N, 3] (first, middle, last pool indices), diversity [K, D, L]
    (value-token indices), choices [N, K, C] (indices into the attribute's diversity set)."""
    cfg: BioDConfig
    names: np.ndarray
    diversity: np.ndarray
    choices: np.ndarray

    def values(self, person=slice(None)) -> np.ndarray:
        """Value-token indices of the values of `person` (default all), [B, K, C, L]."""
        return self.diversity[np.arange(self.cfg.k)[None, :, None], self.choices[person]]


@dataclass
class TokenDocs(Encoded):
    """Token documents (kn.tokenize.Encoded) plus `mask`: int8 field codes, one per token.
    `person` is JUNK_PERSON for junk documents."""
    mask: np.ndarray = None

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])


# ---- vocabulary and tokenizer ------------------------------------------------------------------

def _id_offsets(cfg: BioDConfig) -> dict:
    """First token id of each block of the vocabulary."""
    value = ATTR0 + cfg.k
    first = value + cfg.t
    middle = first + cfg.n_first
    return {"attr": ATTR0, "value": value, "first": first, "middle": middle, "last": middle + cfg.n_middle}


def vocabulary(cfg: BioDConfig) -> list[str]:
    """Words in id order: specials, structure, attribute ids, t*, f*, m*, l*."""
    blocks = [("", cfg.k), ("t", cfg.t), ("f", cfg.n_first), ("m", cfg.n_middle), ("l", cfg.n_last)]
    return [*SPECIALS, *STRUCTURE] + [f"{p}{i}" for p, n in blocks for i in range(n)]


def make_tokenizer(cfg: BioDConfig) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over `vocabulary(cfg)`, split on whitespace; adds no special tokens."""
    vocab = {w: i for i, w in enumerate(vocabulary(cfg))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>", clean_up_tokenization_spaces=False)


# ---- sampling ----------------------------------------------------------------------------------

def distinct_ints(rng: np.random.Generator, n: int, high: int) -> np.ndarray:
    """n distinct integers in [0, high), uniform without replacement, in random order.

    Draws with replacement and drops repeats (keeping draw order): fast for n << high, e.g.
    N = 1e7 out of N0 = 1.6e8; a permutation is used when n is over half of high.
    """
    if 2 * n > high:
        return rng.permutation(high)[:n].astype(np.int64)
    got = np.empty(0, dtype=np.int64)
    while len(got) < n:
        need = n - len(got)
        draw = np.concatenate([got, rng.integers(0, high, size=need + need // 8 + 16, dtype=np.int64)])
        _, first = np.unique(draw, return_index=True)
        got = draw[np.sort(first)]
    return got[:n]


def distinct_strings(rng: np.random.Generator, d: int, length: int, t: int) -> np.ndarray:
    """d distinct strings of `length` tokens in [0, t), [d, length], uniform without replacement."""
    space = t ** length
    if space < 2 ** 62:  # code each string as an integer in base t
        codes = distinct_ints(rng, d, space)
        powers = t ** np.arange(length - 1, -1, -1, dtype=np.int64)
        return (codes[:, None] // powers) % t
    got = np.empty((0, length), dtype=np.int64)
    while len(got) < d:   # huge space: repeats are rare, drop them by row
        draw = np.concatenate([got, rng.integers(0, t, size=(d - len(got) + 16, length))])
        _, first = np.unique(draw, axis=0, return_index=True)
        got = draw[np.sort(first)]
    return got[:d]


def split_names(index: np.ndarray, cfg: BioDConfig) -> np.ndarray:
    """Name indices in [0, N0) -> [.., 3] (first, middle, last) pool indices."""
    last = index % cfg.n_last
    middle = (index // cfg.n_last) % cfg.n_middle
    return np.stack([index // (cfg.n_last * cfg.n_middle), middle, last], axis=-1)


def generate_biod(cfg: BioDConfig) -> BioD:
    """Sample names, diversity sets and value choices; each from its own stream of `cfg.seed`."""
    names = split_names(distinct_ints(np.random.default_rng([cfg.seed, _NAMES]), cfg.n, cfg.n0), cfg)
    rng = np.random.default_rng([cfg.seed, _DIVERSITY])
    diversity = np.stack([distinct_strings(rng, cfg.d, cfg.l, cfg.t) for _ in range(cfg.k)])
    choices = np.random.default_rng([cfg.seed, _CHOICES]).integers(0, cfg.d, size=(cfg.n, cfg.k, cfg.c))
    return BioD(cfg, names, diversity, choices)


# ---- rendering ---------------------------------------------------------------------------------

def sentence_mask(cfg: BioDConfig) -> np.ndarray:
    """Field codes of one sentence's tokens, [S]; the same for every sentence."""
    chunk = np.full((cfg.c, cfg.l + 1), VALUE, dtype=np.int8)
    chunk[0] = VALUE1
    chunk[:, -1] = OTHER                     # the comma after each chunk (the last one becomes '.')
    return np.concatenate([[NAME] * 3, [OTHER] * 4, chunk.ravel()]).astype(np.int8)


def sentences(cfg: BioDConfig, names: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Token ids of every sentence, int32 [B, K, S], from names [B, 3] and values [B, K, C, L]."""
    off = _id_offsets(cfg)
    out = np.empty((len(names), cfg.k, cfg.sentence_length), dtype=np.int32)
    out[:, :, :3] = (names + [off["first"], off["middle"], off["last"]])[:, None, :]
    out[:, :, 3:5] = [POSS, ID]
    out[:, :, 5] = off["attr"] + np.arange(cfg.k)
    out[:, :, 6] = IS
    chunks = out[:, :, 7:].reshape(len(names), cfg.k, cfg.c, cfg.l + 1)   # a view: L tokens + ','
    chunks[..., :cfg.l] = values + off["value"]
    chunks[..., cfg.l] = COMMA
    out[:, :, -1] = PERIOD                                                # the last ',' is '.'
    return out


def documents(cfg: BioDConfig, sents: np.ndarray, order: np.ndarray, person: np.ndarray,
              domain: bool) -> TokenDocs:
    """Biographies from sentences [B, K, S] in `order` [B, K], with <eos> (and <domain>)."""
    b, start = len(sents), int(domain)
    ids = np.empty((b, cfg.doc_length(domain)), dtype=np.int32)
    if domain:
        ids[:, 0] = DOMAIN
    ids[:, -1] = EOS
    ids[:, start:-1] = np.take_along_axis(sents, order[:, :, None], axis=1).reshape(b, -1)
    doc_mask = np.concatenate([[OTHER] * start, np.tile(sentence_mask(cfg), cfg.k), [OTHER]]).astype(np.int8)
    offsets = np.arange(b + 1, dtype=np.int64) * ids.shape[1]
    return TokenDocs(ids=ids.ravel(), offsets=offsets, mask=np.tile(doc_mask, b), person=np.asarray(person, dtype=np.int64))


def sentence_order(cfg: BioDConfig, epoch: int, person: np.ndarray) -> np.ndarray:
    """Sentence order of `person` in `epoch`, [B, K]; deterministic in (seed, epoch) and the same
    whichever subset is asked for (keys are drawn for all N, only the subset is sorted)."""
    keys = np.random.default_rng([cfg.seed, _ORDER, epoch]).random((cfg.n, cfg.k))
    return np.argsort(keys[person], axis=1)


def render(biod: BioD, epoch: int = 0, people=None) -> TokenDocs:
    """One biography per person for one pass, sentence order drawn from (seed, epoch).

    `people` (indices or a slice, default all) renders a subset, identical to the same rows of the
    full render, so large N can be rendered in chunks.
    """
    cfg = biod.cfg
    check_count("epoch", epoch)
    person = np.arange(cfg.n)[people if people is not None else slice(None)]
    sents = sentences(cfg, biod.names[person], biod.values(person))
    return documents(cfg, sents, sentence_order(cfg, epoch, person), person, cfg.domain_token)


def junk_docs(cfg: BioDConfig, n_docs: int, epoch: int = 0) -> TokenDocs:
    """Junk biographies: fresh random names and values (uniform over the T value tokens, not the
    diversity sets), same format, never a domain token; deterministic in (seed, epoch)."""
    check_count("n_docs", n_docs)
    check_count("epoch", epoch)
    rng = np.random.default_rng([cfg.seed, _JUNK, epoch])
    names = split_names(rng.integers(0, cfg.n0, size=n_docs, dtype=np.int64), cfg)
    values = rng.integers(0, cfg.t, size=(n_docs, cfg.k, cfg.c, cfg.l))
    order = np.argsort(rng.random((n_docs, cfg.k)), axis=1)
    return documents(cfg, sentences(cfg, names, values), order, np.full(n_docs, JUNK_PERSON), False)


def junk_count(cfg: BioDConfig, useful_tokens: int, ratio: float) -> int:
    """Junk documents needed for `ratio` junk tokens per useful token."""
    return int(round(ratio * useful_tokens / cfg.doc_length(domain=False)))


def concat_docs(parts: list[TokenDocs]) -> TokenDocs:
    """The documents of `parts`, one after the other."""
    lengths = np.concatenate([p.lengths() for p in parts])
    return TokenDocs(ids=np.concatenate([p.ids for p in parts]), offsets=np.concatenate([[0], np.cumsum(lengths)]),
                     mask=np.concatenate([p.mask for p in parts]), person=np.concatenate([p.person for p in parts]))


def mix(useful: TokenDocs, junk: TokenDocs, ratio: float, seed: int = 0) -> TokenDocs:
    """All useful documents and the first junk documents making ~`ratio` junk tokens per useful
    token (to within one document), shuffled together deterministically in `seed`."""
    check_number("ratio", ratio, unit="junk tokens per useful token")
    target = ratio * useful.n_tokens
    ends = np.cumsum(junk.lengths())
    if target > 0 and (len(ends) == 0 or ends[-1] < target - junk.lengths().max(initial=0) / 2):
        raise DataError(f"junk: {int(ends[-1]) if len(ends) else 0} junk tokens, fewer than ratio*useful = "
                        f"{target:.0f}; make more with junk_docs(cfg, junk_count(cfg, useful.n_tokens, ratio))")
    m = int(np.argmin(np.abs(np.concatenate([[0], ends]) - target)))  # junk docs to take
    both = concat_docs([useful, TokenDocs(ids=junk.ids[:junk.offsets[m]], offsets=junk.offsets[:m + 1],
                                          mask=junk.mask[:junk.offsets[m]], person=junk.person[:m])])
    order = np.random.default_rng([seed, _MIX]).permutation(len(both))
    lengths = both.lengths()[order]
    pick = ragged_gather(np.arange(both.n_tokens), both.offsets[:-1][order], lengths)
    return TokenDocs(ids=both.ids[pick], offsets=np.concatenate([[0], np.cumsum(lengths)]), mask=both.mask[pick],
                     person=both.person[order])


def field_masks(docs: TokenDocs) -> dict:
    """Boolean token masks: name (every occurrence), name1 (the first in each document), value
    (all chunks), value1 (first chunk) -- the fields of the bound's loss_name/value/value1."""
    is_name = docs.mask == NAME
    seen = np.cumsum(is_name) - is_name                       # name tokens before each position
    rank = seen - np.repeat(seen[docs.offsets[:-1]], docs.lengths())
    return {"name": is_name, "name1": is_name & (rank < NAME_WORDS),
            "value": docs.mask >= VALUE, "value1": docs.mask == VALUE1}


# ---- text, records and files -------------------------------------------------------------------

def texts(cfg: BioDConfig, docs: TokenDocs) -> list[str]:
    """Each document's text: its words joined by single spaces."""
    words = np.array(vocabulary(cfg), dtype=object)[docs.ids]
    return [" ".join(words[s:e]) for s, e in zip(docs.offsets[:-1], docs.offsets[1:])]


def _words(index: np.ndarray, prefix: str) -> str:
    return " ".join(f"{prefix}{i}" for i in index)


def to_records(biod: BioD, epoch: int = 0) -> list[dict]:
    """One record per person: person, name, values {"ID k": value as written}, text."""
    cfg, docs = biod.cfg, render(biod, epoch)
    values = biod.values()
    out = []
    for p, text in zip(docs.person, texts(cfg, docs)):
        f, m, l = biod.names[p]
        vals = {f"ID {k}": " , ".join(_words(chunk, "t") for chunk in values[p, k]) for k in range(cfg.k)}
        out.append({"person": int(p), "name": f"f{f} m{m} l{l}", "values": vals, "text": text})
    return out


def bound_inputs(cfg: BioDConfig) -> dict:
    """Sizes the bit-complexity bound (Theorem 3.2) takes."""
    return {"N0": cfg.n0, "N": cfg.n, "K": cfg.k, "C": cfg.c, "D": cfg.d, "L": cfg.l, "T": cfg.t}


def recorded_config(cfg: BioDConfig, junk_ratio: float = 0.0) -> dict:
    """The config a bioD folder's meta.json records (results.done compares a folder with it)."""
    return {**asdict(cfg), "junk_ratio": junk_ratio}


def write_biod(cfg: BioDConfig, out_dir: str | Path, junk_ratio: float = 0.0, records: bool = False,
               overwrite: bool = False) -> Path:
    """The bioD folder kn.batches reads: tokenizer/ and, last, meta.json ("kind": "bioD", the config
    under "biod", junk_ratio, the bound's sizes). kn.batches regenerates the bioD from the config and
    re-renders it every epoch, with junk_ratio junk tokens per useful token; records=True also writes
    biod.jsonl (epoch-0 biographies, for reading). A folder holding a dataset is replaced (all its
    dataset files) only with overwrite=True; other non-empty folders are refused (check_dataset_out)."""
    junk_ratio = check_number("junk_ratio", junk_ratio, unit="junk tokens per useful token")
    written = {}
    with dataset_folder(out_dir, overwrite) as out:
        if records:
            with atomic_file(out / "biod.jsonl") as tmp:
                written["n_records"] = write_jsonl(to_records(generate_biod(cfg)), tmp)
        save_tokenizer(make_tokenizer(cfg), out)
        write_json(out / "meta.json", config=recorded_config(cfg, junk_ratio), seed=cfg.seed, kind="bioD",
                   biod=asdict(cfg), junk_ratio=junk_ratio, **bound_inputs(cfg), doc_length=cfg.doc_length(),
                   n_tokens=cfg.n * cfg.doc_length(), vocab_size=len(vocabulary(cfg)), **written)
    return out
