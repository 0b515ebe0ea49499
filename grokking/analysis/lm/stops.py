"""The stopping rules on language-model runs, against validation (overfitting.py): per run and
rule the step stopped at, the step kept, its excess (the validation loss of the last evaluation at
or before the kept step, minus the run's best evaluation's) and the share of the budget trained.
A run overfits when overfitting.py's rule finds its overfitting step. LAR's rules: the
`OverfittingStop` (candidates at the run's evaluated steps, as scripts/tune_stop.py tuned it) and
the paper's accelerating decline (`AcceleratingDeclineAlarm` as a stop)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from grokking.analysis.lm.overfitting import evaluations
from grokking.analysis.stops import BASELINES, FULL, NEVER, Rule, scored_rows, value_at
from grokking.lar.alarm import AcceleratingDeclineAlarm, first_firing
from grokking.lar.select import OverfittingStop, run_rule


def _overfitting_stop(steps: np.ndarray, lar: np.ndarray, rows: pd.DataFrame):
    every = int(np.diff(evaluations(rows)["step"].to_numpy()[:2])[0])  # the evaluation interval
    rule = run_rule(OverfittingStop(every=every), steps, lar)
    return rule.stopped_at, rule.selected


def _accelerating_decline(steps: np.ndarray, lar: np.ndarray, _rows):
    fired = first_firing(AcceleratingDeclineAlarm(), steps, lar)
    return fired, fired


LM_RULES = (
    Rule("LAR: OverfittingStop", "lar", _overfitting_stop),
    Rule("training to the end", "step", lambda *_: NEVER),
    BASELINES[0],  # validation early stopping
    Rule("LAR: accelerating decline", "lar", _accelerating_decline),
    *BASELINES[1:],
)


def score_stops(runs: pd.DataFrame, metrics: pd.DataFrame, rules=LM_RULES) -> pd.DataFrame:
    """One row per run and rule whose signal the run recorded."""

    def score(run, rows: pd.DataFrame, stopped: int | None, kept: int) -> dict:
        evals = evaluations(rows)
        return {
            "overfits": pd.notna(run.overfitting_step),
            "best step": run.min_val_loss_step,
            "stopped": stopped,
            "kept": kept,
            "excess": value_at(evals["step"], evals["val_loss"], kept) - run.min_val_loss,
            "share of budget": (run.max_steps if stopped is None else stopped) / run.max_steps,
        }

    def rows_of(run) -> pd.DataFrame:
        return metrics[metrics["run"] == run.run]

    return scored_rows(runs, rows_of, rules, "step", score).astype({"stopped": "Int64"})


def summarize(scores: pd.DataFrame) -> pd.DataFrame:
    """Per rule: the runs it was scored on, the median and worst excess on the runs that
    overfit and the worst on all, how many runs that never overfit it stopped before 95 % of
    their budget, and the mean share of the budget trained."""
    summary = {}
    for rule, part in scores.groupby("rule", sort=False):
        over, never = part[part["overfits"]], part[~part["overfits"]]
        early = (never["share of budget"] < FULL).sum()
        summary[rule] = {
            "runs": len(part),
            "median excess (overfit)": over["excess"].median(),
            "worst excess (overfit)": over["excess"].max(),
            "worst excess (all)": part["excess"].max(),
            f"never overfit, stopped < {FULL:.0%}": f"{early} of {len(never)}",
            "mean share of budget": part["share of budget"].mean(),
        }
    return pd.DataFrame.from_dict(summary, orient="index").rename_axis("rule")
