"""The paper's figures from collected grokking results (seaborn). Each function returns a
matplotlib Figure, or None when the results hold nothing to plot; `save` writes it."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D
from matplotlib.ticker import LogFormatter, NullFormatter

from grokking.analysis.algorithmic.conditions import seeds_label
from grokking.analysis.algorithmic.tables import group_title
from grokking.analysis.figures import grid, save  # noqa: F401 (the report saves through it)

KIND_ORDER = ["memorization", "grokking", "final"]
ROLE_ORDER = ["q", "k", "v", "o", "fc_in", "fc_out", "unembed"]
SEED_BAND = ("pi", 100)  # shade the full range across seeds


def _x_limit(runs: pd.DataFrame, factor: float = 3.0) -> float:
    """3 × the mean grokking epoch of these runs, or their longest run."""
    grokking = runs["grokking_epoch"].dropna()
    longest = runs["final_epoch"].max()
    return min(factor * grokking.mean(), longest) if len(grokking) else longest


EVENTS = {"memorization_epoch": "memorization", "grokking_epoch": "grokking"}
EVENT_COLORS = ("red", "green")


def _event_lines(ax, runs: pd.DataFrame, colors=EVENT_COLORS, styles=("--", "--")):
    """Vertical lines at the mean memorization and grokking epochs of `runs`."""
    for column, color, style in zip(EVENTS, colors, styles, strict=True):
        epochs = runs[column].dropna()
        if len(epochs):
            ax.axvline(epochs.mean(), color=color, linestyle=style, linewidth=1)


def _event_handles(runs: pd.DataFrame, colors=EVENT_COLORS, styles=("--", "--")) -> list[Line2D]:
    """Legend entries for the event lines `_event_lines` draws for `runs` (none for an event
    no run reached)."""
    return [
        Line2D([], [], color=color, linestyle=style, linewidth=1, label=f"{name} (mean epoch)")
        for (column, name), color, style in zip(EVENTS.items(), colors, styles, strict=True)
        if runs[column].notna().any()
    ]


def _legend_below(fig, handles: list, ncol: int | None = None) -> None:
    """One legend for the whole figure, under its panels, where it covers none of them."""
    fig.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=ncol or len(handles),
        fontsize=8,
        frameon=False,
    )


def _panel_title(condition: str, count: int) -> str:
    return f"{condition} ({seeds_label(count)})"


def _conditions(runs: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(condition, its runs): the runs that differ only in their seeds, in run order."""
    return list(runs.groupby("condition", sort=False))


def figure1(runs: pd.DataFrame, metrics: pd.DataFrame, group: str):
    """Mean LAR (left axis) and validation accuracy (right) across seeds against epoch, one panel
    per condition (task, p, train fraction, setting); dashed red at the mean memorization epoch,
    green at grokking."""
    panels = _conditions(runs[runs["group"] == group])
    if not panels:
        return None
    ncols = min(4, len(panels))
    # constrained layout makes room for the twin axes' tick labels, which tight_layout ignores
    fig, axes = grid(len(panels), ncols=ncols, size=(4.0, 2.8), layout="constrained")
    for i, (ax, (condition, panel_runs)) in enumerate(zip(axes, panels, strict=False)):
        data = metrics[metrics["run"].isin(panel_runs["run"])]
        limit = _x_limit(panel_runs)
        data = data[data["epoch"] <= limit]
        sns.lineplot(data=data, x="epoch", y="lar", ax=ax, color="C0", errorbar=SEED_BAND)
        accuracy = ax.twinx()
        sns.lineplot(data=data, x="epoch", y="val_acc", ax=accuracy, color="C1", errorbar=SEED_BAND)
        accuracy.set_ylim(-0.02, 1.02)
        # axis names on the outer panels only, so none runs into its neighbour
        ax.set_ylabel("LAR (unembedding)" if i % ncols == 0 else "", color="C0")
        last_in_row = i % ncols == ncols - 1 or i == len(panels) - 1
        accuracy.set_ylabel("val accuracy" if last_in_row else "", color="C1")
        _event_lines(ax, panel_runs)
        ax.set_xlim(0, limit)
        ax.set_title(_panel_title(condition, len(panel_runs)), fontsize=9)
    fig.suptitle(f"Figure 1 — {group_title(group)}: LAR and validation accuracy")
    curves = [
        Line2D([], [], color="C0", label="LAR, mean over seeds (band: range)"),
        Line2D([], [], color="C1", label="validation accuracy"),
    ]
    _legend_below(fig, curves + _event_handles(runs[runs["group"] == group]))
    return fig


