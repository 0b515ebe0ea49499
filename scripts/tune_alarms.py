"""Tune each alarm and baseline rule on some runs, then score the chosen setting on the others.

    python scripts/tune_alarms.py --grokking outputs/sweeps/alarm_grokking \
        outputs/sweeps/alarm_silent --lm docs/lm_runs/lm_overfitting docs/lm_runs/lm_lr

Tuning runs: the grokking runs of seed 0 (--tune-seed) but those of a held-out task
(--hold-out-task div: every run of that task is held out), and the language-model runs of one
optimizer in the sweep `lm_overfitting` (--tune-optimizer adam); every other run is held out.
The long-delay set (docs/results.md, "Grokking on long delays"):

    python scripts/tune_alarms.py --grokking outputs/sweeps/alarm_long_delay \
        outputs/sweeps/alarm_long_silent --hold-out-task div

For every detector of grokking.analysis.<family>.alarms and each setting of its grid, the tuning
runs are scored (grokking: runs on time − false alarms − runs early or late; language models:
runs at or before the overfitting step − false alarms − runs early or late; ties go to the
smaller mean distance from the truth); the best setting is printed with its scores on the tuning and
held-out runs. The settings chosen here are the defaults in grokking/lar/alarm.py and
grokking/analysis/<family>/alarms.py, but SpreadRiseAlarm's (its docstring says why).
"""

from __future__ import annotations

import argparse
import itertools

import pandas as pd

from grokking.analysis import alarms, lm
from grokking.analysis.algorithmic import baselines, collect
from grokking.analysis.algorithmic.alarms import (
    GROKKING_DETECTORS,
    LAST_MLP_INPUT,
    goals,
    matrix_signal,
    score_grokking,
)
from grokking.analysis.lm.alarms import LM_DETECTORS, score_lm
from grokking.lar.alarm import (
    AcceleratingDeclineAlarm,
    GeneralizationAlarm,
    OverfittingAlarm,
    RiseAlarm,
    SpreadRiseAlarm,
)

RISES = (0.01, 0.02, 0.03, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5)  # of log(signal): baselines
LAR_RISES = (0.02, 0.03, 0.035, 0.04, 0.045, 0.05, 0.055, 0.06, 0.065, 0.07, 0.08)
SPREADS = (3, 4, 5, 6, 8, 10)  # SpreadRiseAlarm's height, in robust spreads
# SpreadRiseAlarm's settle, in values: 200 epochs of evaluations every 10 epochs (LAR) or of
# checkpoints every 50 (the baselines measured at checkpoints)
SETTLE = {"evaluation": 20, "checkpoint": 4}
SPREAD_SIGNALS = {  # what the spread rule is tried on: LAR of two matrices, and the baselines
    "lar": "evaluation",
    matrix_signal(LAST_MLP_INPUT): "evaluation",
    "effective_rank": "evaluation",
    "rankme": "checkpoint",
    "ww_alpha": "checkpoint",
}


def grokking_grid():
    """(detector family, Detector) for every setting tried on the grokking runs."""
    for rise, patience in itertools.product(LAR_RISES, (1, 2, 3)):
        make = lambda r=rise, p=patience: GeneralizationAlarm(rise=r, patience=p)  # noqa: E731
        yield "LAR", alarms.Detector(f"LAR rise={rise} patience={patience}", "lar", make)
    for signal in ("effective_rank", "stable_rank", "rankme", "ww_alpha"):
        for (direction, transform), rise in itertools.product(alarms.DIRECTIONS.items(), RISES):
            make = lambda r=rise: GeneralizationAlarm(rise=r)  # noqa: E731
            name = f"{signal} {direction} rise={rise}"
            yield signal, alarms.Detector(name, signal, make, transform)
    yield from spread_grid()


def spread_grid():
    """SpreadRiseAlarm's settings on LAR of the unembedding and the last MLP input, and on the
    baselines, each in the direction it moves when the model generalizes."""
    for signal, every in SPREAD_SIGNALS.items():
        for (direction, transform), spreads, patience in itertools.product(
            alarms.DIRECTIONS.items(), SPREADS, (1, 2, 3)
        ):
            make = lambda k=spreads, p=patience, s=SETTLE[every]: SpreadRiseAlarm(  # noqa: E731
                spreads=k, patience=p, settle=s
            )
            name = f"{signal} {direction} spreads={spreads} patience={patience}"
            yield f"{signal} spread", alarms.Detector(name, signal, make, transform)


