"""Which runs can train together as one stacked model (a pack), and how a list of runs is cut
into packs. Runs share a pack when every shape and every shared setting agrees: vocabulary,
classes, training- and validation-set sizes, batch size, model, optimizer, evaluation cadence,
precision, probed matrices and device. They may differ in task, seed, split seed, train fraction
(when the sizes agree), thresholds, stop rule and budget."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from grokking.algorithmic.config import TrainConfig
from grokking.algorithmic.tasks import make_dataset, train_size
from grokking.runs.config import to_dict

T = TypeVar("T")

# Settings every member of a pack shares (besides the data shapes): one model, one optimizer.
SHARED_FIELDS = (
    "model",
    "optim",
    "batch_size",
    "eval_every",
    "eval_batch_size",
    "precision",
    "lar_layers",
    "device",
    "threads",
)


def pack_key(cfg: TrainConfig) -> tuple:
    """Runs with equal keys can share a pack."""
    data = make_dataset(cfg.task.name, cfg.task.p)
    n_train = train_size(len(data), cfg.train_fraction)
    shapes = (data.vocab_size, data.n_classes, n_train, len(data) - n_train)
    plain = to_dict(cfg)
    return shapes + tuple(repr(plain[name]) for name in SHARED_FIELDS)


def plan_packs(items: Sequence[T], cfgs: Sequence[TrainConfig], max_size: int) -> list[list[T]]:
    """`items` (one per config) cut into packs of at most `max_size` runs with equal keys, in the
    order the runs first appear; packs of one key are as even as the limit allows."""
    groups: dict[tuple, list[T]] = {}
    for item, cfg in zip(items, cfgs, strict=True):
        groups.setdefault(pack_key(cfg), []).append(item)
    packs = []
    for group in groups.values():
        count = -(-len(group) // max_size)  # ceil
        size = -(-len(group) // count)
        packs += [group[start : start + size] for start in range(0, len(group), size)]
    return packs
