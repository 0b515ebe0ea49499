"""An early forecast of whether a grokking run will grok within its budget, and when, read from
the first `FRACTIONS` of the budget (`max_epochs`) only: the evaluations and checkpoints at epochs
≤ fraction × budget. Five signal families, each its own forecast (`FAMILIES`), and a reference:

- "LAR": the unembedding's LAR at each evaluation;
- "LAR, every matrix": the `rise` of each dense matrix's LAR (matrix_lar), one feature a matrix;
- "RankMe": RankMe of the unembedding's inputs at each checkpoint (baselines.py), as its log;
- "weight norm": the L2 norm of every parameter at each checkpoint (Omnigrok), as its log;
- "training loss": the training loss at each evaluation alone, as its log10 (after Notsawo et
  al. 2023, "Predicting grokking long before it happens", who read the loss curve's spectrum);
- "no signal": no feature at all, the reference: each run's score is the rate of grokking among
  the runs it is scored from. Where whether a run groks goes with its condition, holding a
  condition out leaves a training rate that moves against the held-out runs' outcome, and this
  reference scores below 0.5; a signal has to beat it, not 0.5.

Every feature reads the time since memorization, split at its midpoint into an earlier and a
later half (a point on the midpoint is in both). A signal's trajectory (`trajectory_features`):
its `level` at memorization (the first point at or after it), its `rise` (the later half's mean
less the earlier half's: a single spike moves it little), the `late_slope` (per epoch, of a
least-squares line through the later half) and the `curvature` (that slope less the earlier
half's). The training loss (`loss_features`): `loss_late` (the later half's median: the loss
spikes by orders of magnitude), its `loss_slope` over the later half, and its oscillations: the
`oscillation` energy (log10 of the mean square of the loss less its least-squares line, which by
Parseval is the spectrum's energy at every frequency but zero, over n²) and the
`high_frequency` share of that energy (above a quarter cycle per evaluation). Memorization is the
summary's epoch where it falls within the window (it is read from the training accuracy alone);
for a run that has not memorized by then, the window's first point stands in.

The score for "this run will grok" is a standardized logistic regression per family, the
estimate of when a ridge regression of log(grokking epoch) on the same features, both
cross-validated by condition (`condition`: task, p, train fraction and any setting such as the
weight decay; every seed of one condition is held out together), so that no run is scored by a
model that saw its condition. A run that had already grokked within the window has nothing left
to forecast and is left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from grokking.analysis.tables import write_table

FRACTIONS = (0.10, 0.25)  # of the budget, the windows the forecasts read
HIGH_FREQUENCY = 0.25  # cycles per evaluation: above it, an oscillation counts as fast
RUN_COLUMNS = ["run", "condition", "grokked", "grokking_epoch", "family"]


def _slope(epochs: np.ndarray, values: np.ndarray) -> float:
    """The least-squares slope per epoch, NaN with fewer than two points."""
    return float(np.polyfit(epochs, values, 1)[0]) if len(epochs) >= 2 else math.nan


def _halves(epochs, values, memorized: int | None):
    """(epochs, values) since memorization (None: all of them), and the masks of its earlier
    and later half."""
    epochs, values = np.asarray(epochs, dtype=float), np.asarray(values, dtype=float)
    keep = epochs >= (memorized if memorized is not None else -math.inf)
    epochs, values = epochs[keep], values[keep]
    middle = (epochs[0] + epochs[-1]) / 2 if len(epochs) else math.nan
    return epochs, values, epochs <= middle, epochs >= middle


def trajectory_features(epochs, values, memorized: int | None) -> dict:
    """`level`, `rise`, `late_slope`, `curvature` of a signal (module docstring); all NaN
    without points since memorization."""
    epochs, values, early, late = _halves(epochs, values, memorized)
    if len(epochs) == 0:
        return dict.fromkeys(["level", "rise", "late_slope", "curvature"], math.nan)
    late_slope = _slope(epochs[late], values[late])
    return {
        "level": values[0],
        "rise": values[late].mean() - values[early].mean(),
        "late_slope": late_slope,
        "curvature": late_slope - _slope(epochs[early], values[early]),
    }


def oscillation_spectrum(values) -> tuple[float, float]:
    """The energy of `values` less their least-squares line (Σ over every frequency but zero of
    the squared Fourier magnitudes, over n²: by Parseval, the residual's mean square) and the
    share of it above `HIGH_FREQUENCY`; NaN with fewer than three values or none off the line."""
    values = np.asarray(values, dtype=float)
    if len(values) < 3:
        return math.nan, math.nan
    steps = np.arange(len(values))
    residual = values - np.polyval(np.polyfit(steps, values, 1), steps)
    power = np.abs(np.fft.fft(residual)) ** 2
    total = power[1:].sum()  # the residual's mean is zero: nothing at frequency zero
    if total <= 1e-24 * len(values) ** 2:
        return math.nan, math.nan
    fast = power[np.abs(np.fft.fftfreq(len(values))) > HIGH_FREQUENCY].sum()
    return total / len(values) ** 2, fast / total


def loss_features(epochs, log_loss, memorized: int | None) -> dict:
    """`loss_late`, `loss_slope`, `oscillation`, `high_frequency` of the log training loss
    (module docstring); all NaN without points since memorization."""
    epochs, values, _, late = _halves(epochs, log_loss, memorized)
    if len(epochs) == 0:
        return dict.fromkeys(["loss_late", "loss_slope", "oscillation", "high_frequency"], math.nan)
    energy, high = oscillation_spectrum(values)
    return {
        "loss_late": float(np.median(values[late])),
        "loss_slope": _slope(epochs[late], values[late]),
        "oscillation": math.log10(energy) if energy > 0 else math.nan,
        "high_frequency": high,
    }


@dataclass(frozen=True)
class Window:
    """One run's tables cut to the window a forecast reads, and its memorization epoch there
    (None: not memorized within it)."""

    evaluations: pd.DataFrame
    checkpoints: pd.DataFrame
    matrices: pd.DataFrame
    memorized: int | None

    def series(self, table: str, column: str):
        """(epochs, values) of `column` of `table`, in order; None when it has none."""
        rows = getattr(self, table)
        if column not in rows.columns or rows[column].isna().all():
            return None
        rows = rows.dropna(subset=[column]).sort_values("epoch")
        return rows["epoch"].to_numpy(), rows[column].to_numpy(dtype=float)


def _trajectory_of(table: str, column: str, transform=np.asarray):
    """The family of `trajectory_features` of `transform(column)` of the window's `table`."""

    def family(window: Window) -> dict | None:
        found = window.series(table, column)
        if found is None:
            return None
        return trajectory_features(found[0], transform(found[1]), window.memorized)

    return family


def _every_matrix(window: Window) -> dict | None:
    """The `rise` of each matrix's LAR, as "rise <matrix>"."""
    if "lar" not in window.matrices.columns:
        return None
    matrices = window.matrices.dropna(subset=["lar"]).sort_values("epoch")
    rises = {
        f"rise {name}": trajectory_features(rows["epoch"], rows["lar"], window.memorized)["rise"]
        for name, rows in matrices.groupby("name")
    }
    return rises or None


def _no_signal(_window: Window) -> dict:
    return {}


def _training_loss(window: Window) -> dict | None:
    found = window.series("evaluations", "train_loss")
    return None if found is None else loss_features(found[0], np.log10(found[1]), window.memorized)


# family: its features of a run's window (None: the run lacks its signal)
FAMILIES = {
    "LAR": _trajectory_of("evaluations", "lar"),
    "LAR, every matrix": _every_matrix,
    "RankMe": _trajectory_of("checkpoints", "rankme", np.log),
    "weight norm": _trajectory_of("checkpoints", "weight_norm", np.log),
    "training loss": _training_loss,
    "no signal": _no_signal,
}


def _own_rows(table: pd.DataFrame, run: str, end: float) -> pd.DataFrame:
    if table.empty:
        return pd.DataFrame(columns=["run", "epoch"])
    return table[(table["run"] == run) & (table["epoch"] <= end)]


def window(run, metrics, checkpoints, matrix_lar, fraction: float) -> Window:
    """The `Window` of one run (a row of the runs table) at `fraction` of its budget."""
    end = fraction * run.max_epochs
    memorized = run.memorization_epoch
    return Window(
        _own_rows(metrics, run.run, end),
        _own_rows(checkpoints, run.run, end),
        _own_rows(matrix_lar, run.run, end),
        memorized if pd.notna(memorized) and memorized <= end else None,
    )


def forecastable(runs: pd.DataFrame, fraction: float) -> pd.DataFrame:
    """The runs with something left to forecast at `fraction`: not grokked within the window."""
    ends = fraction * runs["max_epochs"]
    return runs[~(runs["grokked"] & (runs["grokking_epoch"] <= ends))]


def features(runs, metrics, checkpoints, matrix_lar, fraction: float) -> pd.DataFrame:
    """One row per forecastable run and family: `RUN_COLUMNS` and that family's features (the
    other families' columns NaN). `checkpoints`: baselines.py's measures (run, epoch, rankme,
    weight_norm); `metrics` and `matrix_lar`: the runs' tables."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction: {fraction} is not a share of the budget in (0, 1]")
    rows = []
    for run in forecastable(runs, fraction).itertuples(index=False):
        seen = window(run, metrics, checkpoints, matrix_lar, fraction)
        for family, measure in FAMILIES.items():
            values = measure(seen)
            if values is not None:
                identity = (run.run, run.condition, run.grokked, run.grokking_epoch, family)
                rows.append(dict(zip(RUN_COLUMNS, identity, strict=True)) | values)
    return pd.DataFrame(rows, columns=RUN_COLUMNS) if not rows else pd.DataFrame(rows)


def _fit_score(train_x, train_y, test_x) -> np.ndarray:
    """P(grokked) of `test_x` from a standardized logistic regression on the training runs;
    without features, or from a training set of one outcome, their rate of grokking."""
    if train_x.shape[1] == 0 or len(set(train_y)) < 2:
        return np.full(len(test_x), np.mean(train_y, dtype=float))
    model = make_pipeline(StandardScaler(), LogisticRegression())
    return model.fit(train_x, train_y).predict_proba(test_x)[:, 1]


def _fit_epoch(train_x, train_epochs, test_x) -> np.ndarray:
    """The grokking epoch of `test_x` from a standardized ridge regression of its log on the
    training runs that grokked; without features or with only one such run, their geometric
    mean; with none, NaN."""
    if len(train_epochs) == 0:
        return np.full(len(test_x), math.nan)
    logs = np.log(train_epochs)
    if train_x.shape[1] == 0 or len(train_epochs) == 1:
        return np.full(len(test_x), math.exp(logs.mean()))
    model = make_pipeline(StandardScaler(), Ridge())
    return np.exp(model.fit(train_x, logs).predict(test_x))


def out_of_fold(family_rows: pd.DataFrame) -> pd.DataFrame:
    """`family_rows` (one family's features) with `score` and `predicted_epoch`, each from the
    models fitted on every other condition's runs. A feature no run has is left out, then a run
    missing one of the others."""
    columns = [
        c for c in family_rows.columns if c not in RUN_COLUMNS and family_rows[c].notna().any()
    ]
    rows = family_rows.dropna(subset=columns).reset_index(drop=True)
    scores, epochs = np.full(len(rows), math.nan), np.full(len(rows), math.nan)
    for condition in rows["condition"].unique():
        held = (rows["condition"] == condition).to_numpy()
        train, test = rows[~held], rows[held]
        if train.empty:
            continue
        x = train[columns].to_numpy()
        scores[held] = _fit_score(x, train["grokked"].to_numpy(), test[columns].to_numpy())
        grokked = train[train["grokked"]]
        grokked_epochs = grokked["grokking_epoch"].to_numpy(dtype=float)
        epochs[held] = _fit_epoch(
            grokked[columns].to_numpy(), grokked_epochs, test[columns].to_numpy()
        )
    return rows.assign(score=scores, predicted_epoch=epochs)


def auroc(grokked, scores) -> float:
    """The area under the ROC curve of `scores` for `grokked`; NaN with one outcome only."""
    grokked, scores = np.asarray(grokked, dtype=bool), np.asarray(scores, dtype=float)
    keep = ~np.isnan(scores)
    if len(set(grokked[keep])) < 2:
        return math.nan
    return float(roc_auc_score(grokked[keep], scores[keep]))


def median_relative_error(scored: pd.DataFrame) -> float:
    """The median |predicted − grokking epoch| / grokking epoch over the runs that grok."""
    grokked = scored[scored["grokked"] & scored["predicted_epoch"].notna()]
    errors = (grokked["predicted_epoch"] - grokked["grokking_epoch"]).abs() / grokked[
        "grokking_epoch"
    ]
    return float(errors.median()) if len(errors) else math.nan


def forecast(runs, metrics, checkpoints, matrix_lar, fractions=FRACTIONS) -> pd.DataFrame:
    """The out-of-fold forecasts, one row per fraction, family and forecastable run:
    `RUN_COLUMNS`, the family's features, score, predicted_epoch, fraction (`features` names
    the tables)."""
    frames = []
    for fraction in fractions:
        measured = features(runs, metrics, checkpoints, matrix_lar, fraction)
        for family in FAMILIES:
            rows = measured[measured["family"] == family]
            if len(rows):
                frames.append(out_of_fold(rows).assign(fraction=fraction))
    if not frames:
        return pd.DataFrame(columns=[*RUN_COLUMNS, "score", "predicted_epoch", "fraction"])
    return pd.concat(frames, ignore_index=True)


def summary(scored: pd.DataFrame) -> pd.DataFrame:
    """Per family and fraction: the AUROC of the out-of-fold scores, how many runs, how many
    grok, and the median relative error of the grokking epoch estimated for those that grok."""
    rows = [
        {
            "signal": family,
            "fraction": fraction,
            "auroc": auroc(group["grokked"], group["score"]),
            "runs": len(group),
            "grokking": int(group["grokked"].sum()),
            "epoch error": median_relative_error(group),
        }
        for (fraction, family), group in scored.groupby(["fraction", "family"], sort=False)
    ]
    columns = ["signal", "fraction", "auroc", "runs", "grokking", "epoch error"]
    return pd.DataFrame(rows, columns=columns)


def per_run(scored: pd.DataFrame) -> pd.DataFrame:
    """The per-run table: a row per run, its grokking epoch and a column of out-of-fold scores
    per family and fraction ("LAR @ 10%")."""
    names = zip(scored["family"], scored["fraction"], strict=True)
    cells = scored.assign(column=[f"{family} @ {fraction:.0%}" for family, fraction in names])
    wide = cells.pivot(index="run", columns="column", values="score").round(2)
    truth = scored.groupby("run")["grokking_epoch"].first().reindex(wide.index)
    wide.insert(0, "grokking epoch", ["–" if pd.isna(t) else str(int(t)) for t in truth])
    return wide[["grokking epoch", *dict.fromkeys(cells["column"])]]


def write(runs, metrics, checkpoints, matrix_lar, out: Path, fractions=FRACTIONS) -> dict:
    """forecast (the summary) and forecast_runs (the out-of-fold scores per run) as md, tex and
    csv; the csv of forecast_runs holds every feature too."""
    scored = forecast(runs, metrics, checkpoints, matrix_lar, fractions)
    table = summary(scored)
    write_table(table.round(3), out, "forecast", tidy=table)
    write_table(per_run(scored), out, "forecast_runs", tidy=scored)
    print("The early forecast of grokking (AUROC of the out-of-fold scores):")
    print(table.to_markdown(index=False), end="\n\n")
    return {"forecast": out / "forecast.csv", "forecast_runs": out / "forecast_runs.csv"}