def lm_grid():
    for retreat, window in itertools.product((0.55, 0.6, 0.62, 0.64, 0.66, 0.7), (5, 10, 25, 50)):
        make = lambda r=retreat, w=window: OverfittingAlarm(retreat=r, window=w)  # noqa: E731
        yield "LAR", alarms.Detector(f"LAR retreat={retreat} window={window}", "lar", make)
    for window, factor, least in itertools.product((25, 50, 100), (1.5, 2, 3, 4), (0, 1e-4, 4e-4)):
        make = lambda w=window, f=factor, m=least: AcceleratingDeclineAlarm(  # noqa: E731
            window=w, factor=f, min_decline=m
        )
        name = f"LAR accelerating window={window} factor={factor} min_decline={least}"
        yield "LAR accelerating", alarms.Detector(name, "lar", make)
    for signal in ("effective_rank", "stable_rank"):
        for (direction, transform), rise in itertools.product(alarms.DIRECTIONS.items(), RISES):
            make = lambda r=rise: RiseAlarm(rise=r)  # noqa: E731
            yield signal, alarms.Detector(f"{signal} {direction} rise={rise}", signal, make,
                                          transform)  # fmt: skip


GOOD = {"within 10 %", "at or before", "silent"}
BAD = {"false alarm", "early", "late", "missed"}


def merit(scores: pd.DataFrame) -> tuple:
    on_time = scores["outcome"].isin(GOOD - {"silent"}).sum()
    false_alarms = (scores["outcome"] == "false alarm").sum()
    off = scores["outcome"].isin({"early", "late"}).sum()
    distance = scores["lead"].abs().mean()
    return (on_time - false_alarms - off, -(distance if pd.notna(distance) else 1e9))


def report(family: str, grid, score, tuning: set[str]) -> None:
    best: dict[str, tuple] = {}
    for kind, detector in grid:
        scores = score([detector])
        tune = scores[scores["run"].isin(tuning)]
        key = merit(tune)
        if kind not in best or key > best[kind][0]:
            best[kind] = (key, detector, scores)
    for kind, (_, detector, scores) in best.items():
        print(f"\n{family} · {kind}: best setting {detector.name}")
        scores = scores.assign(runs=scores["run"].isin(tuning).map({True: "tuned", False: "held"}))
        print(pd.crosstab(scores["runs"], scores["outcome"]).to_string())
        share = ["lead_share"] if "lead_share" in scores else []  # grokking: of the delay
        print(scores[["runs", "run", "fired", "truth", "outcome", *share]].to_string(index=False))


def report_defaults(family: str, scores: pd.DataFrame, tuning: set[str]) -> None:
    """The defaults' outcomes (the families' detectors), tuning and held-out runs
    apart: the tables of docs/results.md, "The alarm"."""
    for runs, picked in (("tuning", True), ("held-out", False)):
        part = scores[scores["run"].isin(tuning) == picked]
        print(f"\n{family}, the defaults on the {runs} runs ({part['run'].nunique()}):")
        table = alarms.summary(part)
        counts = table.columns.drop(["median lead", "median lead share"], errors="ignore")
        table[counts] = table[counts].fillna(0).astype(int)
        print(table.to_markdown())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grokking", nargs="*", default=[])
    parser.add_argument("--lm", nargs="*", default=[])
    parser.add_argument("--tune-seed", type=int, default=0)
    parser.add_argument("--hold-out-task", nargs="*", default=[],
                        help="grokking tasks whose runs are all held out (div)")  # fmt: skip
    parser.add_argument("--tune-optimizer", default="adam")
    args = parser.parse_args()
    if args.grokking:
        results = collect(*args.grokking)
        at_checkpoints = baselines.measure_all(results)
        runs = results.runs
        unknown = sorted(set(args.hold_out_task) - set(runs["task"]))
        if unknown:
            parser.error(f"--hold-out-task: {unknown} not among the runs' tasks "
                         f"{sorted(runs['task'].unique())}")  # fmt: skip
        tuned = (runs["seed"] == args.tune_seed) & ~runs["task"].isin(args.hold_out_task)
        tuning = set(runs.loc[tuned, "run"])

        def score(detectors=GROKKING_DETECTORS):
            return score_grokking(runs, results.metrics, at_checkpoints, detectors,
                                  results.matrix_lar)  # fmt: skip

        report("grokking", grokking_grid(), score, tuning)
        defaults = score()
        report_defaults("grokking", defaults, tuning)
        held_out = defaults[~defaults["run"].isin(tuning)]
        print("\ngrokking, the defaults against the goals on the held-out runs:")
        print(goals(held_out).to_markdown())
    if args.lm:
        runs = lm.collect(*args.lm)
        picked = (runs.runs["optimizer"] == args.tune_optimizer) & (
            runs.runs["group"] == "lm_overfitting"
        )
        tuning = set(runs.runs.loc[picked, "run"])

        def score_runs(detectors=LM_DETECTORS):
            return score_lm(runs.runs, runs.metrics, detectors)

        report("language models", lm_grid(), score_runs, tuning)
        report_defaults("language models", score_runs(), tuning)


if __name__ == "__main__":
    main()
