"""The language models' analysis written out: parquet tables, the per-run table, the
correlations, Table 2, Figures 4–8 and the ranks, the alarms against the overfitting step, and the
stopping rules side by side."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from grokking.analysis import alarms, stops
from grokking.analysis import steering as shared_steering
from grokking.analysis.collect import Results
from grokking.analysis.lm import figures, steering
from grokking.analysis.lm import stops as lm_stops
from grokking.analysis.lm.alarms import score_lm
from grokking.analysis.lm.tables import correlations, runs_table, table2, table2_trend
from grokking.analysis.output import write_figures, write_frames
from grokking.analysis.tables import write_table

NOUN = "language-model run"  # "4 language-model runs analysed"


def prepare(results: Results, **_options):
    """The writer of `results`' outputs (nothing to measure first)."""
    return lambda out: write(results, out)


def write(results: Results, out: Path) -> dict[str, Path]:
    """Every table and figure into `out`; {name: path}."""
    frames = {"lm_runs": results.runs, "lm_metrics": results.metrics}
    written = write_frames(frames | {"lm_matrix_lar": results.matrix_lar}, out)
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
    write_table(correlations(results), out, "lm_correlations")
    wide, tidy = table2(results)
    if len(tidy):
        write_table(wide, out, "table2", tidy=tidy)
        written["table2"] = out / "table2.csv"
        trend = table2_trend(tidy)
        if len(trend):
            write_table(trend, out, "table2_trend")
            print("Table 2's trend before each overfitting step (spearman > 0: steepening):")
            print(trend.to_markdown(index=False, floatfmt=".3g"), end="\n\n")
    plots = {
        "figure4": figures.figure4(results),
        "figure5": figures.figure5(results),
        "figure6": figures.figure_shares(results, "p1", "p₁ (weights)"),
        "figure7": figures.figure_shares(results, "q1", "q₁ (activations)"),
        "figure8": figures.figure_shares(results, "p1q1", "p₁q₁"),
        "lm_ranks": figures.figure_ranks(results),
    }
    written |= write_figures(plots, out)
    scores = score_lm(results.runs, results.metrics)
    title = "The alarms against the overfitting step"
    written |= alarms.write(scores, out, "alarm_lm", title)
    _write_steering(results, out)
    scores = lm_stops.score_stops(results.runs, results.metrics)
    title = "The stopping rules: the step kept, its excess over the best validation loss"
    return written | stops.write(scores, lm_stops.summarize(scores), out, "stops_lm", title)


def _write_steering(results: Results, out: Path) -> None:
    """lm_steering.md and lm_steering_summary.md, where some runs trained with a regularizer or
    with weight decay and their references are among the runs analysed."""
    table = steering.steering_table(results.runs, results.metrics)
    if table.empty:
        return
    title = "Steering LAR — each treated language model against its references:"
    shared_steering.write(
        table, steering.display(table), steering.summary(table), out, "lm_steering", title
    )
