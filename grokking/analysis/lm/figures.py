"""The language models' figures: Figure 4 (losses and LAR against step), Figure 5 (the LAR
differential beside the generalization gap), Figures 6–8 (the top singular direction's shares
p₁, q₁ and p₁q₁), and the unembedding's effective rank beside LAR (App. D.1). Each returns a
matplotlib Figure, or None when there is nothing to plot."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from grokking.analysis.collect import Results
from grokking.analysis.figures import grid
from grokking.analysis.lm import overfitting
from grokking.analysis.lm.collect import several_sizes
from grokking.analysis.lm.tables import differentials, pearson_r


def _per_optimizer(results: Results):
    """(title, its runs) for each condition and optimizer setting, in order; the title names
    the model's size where the runs hold several."""
    keys = ["condition", "optimizer", "optim_settings"]
    sized = several_sizes(results.runs)
    for (_, optimizer, _), runs in results.runs.groupby(keys, sort=False):
        first = runs.iloc[0]
        where = f"{first['group']}, {first['model']}" if sized else first["group"]
        yield f"{where}: {optimizer}", runs


def _lines(ax, results: Results, runs: pd.DataFrame, column: str, smooth: int = 1) -> None:
    palette = dict(zip(runs["run"], sns.color_palette("viridis", len(runs)), strict=True))
    for _, run in runs.iterrows():
        rows = results.metrics[results.metrics["run"] == run["run"]].dropna(subset=[column])
        values = overfitting.smoothed(rows[column].reset_index(drop=True), smooth)
        ax.plot(rows["step"], values, color=palette[run["run"]], label=run["label"], lw=1)
        if pd.notna(run["overfitting_step"]):
            ax.axvline(run["overfitting_step"], color=palette[run["run"]], ls="--", lw=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel(column)


def figure4(results: Results):
    """Per optimizer: training loss (smoothed), validation loss and unembedding LAR against
    step, one line per training-set size, dashed at each run's overfitting step."""
    groups = list(_per_optimizer(results))
    fig, axes = plt.subplots(len(groups), 3, figsize=(13, 3.2 * len(groups)), squeeze=False)
    for row, (title, runs) in zip(axes, groups, strict=True):
        smooth = int(runs["val_batches"].iloc[0])
        _lines(row[0], results, runs, "train_loss", smooth)
        _lines(row[1], results, runs, "val_loss")
        _lines(row[2], results, runs, "lar", smooth)
        row[0].set_title(f"{title}: training loss")
        row[1].set_title("validation loss")
        row[2].set_title("unembedding LAR")
        row[2].legend(fontsize=7)
    fig.tight_layout()
    return fig


def figure5(results: Results):
    """Per run but the baselines: the LAR differential (baseline − run) beside the
    generalization gap (validation − smoothed training loss), with their correlation."""
    panels = list(differentials(results))
    if not panels:
        return None
    fig, axes = grid(len(panels), ncols=4)
    for ax, (run, frame) in zip(axes, panels, strict=True):
        ax.plot(frame["step"], frame["lar_differential"], color="tab:blue")
        ax.set_ylabel("LAR differential", color="tab:blue")
        twin = ax.twinx()
        twin.plot(frame["step"], frame["generalization_gap"], color="tab:red")
        twin.set_ylabel("generalization gap", color="tab:red")
        ax.set_title(f"{run['group']}: {run['label']} (r = {pearson_r(frame):.2f})", fontsize=9)
        ax.set_xlabel("step")
    fig.tight_layout()
    return fig


def figure_shares(results: Results, column: str, title: str):
    """Figures 6–8: `column` (p1, q1 or p1q1) against step, one panel per optimizer."""
    groups = list(_per_optimizer(results))
    fig, axes = grid(len(groups), ncols=len(groups), size=(4.4, 3.2))
    for ax, (name, runs) in zip(axes, groups, strict=True):
        _lines(ax, results, runs, column)
        ax.set_title(f"{name}: {title}", fontsize=9)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def figure_ranks(results: Results):
    """The unembedding's effective rank (weights' spectrum) beside its LAR, per optimizer."""
    groups = list(_per_optimizer(results))
    fig, axes = plt.subplots(len(groups), 2, figsize=(9, 3.2 * len(groups)), squeeze=False)
    for row, (name, runs) in zip(axes, groups, strict=True):
        _lines(row[0], results, runs, "effective_rank")
        _lines(row[1], results, runs, "probe_lar")
        row[0].set_title(f"{name}: effective rank", fontsize=9)
        row[1].set_title("LAR on the probe batch", fontsize=9)
    axes[0][1].legend(fontsize=7)
    fig.tight_layout()
    return fig
