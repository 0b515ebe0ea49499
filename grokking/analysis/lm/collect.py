"""The language-model runs of some folders, analysed as the paper's §5: per run its overfitting
step, minimum validation loss, peak and final LAR; the baseline of each optimizer (its largest
training set); Figure 4 (losses and LAR against step), Figure 5 (the LAR differential beside the
generalization gap, and their correlation per run), Table 2 (LAR's rate of decline per window
from its peak), Figures 6–8 (the top singular direction's shares p₁, q₁ and p₁q₁), and the
unembedding's effective rank beside LAR (App. D.1).

Runs are compared only within a *condition*: the same sweep and the same config but for the
training-set size and the optimizer's settings. Runs of different conditions are never pooled."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from grokking.analysis import overfitting
from grokking.analysis.collect import reason
from grokking.analysis.conditions import flatten
from grokking.analysis.figures import grid, save
from grokking.analysis.tables import write_table
from grokking.runs.rundir import COMPLETED, NUMBERS, TEXT, find_runs

log = logging.getLogger("grokking.analysis")

FAMILY = "lm"
# What this analysis reads of a run's tables (the overfitting step, Table 2, the figures, the
# alarms): a run whose tables do not hold it is skipped when it is read.
METRICS_NEEDS = dict.fromkeys(
    ["step", "train_loss", "lar", "val_loss", "probe_lar", "effective_rank", "stable_rank"]
    + ["p1", "q1", "p1q1"],
    NUMBERS,
)
MATRIX_NEEDS = {"step": NUMBERS, "name": TEXT, "lar": NUMBERS}
# Config values that tell the runs of one condition apart: they are the figures' lines.
VARYING = ("data.train_tokens", "optim.")


@dataclass
class LMResults:
    runs: pd.DataFrame  # one row per completed run, with its facts
    metrics: pd.DataFrame  # every run's metric rows, with `run`
    matrix_lar: pd.DataFrame
    not_completed: list[tuple[str, str]] = field(default_factory=list)  # (run, status)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (run, why): damaged

    @property
    def left_out(self) -> list[tuple[str, str]]:
        return self.not_completed + self.skipped


def collect(*dirs: str | Path) -> LMResults:
    """Every completed language-model run under `dirs`; any other is left out with its reason."""
    rows, metrics, matrices, not_completed, skipped = [], [], [], [], []
    for root in map(Path, dirs):
        for run_dir in find_runs(root):
            name = f"{root.name}/{run_dir.path.relative_to(root)}".rstrip("/.")
            try:
                summary = run_dir.read_summary()
                if summary.get("family") != FAMILY:
                    continue  # the grokking analysis reads it
                status = run_dir.status()
                if status != COMPLETED:
                    not_completed.append((name, status or "no summary"))
                    continue
                run_metrics = run_dir.read_metrics(METRICS_NEEDS).assign(run=name)
                run_matrices = run_dir.read_matrix_lar(MATRIX_NEEDS).assign(run=name)
                row = _run_row(name, summary) | overfitting.run_facts(run_metrics)
            except Exception as error:  # a damaged file, a summary missing a field
                skipped.append((name, reason(error, run_dir.path)))
                log.warning("skipping %s: %s", name, skipped[-1][1])
                continue
            rows.append(row)
            metrics.append(run_metrics)
            matrices.append(run_matrices)
    runs = _with_baselines(pd.DataFrame(rows)) if rows else pd.DataFrame()
    return LMResults(
        runs=runs,
        metrics=pd.concat(metrics, ignore_index=True) if metrics else pd.DataFrame(),
        matrix_lar=pd.concat(matrices, ignore_index=True) if matrices else pd.DataFrame(),
        not_completed=not_completed,
        skipped=skipped,
    )


def _run_row(name: str, summary: dict) -> dict:
    config = flatten(summary["config"])
    fixed = {
        key: value
        for key, value in config.items()
        if not key.startswith(VARYING) and key not in ("seed", "data.cache_dir", "threads")
        and not key.startswith(("device", "logger", "save_every_s", "checkpoint_every"))
    }  # fmt: skip
    group = summary.get("sweep_name") or "single_runs"
    return {
        "run": name,
        "group": group,
        "condition": f"{group} seed={summary['seed']} " + _digest(fixed),
        "optimizer": summary["optimizer"],
        "optim_settings": repr(sorted((k, v) for k, v in config.items() if k.startswith("optim."))),
        "lr": config["optim.lr"],
        "train_tokens": summary["train_tokens"],
        "epochs": summary["epochs"],
        "max_steps": summary["max_steps"],
        "tokens_per_step": config["batch_size"] * config["model.context"],
        "val_batches": config["val_batches"],
        "seed": summary["seed"],
    }


def _digest(values: dict) -> str:
    return hashlib.sha256(repr(sorted(values.items())).encode()).hexdigest()[:8]


def _with_baselines(runs: pd.DataFrame) -> pd.DataFrame:
    """Mark each condition and optimizer's baseline: its run on the largest training set."""
    runs = runs.sort_values(["condition", "optimizer", "train_tokens"]).reset_index(drop=True)
    keys = ["condition", "optimizer", "optim_settings"]
    largest = runs.groupby(keys)["train_tokens"].transform("max")
    runs["baseline"] = runs["train_tokens"] == largest
    runs["label"] = runs["optimizer"] + ", " + runs["train_tokens"].map(_tokens)
    # where one optimizer ran with several settings (a learning-rate sweep), the rate tells them
    several = runs.groupby(["condition", "optimizer"])["optim_settings"].transform("nunique") > 1
    rates = [f", lr={lr:g}" if flag else "" for lr, flag in zip(runs["lr"], several, strict=True)]
    runs["label"] += rates
    return runs


