"""The stopping rules on grokking runs, against validation: per run and rule the epoch stopped
at, the epoch kept, the validation accuracy there (the last evaluation at or before it), the stop
over the grokking epoch, and the share of the budget (max_epochs) trained. The issue's goal: a run
that groks is stopped at ≤ 1.2 × its grokking epoch with validation accuracy ≥ 0.99; a run that
never groks trains to its budget. A run that groks was itself stopped by validation at
stop_factor × its grokking epoch: a rule that has not stopped by then is shown as never stopped
and its end as unknown (beyond the recorded epochs), which misses the goal; a run that reached its
budget ends there. LAR's rule: `GrokkingStop` on LAR and the training accuracy."""

from __future__ import annotations

import numpy as np
import pandas as pd

from grokking.analysis.stops import BASELINES, FULL, NEVER, Rule, scored_rows, value_at
from grokking.lar.select import GrokkingStop, run_rule

LATEST = 1.2  # × the grokking epoch: the latest stop that meets the goal
GENERALIZED = 0.99  # the validation accuracy a stop must keep


def _grokking_stop(epochs: np.ndarray, lar: np.ndarray, rows: pd.DataFrame):
    rule = run_rule(GrokkingStop(), epochs, lar, train_acc=rows["train_acc"].to_numpy())
    return rule.stopped_at, rule.selected


GROKKING_RULES = (
    Rule("LAR: GrokkingStop", "lar", _grokking_stop),
    Rule("training to the run's end", "epoch", lambda *_: NEVER),
    *BASELINES,
)


def _meets_goal(run, ended: int | None, val_acc: float) -> bool:
    if not run.grokked:
        return ended is None or ended >= FULL * run.max_epochs
    return ended is not None and ended <= LATEST * run.grokking_epoch and val_acc >= GENERALIZED


def _end(run, stopped: int | None) -> int | None:
    """Where training ends under a rule: its stop, else the budget if the run reached it, else
    unknown (validation stopped the run first)."""
    if stopped is not None:
        return stopped
    return run.max_epochs if run.final_epoch >= run.max_epochs else None


def score_stops(runs: pd.DataFrame, metrics: pd.DataFrame, at_checkpoints: pd.DataFrame,
                rules=GROKKING_RULES) -> pd.DataFrame:  # fmt: skip
    """One row per run and rule whose signal the run recorded; `at_checkpoints` holds the
    signals measured at checkpoints (baselines.py: WeightWatcher's α), by run and epoch."""

    def rows_of(run) -> pd.DataFrame:
        evals = metrics[metrics["run"] == run.run]
        if at_checkpoints.empty:  # no run had periodic checkpoints
            return evals
        signals = at_checkpoints[at_checkpoints["run"] == run.run].drop(columns="run")
        return evals.merge(signals, on="epoch", how="left")

    def score(run, rows: pd.DataFrame, stopped: int | None, kept: int) -> dict:
        val_acc = value_at(rows["epoch"], rows["val_acc"], kept)
        ended = _end(run, stopped)
        ratio = np.nan if ended is None or not run.grokked else ended / run.grokking_epoch
        return {
            "grokking epoch": run.grokking_epoch,
            "stopped": stopped,
            "ended": ended,
            "kept": kept,
            "val_acc kept": val_acc,
            "end / grokking epoch": ratio,
            "share of budget": (run.final_epoch if ended is None else ended) / run.max_epochs,
            "goal met": _meets_goal(run, ended, val_acc),
        }

    scores = scored_rows(runs, rows_of, rules, "epoch", score)
    return scores.astype({"grokking epoch": "Int64", "stopped": "Int64", "ended": "Int64"})


def summarize(scores: pd.DataFrame) -> pd.DataFrame:
    """Per rule: the runs it was scored on, how many that grok it ended in time with the
    accuracy kept (the goal), its latest end over the grokking epoch (of the known ends) and
    least accuracy kept on them, how many that never grok it stopped before 95 % of the budget,
    and the mean share of the budget trained (a lower bound where the end is unknown)."""
    summary = {}
    for rule, part in scores.groupby("rule", sort=False):
        grokked, never = part[part["grokking epoch"].notna()], part[part["grokking epoch"].isna()]
        early = (never["share of budget"] < FULL).sum()
        summary[rule] = {
            "runs": len(part),
            "grokked: goal met": f"{grokked['goal met'].sum()} of {len(grokked)}",
            "latest end / grokking epoch (known)": grokked["end / grokking epoch"].max(),
            "least val_acc kept (grokked)": grokked["val_acc kept"].min(),
            f"never grokked, stopped < {FULL:.0%}": f"{early} of {len(never)}",
            "mean share of budget": part["share of budget"].mean(),
        }
    return pd.DataFrame.from_dict(summary, orient="index").rename_axis("rule")