def curves_title(group: str) -> str:
    return f"Accuracy, loss and LAR — {group_title(group)}"


CURVE_PANELS = {  # column of the curves figure: (title, [(metric, label, colour)], log y)
    "accuracy": ("accuracy", [("train_acc", "train", "C0"), ("val_acc", "validation", "C1")], 0),
    "loss": ("loss", [("train_loss", "train", "C0"), ("val_loss", "validation", "C1")], 1),
    "lar": ("LAR (unembedding)", [("lar", "LAR", "C2")], 0),
}


def figure_curves(runs: pd.DataFrame, metrics: pd.DataFrame, title: str):
    """The classic grokking picture: train and validation accuracy and loss against epoch on a
    log axis, LAR beside them; one row per condition (mean over its seeds, band: their range).
    Pass one run for that run's curves. Epoch 0 (initialisation) has no place on a log axis."""
    rows = _conditions(runs)
    if not rows:
        return None
    fig, axes = plt.subplots(
        len(rows), 3, figsize=(12, 2.7 * len(rows)), squeeze=False, sharex="row"
    )
    for row_axes, (condition, row_runs) in zip(axes, rows, strict=True):
        data = metrics[metrics["run"].isin(row_runs["run"]) & (metrics["epoch"] > 0)]
        for ax, (name, lines, log_y) in zip(row_axes, CURVE_PANELS.values(), strict=True):
            for column, _, color in lines:
                sns.lineplot(data=data, x="epoch", y=column, ax=ax, color=color, errorbar=SEED_BAND)
            _event_lines(ax, row_runs)
            ax.set(xscale="log", yscale="log" if log_y else "linear", ylabel=name)
            ax.set_title(_panel_title(condition, len(row_runs)), fontsize=9)
            # plain numbers ("300", "2"): on a log axis spanning less than a decade the default
            # labels read 3×10⁰ and run into each other
            for axis in (ax.xaxis, ax.yaxis) if log_y else (ax.xaxis,):
                axis.set_major_formatter(LogFormatter())
                axis.set_minor_formatter(LogFormatter(labelOnlyBase=False))
        row_axes[0].set_ylim(-0.02, 1.02)  # accuracy
    fig.suptitle(title)
    fig.tight_layout()
    split = [
        Line2D([], [], color=color, label=label) for _, label, color in CURVE_PANELS["loss"][1]
    ]
    lar = Line2D([], [], color="C2", label="LAR")
    _legend_below(fig, split + [lar] + _event_handles(runs))
    return fig


def choose_runs(runs: pd.DataFrame, count: int = 3) -> list[str]:
    """Runs for Figure 2: grokked ones first, one per task, then any."""
    ordered = runs.sort_values(["grokked", "task", "seed"], ascending=[False, True, True])
    chosen = ordered.drop_duplicates("task")["run"].tolist()
    return (chosen + [r for r in ordered["run"] if r not in chosen])[:count]


