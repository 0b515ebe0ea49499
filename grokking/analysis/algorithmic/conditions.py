"""Which runs may be averaged together: only runs that differ in nothing but their seeds.

Every other value of a run's config (summary["config"], flattened to "optim.lr" and so on) is
part of its condition. Task, p and train fraction are the panels and rows the figures and tables
always had; any other value that differs between runs of one sweep is that sweep's *setting*:
it splits the runs, names them ("max_epochs=100") and becomes a column of the tables.
"""

from __future__ import annotations

import pandas as pd

from grokking import algorithmic
from grokking.analysis.collect import flatten
from grokking.runs.config import is_runtime_field

CONFIG_PREFIX = "config."  # runs-table columns holding the condition's other config values
POOLED_FIELDS = ("seed", "split_seed")  # the only values runs may differ in and be averaged
# Config values the runs table already holds under a name of its own, or the group itself.
OWN_COLUMNS = {"task.name": "task", "task.p": "p", "train_fraction": "train_fraction"}
GROUP_FIELD = "sweep_name"
PANEL_KEYS = ["task", "p", "train_fraction"]


def condition_columns(config: dict) -> dict:
    """The run's config values that may split runs, as `config.<key>` columns (lists and other
    unhashable values as text, so that they can be compared and grouped)."""
    columns = {}
    for key, value in flatten(config).items():
        if (
            is_runtime_field(key, algorithmic.FAMILY.schema.RUNTIME_FIELDS)  # how fast, not what
            or key in POOLED_FIELDS
            or key in OWN_COLUMNS
            or key == GROUP_FIELD
        ):
            continue
        columns[CONFIG_PREFIX + key] = str(value) if isinstance(value, list | dict) else value
    return columns


def setting_keys(runs: pd.DataFrame) -> list[str]:
    """The `config.*` columns whose value differs between runs of some group, in column order."""
    columns = [c for c in runs.columns if c.startswith(CONFIG_PREFIX)]
    varying = runs.groupby("group")[columns].nunique(dropna=False).gt(1).any()
    return [c for c in columns if varying[c]]


def add_labels(runs: pd.DataFrame) -> pd.DataFrame:
    """`runs` with `setting` (what splits the run from others of its group beside task, p and
    train fraction: "max_epochs=100", or "") and `condition` (task, p, fraction and setting)."""
    varying = {
        group: setting_keys(in_group) for group, in_group in runs.groupby("group", sort=False)
    }
    setting = [
        ", ".join(f"{key.removeprefix(CONFIG_PREFIX)}={row[key]}" for key in varying[row["group"]])
        for _, row in runs.iterrows()
    ]
    runs = runs.assign(setting=setting)
    return runs.assign(condition=[condition_title(row) for _, row in runs.iterrows()])


def condition_title(row) -> str:
    """ "add, p=97, frac=0.5" followed by the run's setting, if any."""
    parts = [row["task"]]
    if pd.notna(row["p"]):
        parts.append(f"p={int(row['p'])}")
    parts.append(f"frac={row['train_fraction']:g}")
    if row.get("setting"):
        parts.append(row["setting"])
    return ", ".join(parts)


def seeds_label(count: int) -> str:
    return f"{count} seed" if count == 1 else f"{count} seeds"
