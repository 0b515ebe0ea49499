"""Gather one family's runs under some directories into tidy DataFrames, through `RunDir`. A run
is in every table or in none: one that cannot be read is skipped, in one line naming it and why.
What a family reads of a run is its `Reader` (analysis/<family>/collect.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from grokking.runs.family import Family
from grokking.runs.rundir import COMPLETED, RUNNING, DamagedFile, RunDir, find_runs

log = logging.getLogger("grokking.analysis")


class NothingToAnalyse(Exception):
    """No run under the given folders can be analysed; the message says why."""


@dataclass(frozen=True)
class Reader:
    """What one family's analysis reads of its runs. `metrics_needs`, `matrix_needs`: the
    columns it reads of each table ({column: NUMBERS or TEXT}), so that a run whose tables lack
    them is skipped when it is read, not half-way through the outputs. `row(name, run_dir,
    summary, metrics)`: the run's row of the runs table; `table(rows)`: the runs table from
    those rows (what relates runs to each other: conditions, labels, baselines)."""

    family: Family
    metrics_needs: Mapping[str, str]
    matrix_needs: Mapping[str, str]
    row: Callable[[str, RunDir, dict, pd.DataFrame], dict]
    table: Callable[[pd.DataFrame], pd.DataFrame]
    unnamed: bool = False  # the runs whose summary names no family (older runs) are its

    def reads(self, summary: dict | None) -> bool:
        """Whether a run of this `summary` (None: unreadable) is this family's."""
        unnamed = self.family.name if self.unnamed else None
        return summary is not None and summary.get("family", unnamed) == self.family.name


@dataclass
class Results:
    """`runs`: one row per completed run (`run` names it); `metrics` and `matrix_lar`: the
    runs' tables with a `run` column. Runs left out: `not_completed` as (run, status),
    `skipped` as (run, reason)."""

    reader: Reader
    runs: pd.DataFrame = field(default_factory=pd.DataFrame)
    metrics: pd.DataFrame = field(default_factory=pd.DataFrame)
    matrix_lar: pd.DataFrame = field(default_factory=pd.DataFrame)
    not_completed: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def skip(self, run: str, reason: str) -> None:
        """Take `run` out of every table and record why."""
        log.warning("skipping %s: %s", run, reason)
        self.skipped.append((run, reason))
        if self.runs.empty:  # skipped while it is read: in no table yet
            return
        self.runs = self.reader.table(self.runs[self.runs["run"] != run].reset_index(drop=True))
        self.metrics = self.metrics[self.metrics["run"] != run].reset_index(drop=True)
        self.matrix_lar = self.matrix_lar[self.matrix_lar["run"] != run].reset_index(drop=True)

    def left_out(self) -> str:
        """ "in progress: a; interrupted: b; skipped: c (reason)", or "" when none is."""
        by_status: dict[str, list[str]] = {}
        for run, status in self.not_completed:
            by_status.setdefault(status_word(status), []).append(run)
        parts = [f"{word}: {', '.join(runs)}" for word, runs in by_status.items()]
        if self.skipped:
            parts.append("skipped: " + "; ".join(f"{r} ({why})" for r, why in self.skipped))
        return "; ".join(parts)

    def analysed(self, noun: str) -> str:
        """ "2 runs analysed; left out: ..." """
        count, left_out = len(self.runs), self.left_out()
        said = f"{count} {noun}{'s' if count != 1 else ''} analysed"
        return said + (f"; left out: {left_out}" if left_out else "")


@dataclass
class Found:
    """A run folder, its name and its summary (None when it cannot be read: `why` says why)."""

    name: str
    run_dir: RunDir
    summary: dict | None
    why: str = ""


def find(*dirs: str | Path) -> list[Found]:
    """Every run folder under `dirs` (any depth), its summary read."""
    found = []
    for root in map(Path, dirs):
        if not root.is_dir():
            raise FileNotFoundError(f"no such directory: {root}")
        for run_dir in find_runs(root):
            name = f"{root.name}/{run_dir.path.relative_to(root)}".rstrip("/.")
            try:
                found.append(Found(name, run_dir, run_dir.read_summary()))
            except Exception as error:  # corrupt JSON, a summary that is not an object
                found.append(Found(name, run_dir, None, reason(error, run_dir.path)))
    return found


def collect(reader: Reader, *dirs: str | Path) -> Results:
    """Every run of `reader`'s family under `dirs`; one whose summary cannot be read is skipped."""
    found = find(*dirs)
    return read(reader, [run for run in found if run.summary is None or reader.reads(run.summary)])


def read(reader: Reader, found: Iterable[Found]) -> Results:
    """The runs `found` as one `Results`: runs not completed are reported and left out, one with
    a missing or corrupt file is skipped with a warning that names it and the reason."""
    results = Results(reader)
    rows, metrics, matrices = [], [], []
    for run in found:
        if run.summary is None:
            results.skip(run.name, run.why)
            continue
        try:
            status = run.run_dir.status()  # the trainer's word, "interrupted" for a dead run
            if status != COMPLETED:
                results.not_completed.append((run.name, status))
                log.warning("%s is %s; left out", run.name, status_word(status))
                continue
            run_metrics = run.run_dir.read_metrics(reader.metrics_needs).assign(run=run.name)
            run_matrices = run.run_dir.read_matrix_lar(reader.matrix_needs).assign(run=run.name)
            row = reader.row(run.name, run.run_dir, run.summary, run_metrics)
        except Exception as error:  # corrupt parquet, a missing file or key
            results.skip(run.name, reason(error, run.run_dir.path))
            continue
        rows.append(row)
        metrics.append(run_metrics)
        matrices.append(run_matrices)
    if rows:
        results.runs = reader.table(pd.DataFrame(rows))
        results.metrics = pd.concat(metrics, ignore_index=True)
        results.matrix_lar = pd.concat(matrices, ignore_index=True)
    return results


def flatten(tree: dict) -> dict:
    """A run's config {"optim": {"lr": 1e-3}} as {"optim.lr": 1e-3}."""
    return pd.json_normalize(tree, sep=".").iloc[0].to_dict()


def status_word(status: str | None) -> str:
    return "in progress" if status == RUNNING else str(status)


def reason(error: Exception, where: Path | None = None) -> str:
    """One short line for an error, naming the file: a DamagedFile names it itself; any other
    error (a summary without a field the analysis reads, say) is told as about `where`."""
    first_line = str(error).strip().split("\n")[0]
    if isinstance(error, DamagedFile):
        return first_line if len(first_line) <= 400 else first_line[:397] + "..."
    text = f"{type(error).__name__}: {first_line}"
    text = text if len(text) <= 160 else text[:157] + "..."
    return text if where is None or str(where) in text else f"{where}: {text}"
