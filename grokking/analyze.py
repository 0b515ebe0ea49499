"""`python -m grokking.analyze DIR [DIR ...]`: Table 1, the per-task table and the paper's
figures from every grokking run under the given directories, and the §5 analysis (the overfitting
step, Figures 4–8, Table 2) of every language-model run there; a folder holding both analyses each.
For either family, the validation-free alarms and their baselines are scored against the truth
from validation (grokking.analysis.<family>.alarms), and the stopping rules side by side
(grokking.analysis.<family>.stops).

Writes into `--out` (default: `<first DIR>-analysis`, beside it) and prints where:
  grokking runs: runs.parquet, metrics.parquet, matrix_lar.parquet, checkpoint_measures.parquet,
    baseline_measures.parquet, table1.{md,tex,csv}, per_task.{md,tex,csv},
    alarm_grokking{,_summary}.{md,tex,csv}, stops_grokking{,_summary}.{md,tex,csv},
    figure1_<group>, curves_<group>, figure2, figure3, figure9, ranks_<group>, matrices_<group>
    (.png and .pdf)
  language models: lm_runs.parquet, lm_metrics.parquet, lm_matrix_lar.parquet,
    lm_overfitting.{md,tex,csv}, lm_correlations.{md,tex,csv}, table2.{md,tex,csv},
    alarm_lm{,_summary}.{md,tex,csv}, stops_lm{,_summary}.{md,tex,csv},
    figure4 ... figure8, lm_ranks (.png and .pdf)
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # the command writes files; it never needs a display
from grokking.analysis import algorithmic, lm  # noqa: E402
from grokking.analysis.collect import Found, NothingToAnalyse, find, read  # noqa: E402
from grokking.analysis.output import OutputError, WriteFailed, write_into  # noqa: E402
from grokking.runs.rundir import SUMMARY  # noqa: E402

log = logging.getLogger("grokking.analysis")
ANALYSES = (algorithmic, lm)  # each family's analysis: its READER, NOUN and prepare


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
    outputs are written into the output folder whole, or not at all (`write_into`)."""
    found = find(*dirs)
    unread = _unread(found)
    prepared = []
    for analysis in ANALYSES:
        result = read(analysis.READER, [run for run in found if analysis.READER.reads(run.summary)])
        writer = analysis.prepare(result, pca_threshold=pca_threshold, figure2_runs=figure2_runs)
        prepared.append((analysis, result, writer))
    if all(result.runs.empty for _, result, _ in prepared):  # measuring may skip the last of them
        raise _nothing_to_analyse(dirs, [result for _, result, _ in prepared], unread)

    def write(folder: Path) -> dict:
        written = {}
        for analysis, result, writer in prepared:
            if not result.runs.empty:
                written |= writer(folder)
                print(result.analysed(analysis.NOUN))
        return written

    written = write_into(out, write)
    print(f"wrote tables, figures and parquet files to {out}")
    return written


def _unread(found: list[Found]) -> list[tuple[str, str]]:
    """(run, why) of each run no family's analysis reads: its summary cannot be read, or names a
    family this command does not analyse; each told in a warning."""
    families = ", ".join(analysis.READER.family.name for analysis in ANALYSES)
    unread = []
    for run in found:
        if run.summary is None:
            unread.append((run.name, run.why))
        elif not any(analysis.READER.reads(run.summary) for analysis in ANALYSES):
            why = (
                f"{run.run_dir.path / SUMMARY} names the family {run.summary.get('family')!r}, "
                f"which this command does not analyse (it analyses {families})"
            )
            unread.append((str(run.run_dir.path), why))
        else:
            continue
        log.warning("skipping %s: %s", *unread[-1])
    return unread


def _nothing_to_analyse(dirs: list[Path], results, unread) -> NothingToAnalyse:
    where = ", ".join(map(str, dirs))
    skipped = unread + [run for result in results for run in result.skipped]
    if not any(result.not_completed for result in results):
        if not skipped:
            return NothingToAnalyse(f"no runs (folders with summary.json) under {where}")
        runs = f"all {len(skipped)} runs under {where} were"
        if len(skipped) == 1:
            runs = f"the only run under {where} was"
        reasons = "; ".join(f"{run} ({why})" for run, why in skipped)
        return AllSkipped(f"{runs} skipped as damaged: {reasons}")
    left_out = "; ".join(result.left_out() for result in results if result.left_out())
    return NothingToAnalyse(f"no measurable runs under {where} ({left_out})")


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
