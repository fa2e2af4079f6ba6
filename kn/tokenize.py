"""Tokenizer, token spans and packed training windows (papers.md, Part 3.1, "Models and training").

- `train_tokenizer(texts)`: a byte-level BPE trained on the generated corpus with Hugging Face
  `tokenizers` (nothing is downloaded), wrapped as a `transformers` fast tokenizer. It adds a prefix
  space, so a name has the same tokens at the start of a biography as after "of" in a question.
  `sample_index` picks the texts it trains on: every text up to TOKENIZER_SAMPLE, a seeded sample of
  that size beyond (bytes are its alphabet, so every text still encodes).
- `encode_documents(docs, tok)`: token ids of piece-composed corpora (kn.data.compose) built from
  the pieces' tokens, without re-tokenizing every text; spans come from the same cumulative sums.
  `encode_corpora` does several corpora, tokenizing the pieces they share once.
- `encode_records(records, tok)`: the same from plain texts with character spans (bioR, JSONL).
- `pack(encoded, window, seed)`: documents globally shuffled, joined with EOS, cut into windows.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from kn.errors import DataError

if TYPE_CHECKING:   # a type only: kn.tokenize does not import kn.data at run time
    from kn.data.compose import Documents

SPECIAL_TOKENS = {"eos_token": "<eos>", "pad_token": "<pad>", "mask_token": "<mask>", "bos_token": "<bos>"}
TOKENIZER_SAMPLE = 50_000   # texts a corpus tokenizer trains on: on all 1.1M texts of bioS(100k) multi5+permute,
                            # training took 43% of the data's time (issue 27); tokens per bio within 1% (tests)


def sample_index(n_texts: int, n: int = TOKENIZER_SAMPLE, seed: int = 0) -> list[int]:
    """Which of n_texts texts a corpus tokenizer trains on: all when at most n; else n drawn by `seed`
    without replacement, in their order."""
    if n_texts <= n:
        return list(range(n_texts))
    return np.sort(np.random.default_rng([seed, 11]).choice(n_texts, n, replace=False)).tolist()


def train_tokenizer(texts, vocab_size: int = 4096, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Byte-level BPE with a prefix space, trained on `texts` (an iterable of strings)."""
    if not isinstance(vocab_size, int) or vocab_size < 300:
        raise DataError(f"vocab_size: got {vocab_size!r}; allowed: an integer >= 300 (256 bytes + specials + merges)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=list(SPECIAL_TOKENS.values()),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    path = Path(path)
    if not (path / "tokenizer.json").is_file():
        raise DataError(f"tokenizer: no tokenizer.json in {str(path)!r}; make one with `kn data tokenizer` or train_tokenizer")
    return PreTrainedTokenizerFast.from_pretrained(str(path), local_files_only=True)


def piece_tokens(tokenizer: PreTrainedTokenizerFast, strings: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token ids of each piece as written (no prefix space added): (flat ids, offsets, lengths)."""
    raw = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.post_processor = None
    encoded = raw.encode_batch_fast(strings, add_special_tokens=False) if hasattr(raw, "encode_batch_fast") \
        else raw.encode_batch(strings, add_special_tokens=False)
    ids = [e.ids for e in encoded]
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter(chain.from_iterable(ids), dtype=np.int32, count=int(lengths.sum()))
    return flat, np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths


@dataclass
class Encoded:
    """Token documents: ids (flat int32), offsets [B + 1], person [B], spans key -> [B, m, 2]
    token offsets within each document (-1 where absent)."""
    ids: np.ndarray
    offsets: np.ndarray
    person: np.ndarray
    spans: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def doc(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i]:self.offsets[i + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def take(self, idx: np.ndarray) -> "Encoded":
        """The documents idx, in that order."""
        lengths = self.lengths()[idx]
        ids = ragged_gather(self.ids, self.offsets[:-1][idx], lengths)
        return Encoded(ids, np.concatenate([[0], np.cumsum(lengths)]), self.person[idx],
                       {k: v[idx] for k, v in self.spans.items()})


def equal_exposure(docs: Encoded) -> Encoded:
    """Each person's documents repeated so that everyone has as many as the person with the most
    (their counts must divide it): one pass then exposes every person equally often."""
    counts = np.bincount(docs.person)
    most = counts.max()
    if np.any(most % counts[counts > 0]):
        raise DataError(f"docs: documents per person {sorted(set(counts[counts > 0].tolist()))} do not all divide "
                        f"{most}; equal exposure needs each count to divide the largest")
    return docs.take(np.repeat(np.arange(len(docs)), most // counts[docs.person]))


def ragged_gather(flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenate flat[starts[i] : starts[i] + lengths[i]] over i, vectorised: the index into flat
    steps by 1, and at each segment's first position jumps from the end of the one before."""
    keep = lengths > 0
    starts, lengths = starts[keep], lengths[keep]
    index = np.ones(int(lengths.sum()), dtype=np.int64)
    first = np.cumsum(lengths) - lengths                              # output position of each segment
    index[first] = starts - np.concatenate([[0], starts[:-1] + lengths[:-1] - 1])
    return flat[np.cumsum(index, out=index)]


def encode_documents(docs: Documents, tokenizer: PreTrainedTokenizerFast) -> Encoded:
    """Compose each document's tokens from its pieces' tokens."""
    return encode_corpora([docs], tokenizer)[0]


def encode_corpora(corpora: list[Documents], tokenizer: PreTrainedTokenizerFast) -> list[Encoded]:
    """`encode_documents` of each corpus, every distinct piece tokenized once (biographies and their
    QAs share names and values)."""
    strings = list(dict.fromkeys(chain.from_iterable(docs.strings for docs in corpora)))
    flat, starts, lengths = piece_tokens(tokenizer, strings)
    position = dict(zip(strings, range(len(strings))))
    out = []
    for docs in corpora:
        mine = np.fromiter(map(position.__getitem__, docs.strings), dtype=np.int64, count=len(docs.strings))
        piece_len, pieces = lengths[mine], docs.rows[docs.rows >= 0]
        ids = ragged_gather(flat, starts[mine][pieces], piece_len[pieces])
        offsets = np.concatenate([[0], np.cumsum(docs.piece_lengths(piece_len).sum(axis=1))])
        out.append(Encoded(ids, offsets, docs.person.copy(), docs.offsets(piece_len)))
    return out


def char_to_token_spans(text: str, token_offsets: list[tuple[int, int]], spans: list[list[int]]) -> list[list[int]]:
    """Token index ranges covering each character span and the space before it (the tokens of
    ' <value>', as `encode_documents` counts them)."""
    starts = np.array([s for s, _ in token_offsets])
    ends = np.array([e for _, e in token_offsets])
    out = []
    for s, e in spans:
        s = s - 1 if s > 0 and text[s - 1] == " " else s
        hit = np.nonzero((ends > s) & (starts < e))[0]
        out.append([int(hit[0]), int(hit[-1]) + 1] if len(hit) else [-1, -1])
    return out


def encode_records(records: list[dict], tokenizer: PreTrainedTokenizerFast, keys: tuple[str, ...] | None = None) -> Encoded:
    """Tokenize record texts and map their character spans to token spans."""
    keys = keys or tuple(records[0]["spans"])
    enc = tokenizer([r["text"] for r in records], add_special_tokens=False, return_offsets_mapping=True)
    m = {k: max(len(r["spans"].get(k, [])) for r in records) for k in keys}
    spans = {k: np.full((len(records), max(m[k], 1), 2), -1, dtype=np.int64) for k in keys}
    for i, r in enumerate(records):
        for k in keys:
            for j, sp in enumerate(char_to_token_spans(r["text"], enc["offset_mapping"][i], r["spans"].get(k, []))):
                spans[k][i, j] = sp
    lengths = np.array([len(x) for x in enc["input_ids"]], dtype=np.int64)
    ids = np.fromiter((t for x in enc["input_ids"] for t in x), dtype=np.int32, count=int(lengths.sum()))
    person = np.array([r.get("person", i) for i, r in enumerate(records)])
    return Encoded(ids, np.concatenate([[0], np.cumsum(lengths)]), person, spans)


def pack(encoded: Encoded, eos_id: int, window: int = 512, seed: int = 0, drop_last: bool = True) -> np.ndarray:
    """Shuffle documents (seeded, globally), join each with a trailing EOS, cut into windows.

    Returns int32 [n_windows, window]. A global shuffle keeps the biographies of one person
    (multiM, permuteP) from landing together in one window.
    """
    if not isinstance(window, int) or window < 2:
        raise DataError(f"window: got {window!r}; allowed: an integer >= 2")
    order = np.random.default_rng([seed, 3]).permutation(len(encoded))
    lengths = encoded.lengths()
    body = ragged_gather(encoded.ids, encoded.offsets[:-1][order], lengths[order])
    # insert EOS after each document: positions where each shuffled document ends
    stream = np.insert(body, np.cumsum(lengths[order]), eos_id).astype(np.int32)
    n = len(stream) // window if drop_last else -(-len(stream) // window)
    if n == 0:
        raise DataError(f"window: the corpus has {len(stream)} tokens, fewer than one window of {window}")
    stream = np.pad(stream, (0, max(0, n * window - len(stream))), constant_values=eos_id)
    return stream[: n * window].reshape(n, window)