def figure2(measures: pd.DataFrame, run_names: list[str]):
    """p (the unembedding's spectrum) and q (the inputs' alignment with it) at the
    memorization, grokking and final checkpoints of the chosen runs."""
    chosen = measures[measures["run"].isin(run_names)]
    if chosen.empty:
        return None
    fig, axes = plt.subplots(
        len(run_names), 3, figsize=(11, 2.8 * len(run_names)), squeeze=False, sharey=True
    )
    for row, run in zip(axes, run_names, strict=True):
        for ax, kind in zip(row, KIND_ORDER, strict=True):
            found = chosen[(chosen["run"] == run) & (chosen["kind"] == kind)]
            ax.set_title(f"{run.split('/')[-1]} — {kind}", fontsize=8)
            if found.empty:
                ax.text(0.5, 0.5, "no checkpoint", ha="center", transform=ax.transAxes)
                ax.set_axis_off()
                continue
            entry = found.iloc[0]
            index = np.arange(1, len(entry["p"]) + 1)
            for values, label in ((entry["p"], "p (W)"), (entry["q"], "q (inputs)")):
                shown = np.where(np.asarray(values) > 0, values, np.nan)  # p is 0 past the rank
                ax.semilogy(index, shown, ".-", ms=3, label=label)
            ax.set_xlabel(
                f"singular direction i   (LAR {entry['lar']:.3f}, epoch {entry['epoch']})"
            )
            # shared y: matplotlib labels only the first column, which may be an empty panel
            ax.tick_params(labelleft=True)
    next(ax for ax in axes.flat if ax.get_lines()).legend(fontsize=8)
    fig.suptitle("Figure 2 — spectra p and q of the unembedding")
    fig.tight_layout()
    return fig


def figure3(measures: pd.DataFrame, runs: pd.DataFrame):
    """k_LAR against PC95: one point per run and checkpoint kind, with the line y = x; one panel
    per Table 1 row. Each kind has its own colour and marker, half transparent, so that points on
    top of each other stay visible."""
    if measures.empty:
        return None
    data = measures.merge(runs[["run", "group", "setting"]], on="run")
    data["row"] = [group_title(g, s) for g, s in zip(data["group"], data["setting"], strict=True)]
    rows = list(dict.fromkeys(data["row"]))
    fig, axes = grid(len(rows), ncols=3, size=(4.6, 4.3))
    top = max(data["pc95"].max(), data["k_lar"].max()) * 1.2
    markers = dict(zip(KIND_ORDER, ("o", "s", "^"), strict=True))
    for ax, row in zip(axes, rows, strict=False):
        sns.scatterplot(
            data=data[data["row"] == row],
            x="pc95",
            y="k_lar",
            hue="kind",
            hue_order=KIND_ORDER,
            style="kind",
            markers=markers,
            alpha=0.55,
            s=45,
            ax=ax,
            legend=False,
        )
        ax.plot([0.8, top], [0.8, top], color="gray", linestyle=":")
        ax.set(xscale="log", yscale="log", xlabel="PC95", ylabel="k_LAR = n^(2(1-LAR))")
        ax.set_title(row, fontsize=9)
    fig.suptitle("Figure 3 — LAR-predicted dimension against PC95")
    fig.tight_layout()
    palette = sns.color_palette(n_colors=len(KIND_ORDER))
    handles = [
        Line2D([], [], color=c, marker=markers[k], linestyle="", alpha=0.55, label=k)
        for k, c in zip(KIND_ORDER, palette, strict=True)
    ]
    handles.append(Line2D([], [], color="gray", linestyle=":", label="y = x"))
    _legend_below(fig, handles)
    return fig


