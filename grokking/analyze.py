"""`python -m grokking.analyze DIR [DIR ...]`: Table 1, the per-task table and the paper's
figures from every grokking run under the given directories, and the §5 analysis (the overfitting
step, Figures 4–8, Table 2) of every language-model run there; a folder holding both analyses each.
For either family, the validation-free alarms and their baselines are scored against the truth
from validation (grokking.analysis.alarms).

Writes into `--out` (default: `<first DIR>-analysis`, beside it) and prints where:
  grokking runs: runs.parquet, metrics.parquet, matrix_lar.parquet, checkpoint_measures.parquet,
    baseline_measures.parquet, table1.{md,tex,csv}, per_task.{md,tex,csv},
    alarm_grokking{,_summary}.{md,tex,csv}, figure1_<group>, curves_<group>, figure2,
    figure3, figure9, ranks_<group>, matrices_<group> (.png and .pdf)
  language models: lm_runs.parquet, lm_metrics.parquet, lm_matrix_lar.parquet,
    lm_overfitting.{md,tex,csv}, lm_correlations.{md,tex,csv}, table2.{md,tex,csv},
    alarm_lm{,_summary}.{md,tex,csv},
    figure4 ... figure8, lm_ranks (.png and .pdf)
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

import matplotlib
import pandas as pd

matplotlib.use("Agg")  # the command writes files; it never needs a display
from grokking.analysis import alarms, baselines, figures, language_models  # noqa: E402
from grokking.analysis.collect import FAMILY, NothingToAnalyse, Results, collect  # noqa: E402
from grokking.analysis.measure import measure_all  # noqa: E402
from grokking.analysis.tables import (  # noqa: E402
    per_task_display,
    per_task_table,
    table1,
    table1_wide,
    write_table,
)
from grokking.runs.rundir import SUMMARY, DamagedFile, find_runs  # noqa: E402

log = logging.getLogger("grokking.analysis")


class OutputError(Exception):
    """The output folder cannot be made."""


class WriteFailed(Exception):
    """The outputs could not be written (a full disk); none of them reached the output folder."""


class AllSkipped(NothingToAnalyse):
    """Every run found was skipped as damaged."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m grokking.analyze", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("dirs", nargs="+", type=Path, help="folders holding runs, at any depth")
    parser.add_argument("--out", type=Path, help="output folder (default: <first DIR>-analysis)")
    parser.add_argument(
        "--pca-threshold", type=float, default=0.95, help="explained variance for PC95"
    )
    parser.add_argument("--figure2-runs", nargs="*", help="runs for Figure 2 (default: 3 chosen)")
    args = parser.parse_args(argv)
    if not 0 < args.pca_threshold < 1:
        parser.error(f"--pca-threshold: must lie in (0, 1), got {args.pca_threshold}")
    for folder in args.dirs:
        if not folder.is_dir():
            parser.error(f"DIR: no such directory: {folder}")
    return args


def analyze(dirs: list[Path], out: Path, pca_threshold: float = 0.95, figure2_runs=None) -> dict:
    """Everything the command writes; returns {name: path} of the files written. Every run is
    read and measured before anything is written, so a run is in every output or in none; the
    outputs are written beside `out` and moved into it once all are written, so that a failure
    (a full disk) leaves nothing of them in `out`."""
    unknown = _unknown_families(dirs)
    lm = language_models.collect(*dirs)
    grokking = _collect_grokking(dirs)
    grokking.skipped += unknown
    measured = _measure_grokking(grokking, pca_threshold) if len(grokking.runs) else None
    if grokking.runs.empty and lm.runs.empty:  # measuring may have skipped the last of them
        raise _nothing_to_analyse(dirs, grokking, lm)

    def write(folder: Path) -> dict:
        written = {}
        if not grokking.runs.empty:
            written |= _write_grokking(grokking, *measured, folder, figure2_runs)
        if not lm.runs.empty:
            written |= language_models.write(lm, folder)
            scores = alarms.score_lm(lm.runs, lm.metrics)
            title = "The alarms against the overfitting step"
            written |= _write_alarms(scores, folder, "alarm_lm", title)
            left = "; ".join(f"{run} ({why})" for run, why in lm.left_out)
            analysed = f"{len(lm.runs)} language-model runs analysed"
            print(analysed + (f"; left out: {left}" if left else ""))
        return written

    written = _write_into(out, write)
    print(f"wrote tables, figures and parquet files to {out}")
    return written


ANALYSED_FAMILIES = (FAMILY, language_models.FAMILY)


def _unknown_families(dirs: list[Path]) -> list[tuple[str, str]]:
    """(run folder, why) of each run whose summary names a family neither analysis reads, each
    told in a warning: they would otherwise go unseen by both."""
    unknown = []
    for run_dir in find_runs(*dirs):
        try:
            family = run_dir.read_summary().get("family", FAMILY)
        except (DamagedFile, FileNotFoundError):
            continue  # each analysis reports it
        if family not in ANALYSED_FAMILIES:
            why = (
                f"{run_dir.path / SUMMARY} names the family {family!r}, which this command does "
                f"not analyse (it analyses {', '.join(ANALYSED_FAMILIES)})"
            )
            log.warning("skipping %s: %s", run_dir.path, why)
            unknown.append((str(run_dir.path), why))
    return unknown


