"""The validation-free stopping rules (grokking.lar.select) on synthetic LAR curves: the step each
stops at and the step whose weights it keeps, the bounded set of candidates, silence on curves
that do not overfit or generalize, and a state that survives a JSON round trip."""

import json
import math

import numpy as np
import pytest

from grokking.lar.alarm import GeneralizationAlarm, OverfittingAlarm, first_firing
from grokking.lar.select import GrokkingStop, OverfittingStop, run_rule

STEPS = np.arange(400)
NOISE = np.random.default_rng(0).normal(0, 0.004, len(STEPS))


def overfitting_curve(final: float) -> np.ndarray:
    """0.5 → a peak of 0.85 at step 20, then a linear fall to `final` at the last step."""
    rise = 0.5 + 0.35 * STEPS / 20
    fall = 0.85 - (0.85 - final) * (STEPS - 20) / (len(STEPS) - 21)
    return np.where(STEPS <= 20, rise, fall)


def ladder(spacing: float, every: int, last: int) -> list[int]:
    """Multiples of `every`, each ≥ `spacing` × the one before, up to `last`."""
    steps = [0]
    for step in range(every, last + 1, every):
        if step >= spacing * steps[-1]:
            steps.append(step)
    return steps


@pytest.mark.parametrize("keep, spacing, every", [(0.6, 1.3, 1), (0.5, 1.1, 5)])
def test_overfitting_stop_keeps_the_last_candidate_before_keep_times_the_alarm(keep, spacing,
                                                                               every):  # fmt: skip
    lar = overfitting_curve(final=0.55)
    fired = first_firing(OverfittingAlarm(), STEPS, lar)
    rule = run_rule(OverfittingStop(keep=keep, spacing=spacing, every=every), STEPS, lar)
    assert rule.stopped_at == fired
    assert rule.selected == max(s for s in ladder(spacing, every, fired) if s <= keep * fired)
    assert rule.candidates == [rule.selected]  # the others' weights are freed at the stop
    assert f"kept step {rule.selected}" in rule.reason


def test_the_candidates_are_bounded_and_the_dropped_ones_are_never_selected():
    lar = overfitting_curve(final=0.55)
    rule = OverfittingStop(keep=0.6, spacing=1.3)
    bound = math.log(1 / 0.6) / math.log(1.3) + 2
    saved, dropped = set(), set()
    for step, value in zip(STEPS, lar, strict=True):
        decision = rule.update(int(step), float(value))
        saved |= {int(step)} if decision.save else set()
        dropped |= set(decision.drop)
        assert set(decision.drop) <= saved  # only what it asked to save
        assert len(rule.candidates) <= bound + 1
        if decision.stop:
            break
    assert rule.selected in saved and rule.selected not in dropped


@pytest.mark.parametrize(
    "curve",
    [
        np.full(len(STEPS), 0.7),  # flat
        overfitting_curve(final=0.75) + NOISE,  # falls slowly, keeps its concentration
        0.5 + NOISE * 3,  # never concentrates
    ],
    ids=["flat", "slowly falling", "near 1/2"],
)
def test_overfitting_stop_is_silent_where_lar_keeps_its_concentration(curve):
    rule = run_rule(OverfittingStop(), STEPS, curve)
    assert not rule.stopped and rule.selected is None
    assert len(rule.candidates) <= math.log(1 / 0.6) / math.log(1.3) + 3


def memorized_from(step: int) -> np.ndarray:
    return np.where(STEPS >= step, 1.0, 0.5)


@pytest.mark.parametrize("margin, stop", [(0.0, 100), (0.1, 110), (0.25, 125)])
def test_grokking_stop_waits_a_margin_after_the_generalization_alarm(margin, stop):
    # memorized at 40, flat at 0.6, a jump to 0.7 at step 100: the alarm fires at 100
    lar = np.where(STEPS < 100, 0.6, 0.7)
    rule = run_rule(GrokkingStop(margin=margin), STEPS, lar, train_acc=memorized_from(40))
    assert rule.alarm.fired_at == 100
    assert rule.stopped_at == rule.selected == stop  # the last weights
    assert "generalization alarm at step 100" in rule.reason


def test_grokking_stop_is_silent_when_lar_does_not_rise():
    lar = 0.7 - 0.0002 * STEPS
    assert not run_rule(GrokkingStop(), STEPS, lar, train_acc=memorized_from(0)).stopped


def test_grokking_stop_reads_the_alarm_it_is_given_the_parameters_of():
    rule = GrokkingStop(rise=0.03, patience=2)
    alarm = GeneralizationAlarm(rise=0.03, patience=2)
    assert (rule.alarm.rise, rule.alarm.patience) == (alarm.rise, alarm.patience)


def test_a_rule_resumed_from_its_json_state_goes_on_as_if_never_stopped():
    lar = overfitting_curve(final=0.55)
    whole = run_rule(OverfittingStop(), STEPS, lar)
    first = OverfittingStop()
    for step in range(100):  # past the peak and the window: the alarm's history matters
        first.update(step, float(lar[step]))
    resumed = OverfittingStop(**first.args)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    run_rule(resumed, STEPS[100:], lar[100:])
    assert (resumed.stopped_at, resumed.selected) == (whole.stopped_at, whole.selected)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: OverfittingStop(keep=1.0), "keep: must be in (0, 1)"),
        (lambda: OverfittingStop(spacing=1.0), "spacing: must be > 1"),
        (lambda: OverfittingStop(every=0), "every: must be ≥ 1"),
        (lambda: OverfittingStop(retreat=1.5), "retreat: must be in (0, 1)"),
        (lambda: GrokkingStop(margin=-0.1), "margin: must be ≥ 0"),
    ],
)
def test_bad_parameters_are_refused_by_name(make, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make()
