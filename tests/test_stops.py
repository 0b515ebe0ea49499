"""The stopping rules scored side by side (grokking/analysis/stops.py and its families') on tiny
synthetic sweeps whose every stop can be worked out by hand."""

import numpy as np
import pandas as pd
import pytest

from grokking.analysis.algorithmic.stops import score_stops as score_grokking
from grokking.analysis.algorithmic.stops import summarize as summarize_grokking
from grokking.analysis.lm.overfitting import run_facts
from grokking.analysis.lm.stops import score_stops as score_lm
from grokking.analysis.lm.stops import summarize as summarize_lm
from grokking.analysis.stops import early_stop, exponential_mean

STEPS = np.arange(401)  # a language-model run of 400 steps, evaluated every 25
EVALUATED = STEPS % 25 == 0


def _lm_run(name: str, lar: np.ndarray, val_loss: np.ndarray, **signals) -> pd.DataFrame:
    rows = pd.DataFrame({"run": name, "step": STEPS, "lar": lar})
    rows["val_loss"] = np.where(EVALUATED, val_loss, np.nan)
    for column, values in signals.items():
        rows[column] = np.where(EVALUATED, values, np.nan)
    return rows


@pytest.fixture
def lm_sweep() -> tuple[pd.DataFrame, pd.DataFrame]:
    """ "overfits": validation's best at step 100, then worse by 0.01 a step; LAR steps down from
    0.8 to 1/2 at step 200, so the overfitting alarm's 50-step mean has fallen 55 % of the way to
    1/2 at step 227 (50 − 28 values of 0.8 left: 0.5 + 0.3 × 22/50 ≤ 0.5 + 0.45 × 0.3).
    "never": validation falls to the end, LAR stays up; it alone records the baselines' signals."""
    overfits = _lm_run("overfits", np.where(STEPS < 200, 0.8, 0.5), 1 + np.abs(STEPS - 100) / 100)
    never = _lm_run(
        "never", np.full(len(STEPS), 0.8), 2 - STEPS / 400,
        eb=np.where(STEPS < 200, -1.0, 1.0),  # smoothed: 0 at step 200, 1/2 at 225
        gradient_disparity=np.abs(STEPS - 100.0),  # lowest at 100: stop 3 evaluations later
        ww_alpha_mean=np.where(STEPS < 300, 3.0, 1.5),
    )  # fmt: skip
    metrics = pd.concat([overfits, never], ignore_index=True)
    runs = pd.DataFrame(
        [{"run": name, "max_steps": 400} | run_facts(metrics[metrics["run"] == name])
         for name in ("overfits", "never")]
    )  # fmt: skip
    return runs, metrics


def _row(scores: pd.DataFrame, run: str, rule: str) -> pd.Series:
    rows = scores[(scores["run"] == run) & scores["rule"].str.startswith(rule)]
    assert len(rows) == 1, rows
    return rows.iloc[0]


def test_lar_keeps_an_earlier_step_and_validation_the_best(lm_sweep):
    scores = score_lm(*lm_sweep)
    lar = _row(scores, "overfits", "LAR: OverfittingStop")
    # candidates every 25 steps, each ≥ 1.3 × the last: 0, 25, 50, 75, 100, 150, 200;
    # the last at or before 0.6 × 227 = 136.2 is 100, the best step
    assert (lar["stopped"], lar["kept"]) == (227, 100)
    assert lar["excess"] == pytest.approx(0) and lar["share of budget"] == pytest.approx(227 / 400)
    validation = _row(scores, "overfits", "validation early stopping")
    assert (validation["stopped"], validation["kept"]) == (175, 100)
    end = _row(scores, "overfits", "training to the end")
    assert pd.isna(end["stopped"]) and end["kept"] == 400
    assert end["excess"] == pytest.approx(3.0) and end["share of budget"] == 1


def test_a_run_that_never_overfits_trains_to_its_end(lm_sweep):
    scores = score_lm(*lm_sweep)
    for rule in ("LAR: OverfittingStop", "validation early stopping", "training to the end"):
        row = _row(scores, "never", rule)
        assert pd.isna(row["stopped"]) and row["kept"] == 400, rule
        assert row["excess"] == pytest.approx(0) and row["share of budget"] == 1, rule


