"""Validation-free alarms fed one LAR value at a time (docs/method.md §5).

No alarm sees validation data or a baseline run: each reads the LAR of the layer it watches
(the unembedding, on the training batches or the training set) and, for the generalization
alarm, the training accuracy. Each is online: `update(step, lar, ...)` returns True once, at the
value where its rule first holds, and the alarm stays fired after that (`fired_at`, `reason`).

- `GeneralizationAlarm` (grokking): the paper's §4 reading, LAR rises when the representation
  concentrates as the model generalizes. Once the training accuracy has reached `memorized`, it
  tracks LAR's lowest value since; it fires when LAR has stayed at least `rise` above that low
  for `patience` consecutive values. Values at which the training accuracy has fallen back below
  `memorized` (a loss spike) are skipped.
- `SpreadRiseAlarm` (grokking after a long delay): the same reading, with the rise measured in
  units of LAR's own spread since memorization instead of a fixed amount; fed the LAR of
  another matrix than the unembedding where the runs say so.
- `OverfittingAlarm` (pre-training): LAR peaks at the end of warm-up and then declines, further
  the more the model memorizes its training set (§5: final LAR is ordered by training-set size).
  It fires when LAR's mean over the last `window` values has fallen back a fraction `retreat` of
  the way from its peak to 1/2, the value of LAR for isotropic inputs (SPEC: LAR = 1/2 when q is
  uniform): the representation has given back that much of its concentration.
- `AcceleratingDeclineAlarm`: the paper's own words, "LAR's decline accelerates before
  overfitting", as a rule (a recent slope steeper than the gentlest post-peak slope by a
  factor); kept for comparison: at laptop scale the decline does not steepen before overfitting.

The defaults were tuned on some runs and scored on others (docs/results.md, "The alarm").
"""

from __future__ import annotations

import inspect
import math
import sys
from collections import deque

import numpy as np


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def snapshot(obj, skip: tuple[str, ...] = ()) -> dict:
    """An object's attributes as JSON-able data (a deque as a list), for a resumed run: HF's
    Trainer keeps its callbacks' state in trainer_state.json."""
    return {
        name: list(value) if isinstance(value, deque) else value
        for name, value in vars(obj).items()
        if name not in skip
    }


def restore(obj, state: dict) -> None:
    """Set the attributes `snapshot` took; a deque stays a deque of the same length."""
    for name, value in state.items():
        current = getattr(obj, name)
        if isinstance(current, deque):
            value = deque(value, maxlen=current.maxlen)
        setattr(obj, name, value)


class Alarm:
    """What every alarm shares: the fired state and the check on each value fed."""

    rule = ""
    needs: tuple[str, ...] = ()  # what `update` takes by keyword besides LAR
    unit = "step"  # what the steps fed count (an epoch, for a trainer that feeds epochs)

    def __init__(self) -> None:
        self.fired_at: int | None = None
        self.reason = ""

    @property
    def fired(self) -> bool:
        return self.fired_at is not None

    def _fire(self, step: int, reason: str) -> bool:
        self.fired_at, self.reason = step, reason
        return True

    def state_dict(self) -> dict:
        """What the alarm has seen, as JSON-able data: a resumed run goes on where it was."""
        return snapshot(self)

    def load_state_dict(self, state: dict) -> None:
        restore(self, state)

    @staticmethod
    def _check(step: int, lar: float) -> bool:
        """False for a value the rules skip (NaN: a step whose probe recorded nothing)."""
        _require(isinstance(step, int | np.integer), f"step: must be an int, got {step!r}")
        return math.isfinite(lar)


class RiseAlarm(Alarm):
    """Fires when a value has stayed at least `rise` above the lowest value fed before it for
    `patience` consecutive values: a departure upwards from the low, whatever the signal."""

    rule = "rise"

    def __init__(self, rise: float = 0.03, patience: int = 2):
        _require(rise > 0, f"rise: must be > 0, got {rise}")
        _require(patience >= 1, f"patience: must be ≥ 1, got {patience}")
        super().__init__()
        self.rise, self.patience = rise, patience
        self.low = math.inf
        self.above = 0  # consecutive values at least `rise` above the low

    def update(self, step: int, value: float) -> bool:
        """Feed a value at `step`; True when the alarm fires here."""
        if self.fired or not self._check(step, value):
            return False
        if value < self.low + self.rise:
            self.low = min(self.low, value)
            self.above = 0
            return False
        self.above += 1
        if self.above < self.patience:
            return False
        return self._fire(
            step,
            f"{value:.4f} has stayed ≥ {self.rise:g} above its low {self.low:.4f} for "
            f"{self.patience} values",
        )


def _check_memorized(memorized: float) -> None:
    _require(0 < memorized <= 1, f"memorized: must be in (0, 1], got {memorized}")


def _memorized_now(alarm, step: int, train_acc: float) -> bool:
    """Whether an alarm armed by memorization reads the value at `step`: only where the training
    accuracy is at least `alarm.memorized`, before memorization and after it: a loss spike (the
    model briefly forgets its training set, and LAR drops with it) would otherwise become the
    reference every later value is measured from. Notes the first such step (`memorized_at`)."""
    if not train_acc >= alarm.memorized:
        return False
    if alarm.memorized_at is None:
        alarm.memorized_at = step
    return True


