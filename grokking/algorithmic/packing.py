"""Which runs can train together as one stacked model (a pack): the family's `pack_key`, by which
the packed launcher (grokking/runs/packs.py) cuts a sweep into packs. Runs share a pack when every
shape and every shared setting agrees: vocabulary, classes, training- and validation-set sizes,
batch size, model, optimizer, regularizer, evaluation cadence, precision, probed matrices and
device. They may differ in task, seed, split seed, train fraction (when the sizes agree),
thresholds, stop rule and budget."""

from __future__ import annotations

from grokking.algorithmic.config import TrainConfig
from grokking.algorithmic.tasks import make_dataset, train_size
from grokking.runs.config import to_dict

# Settings every member of a pack shares (besides the data shapes): one model, one optimizer.
SHARED_FIELDS = (
    "model",
    "optim",
    "regularize",  # one term for the pack; each member's switch is its own
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
