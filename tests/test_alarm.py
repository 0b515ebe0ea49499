"""The validation-free alarms (grokking.lar.alarm) on synthetic LAR curves: each fires where its
rule first holds, and stays silent on flat, noisy, slowly falling or decelerating curves."""

import numpy as np
import pandas as pd
import pytest

from grokking.analysis.algorithmic import alarms
from grokking.lar.alarm import (
    AcceleratingDeclineAlarm,
    GeneralizationAlarm,
    OverfittingAlarm,
    RiseAlarm,
    first_firing,
)

STEPS = np.arange(400)
NOISE = np.random.default_rng(0).normal(0, 0.004, len(STEPS))


def memorized_from(step: int) -> np.ndarray:
    return np.where(STEPS >= step, 1.0, 0.5)


def test_generalization_fires_at_the_second_value_risen_enough_after_memorization():
    # flat at 0.60 after memorization at 40, a dip to 0.58 at 60, then a rise of 0.001 per step
    lar = np.where(STEPS < 100, 0.60, 0.60 + 0.001 * (STEPS - 100))
    lar[60] = 0.58
    fired = first_firing(GeneralizationAlarm(rise=0.03, patience=2), STEPS, lar,
                         train_acc=memorized_from(40))  # fmt: skip
    # the low is 0.58; 0.61 is first reached at step 110, held for 2 values at 111
    assert fired == 111


def test_generalization_ignores_what_happens_before_memorization():
    # LAR climbs 0.1 before memorization at 200 and is flat afterwards: no alarm
    lar = np.minimum(0.5 + 0.0005 * STEPS, 0.6)
    alarm = GeneralizationAlarm(rise=0.03)
    assert first_firing(alarm, STEPS, lar, train_acc=memorized_from(200)) is None
    assert alarm.memorized_at == 200


@pytest.mark.parametrize(
    "curve",
    [
        np.full(len(STEPS), 0.6),  # flat
        0.6 + NOISE,  # noisy (0.03 is 7.5 sd)
        0.7 - 0.0002 * STEPS,  # slowly falling
    ],
    ids=["flat", "noisy", "falling"],
)
def test_generalization_is_silent_on_curves_that_do_not_rise(curve):
    assert first_firing(GeneralizationAlarm(), STEPS, curve, train_acc=memorized_from(0)) is None


def test_generalization_skips_a_loss_spike_after_memorization():
    # flat at 0.6 after memorization at 40; at 100 the model forgets its training set for one
    # evaluation (training accuracy 0.1) and LAR drops to 0.3, then both come back
    lar = np.full(len(STEPS), 0.6)
    lar[100] = 0.3
    train_acc = memorized_from(40)
    train_acc[100] = 0.1
    alarm = GeneralizationAlarm()
    assert first_firing(alarm, STEPS, lar, train_acc=train_acc) is None
    assert alarm.low == 0.6 and alarm.memorized_at == 40


def test_a_single_spike_does_not_fire_with_patience_2():
    lar = np.full(len(STEPS), 0.6)
    lar[100] = 0.7
    assert first_firing(GeneralizationAlarm(patience=2), STEPS, lar,
                        train_acc=memorized_from(0)) is None  # fmt: skip
    assert first_firing(GeneralizationAlarm(patience=1), STEPS, lar,
                        train_acc=memorized_from(0)) == 100  # fmt: skip


def test_an_alarm_fires_once_and_says_why():
    alarm = RiseAlarm(rise=0.1, patience=1)
    fired = [alarm.update(step, value) for step, value in enumerate([0.5, 0.55, 0.61, 0.7, 0.8])]
    assert fired == [False, False, True, False, False]
    assert alarm.fired_at == 2 and "0.6100" in alarm.reason and "0.5000" in alarm.reason


def test_first_firing_reads_signals_by_position_not_by_label():
    lar = pd.Series(np.where(STEPS < 100, 0.6, 0.7), index=STEPS + 1000)  # a filtered frame's
    train_acc = pd.Series(memorized_from(40), index=STEPS + 1000)
    assert first_firing(GeneralizationAlarm(), STEPS, lar, train_acc=train_acc) == 100


