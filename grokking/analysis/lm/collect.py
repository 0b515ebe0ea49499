"""What the language-model analysis reads of a run: its summary's facts and the facts of its
curves (overfitting.py). Runs are compared only within a *condition*: the same sweep and the same
config but for the training-set size and the optimizer's settings (and the runtime fields of the
schema). Runs of different conditions are never pooled; each condition and optimizer's baseline
is its run on the largest training set."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from grokking import lm
from grokking.analysis import collect as shared
from grokking.analysis.collect import Reader, Results, flatten
from grokking.analysis.lm import overfitting
from grokking.analysis.steering import regularizer_columns
from grokking.lm.config import size_name
from grokking.runs.config import is_runtime_field
from grokking.runs.rundir import NUMBERS, TEXT, RunDir

# What this analysis reads of a run's tables (the overfitting step, Table 2, the figures, the
# alarms).
METRICS_NEEDS = dict.fromkeys(
    ["step", "train_loss", "lar", "val_loss", "probe_lar", "effective_rank", "stable_rank"]
    + ["p1", "q1", "p1q1"],
    NUMBERS,
)
MATRIX_NEEDS = {"step": NUMBERS, "name": TEXT, "lar": NUMBERS}
# Config values that tell the runs of one condition apart: they are the figures' lines.
VARYING = ("data.train_tokens", "optim.")


def _run_row(name: str, _run_dir: RunDir, summary: dict, metrics: pd.DataFrame) -> dict:
    config = flatten(summary["config"])
    fixed = {
        key: value
        for key, value in config.items()
        if not key.startswith(VARYING)
        and key != "seed"  # in the condition's name
        and not is_runtime_field(key, lm.FAMILY.schema.RUNTIME_FIELDS)
    }
    group = summary.get("sweep_name") or "single_runs"
    return (
        {
            "run": name,
            "group": group,
            "condition": f"{group} seed={summary['seed']} " + _digest(fixed),
            "model": size_name(config["model.hidden_size"], config["model.n_layers"]),
            "hidden_size": config["model.hidden_size"],
            "n_layers": config["model.n_layers"],
            "optimizer": summary["optimizer"],
            "optim_settings": repr(
                sorted((k, v) for k, v in config.items() if k.startswith("optim."))
            ),
            "lr": config["optim.lr"],
            "train_tokens": summary["train_tokens"],
            "epochs": summary["epochs"],
            "max_steps": summary["max_steps"],
            "tokens_per_step": config["batch_size"] * config["model.context"],
            "val_batches": config["val_batches"],
            "seed": summary["seed"],
            "weight_decay": config["optim.weight_decay"],
            "source": config["data.source"],  # None: Python's stdlib
        }
        | regularizer_columns(config)
        | overfitting.run_facts(metrics)
    )


def _digest(values: dict) -> str:
    return hashlib.sha256(repr(sorted(values.items())).encode()).hexdigest()[:8]


def _with_baselines(runs: pd.DataFrame) -> pd.DataFrame:
    """Mark each condition and optimizer's baseline: its run on the largest training set. The
    smaller model first, where the runs hold several sizes (each size is its own condition)."""
    order = ["hidden_size", "n_layers", "condition", "optimizer", "train_tokens"]
    runs = runs.sort_values(order).reset_index(drop=True)
    keys = ["condition", "optimizer", "optim_settings"]
    largest = runs.groupby(keys)["train_tokens"].transform("max")
    runs["baseline"] = runs["train_tokens"] == largest
    runs["label"] = runs["optimizer"] + ", " + runs["train_tokens"].map(_tokens)
    # where one optimizer ran with several settings (a learning-rate sweep), the rate tells them
    several = runs.groupby(["condition", "optimizer"])["optim_settings"].transform("nunique") > 1
    rates = [f", lr={lr:g}" if flag else "" for lr, flag in zip(runs["lr"], several, strict=True)]
    runs["label"] += rates
    if several_sizes(runs):  # the size first: "hidden 256 × 4 layers: adam, 100k"
        runs["label"] = runs["model"] + ": " + runs["label"]
    return runs


def several_sizes(runs: pd.DataFrame) -> bool:
    """Whether `runs` hold models of several sizes: their labels and figure panels name it."""
    return runs["model"].nunique() > 1


def _tokens(count: int) -> str:
    return f"{count / 1e6:.1f}M" if count >= 1e6 else f"{count / 1e3:.0f}k"


READER = Reader(lm.FAMILY, METRICS_NEEDS, MATRIX_NEEDS, row=_run_row, table=_with_baselines)


def collect(*dirs: str | Path) -> Results:
    """Every language-model run under `dirs` (any depth), as `shared.collect` reads them."""
    return shared.collect(READER, *dirs)
