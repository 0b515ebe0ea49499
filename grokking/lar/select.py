"""Validation-free stopping rules fed one LAR value at a time (docs/method.md §5): when to stop,
and which step's weights to keep.

- `OverfittingStop` (pre-training): stops when the `OverfittingAlarm` fires, at step T, and
  selects the weights of the last candidate step at or before `keep` × T. LAR's level cannot
  choose them (the share of its climb that LAR has given back at the best step of one run is the
  share it ends at on a run that never overfits); its history can: on the language-model runs the
  best validation loss comes at 0.45–0.6 of the alarm's step (scripts/tune_stop.py tunes `keep`
  and `spacing`; docs/method.md §5 has the numbers). Weights are kept at a bounded
  ladder of candidate steps, each ≥ `spacing` × the one before: the selection is at most a factor
  `spacing` before its target, and a candidate below the last one at or before `keep` × (the
  current step) can never be chosen, since the alarm can only fire later, so it is dropped. That
  bounds the candidates kept to about log(1/keep) / log(spacing) + 2.
- `GrokkingStop` (grokking): stops once the `GeneralizationAlarm` has fired and the run has gone
  on a fraction `margin` of the alarm's step beyond it (the alarm is sometimes early); the weights
  kept are the last ones.

`update` returns a `Decision` at every value: whether to keep this step's weights as a
candidate, which candidates' weights to drop, and whether to stop here. After the stop,
`selected` is the step whose weights to restore and `reason` says why. `state_dict()` is plain
JSON-able data, so a resumed run can continue the rule where it left off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from grokking.lar.alarm import GeneralizationAlarm, OverfittingAlarm, _require, restore, snapshot


@dataclass(frozen=True)
class Decision:
    save: bool = False  # keep this step's weights: the rule may select them later
    drop: tuple[int, ...] = ()  # kept steps the rule will never select: free their weights
    stop: bool = False  # stop training at this step


class StopRule:
    """What every rule shares: the stopped state, the kept candidates, the state to resume."""

    def __init__(self, alarm, unit: str = "step") -> None:
        self.alarm = alarm
        self.unit = unit  # what the steps fed count: the reasons name it
        if alarm is not None:
            alarm.unit = unit
        self.stopped_at: int | None = None
        self.selected: int | None = None
        self.reason = ""
        self.candidates: list[int] = []

    @property
    def stopped(self) -> bool:
        return self.stopped_at is not None

    def _stop(self, step: int, selected: int, reason: str) -> Decision:
        self.stopped_at, self.selected, self.reason = step, selected, reason
        drop = tuple(c for c in self.candidates if c != selected)
        self.candidates = [c for c in self.candidates if c == selected]
        return Decision(drop=drop, stop=True)

    def end(self, step: int, why: str) -> Decision:
        """Training ended at `step` (its budget, `why`) before the rule stopped: the weights kept
        are the last ones."""
        kept = f"kept the last {self.unit} {step}"
        return self._stop(step, step, f"{why} before the rule stopped; {kept}")

    def state_dict(self) -> dict:
        """The rule's and its alarm's state (a rule without one has None), as JSON-able data."""
        state = snapshot(self, skip=("alarm",))
        state["alarm"] = None if self.alarm is None else self.alarm.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        alarm = state.pop("alarm")
        if self.alarm is not None:
            self.alarm.load_state_dict(alarm)
        restore(self, state)


class OverfittingStop(StopRule):
    """Stops when `OverfittingAlarm(retreat, window, min_peak)` fires, at step T, and selects the
    last candidate at or before `keep` × T. Candidates are steps that are multiples of `every`
    (e.g. the checkpoint interval), each ≥ `spacing` × the previous one. `unit`: what the steps
    fed count, named in the reason."""

    def __init__(
        self,
        keep: float = 0.6,
        spacing: float = 1.3,
        every: int = 1,
        retreat: float = 0.55,
        window: int = 50,
        min_peak: float = 0.55,
        unit: str = "step",
    ):
        _require(0 < keep < 1, f"keep: must be in (0, 1), got {keep}")
        _require(spacing > 1, f"spacing: must be > 1, got {spacing}")
        _require(every >= 1, f"every: must be ≥ 1 step, got {every}")
        super().__init__(OverfittingAlarm(retreat, window, min_peak), unit)
        self.keep, self.spacing, self.every = keep, spacing, every

    @property
    def args(self) -> dict:
        """The constructor's arguments: a rule built from them starts where this one started."""
        alarm = self.alarm
        return {
            "keep": self.keep, "spacing": self.spacing, "every": self.every,
            "retreat": alarm.retreat, "window": alarm.window, "min_peak": alarm.min_peak,
            "unit": self.unit,
        }  # fmt: skip

    def update(self, step: int, lar: float) -> Decision:
        """Feed LAR at `step` (measured with the weights the trainer would keep for `step`)."""
        if self.stopped:
            return Decision()
        if self.alarm.update(step, lar):
            return self._select(step)
        # a step whose LAR is NaN (nothing recorded, or the weights diverged) is no candidate
        save = (
            math.isfinite(lar)
            and step % self.every == 0
            and (not self.candidates or step >= self.spacing * self.candidates[-1])
        )
        if save:
            self.candidates.append(step)
        # the alarm fires at a later step, so the target keep × T is past keep × step
        reachable = [c for c in self.candidates if c <= self.keep * step]
        drop = tuple(reachable[:-1])
        self.candidates = self.candidates[len(drop) :]
        return Decision(save=save, drop=drop)

    def _select(self, step: int) -> Decision:
        target = self.keep * step
        before = [c for c in self.candidates if c <= target]
        if before:
            selected = before[-1]
        elif self.candidates:  # the alarm fired before the first candidate's reach
            selected = self.candidates[0]
        else:
            selected = step
        reason = (
            f"{self.alarm.reason} at {self.unit} {step}; kept {self.unit} {selected}, the last "
            f"candidate at or before {self.keep:g} × {step}"
        )
        return self._stop(step, selected, reason)