def test_scores_of_no_runs_are_an_empty_table_with_its_columns():
    runs = pd.DataFrame(columns=["run", "grokked", "grokking_epoch"])
    scores = alarms.score_grokking(runs, pd.DataFrame(columns=["run", "epoch"]), pd.DataFrame())
    assert scores.empty
    assert list(scores.columns) == ["run", "detector", "fired", "truth", "lead", "outcome"]


def test_nan_values_are_skipped():
    alarm = RiseAlarm(rise=0.1, patience=1)
    assert not alarm.update(0, 0.5)
    assert not alarm.update(1, float("nan"))
    assert alarm.update(2, 0.7) and alarm.low == 0.5


def overfitting_curve(final: float) -> np.ndarray:
    """0.5 → a peak of 0.85 at step 20, then a linear fall to `final` at the last step."""
    rise = 0.5 + 0.35 * STEPS / 20
    fall = 0.85 - (0.85 - final) * (STEPS - 20) / (len(STEPS) - 21)
    return np.where(STEPS <= 20, rise, fall)


def test_overfitting_fires_when_the_mean_falls_back_far_enough_from_the_peak():
    lar = overfitting_curve(final=0.55)
    fired = first_firing(OverfittingAlarm(retreat=0.64, window=1), STEPS, lar)
    floor = 0.5 + 0.36 * (0.85 - 0.5)
    assert fired == int(np.flatnonzero((lar <= floor) & (STEPS > 20))[0])
    # a 10-value mean lags the crossing (by half its length, and its peak is lower)
    lagged = first_firing(OverfittingAlarm(retreat=0.64, window=10), STEPS, lar)
    assert fired + 4 <= lagged <= fired + 10


@pytest.mark.parametrize(
    "curve",
    [
        overfitting_curve(final=0.75),  # falls, but keeps most of its concentration
        np.where(STEPS <= 20, overfitting_curve(0.6), 0.85) + NOISE,  # flat and noisy
        0.5 + NOISE * 3,  # never concentrates: the rule is never armed
    ],
    ids=["slowly falling", "flat noisy", "near 1/2"],
)
def test_overfitting_is_silent_where_lar_keeps_its_concentration(curve):
    assert first_firing(OverfittingAlarm(), STEPS, curve) is None


def test_accelerating_decline_fires_after_the_slope_steepens():
    # peak at 20; a gentle fall (1e-4 per step) until 250, then a steep one (1e-3 per step)
    gentle = 0.85 - 1e-4 * (STEPS - 20)
    lar = np.where(STEPS <= 20, overfitting_curve(0.6), gentle)
    lar = np.where(STEPS > 250, gentle[250] - 1e-3 * (STEPS - 250), lar)
    fired = first_firing(AcceleratingDeclineAlarm(window=30, factor=2, settle=20), STEPS, lar)
    assert 250 < fired < 280


def test_accelerating_decline_is_silent_on_a_slowing_decline():
    decelerating = 0.6 + 0.25 * np.exp(-np.maximum(STEPS - 20, 0) / 80)
    lar = np.where(STEPS <= 20, overfitting_curve(0.6), decelerating)
    assert first_firing(AcceleratingDeclineAlarm(window=30, settle=20), STEPS, lar) is None


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: GeneralizationAlarm(rise=0), "rise: must be > 0"),
        (lambda: GeneralizationAlarm(memorized=1.5), "memorized: must be in (0, 1]"),
        (lambda: RiseAlarm(patience=0), "patience: must be ≥ 1"),
        (lambda: OverfittingAlarm(retreat=1.0), "retreat: must be in (0, 1)"),
        (lambda: OverfittingAlarm(window=0), "window: must be ≥ 1"),
        (lambda: OverfittingAlarm(min_peak=0.4), "min_peak: must be in (0.5, 1)"),
        (lambda: AcceleratingDeclineAlarm(factor=0.5), "factor: must be ≥ 1"),
    ],
)
def test_bad_parameters_are_refused_by_name(make, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make()


def test_a_step_must_be_an_integer():
    with pytest.raises(ValueError, match="step: must be an int"):
        RiseAlarm().update(1.5, 0.6)