def figure9(
    runs: pd.DataFrame, metrics: pd.DataFrame, first_epochs: int = 20, min_epochs: int = 10
):
    """(a) LAR over the first epochs for each batch size; (b) minimum LAR in the first
    `min_epochs` epochs against batch size / training-set size. Uses runs evaluated every epoch."""
    dense = runs[runs["eval_every"] == 1]
    if dense.empty:
        return None
    data = metrics[metrics["run"].isin(dense["run"])].merge(
        dense[["run", "batch_size", "n_train", "p", "train_fraction"]], on="run"
    )
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    curves = data[data["epoch"] <= first_epochs]
    study = dense["group"].eq("batch_size")  # the (a) sweep when present, else every dense run
    if study.any():
        curves = curves[curves["run"].isin(dense.loc[study, "run"])]
    sizes = sorted(curves["batch_size"].unique())
    sns.lineplot(
        data=curves.assign(batch_size=curves["batch_size"].astype(str)),
        x="epoch",
        y="lar",
        hue="batch_size",
        hue_order=[str(size) for size in sizes],
        palette=sns.color_palette("viridis", len(sizes)),  # one distinct colour per size
        ax=left,
        errorbar=SEED_BAND,
    )
    left.set_title(f"(a) LAR over the first {first_epochs} epochs")
    early = data[data["epoch"] <= min_epochs]
    minima = early.groupby("run").agg(
        min_lar=("lar", "min"),
        batch_size=("batch_size", "first"),
        n_train=("n_train", "first"),
        p=("p", "first"),
        train_fraction=("train_fraction", "first"),
    )
    minima["ratio"] = minima["batch_size"] / minima["n_train"]
    minima["p"] = minima["p"].map(lambda p: f"p={p}")  # categories: one distinct colour each
    sns.scatterplot(data=minima, x="ratio", y="min_lar", hue="p", style="train_fraction", ax=right)
    right.set(
        xscale="log",
        xlabel="batch size / training-set size",
        ylabel=f"min LAR, epochs 0-{min_epochs}",
    )
    # log-axis minor labels overlap (set after the scale, which resets the formatters)
    right.xaxis.set_minor_formatter(NullFormatter())
    right.set_title("(b) the early LAR dip against batch fraction")
    fig.suptitle("Figure 9 — batch size and the early LAR dip")
    fig.tight_layout()
    return fig


def _condition_palette(runs: pd.DataFrame) -> dict:
    conditions = list(dict.fromkeys(runs["condition"]))
    return dict(zip(conditions, sns.color_palette(n_colors=len(conditions)), strict=True))


EVENT_STYLES = ("--", ":")  # memorization, grokking, in the condition's own colour


def _by_condition(ax, data, column: str, runs: pd.DataFrame, palette: dict, errorbar) -> None:
    """`column` against epoch, a line per condition in its colour, with its own events."""
    sns.lineplot(data=data, x="epoch", y=column, hue="condition", palette=palette, ax=ax,
                 errorbar=errorbar, legend=False)  # fmt: skip
    for condition, color in palette.items():
        events = runs[runs["condition"] == condition]
        _event_lines(ax, events, (color, color), EVENT_STYLES)


def _condition_legend(fig, runs: pd.DataFrame, palette: dict) -> None:
    handles = [Line2D([], [], color=color, label=name) for name, color in palette.items()]
    events = _event_handles(runs, ("black", "black"), EVENT_STYLES)
    _legend_below(fig, handles + events, ncol=min(4, len(handles) + 2))


def figure_ranks(runs: pd.DataFrame, metrics: pd.DataFrame, group: str):
    """Appendix D.1: LAR beside the unembedding's stable rank and effective rank, one line per
    condition (mean over seeds) with its own memorization and grokking lines in its colour."""
    in_group = runs[runs["group"] == group]
    if in_group.empty:
        return None
    data = metrics.merge(in_group[["run", "condition"]], on="run")
    data = data[data["epoch"] <= _x_limit(in_group)]
    palette = _condition_palette(in_group)
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    for ax, column in zip(axes, ["lar", "stable_rank", "effective_rank"], strict=True):
        _by_condition(ax, data, column, in_group, palette, SEED_BAND)
    fig.suptitle(f"LAR, stable rank and effective rank — {group_title(group)}")
    fig.tight_layout()
    _condition_legend(fig, in_group, palette)
    return fig


def figure_matrices(runs: pd.DataFrame, matrix_lar: pd.DataFrame, group: str):
    """Paper Figures 17–20: LAR of every probed matrix against epoch, one panel per layer and
    role, one line per condition (mean over seeds), in its colour: dashed at its mean
    memorization epoch, dotted at its mean grokking epoch."""
    in_group = runs[runs["group"] == group]
    data = matrix_lar.merge(in_group[["run", "condition"]], on="run")
    if data.empty:
        return None
    data = _matrix_panels(data[data["epoch"] <= _x_limit(in_group)])
    panels = list(dict.fromkeys(data["panel"]))
    fig, axes = grid(len(panels), ncols=6 if len(panels) > 8 else 4, size=(3.0, 2.5), sharey=True)
    palette = _condition_palette(in_group)
    for ax, panel in zip(axes, panels, strict=False):
        _by_condition(ax, data[data["panel"] == panel], "lar", in_group, palette, None)
        ax.axhline(0.5, color="gray", linewidth=0.5)
        ax.set_title(panel, fontsize=9)
    fig.suptitle(f"LAR of every dense matrix — {group_title(group)}")
    fig.tight_layout()
    _condition_legend(fig, in_group, palette)
    return fig


