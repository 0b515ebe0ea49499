"""What both families' steering tables share: the words naming a run's regularizer, read from the
runs table's `config.regularize.*` columns (docs/method.md §6)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from grokking.analysis.tables import write_table
from grokking.lar.regularize import STEERING

REGULARIZE = "config.regularize."  # the runs table's columns of the regularizer's config
REGULARIZE_FIELDS = ("name", "strength", "trigger", "window")  # window: language models'


def regularizer_columns(config: dict) -> dict:
    """A flattened run config's regularizer values as runs-table columns (absent from runs made
    before the option existed: they trained without one)."""
    keys = (f"regularize.{field}" for field in REGULARIZE_FIELDS)
    return {f"config.{key}": config[key] for key in keys if key in config}


def variant(row) -> str:
    """'lar 0.3 from memorization', 'grokfast 2 from start', 'lar 1 from start over 100 steps'
    (a language model's LAR or p₁q₁ term and its trailing mean), or 'none' (runs from before the
    option existed have no regularizer columns: they trained without one)."""
    name = row.get(REGULARIZE + "name")
    if not isinstance(name, str) or name == "none":
        return "none"
    strength = row.get(REGULARIZE + "strength")
    trigger = row.get(REGULARIZE + "trigger")
    words = [name, f"{strength:g}"]
    if isinstance(trigger, str):
        words += ["from", trigger]
    window = row.get(REGULARIZE + "window")
    steers = name in {regularizer.name for regularizer in STEERING}  # a language model's hinge
    if steers and window is not None and not pd.isna(window):  # over its trailing mean's steps
        words += ["over", f"{window:g}", "steps"]
    return " ".join(words)


def ratio_text(value: float, bound: str) -> str:
    """A ratio as read: '1.39' exact, '> 2.10' or '< 0.50' a bound, '?' unknown."""
    if bound == "?":
        return "?"
    return f"{value:.2f}" if bound == "=" else f"{bound} {value:.2f}"


def integer_text(value) -> str:
    """An epoch or a step as read: an integer, or '–' where there is none."""
    return "–" if pd.isna(value) else str(int(value))


def write(
    table: pd.DataFrame,
    shown: pd.DataFrame,
    per_group: pd.DataFrame,
    out: Path,
    name: str,
    title: str,
) -> None:
    """`name`.{md,tex,csv} (the per-run table as read, `table` as its tidy csv) and
    `name`_summary.*, the summary printed under `title` too."""
    write_table(shown, out, name, tidy=table)
    write_table(per_group, out, f"{name}_summary")
    print(title)
    print(per_group.to_markdown(index=False), end="\n\n")
