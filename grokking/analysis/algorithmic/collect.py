"""What the grokking analysis reads of a run: its summary's fields and config (conditions.py), the
columns of its tables it needs, and the checkpoints its events promise."""

from __future__ import annotations

from pathlib import Path

from grokking import algorithmic
from grokking.analysis import collect as shared
from grokking.analysis.algorithmic.conditions import add_labels, condition_columns
from grokking.analysis.collect import Reader, Results, reason
from grokking.runs.rundir import NUMBERS, SUMMARY, TEXT, DamagedFile, RunDir

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
# What this analysis reads of a run's tables (the figures, the alarms, Table 1).
METRICS_NEEDS = dict.fromkeys(
    ["epoch", "step", "train_acc", "val_acc", "train_loss", "val_loss", "lar"]
    + ["stable_rank", "effective_rank"],
    NUMBERS,
)
MATRIX_NEEDS = {"epoch": NUMBERS, "name": TEXT, "role": TEXT, "lar": NUMBERS}  # layer: NaN for W_U
# The checkpoint each event leaves behind; "final" is always there.
EVENT_CHECKPOINTS = {"memorization": "memorization_epoch", "grokking": "grokking_epoch"}


def _require_checkpoints(run_dir: RunDir, summary: dict) -> None:
    """Raise FileNotFoundError for a checkpoint the summary's events promise but that is absent."""
    expected = ["final"] + [
        k for k, epoch in EVENT_CHECKPOINTS.items() if summary[epoch] is not None
    ]
    missing = [kind for kind in expected if not run_dir.has_checkpoint(kind)]
    if missing:
        paths = ", ".join(str(run_dir.checkpoint_path(kind)) for kind in missing)
        raise FileNotFoundError(f"{paths} missing")


def _run_row(name: str, run_dir: RunDir, summary: dict, _metrics) -> dict:
    _require_checkpoints(run_dir, summary)
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


READER = Reader(
    family=algorithmic.FAMILY,
    metrics_needs=METRICS_NEEDS,
    matrix_needs=MATRIX_NEEDS,
    row=_run_row,
    table=add_labels,
    unnamed=True,  # the runs from before the families were all grokking runs
)


def collect(*dirs: str | Path) -> Results:
    """Every grokking run under `dirs` (any depth), as `shared.collect` reads them."""
    return shared.collect(READER, *dirs)
