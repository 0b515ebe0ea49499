"""The alarms on language-model runs: each detector reads a run's steps; the truth is the
overfitting step (overfitting.py). On time: "at or before" it, but not before the validation
loss's minimum was half-way reached ("early"). The baselines: a rise above the low so far."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from grokking.analysis.alarms import DIRECTIONS, Detector, fire, frame, outcome, score_row
from grokking.lar.alarm import AcceleratingDeclineAlarm, Alarm, OverfittingAlarm, RiseAlarm


def _rising(rise: float) -> Callable[[], Alarm]:
    return lambda: RiseAlarm(rise=rise)


# Tuned on the tuning runs by scripts/tune_alarms.py (docs/results.md, "The alarm").
LM_DETECTORS = (
    Detector("LAR: overfitting alarm", "lar", OverfittingAlarm),
    Detector("LAR: accelerating decline", "lar", AcceleratingDeclineAlarm),
    Detector("effective rank of W (rises)", "effective_rank", _rising(0.2), DIRECTIONS["rises"]),
    Detector("stable rank of W (rises)", "stable_rank", _rising(0.5), DIRECTIONS["rises"]),
)


def _timing(min_val_step: int) -> Callable[[int, int], str]:
    def timing(fired: int, truth: int) -> str:
        if fired > truth:
            return "late"
        return "early" if fired < min_val_step / 2 else "at or before"

    return timing


def score_lm(runs: pd.DataFrame, metrics: pd.DataFrame, detectors=LM_DETECTORS) -> pd.DataFrame:
    """One row per language-model run and detector: the step fired, the overfitting step, the
    lead (steps before it), the outcome."""
    rows = []
    for run in runs.itertuples(index=False):
        steps = metrics[metrics["run"] == run.run]
        truth = None if pd.isna(run.overfitting_step) else int(run.overfitting_step)
        timing = _timing(run.min_val_loss_step)
        for detector in detectors:
            fired = fire(detector, steps, "step")
            rows.append(score_row(run.run, detector, fired, truth, outcome(fired, truth, timing)))
    return frame(rows)
