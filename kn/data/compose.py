"""Documents composed from a table of unique string pieces.

bioS biographies and QA pairs are built from a few templates and values, so a corpus is stored as
a table of unique pieces plus, per document, a row of piece ids. Every piece that starts a word
carries its leading space (" Princeton, NJ", " She", " was born on"), so a document's text is the
concatenation of its pieces with the first space dropped, and - with a byte-level tokenizer that
adds a prefix space - its tokens are the concatenation of the pieces' tokens (kn.tokenize). Text,
character spans and token spans therefore all come from cumulative sums over the same rows.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kn.data.records import json_string

PAD = -1


class PieceTable:
    """Interns strings; `id(s)` returns a stable index."""

    def __init__(self):
        self.strings: list[str] = []
        self._index: dict[str, int] = {}

    def id(self, s: str) -> int:
        i = self._index.get(s)
        if i is None:
            i = self._index[s] = len(self.strings)
            self.strings.append(s)
        return i

    def ids(self, strings) -> np.ndarray:
        return np.fromiter((self.id(s) for s in strings), dtype=np.int64)


@dataclass
class Documents:
    """A corpus as piece rows.

    rows:  int [B, W], piece ids, PAD at the end of short rows.
    person: int [B], the person each document is about.
    spans: key -> (col [B, m], piece [B, m]): the spanned text of `key` starts at column `col`
           of the row (after that piece's leading space) and is the text of `piece` minus its
           leading space; col == PAD where a document has fewer than m occurrences.
    """
    strings: list[str]
    rows: np.ndarray
    person: np.ndarray
    spans: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rows)

    def piece_lengths(self, per_piece: np.ndarray) -> np.ndarray:
        """[B, W] lengths of each row's pieces under `per_piece` (0 on PAD)."""
        return np.where(self.rows >= 0, per_piece[np.maximum(self.rows, 0)], 0)

    def texts(self) -> list[str]:
        """Each document's text: its pieces joined, without the leading space."""
        flat = self.rows[self.rows >= 0]
        pieces = np.array(self.strings, dtype=object)[flat]
        joined = "".join(pieces.tolist())
        ends = np.cumsum(self.piece_lengths(self.char_lengths()).sum(axis=1))
        starts = np.concatenate([[0], ends[:-1]])
        return [joined[s + 1:e] for s, e in zip(starts.tolist(), ends.tolist())]

    def char_lengths(self) -> np.ndarray:
        return np.fromiter(map(len, self.strings), dtype=np.int64, count=len(self.strings))

    def offsets(self, per_piece: np.ndarray) -> dict[str, np.ndarray]:
        """key -> [B, m, 2] (start, end) of each span counted in units of `per_piece` (chars or tokens),
        measured in the space-prefixed document; -1 where absent."""
        lens = self.piece_lengths(per_piece)
        before = np.cumsum(lens, axis=1)
        before -= lens                                                # [B, W] start of each column
        out = {}
        for key, (col, piece) in self.spans.items():
            start = np.take_along_axis(before, np.maximum(col, 0), axis=1)
            off = np.stack([start, start + per_piece[np.maximum(piece, 0)]], axis=-1)
            out[key] = np.where((col >= 0)[..., None], off, -1)
        return out

    def char_spans(self) -> dict[str, np.ndarray]:
        """key -> [B, m, 2] character spans in `texts()`; -1 where absent."""
        # drop the spanned piece's own leading space; the document's first space is not in the text
        offsets = self.offsets(self.char_lengths())
        return {k: np.where(off >= 0, off + np.array([0, -1]), -1) for k, off in offsets.items()}

    def json_lines(self, heads: list[str]) -> list[str]:
        """Each document's JSONL line: `heads[i]` (a record's first fields, its closing brace left
        off), then its "text" and "spans" (key -> [[start, end], ...] of its character spans), as
        kn.data.records.json_line writes them. One format string per pattern of span counts."""
        texts = self.texts()
        pairs = {k: _present_first(sp) for k, sp in self.char_spans().items()}
        counts = [(p[..., 0] >= 0).sum(axis=1) for p in pairs.values()]       # per key: [B] spans present
        dims = [p.shape[1] + 1 for p in pairs.values()]
        codes, which = np.unique(np.ravel_multi_index(counts, dims), return_inverse=True)
        lines = [""] * len(self)
        for g, pattern in enumerate(np.stack(np.unravel_index(codes, dims), axis=1).tolist()):
            rows = np.flatnonzero(which == g)
            spans = ",".join(f"{json_string(k).replace('%', '%%')}:[{','.join(['[%d,%d]'] * c)}]"
                             for k, c in zip(pairs, pattern))
            fmt = '%s,"text":%s,"spans":{' + spans + "}}"
            ints = np.concatenate([p[rows, :c].reshape(len(rows), -1) for p, c in zip(pairs.values(), pattern)], axis=1)
            for i, values in zip(rows.tolist(), ints.tolist()):
                lines[i] = fmt % (heads[i], json_string(texts[i]), *values)
        return lines


def _present_first(spans: np.ndarray) -> np.ndarray:
    """[B, m, 2] spans with each row's present ones (start >= 0) first, in their order."""
    order = np.argsort(spans[..., 0] < 0, axis=1, kind="stable")
    return np.take_along_axis(spans, order[..., None], axis=1)


def concat(docs: list[Documents]) -> Documents:
    """Join corpora into one (piece ids remapped into one table)."""
    table = PieceTable()
    rows, persons, spans = [], [], {}
    width = max(d.rows.shape[1] for d in docs)
    for d in docs:
        remap = table.ids(d.strings)
        r = np.full((len(d), width), PAD, dtype=np.int64)
        r[:, :d.rows.shape[1]] = np.where(d.rows >= 0, remap[np.maximum(d.rows, 0)], PAD)
        rows.append(r)
        persons.append(d.person)
        for k, (col, piece) in d.spans.items():
            spans.setdefault(k, []).append((col, np.where(piece >= 0, remap[np.maximum(piece, 0)], PAD)))
    merged = {}
    for k, parts in spans.items():
        if len(parts) != len(docs):
            raise ValueError(f"concat: span {k!r} is missing from some corpora")
        m = max(c.shape[1] for c, _ in parts)
        pad = lambda a: np.pad(a, ((0, 0), (0, m - a.shape[1])), constant_values=PAD)  # noqa: E731
        merged[k] = (np.concatenate([pad(c) for c, _ in parts]), np.concatenate([pad(p) for _, p in parts]))
    return Documents(table.strings, np.concatenate(rows), np.concatenate(persons), merged)
