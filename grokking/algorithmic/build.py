"""A run's data and freshly initialised model from its config: the one place both the trainer
and the analysis (`load_model`) get them from."""

from __future__ import annotations

import torch

from grokking.algorithmic.config import TrainConfig, from_dict
from grokking.algorithmic.model import Transformer
from grokking.algorithmic.tasks import make_dataset, split
from grokking.runs.rundir import RunDir


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


def run_config(run: RunDir) -> TrainConfig:
    """The run's TrainConfig, as stored in its summary.json."""
    return from_dict(run.read_summary()["config"])


def load_model(run: RunDir, kind: str = "final", device: torch.device | str = "cpu"):
    """The run's `Transformer` at checkpoint `kind` (memorization, grokking, final, last or
    epoch_N), on `device`, in eval mode."""
    _, model = build(run_config(run), device)
    model.load_state_dict(run.load_checkpoint(kind, map_location=device)["model"])
    return model.eval()
