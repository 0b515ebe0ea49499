"""The validation-free alarms scored against the truth from validation, beside baselines fed the
same runs through the same rules; each family says what the truth is and when an alarm is on time
(analysis/<family>/alarms.py). Besides on time, "early" or "late": "missed" (the event came, it
never fired), "false alarm" (no event, it fired), "silent" (no event, it never fired). The
baselines' `rise` is tuned on the same runs as LAR's alarms (scripts/tune_alarms.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from grokking.analysis.tables import write_table
from grokking.lar.alarm import Alarm, first_firing


@dataclass(frozen=True)
class Detector:
    """A named rule on one signal: `make` builds a fresh alarm, `signal` names the column it
    reads, `transform` maps the column's values to what the alarm is fed."""

    name: str
    signal: str
    make: Callable[[], Alarm]
    transform: Callable[[np.ndarray], np.ndarray] = lambda values: values


def _minus_log(values: np.ndarray) -> np.ndarray:
    return -np.log(values)


# What a baseline is fed, by the way its signal moves when the model generalizes (or overfits):
# the rise rules then fire on a relative change of the signal, whatever its scale.
DIRECTIONS = {"rises": np.log, "falls": _minus_log}


def fire(detector: Detector, rows: pd.DataFrame, unit: str) -> int | None:
    """The `unit` (epoch or step) at which `detector` fires on a run's `rows`, or None. Rows
    without the signal (an evaluation between two checkpoints) are skipped."""
    rows = rows.dropna(subset=[detector.signal]).sort_values(unit)
    alarm = detector.make()
    signals = {name: rows[name].to_numpy() for name in alarm.needs}
    values = detector.transform(rows[detector.signal].to_numpy(dtype=float))
    return first_firing(alarm, rows[unit].to_numpy(), values, **signals)


def outcome(fired: int | None, truth: int | None, timing: Callable[[int, int], str]) -> str:
    """The outcome of an alarm that fired at `fired` against the event at `truth` (None or NaN:
    none came); `timing(fired, truth)` when both are there."""
    if truth is None or (isinstance(truth, float) and math.isnan(truth)):
        return "silent" if fired is None else "false alarm"
    if fired is None:
        return "missed"
    return timing(fired, truth)


def score_row(run: str, detector: Detector, fired, truth, outcome: str) -> dict:
    return {
        "run": run,
        "detector": detector.name,
        "fired": fired,
        "truth": truth,
        "lead": truth - fired if fired is not None and truth is not None else None,
        "outcome": outcome,
    }


def frame(rows: list[dict]) -> pd.DataFrame:
    """The score rows, with the epochs and steps as integers that may be missing."""
    columns = ["run", "detector", "fired", "truth", "lead", "outcome"]
    return pd.DataFrame(rows, columns=columns).astype(
        {"fired": "Int64", "truth": "Int64", "lead": "Int64"}
    )


def _cell(row) -> str:
    """A cell of the per-run table: "fired (outcome)", with the lead and its share of the delay
    where the scores have one: "1700 (within 10 %, lead -130, -8% of the delay)"."""
    fired = "–" if pd.isna(row["fired"]) else row["fired"]
    share = row.get("lead_share")
    if pd.isna(row["lead"]) or share is None or pd.isna(share):
        return f"{fired} ({row['outcome']})"
    return f"{fired} ({row['outcome']}, lead {row['lead']}, {share:.0%} of the delay)"


def display(scores: pd.DataFrame) -> pd.DataFrame:
    """The per-run table, one row per run and a column per detector: "fired (outcome)", with
    the lead as `_cell` writes it."""
    cells = scores.assign(cell=[_cell(row) for _, row in scores.iterrows()])
    wide = cells.pivot(index="run", columns="detector", values="cell")
    truth = scores.groupby("run")["truth"].first()
    wide.insert(0, "truth", ["–" if pd.isna(t) else str(t) for t in truth.reindex(wide.index)])
    return wide[["truth", *dict.fromkeys(scores["detector"])]]


def summary(scores: pd.DataFrame) -> pd.DataFrame:
    """Per detector: how many runs had each outcome, the median lead, and the median lead as a
    share of the delay where the scores have one (`lead_share`)."""
    counts = pd.crosstab(scores["detector"], scores["outcome"])
    counts["median lead"] = scores.groupby("detector")["lead"].median()
    if "lead_share" in scores:
        counts["median lead share"] = scores.groupby("detector")["lead_share"].median()
    order = list(dict.fromkeys(scores["detector"]))
    return counts.reindex(order)


def write(scores: pd.DataFrame, out: Path, name: str, title: str) -> dict:
    """The per-run scores of the alarms and baselines, and their summary."""
    write_table(display(scores), out, name, tidy=scores)
    outcomes = summary(scores)
    write_table(outcomes, out, f"{name}_summary", tidy=outcomes.reset_index())
    print(f"{title}:")
    print(outcomes.to_markdown(), end="\n\n")
    return {name: out / f"{name}.csv", f"{name}_summary": out / f"{name}_summary.csv"}
