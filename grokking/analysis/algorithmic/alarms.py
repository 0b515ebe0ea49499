"""The alarms on grokking runs: each detector reads a run's evaluations (training accuracy and one
signal) and names the epoch it fires at; the truth is the grokking epoch. On time: "within 10 %".
A run whose validation accuracy is already `NO_DELAY` at memorization has no delay to detect: its
outcome is "no delay", counted apart from hits and misses. The baselines: LAR's generalization
rule on log(signal) or −log(signal), whichever way the signal moves when the model generalizes,
and WeightWatcher's own rule, α < 2. A detector reads another matrix's LAR than the
unembedding's through the signal `matrix_signal(name)`, from the runs' matrix_lar tables."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from grokking.analysis.alarms import DIRECTIONS, Detector, fire, frame, outcome, score_row
from grokking.lar.alarm import Alarm, GeneralizationAlarm, SpreadRiseAlarm

WITHIN = 0.10  # a grokking alarm within 10 % of the grokking epoch is on time
NO_DELAY = 0.9  # validation accuracy at memorization from which a run has no delay to detect
LAST_MLP_INPUT = "blocks.1.mlp.fc_in"  # the matrix SpreadRiseAlarm reads (its docstring)


def matrix_signal(name: str) -> str:
    """The column holding the LAR of the dense matrix `name` (matrix_lar's `name`)."""
    return f"lar[{name}]"


def with_matrices(metrics: pd.DataFrame, matrix_lar: pd.DataFrame | None) -> pd.DataFrame:
    """`metrics` with every matrix's LAR as a column of its own (`matrix_signal`), by run and
    epoch; unchanged without matrix tables."""
    if matrix_lar is None or matrix_lar.empty:
        return metrics
    wide = matrix_lar.pivot_table(index=["run", "epoch"], columns="name", values="lar")
    wide.columns = [matrix_signal(name) for name in wide.columns]
    return metrics.merge(wide.reset_index(), on=["run", "epoch"], how="left")


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


# Tuned on the tuning runs by scripts/tune_alarms.py (docs/results.md, "The alarm"), but the
# spread rules: SpreadRiseAlarm's defaults (its docstring).
GROKKING_DETECTORS = (
    Detector("LAR: generalization alarm", "lar", GeneralizationAlarm),
    Detector("LAR: spread rise", "lar", SpreadRiseAlarm),
    Detector(
        "LAR of the last MLP input: spread rise", matrix_signal(LAST_MLP_INPUT), SpreadRiseAlarm
    ),
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


def _delays(runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """Per run: the memorization epoch, the delay (grokking − memorization epoch; NaN for a run
    that never groks) and whether the run had one (validation accuracy < `NO_DELAY` at
    memorization)."""
    # As numbers: a column of runs none of which memorized holds only None (dtype object).
    memorized = pd.to_numeric(runs["memorization_epoch"]).astype(float)
    evaluated = metrics[["run", "epoch", "val_acc"]].astype({"epoch": float})
    at_memorization = (
        runs[["run"]].assign(epoch=memorized).merge(evaluated, on=["run", "epoch"], how="left")
    )
    grokking = pd.to_numeric(runs["grokking_epoch"]).where(runs["grokked"])
    return pd.DataFrame({
        "run": runs["run"].to_numpy(),
        "memorized": memorized.to_numpy(),
        "delay": (grokking - memorized).to_numpy(dtype=float),
        "no_delay": (at_memorization["val_acc"] >= NO_DELAY).to_numpy(),
    })  # fmt: skip


def score_grokking(runs: pd.DataFrame, metrics: pd.DataFrame, baselines: pd.DataFrame,
                   detectors=GROKKING_DETECTORS, matrix_lar: pd.DataFrame | None = None
                   ) -> pd.DataFrame:  # fmt: skip
    """One row per run and detector: the epoch fired, the grokking epoch, the lead (epochs
    before the grokking epoch; negative: after), the outcome, the memorization epoch, the delay
    and the lead as a share of it. `baselines` holds the signals measured at checkpoints (run,
    epoch, ...); the training accuracy comes from `metrics`, other matrices' LAR from
    `matrix_lar`."""
    metrics = with_matrices(metrics, matrix_lar)
    delays = _delays(runs, metrics).set_index("run")
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
            result = outcome(fired, truth, _timing)
            if truth is not None and delays.at[run.run, "no_delay"]:
                result = "no delay"
            rows.append(score_row(run.run, detector, fired, truth, result))
    scores = frame(rows)
    scores = scores.merge(delays[["memorized", "delay"]], left_on="run", right_index=True)
    scores["memorized"] = scores["memorized"].astype("Int64")
    scores["lead_share"] = scores["lead"].astype(float) / scores["delay"]
    return scores


MIN_DELAY = 100  # epochs: the goals count the runs with at least this delay (docs/results.md)


def _count(scores: pd.DataFrame, outcome: str) -> pd.Series:
    return (scores["outcome"] == outcome).groupby(scores["detector"]).sum()


def goals(scores: pd.DataFrame, min_delay: int = MIN_DELAY) -> pd.DataFrame:
    """Per detector, the goals of the long-delay alarm: on time on the runs that grok with a
    delay ≥ `min_delay` epochs, and silent on the runs that never grok; a run without a delay
    ("no delay") or with a shorter one is in neither count."""
    long = scores[(scores["delay"] >= min_delay) & (scores["outcome"] != "no delay")]
    never = scores[scores["truth"].isna()]
    table = pd.DataFrame({
        "within 10 %": _count(long, "within 10 %"),
        f"of (delay ≥ {min_delay})": long.groupby("detector").size(),
        "silent": _count(never, "silent"),
        "of (never grok)": never.groupby("detector").size(),
    })  # fmt: skip
    order = list(dict.fromkeys(scores["detector"]))
    return table.reindex(order).fillna(0).astype(int)
