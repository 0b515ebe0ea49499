"""Gather every run under some directories into tidy DataFrames. A run is either in every
table or in none: one that cannot be read is skipped, and the reason is named."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from grokking.analysis.conditions import add_labels, condition_columns
from grokking.runs.rundir import (
    COMPLETED,
    NUMBERS,
    RUNNING,
    SUMMARY,
    TEXT,
    DamagedFile,
    RunDir,
    find_runs,
)

log = logging.getLogger("grokking.analysis")

# Summary fields copied into the runs table (the rest of the config: conditions.py).
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
# What this analysis reads of a run's tables (the figures, the alarms, Table 1): a run whose
# tables do not hold it is skipped when it is read, not half-way through the outputs.
METRICS_NEEDS = dict.fromkeys(
    ["epoch", "step", "train_acc", "val_acc", "train_loss", "val_loss", "lar"]
    + ["stable_rank", "effective_rank"],
    NUMBERS,
)
MATRIX_NEEDS = {"epoch": NUMBERS, "name": TEXT, "role": TEXT, "lar": NUMBERS}  # layer: NaN for W_U
# The checkpoint each event leaves behind; "final" is always there.
EVENT_CHECKPOINTS = {"memorization": "memorization_epoch", "grokking": "grokking_epoch"}


class NothingToAnalyse(Exception):
    """No run under the given folders can be analysed; the message says why."""


@dataclass
class Results:
    """`runs`: one row per completed run (`run` names it, `path` locates it); `metrics` and
    `matrix_lar`: the run's tables with a `run` column. Runs left out: `not_completed` as
    (run, status), `skipped` as (run, reason)."""

    runs: pd.DataFrame
    metrics: pd.DataFrame
    matrix_lar: pd.DataFrame
    not_completed: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def skip(self, run: str, reason: str) -> None:
        """Take `run` out of every table and record why."""
        log.warning("skipping %s: %s", run, reason)
        self.skipped.append((run, reason))
        self.runs = add_labels(self.runs[self.runs["run"] != run].reset_index(drop=True))
        self.metrics = self.metrics[self.metrics["run"] != run].reset_index(drop=True)
        self.matrix_lar = self.matrix_lar[self.matrix_lar["run"] != run].reset_index(drop=True)

    def left_out(self) -> str:
        """ "in progress: a; interrupted: b; skipped: c (reason)", or "" when none is."""
        by_status: dict[str, list[str]] = {}
        for run, status in self.not_completed:
            by_status.setdefault(status_word(status), []).append(run)
        parts = [f"{word}: {', '.join(runs)}" for word, runs in by_status.items()]
        if self.skipped:
            parts.append("skipped: " + "; ".join(f"{r} ({why})" for r, why in self.skipped))
        return "; ".join(parts)


def status_word(status: str | None) -> str:
    return "in progress" if status == RUNNING else str(status)


def reason(error: Exception, where: Path | None = None) -> str:
    """One short line for an error, naming the file: a DamagedFile names it itself; any other
    error (a summary without a field the analysis reads, say) is told as about `where`."""
    first_line = str(error).strip().split("\n")[0]
    if isinstance(error, DamagedFile):
        return first_line if len(first_line) <= 400 else first_line[:397] + "..."
    text = f"{type(error).__name__}: {first_line}"
    text = text if len(text) <= 160 else text[:157] + "..."
    return text if where is None or str(where) in text else f"{where}: {text}"


FAMILY = "algorithmic"  # the runs this analysis reads (summary.json's "family")


def collect(*dirs: str | Path) -> Results:
    """Every run under `dirs` (any depth). Runs not completed are reported and left out; a run
    with a missing or corrupt file is skipped with a warning that names it and the reason."""
    rows, metrics, matrices, not_completed, skipped = [], [], [], [], []
    for root in map(Path, dirs):
        if not root.is_dir():
            raise FileNotFoundError(f"no such directory: {root}")
        for run_dir in find_runs(root):
            name = f"{root.name}/{run_dir.path.relative_to(root)}".rstrip("/.")
            try:
                summary = run_dir.read_summary()
                if summary.get("family", FAMILY) != FAMILY:  # runs before the families had none
                    continue  # another family's analysis reads it (language_models.py)
                status = run_dir.status()  # the trainer's word, "interrupted" for a dead run
                if status != COMPLETED:
                    not_completed.append((name, status))
                    log.warning("%s is %s; left out", name, status_word(status))
                    continue
                _require_checkpoints(run_dir, summary)
                run_metrics = run_dir.read_metrics(METRICS_NEEDS).assign(run=name)
                run_matrices = run_dir.read_matrix_lar(MATRIX_NEEDS).assign(run=name)
                row = _run_row(name, run_dir, summary)
            except Exception as error:  # corrupt JSON or parquet, a missing file or key
                skipped.append((name, reason(error, run_dir.path)))
                log.warning("skipping %s: %s", name, skipped[-1][1])
                continue
            rows.append(row)
            metrics.append(run_metrics)
            matrices.append(run_matrices)
    if not rows and not not_completed and not skipped:
        raise NothingToAnalyse(
            f"no runs (folders with summary.json) under {', '.join(map(str, dirs))}"
        )
    return Results(
        runs=add_labels(pd.DataFrame(rows)) if rows else pd.DataFrame(),
        metrics=pd.concat(metrics, ignore_index=True) if metrics else pd.DataFrame(),
        matrix_lar=pd.concat(matrices, ignore_index=True) if matrices else pd.DataFrame(),
        not_completed=not_completed,
        skipped=skipped,
    )


def _require_checkpoints(run_dir: RunDir, summary: dict) -> None:
    """Raise FileNotFoundError for a checkpoint the summary's events promise but that is absent."""
    expected = ["final"] + [
        k for k, epoch in EVENT_CHECKPOINTS.items() if summary[epoch] is not None
    ]
    missing = [kind for kind in expected if not run_dir.has_checkpoint(kind)]
    if missing:
        paths = ", ".join(str(run_dir.checkpoint_path(kind)) for kind in missing)
        raise FileNotFoundError(f"{paths} missing")


def _run_row(name: str, run_dir: RunDir, summary: dict) -> dict:
    try:
        return _summary_row(name, run_dir, summary)
    except (KeyError, TypeError) as error:
        raise DamagedFile(
            f"{run_dir.path / SUMMARY} lacks what the analysis reads ({reason(error)}): "
            "restore it, or train the run again"
        ) from None


def _summary_row(name: str, run_dir: RunDir, summary: dict) -> dict:
    config = summary["config"]
    row = {"run": name, "path": str(run_dir.path)}
    row |= {key: summary[key] for key in SUMMARY_FIELDS}
    row["grokked"] = summary["grokking_epoch"] is not None
    row["eval_every"] = config["eval_every"]
    row["max_epochs"] = config["max_epochs"]
    row["sweep_name"] = summary.get("sweep_name")  # absent from runs of version 0.1.0's start
    row["group"] = row["sweep_name"] or "single_runs"
    return row | condition_columns(config)
