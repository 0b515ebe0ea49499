"""Gather every run under some directories into tidy DataFrames, skipping broken ones."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from grokking.rundir import COMPLETED, RunDir, find_runs

log = logging.getLogger("grokking.analysis")

# Summary fields copied into the runs table (config fields come from summary["config"]).
SUMMARY_FIELDS = [
    "status",
    "task",
    "p",
    "train_fraction",
    "seed",
    "split_seed",
    "batch_size",
    "n_train",
    "n_val",
    "memorization_epoch",
    "grokking_epoch",
    "final_epoch",
    "wall_s",
]


@dataclass
class Results:
    """`runs`: one row per completed run (`run` names it, `path` locates it); `metrics` and
    `matrix_lar`: the run's tables with a `run` column; `in_progress` and `skipped`: runs left
    out of the tables, with the reason."""

    runs: pd.DataFrame
    metrics: pd.DataFrame
    matrix_lar: pd.DataFrame
    in_progress: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def collect(*dirs: str | Path) -> Results:
    """Every run under `dirs` (any depth). Runs not completed are reported and left out;
    a run with a missing or corrupt file is skipped with a warning that names it."""
    rows, metrics, matrices, in_progress, skipped = [], [], [], [], []
    for root in map(Path, dirs):
        if not root.is_dir():
            raise FileNotFoundError(f"no such directory: {root}")
        for run_dir in find_runs(root):
            name = f"{root.name}/{run_dir.path.relative_to(root)}".rstrip("/.")
            try:
                summary = run_dir.read_summary()
                if summary.get("status") != COMPLETED:
                    in_progress.append(name)
                    log.warning("%s is %s; left out of the tables", name, summary.get("status"))
                    continue
                run_metrics = run_dir.read_metrics().assign(run=name)
                run_matrices = run_dir.read_matrix_lar().assign(run=name)
                row = _run_row(name, run_dir, summary)
            except Exception as error:  # corrupt JSON or parquet, a missing file or key
                skipped.append((name, f"{type(error).__name__}: {error}"))
                log.warning("skipping %s: %s: %s", name, type(error).__name__, error)
                continue
            rows.append(row)
            metrics.append(run_metrics)
            matrices.append(run_matrices)
    if not rows and not in_progress and not skipped:
        raise FileNotFoundError(
            f"no runs (folders with summary.json) under {', '.join(map(str, dirs))}"
        )
    return Results(
        runs=pd.DataFrame(rows),
        metrics=pd.concat(metrics, ignore_index=True) if metrics else pd.DataFrame(),
        matrix_lar=pd.concat(matrices, ignore_index=True) if matrices else pd.DataFrame(),
        in_progress=in_progress,
        skipped=skipped,
    )


def _run_row(name: str, run_dir: RunDir, summary: dict) -> dict:
    config = summary["config"]
    row = {"run": name, "path": str(run_dir.path)}
    row |= {key: summary[key] for key in SUMMARY_FIELDS}
    row["grokked"] = summary["grokking_epoch"] is not None
    row["eval_every"] = config["eval_every"]
    row["max_epochs"] = config["max_epochs"]
    row["sweep_name"] = summary.get("sweep_name")  # absent from runs of version 0.1.0's start
    row["group"] = row["sweep_name"] or "single_runs"
    return row