class GeneralizationAlarm(RiseAlarm):
    """A `RiseAlarm` on LAR armed when the training accuracy first reaches `memorized`: fires
    when LAR has stayed `rise` above its lowest value since memorization for `patience`
    consecutive values."""

    rule = "generalization"
    needs = ("train_acc",)

    def __init__(self, rise: float = 0.06, memorized: float = 0.99, patience: int = 1):
        _check_memorized(memorized)
        super().__init__(rise, patience)
        self.memorized = memorized
        self.memorized_at: int | None = None

    def update(self, step: int, lar: float, *, train_acc: float) -> bool:
        """Feed LAR and the training accuracy at `step`; True when the alarm fires here. A value
        whose training accuracy is below `memorized` is skipped (`_memorized_now`)."""
        if not _memorized_now(self, step, train_acc) or not super().update(step, lar):
            return False
        self.reason += f", since memorization at {self.unit} {self.memorized_at}"
        return True


MAD_TO_SD = 1.4826  # the median absolute deviation of normal values × this = their SD


class SpreadRiseAlarm(Alarm):
    """A rise measured against the run's own variation since memorization, not a fixed amount:
    fires when LAR has stayed at least `spreads` robust spreads (1.4826 × the median absolute
    deviation) above the median of every value fed since memorization, for `patience`
    consecutive values. The first `settle` values after memorization only build that
    reference. Armed like `GeneralizationAlarm` (values below `memorized` training accuracy are
    skipped).

    Why a spread: on runs that grok thousands of epochs after memorizing (docs/results.md,
    "Grokking on long delays"), LAR drifts by a few hundredths over the whole delay in runs that
    grok and in runs that do not, so any fixed rise either never fires or fires early on both.
    Measured in its own spread, a steady drift or a steady oscillation stays within a few
    spreads of the median however long it lasts; a departure at grokking does not. Fed the LAR
    of the last block's MLP input matrix (`blocks.1.mlp.fc_in` in this project's transformer),
    the matrix whose LAR stays flat longest and moves at grokking (the aligned-matrices figure):
    log it with the callbacks' `every_linear=True` (`lar/<layer>`) or read it from a run's
    matrix_lar.parquet, and call `update` with it and the training accuracy at each evaluation.
    The defaults (5 spreads, held 3 values, 20 values to settle) were read off the first six
    long-delay runs, not picked by scripts/tune_alarms.py, whose two informative tuning runs
    cannot tell the settings apart; both are scored in docs/results.md.
    """

    rule = "spread rise"
    needs = ("train_acc",)

    def __init__(
        self, spreads: float = 5.0, patience: int = 3, settle: int = 20, memorized: float = 0.99
    ):
        _require(spreads > 0, f"spreads: must be > 0, got {spreads}")
        _require(patience >= 1, f"patience: must be ≥ 1, got {patience}")
        _require(settle >= 2, f"settle: must be ≥ 2 values (a spread needs two), got {settle}")
        _check_memorized(memorized)
        super().__init__()
        self.spreads, self.patience, self.settle = spreads, patience, settle
        self.memorized = memorized
        self.memorized_at: int | None = None
        self.seen: list[float] = []  # every value since memorization: the reference
        self.above = 0  # consecutive values `spreads` spreads above the reference's median

    def update(self, step: int, lar: float, *, train_acc: float) -> bool:
        """Feed LAR and the training accuracy at `step`; True when the alarm fires here."""
        if self.fired or not self._check(step, lar) or not _memorized_now(self, step, train_acc):
            return False
        reference = np.asarray(self.seen)
        self.seen.append(lar)
        if len(reference) < self.settle:
            return False
        median = float(np.median(reference))
        spread = MAD_TO_SD * float(np.median(np.abs(reference - median)))
        # a reference of equal values has no spread: any value above it is infinitely far
        height = (lar - median) / spread if spread > 0 else (math.inf if lar > median else 0.0)
        self.above = self.above + 1 if height >= self.spreads else 0
        if self.above < self.patience:
            return False
        return self._fire(
            step,
            f"{lar:.4f} has stayed ≥ {self.spreads:g} spreads ({spread:.2e}) above the median "
            f"{median:.4f} of its {len(reference)} values since memorization at {self.unit} "
            f"{self.memorized_at} for {self.patience} values",
        )


