"""The vocabulary in use (issue 27): a model whose embedding and output head hold only the tokens
its training data use, plus one row that stands for all the others.

A tokenizer of V tokens of which the data use U: the model has U + 1 rows, the tokens in use in
ascending tokenizer id, then "the rest". The rest's logit is its row's score plus log(V - U), so
the trimmed model's softmax is exactly that of a full model whose V - U unused rows are copies of
that row; it starts as the mean of the unused rows of the full model's initialisation (same seed),
so both start from the same body and nearly the same loss. `expand` gives that full model: what
`save_pretrained` writes, so generation, evaluation and saved models speak tokenizer ids; only the
training loop sees model ids (`VocabMap.batches`). Tokens the data never use become one shared row.
Entry points: `VocabMap`, `trim`, `expand`.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch

IGNORE = -100          # the label of a position without loss (kn.batches, kn.bidirectional)


@dataclass(frozen=True)
class VocabMap:
    used: np.ndarray       # tokenizer ids the data use, ascending
    size: int              # the tokenizer's vocabulary V

    @classmethod
    def of(cls, arrays, size: int) -> "VocabMap":
        """The map of the token ids in `arrays` (plus nothing else) in a vocabulary of `size`."""
        used = np.unique(np.concatenate([np.unique(np.asarray(a)) for a in arrays]))
        return cls(used.astype(np.int64), int(size))

    @property
    def rows(self) -> int:
        """The model's vocabulary: the tokens in use and the rest's row."""
        return len(self.used) + 1

    @property
    def to_model(self) -> np.ndarray:
        """[V] tokenizer id -> model id; every unused id -> the rest's row (U)."""
        table = np.full(self.size, len(self.used), dtype=np.int64)
        table[self.used] = np.arange(len(self.used))
        return table

    def batches(self, batches):
        """batches(step) -> (ids, labels) in tokenizer ids, as model ids (IGNORE kept)."""
        table = self.to_model

        def mapped(step: int):
            ids, labels = batches(step)
            return table[ids], np.where(labels == IGNORE, IGNORE, table[np.maximum(labels, 0)])
        return mapped

    def record(self) -> dict:
        return {"tokenizer": self.size, "trimmed": True, "in_use": len(self.used), "model_rows": self.rows}


class RestHead(torch.nn.Module):
    """The output head of a trimmed model: logits = h W^T, plus log(V - U) on the rest's row."""

    def __init__(self, weight: torch.nn.Parameter, unused: int):
        super().__init__()
        self.weight = weight
        offset = torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)
        offset[-1] = math.log(unused)
        self.register_buffer("offset", offset, persistent=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(h, self.weight) + self.offset


def _rows(weight: torch.Tensor, vmap: VocabMap) -> torch.nn.Parameter:
    """[U + 1, d]: the used rows, then the mean of the others."""
    rest = np.setdiff1d(np.arange(vmap.size), vmap.used)
    w = weight.detach()
    return torch.nn.Parameter(torch.cat([w[torch.from_numpy(vmap.used)], w[torch.from_numpy(rest)].mean(0, keepdim=True)]))


def trim(model, vmap: VocabMap):
    """`model` (a causal LM of vmap.size tokens) with its embedding and head cut to vmap.rows, in
    place; the map is kept as model.kn_vocab for `expand`."""
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = head.weight is emb.weight
    new_emb = torch.nn.Embedding(vmap.rows, emb.weight.shape[1], device=emb.weight.device, dtype=emb.weight.dtype)
    new_emb.weight = _rows(emb.weight, vmap)
    model.set_input_embeddings(new_emb)
    model.set_output_embeddings(RestHead(new_emb.weight if tied else _rows(head.weight, vmap), vmap.size - len(vmap.used)))
    model.config.vocab_size = vmap.rows
    model.kn_vocab = vmap
    return model


def _grow(weight: torch.Tensor, vmap: VocabMap) -> torch.nn.Parameter:
    """[V, d]: the used rows at their tokenizer ids, the rest's row everywhere else."""
    w = weight.detach()
    full = w[-1:].repeat(vmap.size, 1)
    full[torch.from_numpy(vmap.used)] = w[:-1]
    return torch.nn.Parameter(full)


def expand(model):
    """A full-vocabulary copy of a trimmed model (model.kn_vocab): the same softmax over tokenizer ids."""
    vmap = model.kn_vocab
    full = copy.deepcopy(model)
    del full.kn_vocab
    emb, head = full.get_input_embeddings(), full.get_output_embeddings()
    tied = head.weight is emb.weight
    new_emb = torch.nn.Embedding(vmap.size, emb.weight.shape[1], device=emb.weight.device, dtype=emb.weight.dtype)
    new_emb.weight = _grow(emb.weight, vmap)
    full.set_input_embeddings(new_emb)
    new_head = torch.nn.Linear(emb.weight.shape[1], vmap.size, bias=False, device=emb.weight.device)
    new_head.weight = new_emb.weight if tied else _grow(head.weight, vmap)
    full.set_output_embeddings(new_head)
    full.config.vocab_size = vmap.size
    return full