def _tokens(count: int) -> str:
    return f"{count / 1e6:.1f}M" if count >= 1e6 else f"{count / 1e3:.0f}k"


# --- tables -------------------------------------------------------------------------------------
def correlations(results: LMResults) -> pd.DataFrame:
    """Per run but its baseline: the Pearson correlation of the LAR differential with the
    generalization gap over its evaluations."""
    rows = []
    for _, run in results.runs[~results.runs["baseline"]].iterrows():
        frame = differential_of(results, run)
        if frame is None or len(frame) < 3:
            continue
        r = np.corrcoef(frame["lar_differential"], frame["generalization_gap"])[0, 1]
        rows.append({"run": run["run"], "label": run["label"], "pearson_r": r})
    return pd.DataFrame(rows, columns=["run", "label", "pearson_r"])


def differential_of(results: LMResults, run: pd.Series) -> pd.DataFrame | None:
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


def table2(results: LMResults) -> tuple[pd.DataFrame, pd.DataFrame]:
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


def runs_table(results: LMResults) -> pd.DataFrame:
    columns = [
        "label", "epochs", "baseline", "overfitting_step", "min_val_loss_step", "min_val_loss",
        "peak_lar", "peak_lar_step", "final_lar",
    ]  # fmt: skip
    return results.runs.set_index("run")[columns]


# --- figures ------------------------------------------------------------------------------------
def _per_optimizer(results: LMResults):
    """(title, its runs) for each condition and optimizer setting, in order."""
    keys = ["condition", "optimizer", "optim_settings"]
    for (_, optimizer, _), runs in results.runs.groupby(keys, sort=False):
        yield f"{runs['group'].iloc[0]}: {optimizer}", runs


def _lines(ax, results: LMResults, runs: pd.DataFrame, column: str, smooth: int = 1) -> None:
    palette = dict(zip(runs["run"], sns.color_palette("viridis", len(runs)), strict=True))
    for _, run in runs.iterrows():
        rows = results.metrics[results.metrics["run"] == run["run"]].dropna(subset=[column])
        values = overfitting.smoothed(rows[column].reset_index(drop=True), smooth)
        ax.plot(rows["step"], values, color=palette[run["run"]], label=run["label"], lw=1)
        if pd.notna(run["overfitting_step"]):
            ax.axvline(run["overfitting_step"], color=palette[run["run"]], ls="--", lw=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel(column)


def figure4(results: LMResults):
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


def figure5(results: LMResults):
    """Per run but the baselines: the LAR differential (baseline − run) beside the
    generalization gap (validation − smoothed training loss), with their correlation."""
    panels = []
    for _, run in results.runs[~results.runs["baseline"]].iterrows():
        frame = differential_of(results, run)
        if frame is not None and len(frame):
            panels.append((run, frame))
    if not panels:
        return None
    fig, axes = grid(len(panels), ncols=4)
    for ax, (run, frame) in zip(axes, panels, strict=True):
        ax.plot(frame["step"], frame["lar_differential"], color="tab:blue")
        ax.set_ylabel("LAR differential", color="tab:blue")
        twin = ax.twinx()
        twin.plot(frame["step"], frame["generalization_gap"], color="tab:red")
        twin.set_ylabel("generalization gap", color="tab:red")
        r = np.corrcoef(frame["lar_differential"], frame["generalization_gap"])[0, 1]
        ax.set_title(f"{run['group']}: {run['label']} (r = {r:.2f})", fontsize=9)
        ax.set_xlabel("step")
    fig.tight_layout()
    return fig


def figure_shares(results: LMResults, column: str, title: str):
    """Figures 6–8: `column` (p1, q1 or p1q1) against step, one panel per optimizer."""
    groups = list(_per_optimizer(results))
    fig, axes = grid(len(groups), ncols=len(groups), size=(4.4, 3.2))
    for ax, (name, runs) in zip(axes, groups, strict=True):
        _lines(ax, results, runs, column)
        ax.set_title(f"{name}: {title}", fontsize=9)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def figure_ranks(results: LMResults):
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


def write(results: LMResults, out: Path) -> dict[str, Path]:
    """Every table and figure into `out`; {name: path}."""
    written = {}
    for name, frame in (
        ("lm_runs", results.runs),
        ("lm_metrics", results.metrics),
        ("lm_matrix_lar", results.matrix_lar),
    ):
        written[name] = out / f"{name}.parquet"
        frame.to_parquet(written[name], index=False)
    table = runs_table(results)
    write_table(table, out, "lm_overfitting", tidy=table.reset_index())
    print("Language models — per run:")
    print(table.to_markdown(floatfmt=".4g"), end="\n\n")
    for _, run in results.runs[results.runs["baseline"]].iterrows():
        if pd.notna(run["overfitting_step"]):
            print(
                f"warning: the baseline {run['run']} overfits by the rule at step "
                f"{int(run['overfitting_step'])}: its training set repeats too often to be one"
            )
    corr = correlations(results)
    write_table(corr, out, "lm_correlations")
    wide, tidy = table2(results)
    if len(tidy):
        write_table(wide, out, "table2", tidy=tidy)
        written["table2"] = out / "table2.csv"
    plots = {
        "figure4": figure4(results),
        "figure5": figure5(results),
        "figure6": figure_shares(results, "p1", "p₁ (weights)"),
        "figure7": figure_shares(results, "q1", "q₁ (activations)"),
        "figure8": figure_shares(results, "p1q1", "p₁q₁"),
        "lm_ranks": figure_ranks(results),
    }
    for name, fig in plots.items():
        if fig is not None:
            written[name] = save(fig, out, name)[0]
    return written
