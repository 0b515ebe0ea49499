"""The validation-free alarms (grokking.lar.alarm) on synthetic LAR curves: each fires where its
rule first holds, and stays silent on flat, noisy, slowly falling or decelerating curves."""

import json
import re

import numpy as np
import pandas as pd
import pytest

from grokking.analysis.alarms import display
from grokking.analysis.algorithmic import alarms
from grokking.lar.alarm import (
    AcceleratingDeclineAlarm,
    GeneralizationAlarm,
    OverfittingAlarm,
    RiseAlarm,
    SpreadRiseAlarm,
    describe_alarm,
    first_firing,
    rebuild_alarm,
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
    runs = pd.DataFrame(columns=["run", "grokked", "grokking_epoch", "memorization_epoch"])
    metrics = pd.DataFrame(columns=["run", "epoch", "val_acc"])
    scores = alarms.score_grokking(runs, metrics, pd.DataFrame())
    assert scores.empty
    assert list(scores.columns) == ["run", "detector", "fired", "truth", "lead", "outcome",
                                    "memorized", "delay", "lead_share"]  # fmt: skip


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


def spread_rise(**kwargs) -> SpreadRiseAlarm:
    return SpreadRiseAlarm(**{"spreads": 5.0, "patience": 3, "settle": 20} | kwargs)


def test_spread_rise_fires_at_the_patience_th_value_of_a_jump_of_many_spreads():
    # noisy (sd 0.004) at 0.6 from memorization at 40, then 0.05 higher (12 sd) from step 300
    lar = 0.6 + NOISE + np.where(STEPS >= 300, 0.05, 0.0)
    alarm = spread_rise()
    assert first_firing(alarm, STEPS, lar, train_acc=memorized_from(40)) == 302
    assert alarm.memorized_at == 40 and "since memorization at step 40" in alarm.reason
    # the same jump of 0.05 from a steady oscillation of ±0.04 is about one spread: no alarm
    swinging = 0.6 + 0.04 * np.sin(STEPS) + np.where(STEPS >= 300, 0.05, 0.0)
    assert first_firing(spread_rise(), STEPS, swinging, train_acc=memorized_from(40)) is None


def test_spread_rise_measures_against_the_values_since_memorization_only():
    # a wide swing (±0.1) before memorization at 100 is not part of the reference: a jump of
    # 0.05 after it is many spreads of the quiet values that follow
    lar = 0.6 + NOISE + np.where(STEPS < 100, 0.1 * np.sin(STEPS), 0.0)
    lar += np.where(STEPS >= 300, 0.05, 0.0)
    assert first_firing(spread_rise(), STEPS, lar, train_acc=memorized_from(100)) == 302


@pytest.mark.parametrize(
    "curve",
    [
        np.full(len(STEPS), 0.6),  # flat: no spread, but nothing above the median either
        0.6 + NOISE,  # noisy
        0.58 + 0.0002 * STEPS + NOISE,  # slowly rising: a drift of 0.08 over the run
        0.58 + 0.0002 * STEPS,  # slowly rising without noise: the rise itself is the spread
        0.7 - 0.0002 * STEPS + NOISE,  # slowly falling
    ],
    ids=["flat", "noisy", "rising noisy", "rising", "falling"],
)
def test_spread_rise_is_silent_on_flat_noisy_and_slowly_drifting_curves(curve):
    assert first_firing(spread_rise(), STEPS, curve, train_acc=memorized_from(0)) is None


def test_spread_rise_skips_a_loss_spike_and_waits_for_patience():
    lar = 0.6 + NOISE
    train_acc = memorized_from(0)
    lar[200], train_acc[200] = 0.3, 0.1  # forgotten for one evaluation: skipped
    lar[250] = 0.7  # one value far above: not held for 3
    alarm = spread_rise()
    assert first_firing(alarm, STEPS, lar, train_acc=train_acc) is None
    assert 0.3 not in alarm.seen and len(alarm.seen) == len(STEPS) - 1


def test_spread_rise_resumes_from_its_state_where_it_was():
    lar = 0.6 + NOISE + np.where(STEPS >= 300, 0.05, 0.0)
    first, second = spread_rise(), spread_rise()
    for step in range(250):
        first.update(step, float(lar[step]), train_acc=1.0)
    second.load_state_dict(json.loads(json.dumps(first.state_dict())))
    fired = first_firing(second, STEPS[250:], lar[250:], train_acc=memorized_from(0)[250:])
    assert fired == 302 and second.seen[:250] == first.seen
    # a trainer's checkpoint rebuilds it from its description, with the same settings
    rebuilt = rebuild_alarm(describe_alarm(spread_rise(spreads=4.0, settle=7)))
    assert isinstance(rebuilt, SpreadRiseAlarm)
    assert (rebuilt.spreads, rebuilt.patience, rebuilt.settle) == (4.0, 3, 7)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"spreads": 0}, "spreads: must be > 0, got 0"),
        ({"patience": 0}, "patience: must be ≥ 1, got 0"),
        ({"settle": 1}, "settle: must be ≥ 2 values"),
        ({"memorized": 1.5}, "memorized: must be in (0, 1], got 1.5"),
    ],
)
def test_spread_rise_refuses_a_bad_setting_naming_it(setting, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        spread_rise(**setting)


def tiny_sweep():
    """Three runs evaluated every 10 epochs, memorized at 40: one groks at 400 (its last MLP
    input's LAR jumps at 370), one never groks (flat noisy LAR), one groks at 100 but was at
    0.95 validation accuracy at memorization already (no delay; its LAR jumps at 200)."""
    epochs = np.arange(0, 510, 10)
    noise = NOISE[: len(epochs)]
    jump_at = {"groks": 370, "never": None, "no delay": 200}
    val_at_memorization = {"groks": 0.05, "never": 0.02, "no delay": 0.95}
    runs = pd.DataFrame({
        "run": list(jump_at),
        "grokked": [True, False, True],
        "grokking_epoch": [400, None, 100],
        "memorization_epoch": [40, 40, 40],
    })  # fmt: skip
    metrics, matrices = [], []
    for run, jump in jump_at.items():
        lar = 0.52 + noise + (0.0 if jump is None else np.where(epochs >= jump, 0.05, 0.0))
        val_acc = np.where(epochs == 40, val_at_memorization[run], 0.5)
        metrics.append(pd.DataFrame({"run": run, "epoch": epochs, "lar": 0.6,
                                     "train_acc": np.where(epochs >= 40, 1.0, 0.5),
                                     "val_acc": val_acc}))  # fmt: skip
        for name, values in (("blocks.1.mlp.fc_in", lar), ("unembed", 0.6 + 0 * lar)):
            matrices.append(pd.DataFrame({"run": run, "epoch": epochs, "name": name,
                                          "lar": values}))  # fmt: skip
    return runs, pd.concat(metrics), pd.concat(matrices)


def test_scoring_a_tiny_sweep_gives_fired_lead_share_and_outcome_per_run():
    runs, metrics, matrix_lar = tiny_sweep()
    make = lambda: SpreadRiseAlarm(spreads=5, patience=3, settle=10)  # noqa: E731
    detector = alarms.Detector("last MLP input", alarms.matrix_signal("blocks.1.mlp.fc_in"), make)
    scores = alarms.score_grokking(runs, metrics, pd.DataFrame(), [detector], matrix_lar)
    scores = scores.set_index("run")
    groks = scores.loc["groks"]
    # fires at the third value of the jump (370, 380, 390); the delay is 400 - 40
    assert (groks["fired"], groks["truth"], groks["lead"], groks["delay"]) == (390, 400, 10, 360)
    assert groks["lead_share"] == pytest.approx(10 / 360) and groks["outcome"] == "within 10 %"
    assert scores.loc["never", "outcome"] == "silent" and pd.isna(scores.loc["never", "fired"])
    # fired long after its grokking epoch, yet counted apart, not as late
    assert (scores.loc["no delay", "fired"], scores.loc["no delay", "outcome"]) == (220, "no delay")
    goals = alarms.goals(scores.reset_index())
    assert goals.loc["last MLP input"].tolist() == [1, 1, 1, 1]
    cells = display(scores.reset_index())["last MLP input"]
    assert cells["groks"] == "390 (within 10 %, lead 10, 3% of the delay)"
    assert cells["never"] == "– (silent)"


def test_a_detector_on_a_matrix_the_runs_did_not_record_is_left_out():
    runs, metrics, matrix_lar = tiny_sweep()
    detector = alarms.Detector("absent", alarms.matrix_signal("blocks.9.mlp.fc_in"),
                               SpreadRiseAlarm)  # fmt: skip
    assert alarms.score_grokking(runs, metrics, pd.DataFrame(), [detector], matrix_lar).empty
