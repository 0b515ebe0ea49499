"""What ends a run, the config's `stop: validation | lar | none`, on the run's side (docs/method.md
§5): the rule a family's record feeds (`StopRule`: grokking.lar.select's, or `ValidationStop`),
the weights of the candidates it may still select, the chosen weights at the stop, and the
summary's `stop` fields.

    checkpoints/candidate_<unit>_<N>.pt   a candidate's weights, while the rule may select them
    checkpoints/selected.pt               the weights the rule selected, written at the stop

A candidate the rule drops is removed only once a resume point (last.pt) that no longer holds it
has been written: a run killed at any instant resumes from its last.pt with every candidate that
last.pt's rule may still select on disk (candidates saved after it are saved again, the same
bits, when the resumed run replays their steps). Once the run has completed, selected.pt holds
the one kept and the candidates' files go.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable

from grokking.lar.select import Decision, StopRule
from grokking.runs.rundir import RunDir

CANDIDATE = "candidate_"  # a candidate's checkpoint: candidate_<unit>_<N>
SELECTED = "selected"


class StopKind(enum.Enum):
    validation = "validation"  # the validation numbers decide (each family says how)
    lar = "lar"  # a validation-free rule fed LAR (grokking.lar.select)
    none = "none"  # train to the budget


class ValidationStop(StopRule):
    """Early stopping on the validation loss, as Lightning's `EarlyStopping` with its default
    patience: stops once `patience` evaluations in a row have not improved on the best (lowest)
    one, and selects the best one's weights; a run that reaches its budget first keeps the best
    too (as `load_best_model_at_end` does). Its one candidate is the best evaluation so far."""

    def __init__(self, patience: int = 3, unit: str = "step"):
        super().__init__(alarm=None, unit=unit)
        self.patience = patience
        self.best = math.inf  # the lowest validation loss so far
        self.wait = 0  # evaluations since it

    def update(self, step: int, loss: float) -> Decision:
        """Feed the validation loss of the evaluation at `step`."""
        if self.stopped:
            return Decision()
        if loss < self.best:  # a NaN never improves
            drop = tuple(self.candidates)
            self.best, self.wait, self.candidates = loss, 0, [step]
            return Decision(save=True, drop=drop)
        self.wait += 1
        if self.wait < self.patience:
            return Decision()
        best = self._best(step)
        reason = (
            f"the validation loss has not improved on {self.best:.4f} ({self.unit} {best}) for "
            f"{self.patience} evaluations; kept {self.unit} {best}"
        )
        return self._stop(step, best, reason)

    def end(self, step: int, why: str) -> Decision:
        best = self._best(step)
        reason = f"{why} before the validation loss stopped improving; kept the best, {self.unit}"
        return self._stop(step, best, f"{reason} {best}")

    def _best(self, step: int) -> int:
        """The best evaluation's step (`step` when no evaluation had a finite loss)."""
        return self.candidates[0] if self.candidates else step


class Selection:
    """A run's stop: its `kind`, the `rule` that decides it (None when the family's own test
    does, or nothing but the budget), and the candidates' weights that rule asks to keep in the
    run folder. The record feeds `apply` each decision of the rule and calls `after_resume_point`,
    `end` and `write_selected` where its docstrings say."""

    def __init__(self, kind: StopKind, rule: StopRule | None, run_dir: RunDir, unit: str):
        self.kind, self.rule, self.run_dir, self.unit = kind, rule, run_dir, unit
        self.stopped_at: int | None = None
        self.selected: int | None = None
        self.reason = ""

    @property
    def stopping(self) -> bool:
        """Whether the rule has stopped the run (it ends at this unit's evaluation)."""
        return self.rule is not None and self.rule.stopped

    def _candidate(self, unit: int) -> str:
        return f"{CANDIDATE}{self.unit}_{unit}"

    def apply(self, decision: Decision, unit: int, step: int, model_state: Callable) -> None:
        """Keep the weights (`model_state()`) of `unit` when the rule asks; its drops wait for
        the next resume point (`after_resume_point`)."""
        if decision.save:
            checkpoint = {"model": model_state(), self.unit: unit, "step": step}
            self.run_dir.save_checkpoint(self._candidate(unit), checkpoint)

    def state_dict(self) -> dict | None:
        """What last.pt keeps of the rule (None without one)."""
        return None if self.rule is None else self.rule.state_dict()

    def problem(self, saved: dict) -> str | None:
        """What keeps a resume point from holding this selection's rule, or None."""
        if self.rule is not None and not isinstance(saved.get("stop_rule"), dict):
            return "no stop_rule state"
        return None

    def load_state_dict(self, state: dict | None) -> None:
        if self.rule is not None:
            self.rule.load_state_dict(state)

    def after_resume_point(self) -> None:
        """last.pt now holds the rule's state: remove the candidates it can no longer select."""
        self._remove_candidates(keep=self.rule.candidates if self.rule else [])

    def _remove_candidates(self, keep: list[int]) -> None:
        kept = {self._candidate(unit) for unit in keep}
        for name in self.run_dir.checkpoint_names(CANDIDATE):
            if name not in kept:
                self.run_dir.remove_checkpoint(name)

    def end(self, unit: int, reason: str) -> None:
        """The run stops at `unit` for `reason` (the rule's, the family's or the budget's): the
        rule, if it had not stopped, settles on its choice at the budget."""
        if self.rule is not None:
            if not self.rule.stopped:
                self.rule.end(unit, reason)
            unit, self.selected, reason = self.rule.stopped_at, self.rule.selected, self.rule.reason
        self.stopped_at, self.reason = unit, reason
        if self.selected is None:
            self.selected = unit

    def write_selected(self, unit: int, step: int, model_state: dict) -> None:
        """With a rule: write selected.pt, from the candidate's weights or, when it selected the
        current unit, `model_state`."""
        if self.rule is None:
            return
        if self.selected == unit:
            checkpoint = {"model": model_state, self.unit: unit, "step": step}
        else:
            checkpoint = self.run_dir.load_checkpoint(self._candidate(self.selected))
        self.run_dir.save_checkpoint(SELECTED, checkpoint)

    def after_completion(self) -> None:
        """The run has completed: selected.pt holds the weights kept, the candidates go."""
        self._remove_candidates(keep=[])

    def fields(self) -> dict:
        """summary.json's `stop`: the kind, the unit stopped at and the one whose weights are
        kept (in the family's unit), and why."""
        return {
            "kind": self.kind.value,
            f"stopped_{self.unit}": self.stopped_at,
            f"selected_{self.unit}": self.selected,
            "reason": self.reason,
        }
