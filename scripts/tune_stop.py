"""Tune the validation-free stop (grokking.lar.select.OverfittingStop) on some language-model runs
and score it on the others, beside the alarm as a stop, training to the end, and validation early
stopping.

    python scripts/tune_stop.py docs/lm_runs/lm_overfitting docs/lm_runs/lm_lr

Tuning runs: the runs of one optimizer in `lm_overfitting` (--tune-optimizer adam); every other
run is held out. A run overfits when its best validation loss comes before 95 % of its budget.
Per run, a stop keeps one step's weights; its excess is that step's validation loss minus the
run's best. The rule sees LAR only, one value at a time, and may keep weights at evaluated steps
(its `every` is the runs' evaluation interval); the alarm as a stop keeps the last evaluated step
at or before it fires; validation early stopping keeps the best evaluation so far once 3 in a row
have not improved on it (Lightning's default patience). Merit on the tuning runs: no run that
does not overfit stopped before 95 % of its budget, then the smallest worst excess, then the
smallest median. The chosen setting is the default of OverfittingStop.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd

from grokking.analysis.stops import FULL, early_stop, value_at
from grokking.lar.alarm import OverfittingAlarm, first_firing
from grokking.lar.select import OverfittingStop, run_rule


def load_runs(*groups: str) -> list[dict]:
    """Each run of the groups: its name, group, optimizer, metrics and evaluations."""
    runs = []
    for group in map(Path, groups):
        for folder in sorted(p for p in group.iterdir() if (p / "summary.json").exists()):
            summary = json.loads((folder / "summary.json").read_text())
            metrics = pd.read_parquet(folder / "metrics.parquet")
            val = metrics.dropna(subset=["val_loss"]).set_index("step")["val_loss"]
            runs.append({
                "run": f"{group.name}/{folder.name}", "group": group.name,
                "optimizer": summary["optimizer"], "steps": metrics["step"].to_numpy(),
                "lar": metrics["lar"].to_numpy(), "val": val,
            })  # fmt: skip
    return runs


def val_at(val: pd.Series, step: int) -> float:
    """The validation loss of the last evaluation at or before `step`."""
    return value_at(val.index.to_series(), val, step)


def validation_early_stop(val: pd.Series) -> tuple[int, int]:
    """(stop step, kept step) of early stopping on the validation loss (the analysis' rule)."""
    stopped, kept = early_stop(val.index.to_numpy(), val.to_numpy())
    return (val.index[-1] if stopped is None else stopped), kept


def outcomes(run: dict, make_rule) -> dict:
    """Per stop: the step it stopped at, the share of the budget trained, the excess kept."""
    val, last = run["val"], int(run["steps"][-1])
    best = float(val.min())
    rule = run_rule(make_rule(), run["steps"], run["lar"])
    stops = {"LAR stop": (last, last) if not rule.stopped else (rule.stopped_at, rule.selected)}
    fired = first_firing(OverfittingAlarm(), run["steps"], run["lar"]) or last
    stops["alarm as a stop"] = (fired, fired)
    stops["end"] = (last, last)
    stops["validation early stopping"] = validation_early_stop(val)
    row = {"run": run["run"], "overfits": int(val.idxmin()) < FULL * last}
    for name, (stopped, kept) in stops.items():
        row[f"{name}: stop"] = stopped / last
        row[f"{name}: kept"] = kept
        row[f"{name}: excess"] = val_at(val, kept) - best
    return row


def table(runs: list[dict], make_rule) -> pd.DataFrame:
    return pd.DataFrame([outcomes(run, make_rule) for run in runs]).set_index("run")


def merit(scores: pd.DataFrame) -> tuple:
    early = (~scores["overfits"] & (scores["LAR stop: stop"] < FULL)).sum()
    excess = scores.loc[scores["overfits"], "LAR stop: excess"]
    return (-early, -excess.max(), -excess.median())


def grid(every: int):
    """Every setting tried: the alarm at its defaults (window 25 stops a held-out run that never
    overfits early; retreat 0.5–0.6 moves the best `keep` with it), `keep` and `spacing` tuned."""
    for spacing, keep in itertools.product((1.1, 1.2, 1.3), np.arange(0.3, 0.81, 0.05)):
        name = f"keep={keep:.2f} spacing={spacing}"
        yield name, lambda k=keep, s=spacing: OverfittingStop(keep=k, spacing=s, every=every)


def summarize(scores: pd.DataFrame) -> pd.DataFrame:
    """Per stop, on the runs that overfit and on those that do not: the median and worst excess,
    and the least share of the budget trained."""
    rows = {}
    for name in ("LAR stop", "alarm as a stop", "end", "validation early stopping"):
        over, never = scores[scores["overfits"]], scores[~scores["overfits"]]
        rows[name] = {
            "median excess (overfit)": over[f"{name}: excess"].median(),
            "worst excess (overfit)": over[f"{name}: excess"].max(),
            "worst excess (never)": never[f"{name}: excess"].max(),
            "least share trained (never)": never[f"{name}: stop"].min(),
        }  # fmt: skip
    return pd.DataFrame(rows).T


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("groups", nargs="+")
    parser.add_argument("--tune-optimizer", default="adam")
    args = parser.parse_args()
    runs = load_runs(*args.groups)
    every = int(np.diff(runs[0]["val"].index[:2])[0])  # the evaluation interval
    tuning = [r for r in runs if r["optimizer"] == args.tune_optimizer
              and r["group"] == "lm_overfitting"]  # fmt: skip
    held = [r for r in runs if r not in tuning]
    merits = {name: (merit(table(tuning, make)), make) for name, make in grid(every)}
    name = max(merits, key=lambda n: merits[n][0])  # the first of the settings tied at the best
    make = merits[name][1]
    tied = [n for n in merits if merits[n][0] == merits[name][0]]
    print(f"best setting on the tuning runs: {name} (every={every}); tied with it: {tied}")
    pd.set_option("display.width", 200)
    for label, part in (("tuning", tuning), ("held-out", held)):
        scores = table(part, make)
        print(f"\n{label} runs ({len(part)}):")
        print(summarize(scores).round(3).to_markdown())
        kept = [column for column in scores if column.endswith(("kept", "excess"))]
        print(scores[["overfits", *kept]].round(3).to_markdown())


if __name__ == "__main__":
    main()
