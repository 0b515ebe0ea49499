"""The validation-free alarms scored against the truth from validation, beside baselines fed the
same runs through the same rules.

Grokking: each detector reads a run's evaluations in order (training accuracy and one signal) and
names the epoch it fires at; the truth is the run's grokking epoch (validation accuracy ≥ its
threshold). Outcome: "within 10 %" of the grokking epoch, "early" or "late" beyond that,
"missed" (grokked, never fired), "false alarm" (never grokked, fired), "silent" (never grokked,
never fired).

Language models: each detector reads a run's steps (LAR) or evaluations (the weights' ranks);
the truth is the overfitting step of analysis/overfitting.py (None: the run never overfits).
Outcome: "at or before" the overfitting step (and not before the validation loss's minimum was
half-way reached in steps: "early" then), "late", "missed", "false alarm", "silent".

The baselines: the rule of LAR's generalization alarm (grokking: a rise of `rise` above the low
since memorization, with its patience) or a plain rise above the low so far (language models), fed
log(signal) or −log(signal), whichever way the signal moves when the model generalizes (or
overfits), with `rise` tuned on the same runs as LAR's alarms (scripts/tune_alarms.py); and
WeightWatcher's own rule, α < 2.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from grokking.lar.alarm import (
    AcceleratingDeclineAlarm,
    Alarm,
    GeneralizationAlarm,
    OverfittingAlarm,
    RiseAlarm,
    first_firing,
)

WITHIN = 0.10  # a grokking alarm within 10 % of the grokking epoch is on time


@dataclass(frozen=True)
class Detector:
    """A named rule on one signal: `make` builds a fresh alarm, `signal` names the column it
    reads, `transform` maps the column's values to what the alarm is fed."""

    name: str
    signal: str
    make: Callable[[], Alarm]
    transform: Callable[[np.ndarray], np.ndarray] = lambda values: values


class BelowAlarm(Alarm):
    """WeightWatcher's rule: fires at the first value below `limit` (α < 2: "over-trained")."""

    rule = "below"

    def __init__(self, limit: float = 2.0):
        super().__init__()
        self.limit = limit

    def update(self, step: int, value: float, **_) -> bool:
        if self.fired or not self._check(step, value) or value >= self.limit:
            return False
        return self._fire(step, f"{value:.3g} < {self.limit:g}")


def _memorized(rise: float) -> Callable[[], Alarm]:
    return lambda: GeneralizationAlarm(rise=rise)


def _rising(rise: float) -> Callable[[], Alarm]:
    return lambda: RiseAlarm(rise=rise)


def _minus_log(values: np.ndarray) -> np.ndarray:
    return -np.log(values)


# What a baseline is fed, by the way its signal moves when the model generalizes (or overfits):
# the rise rules then fire on a relative change of the signal, whatever its scale.
DIRECTIONS = {"rises": np.log, "falls": _minus_log}


# Tuned on the tuning runs by scripts/tune_alarms.py (docs/results.md, "The alarm").
GROKKING_DETECTORS = (
    Detector("LAR: generalization alarm", "lar", GeneralizationAlarm),
    Detector("effective rank of W (falls)", "effective_rank", _memorized(0.2), DIRECTIONS["falls"]),
    Detector("stable rank of W (rises)", "stable_rank", _memorized(0.3), DIRECTIONS["rises"]),
    Detector("RankMe of the inputs (falls)", "rankme", _memorized(0.3), DIRECTIONS["falls"]),
    Detector("WeightWatcher α of W (falls)", "ww_alpha", _memorized(0.5), DIRECTIONS["falls"]),
    Detector("WeightWatcher α of W < 2", "ww_alpha", BelowAlarm),
    Detector("WeightWatcher mean α < 2", "ww_alpha_mean", BelowAlarm),
)

LM_DETECTORS = (
    Detector("LAR: overfitting alarm", "lar", OverfittingAlarm),
    Detector("LAR: accelerating decline", "lar", AcceleratingDeclineAlarm),
    Detector("effective rank of W (rises)", "effective_rank", _rising(0.2), DIRECTIONS["rises"]),
    Detector("stable rank of W (rises)", "stable_rank", _rising(0.5), DIRECTIONS["rises"]),
)


def fire(detector: Detector, rows: pd.DataFrame, unit: str) -> int | None:
    """The `unit` (epoch or step) at which `detector` fires on a run's `rows`, or None. Rows
    without the signal (an evaluation between two checkpoints) are skipped."""
    rows = rows.dropna(subset=[detector.signal]).sort_values(unit)
    alarm = detector.make()
    signals = {name: rows[name].to_numpy() for name in alarm.needs}
    values = detector.transform(rows[detector.signal].to_numpy(dtype=float))
    return first_firing(alarm, rows[unit].to_numpy(), values, **signals)


