"""A language-model run's data, from its config: the tokenized corpus (corpus.py, cached on disk),
the held-out validation documents, the nested training subset cut into sequences, the fixed
validation batch and the fixed probe batch an evaluation measures LAR on, and the batch of each
step. Built once per process and config (`dataset`), shared by the record and the engine."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import torch

from grokking.lm.config import LMConfig
from grokking.lm.corpus import (
    load_corpus,
    sequences,
    split_documents,
    training_stream,
    validation_stream,
)
from grokking.runs.config import ConfigError


@dataclass(frozen=True)
class Dataset:
    train: torch.Tensor  # [n, context + 1] non-overlapping windows of the training subset
    val: torch.Tensor  # [val_batches × batch_size, context + 1]: the fixed validation batch
    probe: torch.Tensor  # [batch_size, context + 1]: fixed training windows LAR is measured on
    meta: dict  # what summary.json records about the data

    @property
    def n_sequences(self) -> int:
        return len(self.train)


def dataset(cfg: LMConfig) -> Dataset:
    """The run's data (tokenizes the corpus on first use: once per corpus and vocabulary)."""
    d = cfg.data
    return _dataset(
        d.source, d.vocab_size, d.cache_dir, d.val_fraction, d.split_seed, d.subset_seed,
        d.train_tokens, cfg.model.context, cfg.batch_size, cfg.val_batches,
    )  # fmt: skip


@functools.lru_cache(maxsize=4)
def _dataset(
    source, vocab_size, cache_dir, val_fraction, split_seed, subset_seed, train_tokens,
    context, batch_size, val_batches,
) -> Dataset:  # fmt: skip
    try:
        corpus = load_corpus(source, vocab_size, cache_dir)
    except ValueError as error:  # names the argument: source, vocab_size or cache_dir
        raise ConfigError(f"data.{error}") from None
    train_docs, val_docs = split_documents(corpus.n_documents, val_fraction, split_seed)
    try:
        stream = training_stream(corpus, train_docs, train_tokens, subset_seed)
    except ValueError as error:
        raise ConfigError(f"data.train_tokens: {error}") from None
    train = _windows(stream, context, "data.train_tokens")
    val = _windows(validation_stream(corpus, val_docs), context, "data.val_fraction")
    n_val = min(len(val), val_batches * batch_size)
    picked = torch.randperm(len(val), generator=torch.Generator().manual_seed(split_seed))
    val = val[picked[:n_val]]
    probe = torch.randperm(len(train), generator=torch.Generator().manual_seed(subset_seed))
    meta = corpus.meta | {
        "n_train_documents": len(train_docs),
        "n_val_documents": len(val_docs),
        "train_tokens": len(stream),
        "train_sequences": len(train),
        "val_tokens": n_val * context,
        "train_hash": _hash(stream),  # the probe batch is cut from it
        "val_hash": _hash(val),
    }
    return Dataset(train, val, train[probe[:batch_size]], meta)


def _hash(tokens: torch.Tensor) -> str:
    return hashlib.sha256(tokens.contiguous().numpy().tobytes()).hexdigest()[:16]


def _windows(stream: torch.Tensor, context: int, field: str) -> torch.Tensor:
    if len(stream) < context + 1:
        raise ConfigError(
            f"{field}: leaves {len(stream)} tokens, fewer than one sequence of model.context + 1 "
            f"= {context + 1}"
        )
    return sequences(stream, context)


def batch_indices(step: int, batch_size: int, n_sequences: int, seed: int) -> torch.Tensor:
    """The training windows of step `step`: epoch after epoch, each a permutation of the windows
    seeded by (seed, epoch), read `batch_size` at a time across epoch ends. A function of the
    step alone, so a resumed run reads exactly the batches it would have read."""
    first = step * batch_size
    indices = []
    for position in range(first, first + batch_size):
        epoch, offset = divmod(position, n_sequences)
        indices.append(_permutation(seed, epoch, n_sequences)[offset])
    return torch.stack(indices)


@functools.lru_cache(maxsize=2)
def _permutation(seed: int, epoch: int, n: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**63)
    return torch.randperm(n, generator=generator)
