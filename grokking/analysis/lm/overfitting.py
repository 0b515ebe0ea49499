"""The language-model runs' analysis (the paper's §5): the overfitting step, the baseline, the
LAR differential beside the generalization gap, LAR's rate of decline (Table 2), and the frames
the figures draw. Pure functions of the runs table and the metrics rows; no file is read here.

The overfitting rule. The paper: "the first step at which the mean validation loss over a
5-step window exceeds its running minimum by ≥ 2 %". Read as the trailing 5-evaluation mean
against the running minimum of the raw loss, it fires on any steeply falling curve (the mean
of a falling window lies above its newest value). Here the window mean is compared with the
running minimum of the window means themselves: a falling or flat curve never fires, and a
curve that turns upwards fires once its window has risen 2 % above the best window so far.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

WINDOW = 5  # evaluations in the validation window
RISE = 0.02  # how far the window mean must rise above the best window mean
TABLE2_WINDOWS = 10  # Table 2 cuts the budget from LAR's peak on into tenths of the budget


def overfitting_index(val_loss: np.ndarray, window: int = WINDOW, rise: float = RISE) -> int | None:
    """The index of the first evaluation whose trailing `window`-mean is ≥ (1 + rise) × the
    smallest trailing mean so far, or None. The first `window - 1` evaluations have no window."""
    values = np.asarray(val_loss, dtype=float)
    if len(values) < window:
        return None
    means = np.convolve(values, np.ones(window) / window, mode="valid")
    best = np.minimum.accumulate(means)
    fired = np.flatnonzero(means >= (1 + rise) * best)
    return int(fired[0]) + window - 1 if len(fired) else None


def evaluations(metrics: pd.DataFrame) -> pd.DataFrame:
    """A run's evaluation rows (those with a validation loss), by step."""
    return metrics.dropna(subset=["val_loss"]).sort_values("step").reset_index(drop=True)


def run_facts(metrics: pd.DataFrame) -> dict:
    """Per run: its overfitting step (None when the rule never fires), the step of its minimum
    validation loss, LAR's peak and its step, its final LAR."""
    evals = evaluations(metrics)
    index = overfitting_index(evals["val_loss"].to_numpy())
    steps = metrics.dropna(subset=["lar"]).sort_values("step")
    peak = steps.loc[steps["lar"].idxmax()] if len(steps) else None
    return {
        "overfitting_step": int(evals["step"].iloc[index]) if index is not None else None,
        "min_val_loss_step": int(evals.loc[evals["val_loss"].idxmin(), "step"]),
        "min_val_loss": float(evals["val_loss"].min()),
        "peak_lar": float(peak["lar"]) if peak is not None else np.nan,
        "peak_lar_step": int(peak["step"]) if peak is not None else None,
        "final_lar": float(steps["lar"].iloc[-1]) if len(steps) else np.nan,
    }


def smoothed(values: pd.Series, window: int) -> pd.Series:
    """A centred moving mean over `window` rows (fewer at the ends)."""
    return values.rolling(window, center=True, min_periods=1).mean()


def differential(run: pd.DataFrame, baseline: pd.DataFrame, window: int) -> pd.DataFrame:
    """At the run's evaluations: the LAR differential (the baseline's LAR − the run's, each
    smoothed over `window` steps, the baseline's interpolated at the run's steps when they
    differ) and the generalization gap (validation loss − training loss smoothed over a
    centred `window` of steps, as many tokens as the validation batch)."""
    run = run.sort_values("step")
    steps = run.dropna(subset=["lar"])
    run_lar = smoothed(steps.set_index("step")["lar"], window)
    base = baseline.dropna(subset=["lar"]).sort_values("step")
    base_lar = smoothed(base.set_index("step")["lar"], window)
    train = smoothed(steps.set_index("step")["train_loss"], window)
    evals = evaluations(run)
    evals = evals[evals["step"] > 0]  # at step 0 no training loss exists yet
    at = evals["step"].to_numpy()
    return pd.DataFrame(
        {
            "step": at,
            "lar_differential": np.interp(at, base_lar.index, base_lar.to_numpy())
            - np.interp(at, run_lar.index, run_lar.to_numpy()),
            "generalization_gap": evals["val_loss"].to_numpy()
            - np.interp(at, train.index, train.to_numpy()),
        }
    )


def decline_rates(metrics: pd.DataFrame, budget_steps: int, windows: int = TABLE2_WINDOWS):
    """Table 2 for one run: LAR's mean decline per step (minus the least-squares slope) in
    consecutive windows of budget_steps / windows steps, the first starting at LAR's peak."""
    steps = metrics.dropna(subset=["lar"]).sort_values("step")
    peak = int(steps.loc[steps["lar"].idxmax(), "step"])
    width = max(2, budget_steps // windows)
    rows = []
    for start in range(peak, int(steps["step"].max()), width):
        part = steps[(steps["step"] >= start) & (steps["step"] < start + width)]
        if len(part) < 2:
            break
        slope = np.polyfit(part["step"], part["lar"], 1)[0]
        rows.append({"start": start, "end": start + width, "decline_per_step": -slope})
    return pd.DataFrame(rows)
