"""Steering LAR in language models (docs/method.md §6): each run trained with a regularizer (the
LAR term) or with weight decay, beside two references of the same training set, seed and budget:
the plain run of the same optimizer, and the paper's App. D.4 baseline, Adam with weight decay.
Per run: the minimum and the final validation loss, the overfitting step (overfitting.py), and
against each reference the change in minimum validation loss and how much later the run overfits.

A run that never overfits overfits later than its last step, if ever, so "later" against it is a
bound: "> x" when only the reference overfits, "< x" when only the run does, and unknown when
neither does. The goal: a lower minimum validation loss than Adam with weight decay, or an
overfitting step at least 25 % later.
"""

from __future__ import annotations

import math

import pandas as pd

from grokking.analysis.lm.overfitting import evaluations
from grokking.analysis.steering import integer_text, ratio_text, variant

# What makes a reference the same experiment as a run besides the treatment (model: its size)
MATCH = ["model", "train_tokens", "seed", "max_steps", "tokens_per_step", "source"]
LATER = 1.25  # "the overfitting step ≥ 25 % later"
PLAIN = "none"
REFERENCES = {"plain": "the same optimizer, plain", "adam_wd": "Adam with weight decay"}


def treatment(row) -> str:
    """'lar 1 from start', 'weight decay 0.1', both joined, or 'none'. Weight decay is a
    treatment of Adam only: the paper's Adam has none, and App. D.4 adds it; Muon's decoupled
    weight decay is part of that optimizer (conf/lm/optim/muon.yaml), so its runs are plain."""
    words = [] if variant(row) == PLAIN else [variant(row)]
    if row["optimizer"] == "adam" and row["weight_decay"] > 0:
        words.append(f"weight decay {row['weight_decay']:g}")
    return ", ".join(words) or PLAIN


def later(run, reference) -> tuple[float, str]:
    """(the run's overfitting step / the reference's, bound): '=' exact, '>' a lower bound (only
    the reference overfits: the run's last step stands in), '<' an upper bound, '?' unknown."""
    mine, theirs = run["overfitting_step"], reference["overfitting_step"]
    if pd.isna(mine) and pd.isna(theirs):
        return math.nan, "?"
    bound = "=" if pd.notna(mine) and pd.notna(theirs) else "<" if pd.notna(mine) else ">"
    mine = run["max_steps"] if pd.isna(mine) else mine
    theirs = reference["max_steps"] if pd.isna(theirs) else theirs
    return mine / theirs, bound


def _reference(row, candidates: pd.DataFrame):
    candidates = candidates[candidates["run"] != row["run"]]
    same = pd.Series(True, index=candidates.index)
    for key in MATCH:
        mine, theirs = row[key], candidates[key]
        same &= theirs.isna() if pd.isna(mine) else theirs == mine
    found = candidates[same]
    return None if found.empty else found.iloc[0]


def _against(run, reference, name: str) -> dict:
    ratio, bound = (math.nan, "?") if reference is None else later(run, reference)
    return {
        f"{name}_min_val_loss": math.nan if reference is None else reference["min_val_loss"],
        f"{name}_later": ratio,
        f"{name}_later_bound": bound,
    }


def steering_table(runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per treated run; empty when no run was treated."""
    runs = runs.assign(treatment=[treatment(row) for _, row in runs.iterrows()])
    untreated = runs["treatment"] == PLAIN
    adam_wd = runs[
        (runs["optimizer"] == "adam") & runs["treatment"].str.fullmatch(r"weight decay \S+")
    ]
    final = {run: evaluations(rows)["val_loss"].iloc[-1] for run, rows in metrics.groupby("run")}
    rows = []
    for _, row in runs[~untreated].iterrows():
        plain = runs[untreated & (runs["optimizer"] == row["optimizer"])]
        rows.append(
            {
                "run": row["run"],
                "optimizer": row["optimizer"],
                "train_tokens": row["train_tokens"],
                "seed": row["seed"],
                "treatment": row["treatment"],
                "min_val_loss": row["min_val_loss"],
                "min_val_loss_step": row["min_val_loss_step"],
                "final_val_loss": final[row["run"]],
                "overfitting_step": row["overfitting_step"],
            }
            | _against(row, _reference(row, plain), "plain")
            | _against(row, _reference(row, adam_wd), "adam_wd")
        )
    return pd.DataFrame(rows)


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per optimizer and treatment: runs, the median change in minimum validation loss against
    each reference, and how many runs meet the goal against Adam with weight decay (lower
    minimum, or overfitting ≥ 25 % later for certain)."""
    later_for_certain = (table["adam_wd_later"] >= LATER) & table["adam_wd_later_bound"].isin(
        ["=", ">"]
    )
    lower = table["min_val_loss"] < table["adam_wd_min_val_loss"]
    data = table.assign(
        vs_plain=table["min_val_loss"] - table["plain_min_val_loss"],
        vs_adam_wd=table["min_val_loss"] - table["adam_wd_min_val_loss"],
        lower=lower,
        later_for_certain=later_for_certain,
        goal=lower | later_for_certain,
    )
    return (
        data.groupby(["optimizer", "treatment"], sort=False)
        .agg(
            runs=("run", "size"),
            median_min_val_loss_vs_plain=("vs_plain", "median"),
            median_min_val_loss_vs_adam_wd=("vs_adam_wd", "median"),
            lower_min_than_adam_wd=("lower", "sum"),
            overfits_25pc_later_than_adam_wd=("later_for_certain", "sum"),
            goal_met=("goal", "sum"),
        )
        .reset_index()
    )


def display(table: pd.DataFrame) -> pd.DataFrame:
    """The per-run table as read: steps as integers or '–', the ratios with their bounds."""
    shown = table.drop(columns=[c for c in table if c.endswith("_later_bound")]).copy()
    shown["overfitting_step"] = [integer_text(v) for v in table["overfitting_step"]]
    for name in REFERENCES:
        shown[f"{name}_later"] = [
            ratio_text(v, b)
            for v, b in zip(table[f"{name}_later"], table[f"{name}_later_bound"], strict=True)
        ]
    return shown
