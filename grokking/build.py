"""A run's data and freshly initialised model from its config: the one place both the trainer
and the analysis (through `RunDir.load_model`) get them from."""

from __future__ import annotations

import torch

from grokking.config import TrainConfig
from grokking.model import Transformer
from grokking.tasks import make_dataset, split


def build(cfg: TrainConfig, device: torch.device | str = "cpu"):
    """((train_x, train_y, val_x, val_y), model) of a run, on `device`; the model is freshly
    initialised from `cfg.seed` (load a checkpoint's state_dict into it to restore one)."""
    data = make_dataset(cfg.task.name, cfg.task.p)
    train_idx, val_idx = split(data, cfg.train_fraction, cfg.split_seed)
    splits = tuple(
        tensor[idx].to(device)
        for idx in (train_idx, val_idx)
        for tensor in (data.inputs, data.labels)
    )
    torch.manual_seed(cfg.seed)
    return splits, Transformer(data.vocab_size, data.n_classes, cfg.model).to(device)