def _collect_grokking(dirs: list[Path]) -> Results:
    try:
        return collect(*dirs)
    except NothingToAnalyse:  # not one grokking run there: language models alone, or nothing
        return Results(pd.DataFrame(), pd.DataFrame(), pd.DataFrame())


def _measure_grokking(results: Results, pca_threshold: float):
    """(measures, at_checkpoints); a run that cannot be measured is taken out of `results`."""
    measures = measure_all(results, pca_threshold)
    at_checkpoints = baselines.measure_all(results)
    return measures, at_checkpoints


def _nothing_to_analyse(dirs: list[Path], grokking: Results, lm) -> NothingToAnalyse:
    where = ", ".join(map(str, dirs))
    skipped = grokking.skipped + lm.skipped
    if not (grokking.not_completed or lm.not_completed):
        if not skipped:
            return NothingToAnalyse(f"no runs (folders with summary.json) under {where}")
        runs = f"all {len(skipped)} runs under {where} were"
        if len(skipped) == 1:
            runs = f"the only run under {where} was"
        reasons = "; ".join(f"{run} ({why})" for run, why in skipped)
        return AllSkipped(f"{runs} skipped as damaged: {reasons}")
    lm_left_out = "; ".join(f"{run} ({why})" for run, why in lm.left_out)
    left_out = "; ".join(part for part in (grokking.left_out(), lm_left_out) if part)
    return NothingToAnalyse(f"no measurable runs under {where} ({left_out})")


def _write_into(out: Path, write: Callable[[Path], dict]) -> dict:
    """`write(folder)` into a new hidden folder beside `out`, its files then moved into `out`:
    a failure leaves nothing of them in `out`, and what `out` held is then unchanged."""
    created = not out.exists()
    try:  # beside a colleague's read-only results, the default folder cannot be made
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as error:
        raise OutputError(
            f"--out: cannot create {out} ({error.strerror}); choose another"
        ) from None
    try:
        written = write(staging)
        for path in staging.iterdir():
            path.replace(out / path.name)
    except OSError as error:
        raise WriteFailed(
            f"--out: cannot write the analysis to {out} ({error.strerror or error}); nothing "
            "of it was written: free some space or choose another"
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created:  # a folder this call made and nothing reached (rmdir refuses any other)
            with suppress(OSError):
                out.rmdir()
    return {name: out / path.name for name, path in written.items()}


def _write_alarms(scores: pd.DataFrame, out: Path, name: str, title: str) -> dict:
    """The per-run scores of the alarms and baselines, and their summary."""
    write_table(alarms.display(scores), out, name, tidy=scores)
    outcomes = alarms.summary(scores)
    write_table(outcomes, out, f"{name}_summary", tidy=outcomes.reset_index())
    print(f"{title}:")
    print(outcomes.to_markdown(), end="\n\n")
    return {name: out / f"{name}.csv", f"{name}_summary": out / f"{name}_summary.csv"}


def _write_grokking(results, measures, at_checkpoints, out: Path, figure2_runs) -> dict:
    written = {}
    for name, frame in (
        ("runs", results.runs),
        ("metrics", results.metrics),
        ("matrix_lar", results.matrix_lar),
        ("checkpoint_measures", measures),
        ("baseline_measures", at_checkpoints),
    ):
        written[name] = out / f"{name}.parquet"
        frame.to_parquet(written[name], index=False)

    tidy = table1(measures, results.runs)
    wide = table1_wide(tidy)
    write_table(wide, out, "table1", tidy=tidy)
    per_task = per_task_table(results.runs, measures)
    write_table(per_task_display(per_task), out, "per_task", tidy=per_task)
    print("Table 1 — RMSE(k_LAR, PC95), runs behind each cell:")
    print(wide.to_markdown(), end="\n\n")
    scores = alarms.score_grokking(results.runs, results.metrics, at_checkpoints)
    written |= _write_alarms(scores, out, "alarm_grokking", "The alarms against the grokking epoch")

    groups = results.runs["group"].unique()
    chosen = figure2_runs or figures.choose_runs(results.runs)
    plots = {f"figure1_{g}": figures.figure1(results.runs, results.metrics, g) for g in groups}
    plots |= {
        f"curves_{g}": figures.figure_curves(
            results.runs[results.runs["group"] == g], results.metrics, figures.curves_title(g)
        )
        for g in groups
    }
    plots |= {
        "figure2": figures.figure2(measures, chosen),
        "figure3": figures.figure3(measures, results.runs),
        "figure9": figures.figure9(results.runs, results.metrics),
    }
    plots |= {f"ranks_{g}": figures.figure_ranks(results.runs, results.metrics, g) for g in groups}
    plots |= {
        f"matrices_{g}": figures.figure_matrices(results.runs, results.matrix_lar, g)
        for g in groups
    }
    for name, fig in plots.items():
        if fig is None:
            print(f"{name}: nothing to plot (no matching runs)")
            continue
        written[name] = figures.save(fig, out, name)[0]

    left_out = results.left_out()
    count = len(results.runs)
    analysed = f"{count} run{'s' if count != 1 else ''} analysed"
    print(analysed + (f"; left out: {left_out}" if left_out else ""))
    return written


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    out = args.out or args.dirs[0].parent / f"{args.dirs[0].name}-analysis"
    try:
        analyze(args.dirs, out, args.pca_threshold, args.figure2_runs)
    except (AllSkipped, WriteFailed) as error:  # damaged files, a full disk
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except (FileNotFoundError, NothingToAnalyse, OutputError) as error:  # the command's arguments
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
