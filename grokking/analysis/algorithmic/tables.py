"""Table 1 (RMSE of k_LAR against PC95) and the per-task table, as DataFrames."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import mean_squared_error

from grokking.algorithmic.record import CHECKPOINT_KINDS
from grokking.analysis.algorithmic.conditions import CONFIG_PREFIX, PANEL_KEYS, setting_keys

# Table 1's columns: which checkpoint, and which runs.
COLUMNS = {
    "Memorized": lambda m: m["kind"] == "memorization",
    "Grokked": lambda m: m["kind"] == "grokking",
    "Final (grokked)": lambda m: (m["kind"] == "final") & m["grokked"],
    "Final (no grok)": lambda m: (m["kind"] == "final") & ~m["grokked"],
}
# Rows named as in the paper; any other sweep keeps its own name.
GROUP_TITLES = {
    "table1_ops": "12 binary operations",
    "train_fraction": "Modular addition, train-fraction sweep",
    "single_runs": "Runs outside a sweep",
    "cpu_reproduction": "Binary operations, CPU scale",
}


def group_title(group: str, setting: str = "") -> str:
    """The group's name as printed, with its setting ("max_epochs=100") when it has one."""
    title = GROUP_TITLES.get(group, group)
    return f"{title} ({setting})" if setting else title


def table1(measures: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Tidy Table 1: one row per group, setting and column with `rmse` and `n` (runs behind the
    cell). Tasks and train fractions are pooled, as in the paper; every other setting splits."""
    keys = setting_keys(runs)
    data = measures.merge(runs[["run", "group", "setting", *keys]], on="run")
    rows = []
    for (group, setting), in_group in data.groupby(["group", "setting"], sort=False):
        values = {_shown(key): in_group[key].iloc[0] for key in keys}
        for column, select in COLUMNS.items():
            cell = in_group[select(in_group)]
            rmse = np.sqrt(mean_squared_error(cell["k_lar"], cell["pc95"])) if len(cell) else np.nan
            row = {"group": group_title(group, setting)} | values
            rows.append(row | {"column": column, "rmse": rmse, "n": len(cell)})
    return pd.DataFrame(rows, columns=["group", *map(_shown, keys), "column", "rmse", "n"])


def _shown(column: str) -> str:
    return column.removeprefix(CONFIG_PREFIX)


def table1_wide(tidy: pd.DataFrame) -> pd.DataFrame:
    """Table 1 as printed: groups down, columns across, cells `RMSE (n=N)`."""
    cells = tidy.assign(
        cell=[
            f"{r:.2f} (n={n})" if n else "–" for r, n in zip(tidy["rmse"], tidy["n"], strict=True)
        ]
    )
    wide = cells.pivot(index="group", columns="column", values="cell")
    wide = wide.reindex(columns=list(COLUMNS), index=tidy["group"].unique())
    return wide.rename_axis(index=None, columns=None)  # no stray "column" header row


def per_task_table(runs: pd.DataFrame, measures: pd.DataFrame) -> pd.DataFrame:
    """Per condition (group, task, p, train fraction and setting: runs that differ only in
    their seeds): seeds, the fraction that grokked, and mean and sd of memorization and grokking
    epochs and of LAR, k_LAR and PC95 at each checkpoint kind."""
    settings = setting_keys(runs)
    keys = ["group", *PANEL_KEYS, *settings]
    wide = measures.pivot_table(index="run", columns="kind", values=["lar", "k_lar", "pc95"])
    wide.columns = [f"{value}_{kind}" for value, kind in wide.columns]
    data = runs.set_index("run").join(wide).reset_index()
    value_columns = ["memorization_epoch", "grokking_epoch"] + [
        f"{value}_{kind}"
        for kind in CHECKPOINT_KINDS
        for value in ("lar", "k_lar", "pc95")
        if f"{value}_{kind}" in data
    ]
    grouped = data.groupby(keys, sort=False, dropna=False)  # S5 tasks have no modulus p
    table = grouped.agg(seeds=("run", "size"), grokked=("grokked", "mean"))
    for column in value_columns:
        table[f"{column}_mean"] = grouped[column].mean()
        table[f"{column}_sd"] = grouped[column].std()
    table = table.reset_index().rename(columns={key: _shown(key) for key in settings})
    table["group"] = table["group"].map(group_title)
    table["p"] = table["p"].astype("Int64")
    return table


def per_task_display(table: pd.DataFrame) -> pd.DataFrame:
    """`per_task_table` with each mean and sd joined as `mean ± sd`."""
    value_start = table.columns.get_loc("seeds")
    shown = table[[*table.columns[:value_start], "seeds", "grokked"]].copy()
    for column in [c[: -len("_mean")] for c in table.columns if c.endswith("_mean")]:
        mean, sd = table[f"{column}_mean"], table[f"{column}_sd"]
        digits = 3 if column.startswith("lar") else 0 if column.endswith("epoch") else 1
        shown[column] = [
            "–"
            if pd.isna(m)
            else f"{m:.{digits}f}"
            if pd.isna(s)
            else f"{m:.{digits}f} ± {s:.{digits}f}"
            for m, s in zip(mean, sd, strict=True)  # one run has no sd: its value alone
        ]
    return shown