def test_the_baselines_keep_the_step_they_stop_at_and_only_where_recorded(lm_sweep):
    scores = score_lm(*lm_sweep)
    stops = {"EB criterion": 225, "gradient disparity": 175, "WeightWatcher mean α": 300}
    for rule, step in stops.items():
        row = _row(scores, "never", rule)
        assert (row["stopped"], row["kept"]) == (step, step), rule
        assert row["excess"] == pytest.approx(1 - step / 400), rule  # 2 − step/400 − the best, 1
        assert not scores[(scores["run"] == "overfits") & scores["rule"].str.startswith(rule)].size


def test_the_summary_counts_early_stops_of_runs_that_never_overfit(lm_sweep):
    summary = summarize_lm(score_lm(*lm_sweep))
    assert summary.loc["LAR: OverfittingStop", "runs"] == 2
    assert summary.loc["LAR: OverfittingStop", "never overfit, stopped < 95%"] == "0 of 1"
    assert summary.loc["EB criterion > 0", "runs"] == 1
    assert summary.loc["EB criterion > 0", "never overfit, stopped < 95%"] == "1 of 1"
    assert summary.loc["training to the end", "worst excess (overfit)"] == pytest.approx(3.0)
    assert summary.loc["training to the end", "mean share of budget"] == 1


def test_early_stopping_and_the_smoothing():
    units = np.arange(7) * 10
    assert early_stop(units, np.array([3, 2, 1, 1, 2, 1, 0])) == (50, 20)
    assert early_stop(units, np.array([3, 2, 1, 0, 2, 1, -1])) == (None, 60)
    assert exponential_mean(np.array([2.0, 0.0, 4.0])) == pytest.approx([2.0, 1.0, 2.5])


def _grokking_run(name: str, lar: np.ndarray, val_acc: np.ndarray) -> pd.DataFrame:
    epochs = np.arange(0, 301, 10)
    train_acc = np.where(epochs >= 20, 1.0, 0.5)  # memorized from epoch 20
    val_loss = 1 - val_acc + np.where(epochs < 50, -epochs, 0) / 100  # worst at 50: stop at 80
    return pd.DataFrame({"run": name, "epoch": epochs, "lar": lar, "train_acc": train_acc,
                         "val_acc": val_acc, "val_loss": val_loss})  # fmt: skip


def test_grokking_stop_against_the_grokking_epoch():
    epochs = np.arange(0, 301, 10)
    groks = _grokking_run(  # LAR rises 0.1 above its low at epoch 90: the alarm; stop at 100
        "groks", np.where(epochs >= 90, 0.7, 0.6), np.where(epochs >= 100, 1.0, 0.1)
    )
    never = _grokking_run("never", np.full(len(epochs), 0.6), np.full(len(epochs), 0.1))
    runs = pd.DataFrame(
        [
            {"run": "groks", "grokked": True, "grokking_epoch": 100, "final_epoch": 150},
            {"run": "never", "grokked": False, "grokking_epoch": None, "final_epoch": 300},
        ]
    ).assign(max_epochs=300)
    metrics = pd.concat([groks[groks["epoch"] <= 150], never], ignore_index=True)
    scores = score_grokking(runs, metrics, pd.DataFrame())
    lar = _row(scores, "groks", "LAR: GrokkingStop")
    assert (lar["stopped"], lar["kept"], lar["val_acc kept"]) == (100, 100, 1.0)
    assert lar["end / grokking epoch"] == 1.0 and lar["goal met"]
    quiet = _row(scores, "never", "LAR: GrokkingStop")
    assert pd.isna(quiet["stopped"]) and quiet["ended"] == 300 and quiet["goal met"]
    assert quiet["share of budget"] == 1
    end = _row(scores, "groks", "training to the run's end")  # validation stopped it at 150
    assert pd.isna(end["stopped"]) and pd.isna(end["ended"]) and not end["goal met"]
    assert end["share of budget"] == 0.5  # at least: the run's record ends there
    summary = summarize_grokking(scores)
    assert summary.loc["LAR: GrokkingStop", "grokked: goal met"] == "1 of 1"
    assert summary.loc["validation early stopping (patience 3)", "grokked: goal met"] == "0 of 1"