def grokking_outcome(fired: int | None, truth: int | None) -> str:
    if truth is None or (isinstance(truth, float) and math.isnan(truth)):
        return "silent" if fired is None else "false alarm"
    if fired is None:
        return "missed"
    if abs(fired - truth) <= WITHIN * truth:
        return "within 10 %"
    return "early" if fired < truth else "late"


def lm_outcome(fired: int | None, truth: int | None, min_val_step: int) -> str:
    if truth is None or (isinstance(truth, float) and math.isnan(truth)):
        return "silent" if fired is None else "false alarm"
    if fired is None:
        return "missed"
    if fired > truth:
        return "late"
    return "early" if fired < min_val_step / 2 else "at or before"


def score_grokking(runs: pd.DataFrame, metrics: pd.DataFrame, baselines: pd.DataFrame,
                   detectors=GROKKING_DETECTORS) -> pd.DataFrame:  # fmt: skip
    """One row per run and detector: the epoch fired, the grokking epoch, the lead (epochs
    before the grokking epoch; negative: after), the outcome. `baselines` holds the signals
    measured at checkpoints (run, epoch, ...); the training accuracy comes from `metrics`."""
    rows = []
    for run in runs.itertuples(index=False):
        evals = metrics[metrics["run"] == run.run]
        at_checkpoints = baselines[baselines["run"] == run.run] if len(baselines) else baselines
        if len(at_checkpoints):
            at_checkpoints = at_checkpoints.merge(evals[["epoch", "train_acc"]], on="epoch")
        truth = run.grokking_epoch if run.grokked else None
        for detector in detectors:
            source = evals if detector.signal in evals.columns else at_checkpoints
            if detector.signal not in source.columns or source[detector.signal].isna().all():
                continue  # a run without periodic checkpoints has no baselines measured there
            fired = fire(detector, source, "epoch")
            rows.append(_score_row(run.run, detector, fired, truth, grokking_outcome(fired, truth)))
    return _frame(rows)


def score_lm(runs: pd.DataFrame, metrics: pd.DataFrame, detectors=LM_DETECTORS) -> pd.DataFrame:
    """One row per language-model run and detector: the step fired, the overfitting step, the
    lead (steps before it), the outcome."""
    rows = []
    for run in runs.itertuples(index=False):
        steps = metrics[metrics["run"] == run.run]
        truth = None if pd.isna(run.overfitting_step) else int(run.overfitting_step)
        for detector in detectors:
            fired = fire(detector, steps, "step")
            outcome = lm_outcome(fired, truth, run.min_val_loss_step)
            rows.append(_score_row(run.run, detector, fired, truth, outcome))
    return _frame(rows)


def _score_row(run: str, detector: Detector, fired, truth, outcome: str) -> dict:
    return {
        "run": run,
        "detector": detector.name,
        "fired": fired,
        "truth": truth,
        "lead": truth - fired if fired is not None and truth is not None else None,
        "outcome": outcome,
    }


def display(scores: pd.DataFrame) -> pd.DataFrame:
    """The per-run table, one row per run and a column per detector: "fired (outcome)"."""
    cells = scores.assign(
        cell=[
            f"{'–' if pd.isna(fired) else fired} ({outcome})"
            for fired, outcome in zip(scores["fired"], scores["outcome"], strict=True)
        ]
    )
    wide = cells.pivot(index="run", columns="detector", values="cell")
    truth = scores.groupby("run")["truth"].first()
    wide.insert(0, "truth", ["–" if pd.isna(t) else str(t) for t in truth.reindex(wide.index)])
    return wide[["truth", *dict.fromkeys(scores["detector"])]]


def _frame(rows: list[dict]) -> pd.DataFrame:
    """The score rows, with the epochs and steps as integers that may be missing."""
    columns = ["run", "detector", "fired", "truth", "lead", "outcome"]
    return pd.DataFrame(rows, columns=columns).astype(
        {"fired": "Int64", "truth": "Int64", "lead": "Int64"}
    )


def summary(scores: pd.DataFrame) -> pd.DataFrame:
    """Per detector: how many runs had each outcome, and the median lead."""
    counts = pd.crosstab(scores["detector"], scores["outcome"])
    counts["median lead"] = scores.groupby("detector")["lead"].median()
    order = list(dict.fromkeys(scores["detector"]))
    return counts.reindex(order)
