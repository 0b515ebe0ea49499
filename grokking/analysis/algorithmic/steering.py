"""Steering LAR (docs/method.md §6): each regularized run beside its baseline, the run of the same
task, modulus, train fraction, seed and optimizer settings without a regularizer. Per run: the
grokking epoch of each, the speed-up (baseline's grokking epoch / the variant's), the final
validation accuracy, and k_LAR against PC95 at the final checkpoint (Table 1's measure: does the
term buy a lower-dimensional solution, or only a higher number?).

A run that did not grok within its budget grokked later than its final epoch, if ever, so a
speed-up against it is a bound: "> x" when only the baseline did not grok, "< x" when only the
variant did not, and unknown when neither did.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from grokking.analysis.steering import integer_text, ratio_text, variant

# What makes a baseline the same experiment as a variant besides the regularizer: budgets and
# stopping may differ (a variant that groks sooner needs fewer epochs), these may not.
MATCH = ["task", "p", "train_fraction", "seed", "split_seed", "config.optim.lr"]
MATCH_OPTIONAL = ["config.optim.weight_decay", "config.optim.name"]
AGREE = 2  # k_LAR within 2 of PC95 at the end: the bar for "the same dimension"
TARGET = 2.0  # a variant groks ≥ 2x sooner than its baseline


def _end(measures: pd.DataFrame) -> pd.DataFrame:
    final = measures[measures["kind"] == "final"].set_index("run")
    return final[["k_lar", "pc95"]]


def _grokked_by(row) -> tuple[float, bool]:
    """The grokking epoch, or the final epoch as a lower bound (False: not grokked)."""
    if row["grokked"]:
        return float(row["grokking_epoch"]), True
    return float(row["final_epoch"]), False


def speedup(baseline, variant_row) -> tuple[float, str]:
    """(ratio, bound): bound '=' exact, '>' or '<' a bound, '?' unknown (neither grokked)."""
    base, base_grokked = _grokked_by(baseline)
    steered, steered_grokked = _grokked_by(variant_row)
    if not (base_grokked or steered_grokked):
        return math.nan, "?"
    bound = "=" if base_grokked and steered_grokked else ">" if steered_grokked else "<"
    return base / steered, bound


def _baseline_of(row, baselines: pd.DataFrame):
    keys = MATCH + [k for k in MATCH_OPTIONAL if k in baselines.columns]
    same = np.ones(len(baselines), dtype=bool)
    for key in keys:
        mine, theirs = row.get(key), baselines[key]
        same &= theirs.isna().to_numpy() if pd.isna(mine) else (theirs == mine).to_numpy()
    found = baselines[same]
    return None if found.empty else found.iloc[0]


def steering_table(runs: pd.DataFrame, metrics: pd.DataFrame, measures: pd.DataFrame):
    """One row per regularized run that has a baseline; empty when no run is regularized."""
    runs = runs.assign(variant=[variant(row) for _, row in runs.iterrows()])
    baselines = runs[runs["variant"] == "none"]
    end = _end(measures)
    final_acc = metrics.sort_values("epoch").groupby("run")["val_acc"].last()
    rows = []
    for _, row in runs[runs["variant"] != "none"].iterrows():
        baseline = _baseline_of(row, baselines)
        if baseline is None:
            continue
        ratio, bound = speedup(baseline, row)
        k_lar, pc95 = end.loc[row["run"]] if row["run"] in end.index else (math.nan, math.nan)
        rows.append(
            {
                "run": row["run"],
                "task": row["task"],
                "seed": row["seed"],
                "variant": row["variant"],
                "grokking_epoch": row["grokking_epoch"],
                "final_epoch": row["final_epoch"],
                "baseline_grokking_epoch": baseline["grokking_epoch"],
                "baseline_final_epoch": baseline["final_epoch"],
                "speedup": ratio,
                "speedup_bound": bound,
                "final_val_acc": final_acc.get(row["run"], math.nan),
                "k_lar_final": k_lar,
                "pc95_final": pc95,
            }
        )
    return pd.DataFrame(rows)


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per variant: runs, the median speed-up (bounds taken at their value), how many grokked
    ≥ 2x sooner for certain, final validation accuracy ≥ 0.99, k_LAR within 2 of PC95."""
    sure = (table["speedup"] >= TARGET) & table["speedup_bound"].isin(["=", ">"])
    agree = (table["k_lar_final"] - table["pc95_final"]).abs() <= AGREE
    data = table.assign(sure=sure, agree=agree, accurate=table["final_val_acc"] >= 0.99)
    grouped = data.groupby("variant", sort=False)
    return grouped.agg(
        runs=("run", "size"),
        median_speedup=("speedup", "median"),
        at_least_2x=("sure", "sum"),
        final_val_acc_099=("accurate", "sum"),
        k_lar_within_2_of_pc95=("agree", "sum"),
    ).reset_index()


def display(table: pd.DataFrame) -> pd.DataFrame:
    """The per-run table as read: epochs as integers or '–', the speed-up with its bound."""
    shown = table.drop(columns=["speedup", "speedup_bound"]).copy()
    for column in ["grokking_epoch", "baseline_grokking_epoch"]:
        shown[column] = [integer_text(v) for v in table[column]]
    shown.insert(
        shown.columns.get_loc("baseline_final_epoch") + 1,
        "speedup",
        [ratio_text(v, b) for v, b in zip(table["speedup"], table["speedup_bound"], strict=True)],
    )
    return shown