def _matrix_panels(matrix_lar: pd.DataFrame) -> pd.DataFrame:
    """`matrix_lar` with `panel` ("layer 0 · q", "unembed") and the panels in model order."""
    data = matrix_lar.assign(
        panel=[
            role if pd.isna(layer) else f"layer {int(layer)} · {role}"
            for layer, role in zip(matrix_lar["layer"], matrix_lar["role"], strict=True)
        ],
        order=matrix_lar["role"].map({role: i for i, role in enumerate(ROLE_ORDER)}),
    )
    return data.sort_values(["layer", "order", "epoch"], na_position="last")


ALIGNED_UP_TO = 1.5  # × the grokking epoch (or the budget): the alarms' window and a little after


def figure_matrices_aligned(runs: pd.DataFrame, matrix_lar: pd.DataFrame, group: str):
    """Every dense matrix's LAR around the grokking epoch, aligned across runs: x = epoch /
    grokking epoch, one line per run in its task's colour, so that what moves before grokking
    (and how far ahead) reads at x < 1. A run that never groks is drawn in grey against epoch /
    its last epoch: what an alarm would see in a run that ends without grokking. Evaluations
    before memorization are left out (the alarms start there)."""
    in_group = runs[(runs["group"] == group) & runs["memorization_epoch"].notna()]
    data = matrix_lar.merge(in_group[["run", "task", "grokked", "memorization_epoch"]], on="run")
    data = data[data["epoch"] >= data["memorization_epoch"]]
    if data.empty:
        return None
    scale = in_group["grokking_epoch"].where(in_group["grokked"], in_group["final_epoch"])
    data["x"] = data["epoch"] / data["run"].map(dict(zip(in_group["run"], scale, strict=True)))
    data = _matrix_panels(data[data["x"] <= ALIGNED_UP_TO])
    panels = list(dict.fromkeys(data["panel"]))
    tasks = list(dict.fromkeys(in_group.loc[in_group["grokked"], "task"]))
    palette = dict(zip(tasks, sns.color_palette(n_colors=max(len(tasks), 1)), strict=False))
    fig, axes = grid(len(panels), ncols=5, size=(3.0, 2.4), sharex=True)
    for ax, panel in zip(axes, panels, strict=False):
        for _, curve in data[data["panel"] == panel].groupby("run", sort=False):
            grokked = curve["grokked"].iloc[0]
            color = palette[curve["task"].iloc[0]] if grokked else "gray"
            ax.plot(curve["x"], curve["lar"], color=color, linewidth=0.8,
                    linestyle="-" if grokked else "--", alpha=0.8 if grokked else 0.6)  # fmt: skip
        ax.axvline(1.0, color="green", linestyle=":", linewidth=1)
        ax.set_title(panel, fontsize=9)
    for ax in axes:
        ax.set_xlabel("epoch / grokking epoch", fontsize=8)
    fig.suptitle(f"LAR of every dense matrix, aligned at grokking — {group_title(group)}")
    fig.tight_layout()
    handles = [Line2D([], [], color=c, label=f"{task} (grokked)") for task, c in palette.items()]
    if not in_group["grokked"].all():
        handles.append(Line2D([], [], color="gray", linestyle="--",
                              label="never grokked: epoch / last epoch"))  # fmt: skip
    handles.append(Line2D([], [], color="green", linestyle=":", label="grokking epoch"))
    _legend_below(fig, handles, ncol=min(5, len(handles)))
    return fig
