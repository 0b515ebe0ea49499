"""The language models' steering table: each treated run (the LAR term, weight decay) against the
plain run of its optimizer and against Adam with weight decay at the same training set, seed and
budget; the overfitting step's ratio exact or a bound; the goal counted per treatment."""

import math

import pandas as pd
import pytest

from grokking.analysis.lm import steering

LAR = {
    "config.regularize.name": "lar",
    "config.regularize.strength": 1.0,
    "config.regularize.trigger": "start",
    "config.regularize.window": 100,
}
BUDGET = 488


def _run(name, optimizer, tokens, min_val_loss, overfitting_step, weight_decay=0.0, **regularize):
    return {
        "run": name,
        "model": "hidden 128 × 2 layers",
        "optimizer": optimizer,
        "train_tokens": tokens,
        "seed": 0,
        "max_steps": BUDGET,
        "tokens_per_step": 4096,
        "source": None,
        "weight_decay": weight_decay,
        "min_val_loss": min_val_loss,
        "min_val_loss_step": 100,
        "overfitting_step": overfitting_step,
    } | regularize


RUNS = pd.DataFrame(
    [
        _run("adam", "adam", 100_000, 4.66, 200),  # from before the option: no regularizer columns
        _run("adam lar", "adam", 100_000, 4.60, 260, **LAR),
        _run("adam wd", "adam", 100_000, 4.62, 208, weight_decay=0.1,
             **{"config.regularize.name": "none"}),
        _run("muon", "muon", 100_000, 4.77, 160, weight_decay=0.1),  # Muon's own: plain
        _run("muon lar", "muon", 100_000, 4.70, math.nan, weight_decay=0.1, **LAR),  # no overfit
        _run("adam lar 200k", "adam", 200_000, 4.2, 300, **LAR),  # no reference ran
    ]
)  # fmt: skip


def _metrics():
    rows = [
        {"run": run, "step": step, "val_loss": 5.0 + step / 1000}
        for run in RUNS["run"]
        for step in (0, 250, BUDGET)
    ]
    return pd.DataFrame(rows + [{"run": "adam", "step": 3, "val_loss": math.nan}])


def test_each_treated_run_is_set_against_its_plain_run_and_adam_with_weight_decay():
    table = steering.steering_table(RUNS, _metrics()).set_index("run")
    assert list(table.index) == ["adam lar", "adam wd", "muon lar", "adam lar 200k"]
    assert table.loc["adam lar", "treatment"] == "lar 1 from start over 100 steps"
    assert table.loc["adam wd", "treatment"] == "weight decay 0.1"
    assert table.loc["adam lar", "final_val_loss"] == pytest.approx(5.488)
    assert table.loc["adam lar", "plain_min_val_loss"] == pytest.approx(4.66)
    assert table.loc["adam lar", "plain_later"] == pytest.approx(260 / 200)
    assert table.loc["adam lar", "adam_wd_min_val_loss"] == pytest.approx(4.62)
    assert table.loc["adam lar", "adam_wd_later"] == pytest.approx(260 / 208)
    # weight decay is its own reference nowhere: against Adam with weight decay it has none
    assert math.isnan(table.loc["adam wd", "adam_wd_min_val_loss"])
    # Muon's LAR run never overfits: it overfits after its budget, if ever, a lower bound
    assert table.loc["muon lar", "plain_later"] == pytest.approx(BUDGET / 160)
    assert table.loc["muon lar", "plain_later_bound"] == ">"
    assert table.loc["muon lar", "adam_wd_later"] == pytest.approx(BUDGET / 208)
    assert math.isnan(table.loc["adam lar 200k", "plain_min_val_loss"])
    assert table.loc["adam lar 200k", "plain_later_bound"] == "?"


def test_the_summary_counts_the_goal_against_adam_with_weight_decay():
    per = steering.summary(steering.steering_table(RUNS, _metrics()))
    per = per.set_index(["optimizer", "treatment"])
    adam = per.loc[("adam", "lar 1 from start over 100 steps")]
    assert adam["runs"] == 2
    assert adam["lower_min_than_adam_wd"] == 1  # 4.60 < 4.62; the 200k run has no reference
    assert adam["overfits_25pc_later_than_adam_wd"] == 1  # 260 / 208 = 1.25
    assert adam["goal_met"] == 1
    assert adam["median_min_val_loss_vs_plain"] == pytest.approx(-0.06)
    muon = per.loc[("muon", "lar 1 from start over 100 steps")]
    assert muon["lower_min_than_adam_wd"] == 0  # 4.70 > 4.62
    assert muon["overfits_25pc_later_than_adam_wd"] == 1  # > 488 / 208, for certain
    assert muon["goal_met"] == 1


def test_the_display_marks_bounds_and_runs_that_never_overfit():
    shown = steering.display(steering.steering_table(RUNS, _metrics()))
    assert list(shown["plain_later"]) == ["1.30", "1.04", "> 3.05", "?"]
    assert list(shown["overfitting_step"]) == ["260", "208", "–", "300"]


def test_no_treated_run_is_an_empty_table():
    plain = RUNS[RUNS["run"].isin(["adam", "muon"])]
    assert steering.steering_table(plain, _metrics()).empty


@pytest.mark.parametrize(
    "name, strength, words",
    [
        ("p1q1", 500.0, "p1q1 500 from start over 25 steps"),
        ("weight_norm", 0.01, "weight_norm 0.01 from start"),
    ],
)
def test_a_steering_term_is_named_with_its_window_and_another_regularizer_without(
    name, strength, words
):
    regularize = {"config.regularize.name": name, "config.regularize.strength": strength}
    row = pd.Series(
        LAR
        | regularize
        | {"config.regularize.window": 25, "optimizer": "adam", "weight_decay": 0.0}
    )
    assert steering.treatment(row) == words
