"""The grokking analysis written out: parquet tables, Table 1, the per-task table, the alarms
against the grokking epoch, the early forecast of grokking, the stopping rules side by side,
the steering table, and the paper's figures per sweep (group)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from grokking.analysis import alarms, stops
from grokking.analysis import steering as shared_steering
from grokking.analysis.algorithmic import baselines, figures, forecast, steering, tables
from grokking.analysis.algorithmic import stops as grokking_stops
from grokking.analysis.algorithmic.alarms import score_grokking
from grokking.analysis.algorithmic.measure import measure_all
from grokking.analysis.collect import Results
from grokking.analysis.output import write_figures, write_frames
from grokking.analysis.tables import write_table

NOUN = "run"  # "2 runs analysed"


def prepare(results: Results, pca_threshold: float = 0.95, figure2_runs=None):
    """Measure every run's checkpoints now (a run that cannot be measured is taken out of
    `results`), and return the writer of the outputs."""
    measures = measure_all(results, pca_threshold)
    at_checkpoints = baselines.measure_all(results)
    return lambda out: write(results, measures, at_checkpoints, out, figure2_runs)


def write(results: Results, measures, at_checkpoints, out: Path, figure2_runs=None) -> dict:
    frames = {"runs": results.runs, "metrics": results.metrics}
    frames |= {"matrix_lar": results.matrix_lar, "checkpoint_measures": measures}
    written = write_frames(frames | {"baseline_measures": at_checkpoints}, out)
    tidy = tables.table1(measures, results.runs)
    wide = tables.table1_wide(tidy)
    write_table(wide, out, "table1", tidy=tidy)
    per_task = tables.per_task_table(results.runs, measures)
    write_table(tables.per_task_display(per_task), out, "per_task", tidy=per_task)
    print("Table 1 — RMSE(k_LAR, PC95), runs behind each cell:")
    print(wide.to_markdown(), end="\n\n")
    scores = score_grokking(results.runs, results.metrics, at_checkpoints,
                            matrix_lar=results.matrix_lar)  # fmt: skip
    title = "The alarms against the grokking epoch"
    written |= alarms.write(scores, out, "alarm_grokking", title)
    written |= forecast.write(
        results.runs, results.metrics, at_checkpoints, results.matrix_lar, out
    )
    _write_steering(results, measures, out)
    scores = grokking_stops.score_stops(results.runs, results.metrics, at_checkpoints)
    title = "The stopping rules against the grokking epoch"
    summary = grokking_stops.summarize(scores)
    written |= stops.write(scores, summary, out, "stops_grokking", title)
    plots = _figures(results, measures, figure2_runs or figures.choose_runs(results.runs))
    return written | write_figures(plots, out, figures.save)


def _write_steering(results: Results, measures: pd.DataFrame, out: Path) -> None:
    """steering.md and steering_summary.md, where some runs trained with a regularizer and their
    baselines are among the runs analysed."""
    table = steering.steering_table(results.runs, results.metrics, measures)
    if table.empty:
        return
    title = "Steering LAR — each regularized run against its baseline:"
    shared_steering.write(
        table, steering.display(table), steering.summary(table), out, "steering", title
    )


def _figures(results: Results, measures: pd.DataFrame, figure2_runs: list[str]) -> dict:
    """{name: figure} for every figure, the per-sweep ones for each group."""
    runs, metrics = results.runs, results.metrics
    groups = runs["group"].unique()
    plots = {f"figure1_{g}": figures.figure1(runs, metrics, g) for g in groups}
    plots |= {
        f"curves_{g}": figures.figure_curves(
            runs[runs["group"] == g], metrics, figures.curves_title(g)
        )
        for g in groups
    }
    plots |= {
        "figure2": figures.figure2(measures, figure2_runs),
        "figure3": figures.figure3(measures, runs),
        "figure9": figures.figure9(runs, metrics),
    }
    plots |= {f"ranks_{g}": figures.figure_ranks(runs, metrics, g) for g in groups}
    plots |= {f"matrices_{g}": figures.figure_matrices(runs, results.matrix_lar, g) for g in groups}
    plots |= {
        f"matrices_aligned_{g}": figures.figure_matrices_aligned(runs, results.matrix_lar, g)
        for g in groups
    }
    return plots
