"""The alarms on grokking runs: each detector reads a run's evaluations (training accuracy and one
signal) and names the epoch it fires at; the truth is the grokking epoch. On time: "within 10 %".
The baselines: LAR's generalization rule on log(signal) or −log(signal), whichever way the signal
moves when the model generalizes, and WeightWatcher's own rule, α < 2."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from grokking.analysis.alarms import DIRECTIONS, Detector, fire, frame, outcome, score_row
from grokking.lar.alarm import Alarm, GeneralizationAlarm

WITHIN = 0.10  # a grokking alarm within 10 % of the grokking epoch is on time


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


def _timing(fired: int, truth: int) -> str:
    if abs(fired - truth) <= WITHIN * truth:
        return "within 10 %"
    return "early" if fired < truth else "late"


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
            rows.append(score_row(run.run, detector, fired, truth, outcome(fired, truth, _timing)))
    return frame(rows)