class OverfittingAlarm(Alarm):
    """Fires when LAR, averaged over the last `window` values, has fallen back a fraction
    `retreat` of the way from its highest average (the peak) to 1/2, its value for isotropic
    inputs; armed once that peak has reached `min_peak`."""

    rule = "overfitting"

    def __init__(self, retreat: float = 0.55, window: int = 50, min_peak: float = 0.55):
        _require(0 < retreat < 1, f"retreat: must be in (0, 1), got {retreat}")
        _require(window >= 1, f"window: must be ≥ 1 value, got {window}")
        _require(0.5 < min_peak < 1, f"min_peak: must be in (0.5, 1), got {min_peak}")
        super().__init__()
        self.retreat, self.window, self.min_peak = retreat, window, min_peak
        self.recent: deque[float] = deque(maxlen=window)
        self.peak = -math.inf  # the highest `window`-mean so far

    def update(self, step: int, lar: float) -> bool:
        """Feed LAR at `step`; True when the alarm fires here."""
        if self.fired or not self._check(step, lar):
            return False
        self.recent.append(lar)
        if len(self.recent) < self.window:
            return False
        mean = sum(self.recent) / self.window
        self.peak = max(self.peak, mean)
        floor = 0.5 + (1 - self.retreat) * (self.peak - 0.5)
        if self.peak < self.min_peak or mean > floor:
            return False
        return self._fire(
            step,
            f"LAR's {self.window}-value mean {mean:.4f} has fallen {self.retreat:.0%} of the way "
            f"from its peak {self.peak:.4f} to 1/2",
        )


class AcceleratingDeclineAlarm(Alarm):
    """The paper's reading of §5 taken literally, kept for comparison (at laptop scale LAR's
    decline mostly slows down instead; docs/results.md scores both). Fires when
    LAR's decline over the last `window` values is ≥ `factor` × the gentlest decline seen since
    `settle` values after its peak, and ≥ `min_decline` per value."""

    rule = "accelerating decline"

    def __init__(
        self, window: int = 50, factor: float = 1.5, min_decline: float = 4e-4, settle: int = 50
    ):
        _require(window >= 3, f"window: must be ≥ 3 values, got {window}")
        _require(factor >= 1, f"factor: must be ≥ 1, got {factor}")
        _require(min_decline >= 0, f"min_decline: must be ≥ 0, got {min_decline}")
        _require(settle >= 0, f"settle: must be ≥ 0, got {settle}")
        super().__init__()
        self.window, self.factor = window, factor
        self.min_decline, self.settle = min_decline, settle
        self.recent: deque[float] = deque(maxlen=window)
        self.peak = -math.inf
        self.since_peak = 0  # values fed since the peak
        self.gentlest = math.inf  # the smallest decline per value seen after settling

    def _decline(self) -> float:
        """Minus the least-squares slope of the last `window` values, per value fed (not per
        step: a run evaluated every k steps gives the same rates as one evaluated every step)."""
        values = np.fromiter(self.recent, dtype=float)
        return -float(np.polyfit(np.arange(len(values), dtype=float), values, 1)[0])

    def update(self, step: int, lar: float) -> bool:
        """Feed LAR at `step`; True when the alarm fires here."""
        if self.fired or not self._check(step, lar):
            return False
        self.recent.append(lar)
        if lar > self.peak:
            self.peak, self.since_peak, self.gentlest = lar, 0, math.inf
            return False
        self.since_peak += 1
        if self.since_peak < self.settle + self.window:
            return False
        decline = self._decline()
        if decline >= max(self.factor * self.gentlest, self.min_decline):
            return self._fire(
                step,
                f"LAR's decline {decline:.2e} per value over the last {self.window} values is "
                f"≥ {self.factor:g} × its gentlest since the peak ({self.gentlest:.2e})",
            )
        self.gentlest = min(self.gentlest, max(decline, 0.0))
        return False


def first_firing(alarm: Alarm, steps, lars, **signals) -> int | None:
    """Feed a whole curve to a fresh `alarm` in order; the step it fires at, or None. `signals`
    are sequences the alarm's `update` takes by keyword (train_acc=...), aligned with `steps`."""
    signals = {name: np.asarray(values) for name, values in signals.items()}  # by position
    names = list(signals)
    for i, (step, value) in enumerate(zip(steps, lars, strict=True)):
        if alarm.update(int(step), float(value), **{name: signals[name][i] for name in names}):
            return alarm.fired_at
    return None


def describe_alarm(alarm: Alarm) -> dict | None:
    """How to make `alarm` afresh, as JSON-able data (a trainer's checkpoint keeps it): its class
    and its constructor's arguments, read back from its attributes of the same names; None when
    one is not an attribute (a subclass that renames them) or the class is local to a function."""
    cls = type(alarm)
    names = inspect.signature(cls).parameters
    if "<locals>" in cls.__qualname__ or not all(hasattr(alarm, name) for name in names):
        return None
    arguments = {name: getattr(alarm, name) for name in names}
    return {"class": f"{cls.__module__}:{cls.__qualname__}", "args": arguments}


def rebuild_alarm(description: dict) -> Alarm:
    """A fresh alarm made as `describe_alarm`'s data says. Its class must be an `Alarm` of a module
    already imported: nothing is imported on a file's say."""
    module, _, name = description["class"].partition(":")
    cls = sys.modules.get(module)
    for part in name.split("."):
        cls = getattr(cls, part, None)
    _require(
        isinstance(cls, type) and issubclass(cls, Alarm),
        f"alarm: {description['class']} is not an alarm class of an imported module",
    )
    return cls(**description["args"])