class GrokkingStop(StopRule):
    """Stops at the first value at or after (1 + `margin`) × the step at which
    `GeneralizationAlarm(rise, memorized, patience)` fired; keeps the last weights. `unit`: what
    the steps fed count, named in the reason."""

    def __init__(
        self,
        margin: float = 0.1,
        rise: float = 0.06,
        memorized: float = 0.99,
        patience: int = 1,
        unit: str = "step",
    ):
        _require(margin >= 0, f"margin: must be ≥ 0, got {margin}")
        super().__init__(GeneralizationAlarm(rise, memorized, patience), unit)
        self.margin = margin

    @property
    def due(self) -> int | None:
        """The first step at which the rule stops, once the alarm has fired (None before): a
        trainer that evaluates every k steps can evaluate there too."""
        fired = self.alarm.fired_at
        return None if fired is None else fired + math.ceil(self.margin * fired)

    def update(self, step: int, lar: float, *, train_acc: float) -> Decision:
        """Feed LAR and the training accuracy at `step`."""
        if self.stopped:
            return Decision()
        self.alarm.update(step, lar, train_acc=train_acc)
        fired = self.alarm.fired_at
        if fired is None or step < self.due:
            return Decision()
        reason = (
            f"generalization alarm at {self.unit} {fired} ({self.alarm.reason}); stopped "
            f"{self.margin:.0%} later, at {self.unit} {step}"
        )
        return self._stop(step, step, reason)


def run_rule(rule: StopRule, steps, lars, **signals) -> StopRule:
    """Feed a whole curve to a fresh `rule` in order, until it stops; returns the rule, whose
    `stopped_at`, `selected` and `candidates` say what it did. `signals` as in `first_firing`."""
    signals = {name: np.asarray(values) for name, values in signals.items()}  # by position
    names = list(signals)
    for i, (step, value) in enumerate(zip(steps, lars, strict=True)):
        decision = rule.update(int(step), float(value), **{n: signals[n][i] for n in names})
        if decision.stop:
            break
    return rule
