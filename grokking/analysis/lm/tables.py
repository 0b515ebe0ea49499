"""The language models' tables: per run its overfitting step and LAR's facts, the correlation of
the LAR differential with the generalization gap, and Table 2 (LAR's rate of decline per window
from its peak) with its trend before each overfitting step."""

from __future__ import annotations

import numpy as np
import pandas as pd

from grokking.analysis.collect import Results
from grokking.analysis.lm import overfitting


def correlations(results: Results) -> pd.DataFrame:
    """Per run but its baseline: the Pearson correlation of the LAR differential with the
    generalization gap over its evaluations (3 at least)."""
    rows = []
    for run, frame in differentials(results):
        if len(frame) >= 3:
            rows.append({"run": run["run"], "label": run["label"], "pearson_r": pearson_r(frame)})
    return pd.DataFrame(rows, columns=["run", "label", "pearson_r"])


def pearson_r(frame: pd.DataFrame) -> float:
    return np.corrcoef(frame["lar_differential"], frame["generalization_gap"])[0, 1]


def differentials(results: Results):
    """(run, its `differential_of`) for each run but the baselines that has one."""
    for _, run in results.runs[~results.runs["baseline"]].iterrows():
        frame = differential_of(results, run)
        if frame is not None and len(frame):
            yield run, frame


def differential_of(results: Results, run: pd.Series) -> pd.DataFrame | None:
    """`overfitting.differential` of `run` against its baseline (None when it has none)."""
    runs = results.runs
    base = runs[
        (runs["condition"] == run["condition"])
        & (runs["optimizer"] == run["optimizer"])
        & (runs["optim_settings"] == run["optim_settings"])
        & runs["baseline"]
    ]
    if base.empty or base["run"].iloc[0] == run["run"]:
        return None
    metrics = results.metrics
    window = int(run["val_batches"])  # as many steps as the validation batch holds batches
    return overfitting.differential(
        metrics[metrics["run"] == run["run"]],
        metrics[metrics["run"] == base["run"].iloc[0]],
        window,
    )


def table2(results: Results) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(wide, tidy) Table 2: LAR's decline per step (×10³) in windows of a tenth of the budget
    from LAR's peak, one row per run; the window holding the run's overfitting step is starred."""
    tidy = []
    for _, run in results.runs.iterrows():
        metrics = results.metrics[results.metrics["run"] == run["run"]]
        rates = overfitting.decline_rates(metrics, int(run["max_steps"]))
        for number, window in enumerate(rates.itertuples(), start=1):
            step = run["overfitting_step"]
            holds = pd.notna(step) and window.start <= step < window.end
            tidy.append(
                {
                    "run": run["run"],
                    "label": run["label"],
                    "window": number,
                    "start": window.start,
                    "end": window.end,
                    "decline_per_step": window.decline_per_step,
                    "holds_overfitting_step": holds,
                }
            )
    tidy = pd.DataFrame(tidy)
    if tidy.empty:
        return tidy, tidy
    cells = tidy.assign(
        cell=[
            f"{rate * 1e3:.3f}" + ("*" if star else "")
            for rate, star in zip(
                tidy["decline_per_step"], tidy["holds_overfitting_step"], strict=True
            )
        ]  # fmt: skip
    )
    wide = cells.pivot(index="run", columns="window", values="cell").fillna("")
    wide.columns = [f"w{n}" for n in wide.columns]
    labels = tidy.drop_duplicates("run").set_index("run")["label"]
    if labels.is_unique:  # name the rows as the figures' legends do
        wide.index = labels.loc[wide.index].to_numpy()
    return wide, tidy


def table2_trend(tidy: pd.DataFrame) -> pd.DataFrame:
    """Does LAR's decline steepen as overfitting approaches (the paper's reading of Table 2)? For
    each run whose overfitting step lies in window k ≥ 3: over windows 2..k (the first holds the
    fall from the peak itself), the Spearman correlation of the window's number with its decline
    rate (> 0: steepening towards the overfitting step, < 0: slowing) and the rate in window k
    over the mean rate of windows 2..k−1. Empty when no run qualifies."""
    rows = []
    for run, windows in tidy.groupby("run", sort=False):
        held = windows.loc[windows["holds_overfitting_step"], "window"]
        if held.empty or int(held.iloc[0]) < 3:
            continue
        k = int(held.iloc[0])
        before = windows[(windows["window"] >= 2) & (windows["window"] <= k)]
        rates = before["decline_per_step"]
        earlier = rates[before["window"] < k].mean()
        rows.append(
            {
                "run": run,
                "label": windows["label"].iloc[0],
                "windows": f"w2–w{k}",
                "spearman": np.corrcoef(before["window"].rank(), rates.rank())[0, 1],
                "last_over_earlier": rates.iloc[-1] / earlier if earlier else np.nan,
            }
        )
    return pd.DataFrame(rows)


def runs_table(results: Results) -> pd.DataFrame:
    columns = [
        "label", "epochs", "baseline", "overfitting_step", "min_val_loss_step", "min_val_loss",
        "peak_lar", "peak_lar_step", "final_lar",
    ]  # fmt: skip
    return results.runs.set_index("run")[columns]
