"""The stopping rules scored side by side on the same runs: per run and rule, the step (or epoch)
it stopped at and the one whose weights it keeps; each family says how good that is against
validation (analysis/<family>/stops.py). Validation decides nothing here but the scores.

A rule reads one signal column of a run's rows (those that hold it: LAR at every step, the
baselines at evaluations only) and returns (stopped, kept): stopped None when it never stops (the
run trains to its end), kept None for the last weights. A rule whose signal a run did not record is
left out of that run's rows. The baselines keep the weights of the step they stop at; LAR's
`OverfittingStop` and validation early stopping keep an earlier one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from grokking.analysis.tables import write_table
from grokking.lar.select import run_rule
from grokking.runs.stopping import ValidationStop

PATIENCE = 3  # evaluations without a new low before early stopping stops (Lightning's default)
FULL = 0.95  # a run with nothing to stop for should train at least this share of its budget
EB_SMOOTHING = 0.5  # the weight of the newest value in the EB criterion's moving average


Outcome = tuple[int | None, int | None]  # (stopped, kept); None: never stopped, the last weights
NEVER: Outcome = (None, None)


@dataclass(frozen=True)
class Rule:
    """A named stopping rule on one signal: `decide(units, values, rows)` on the run's rows
    that hold the signal, in order (`rows` for a rule that reads more columns)."""

    name: str
    signal: str
    decide: Callable[[np.ndarray, np.ndarray, pd.DataFrame], Outcome]


def early_stop(units: np.ndarray, values: np.ndarray) -> Outcome:
    """The project's validation early stopping (`ValidationStop`: once `PATIENCE` values in a
    row have not gone below the lowest so far) fed a curve that should fall: the lowest value's
    step is kept, also when it never stops."""
    rule = run_rule(ValidationStop(PATIENCE), units, values)
    if rule.stopped:
        return rule.stopped_at, rule.selected
    rule.end(int(units[-1]), "the curve's end")
    return None, rule.selected


def at_first(units: np.ndarray, holds: np.ndarray) -> Outcome:
    """Stop at the first unit where `holds`, keeping its weights."""
    where = np.flatnonzero(holds)
    return (int(units[where[0]]),) * 2 if len(where) else NEVER


def exponential_mean(values: np.ndarray, weight: float = EB_SMOOTHING) -> np.ndarray:
    """The moving average m_t = weight × x_t + (1 − weight) × m_{t−1}, from m_0 = x_0."""
    smoothed = np.empty(len(values))
    for i, value in enumerate(values):
        smoothed[i] = value if i == 0 else weight * value + (1 - weight) * smoothed[i - 1]
    return smoothed


def _validation(units, values, _rows) -> Outcome:
    return early_stop(units, values)


def _gradient_disparity(units, values, _rows) -> Outcome:
    stopped, _ = early_stop(units, values)
    return stopped, stopped  # a baseline keeps the step it stops at


# The rules both families score where their signals are there.
BASELINES = (
    Rule(f"validation early stopping (patience {PATIENCE})", "val_loss", _validation),
    Rule(f"gradient disparity (patience {PATIENCE})", "gradient_disparity", _gradient_disparity),
    Rule("EB criterion > 0", "eb", lambda u, v, _: at_first(u, exponential_mean(v) > 0)),
    Rule("WeightWatcher mean α < 2", "ww_alpha_mean", lambda u, v, _: at_first(u, v < 2)),
)


def decide(rule: Rule, rows: pd.DataFrame, unit: str) -> Outcome | None:
    """`rule` on a run's `rows`; None when the run did not record its signal."""
    if rule.signal not in rows.columns:
        return None
    rows = rows.dropna(subset=[rule.signal]).sort_values(unit)
    if rows.empty:
        return None
    return rule.decide(rows[unit].to_numpy(), rows[rule.signal].to_numpy(dtype=float), rows)


def value_at(units: pd.Series, values: pd.Series, unit: int) -> float:
    """The value at the last of `units` at or before `unit` (a kept step between evaluations
    has the previous evaluation's)."""
    before = values[units <= unit]
    return float(before.iloc[-1]) if len(before) else np.nan


def scored_rows(runs: pd.DataFrame, rows_of, rules, unit: str, score) -> pd.DataFrame:
    """One row per run and rule whose signal the run recorded: `score(run, rows, stopped,
    kept)` ({column: value}) of what the rule decided on `rows_of(run)`: `stopped` None for a
    rule that never stopped, `kept` the run's last unit where the rule keeps the last weights."""
    table = []
    for run in runs.itertuples(index=False):
        rows = rows_of(run)
        end = int(rows[unit].max())
        for rule in rules:
            decision = decide(rule, rows, unit)
            if decision is None:
                continue
            stopped, kept = decision
            kept = end if kept is None else kept
            table.append({"run": run.run, "rule": rule.name} | score(run, rows, stopped, kept))
    return pd.DataFrame(table)


def write(scores: pd.DataFrame, summary: pd.DataFrame, out: Path, name: str, title: str) -> dict:
    """The per-run table and the summary per rule, as md, tex and csv (md and tex rounded)."""
    write_table(scores.round(3), out, name, tidy=scores)
    write_table(summary.round(3), out, f"{name}_summary", tidy=summary.reset_index())
    print(f"{title}:")
    print(summary.to_markdown(floatfmt=".3g"), end="\n\n")
    return {name: out / f"{name}.csv", f"{name}_summary": out / f"{name}_summary.csv"}
