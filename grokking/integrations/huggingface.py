"""LAR in the HuggingFace `Trainer`: `LARCallback` measures the unembedding's LAR (and optionally
every dense layer's) at every optimizer step, logs it through the trainer's own logging, and
raises the validation-free alarm (grokking.lar.alarm) once.

    trainer = Trainer(model, args, train_dataset=...)
    LARCallback().attach(trainer)  # first among the trainer's callbacks, before the reporters
    trainer.train()

`Trainer(callbacks=[LARCallback()])` also works, but the Trainer calls it after the reporters of
`report_to`, so its values reach the log history only (it warns once, naming the fix).

What reaches the logs: at each logging step (`logging_steps`), `lar` is the mean LAR over the
optimizer steps since the last log (as `loss` is the mean loss), `lar_alarm` is 1 from the step
the alarm fires on, and `lar/<layer>` each dense layer's mean LAR with `every_linear=True`. They
go into `trainer.state.log_history` and to every reporter of `report_to` (TensorBoard, W&B, …).

The alarm's state is in each checkpoint's trainer_state.json (`ExportableState`): a training
resumed with `TrainingArguments(restore_callback_states_from_checkpoint=True)` goes on with the
alarm where it was (one that fired stays fired) rather than re-arming it.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import TYPE_CHECKING

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from grokking.integrations.watch import (
    ALARM_KEY,
    LAR_KEY,
    LARWatch,
    Stopper,
    finite_mean,
)
from grokking.lar.alarm import Alarm, describe_alarm
from grokking.lar.select import OverfittingStop

if TYPE_CHECKING:  # importing the Trainer takes seconds; a callback needs it only to be typed
    from transformers import Trainer


class LARCallback(TrainerCallback, ExportableState):
    """`module`: the qualified name of the layer to watch (default: the model's
    `get_output_embeddings()`, else its last nn.Linear or Conv1D); `every_linear`: log every
    dense layer's LAR too; `alarm`: True (the overfitting alarm at its defaults), False, or an
    alarm fed LAR alone; `stop_on_alarm`: end training when it fires."""

    def __init__(
        self,
        module: str | None = None,
        every_linear: bool = False,
        alarm: Alarm | bool = True,
        stop_on_alarm: bool = False,
    ):
        self.watch = LARWatch(module, every_linear, alarm)
        self.stop_on_alarm = stop_on_alarm
        self.pending: list[dict[str, float]] = []  # each step's values since the last log
        self.attached = False

    def attach(self, trainer: Trainer) -> LARCallback:
        """Add this callback to `trainer` as the first of its callbacks, so that its `on_log` adds
        LAR to the `logs` dict before the reporters (TensorBoardCallback, WandbCallback, …) write
        that dict out: a reporter reads `logs` once, and the Trainer puts the callbacks it is
        given, or that `add_callback` adds, after them. Returns the callback."""
        trainer.pop_callback(self)  # given to the Trainer too: it must run once, first
        trainer.callback_handler.callbacks.insert(0, self)
        self.attached = True
        return self

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if args.report_to and not self.attached:
            warnings.warn(
                f"LARCallback runs after the reporters of report_to={args.report_to}, so lar "
                "reaches trainer.state.log_history only: add it with "
                "LARCallback(...).attach(trainer), not callbacks=[...] or add_callback()",
                stacklevel=2,
            )
        self.watch.attach(model)
        self.pending.clear()

    def on_step_begin(self, args, state, control, **kwargs):
        self.watch.begin_step()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        # after the step's last backward pass, before the optimizer moves the weights
        self.pending.append(self.watch.end_step(state.global_step + 1))
        if self.stop_on_alarm and self.watch.alarm is not None and self.watch.alarm.fired:
            control.should_training_stop = True
            control.should_log = True  # the last step's values reach the logs, whatever its step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "loss" not in logs or not self.pending:
            return  # an evaluation's or the final summary's log: no training steps in it
        # the window's every key: a step that did not reach a layer has no value for it
        keys = dict.fromkeys(key for row in self.pending for key in row)
        means = {key: finite_mean([row.get(key, math.nan) for row in self.pending]) for key in keys}
        if ALARM_KEY in means:  # a flag, not a rate: 1 once it has fired in the window
            means[ALARM_KEY] = self.pending[-1][ALARM_KEY]
        self.pending.clear()
        logs.update(means)  # the reporters after this callback read this very dict
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(means)  # the trainer copied `logs` there before on_log

    def on_train_end(self, args, state, control, **kwargs):
        self.watch.remove()

    @property
    def alarm_state(self) -> dict | None:
        return None if self.watch.alarm is None else self.watch.alarm.state_dict()

    @alarm_state.setter
    def alarm_state(self, state: dict | None) -> None:  # the Trainer restores it by setattr
        if self.watch.alarm is not None and state is not None:
            self.watch.alarm.load_state_dict(state)

    def state(self) -> dict:
        """What the Trainer writes to a checkpoint's trainer_state.json: the arguments that make
        this callback again (its alarm as `describe_alarm` describes it) and the alarm's state."""
        alarm = self.watch.alarm
        return {
            "args": {
                "module": self.watch.module_name, "every_linear": self.watch.every_linear,
                "alarm": False if alarm is None else describe_alarm(alarm),
                "stop_on_alarm": self.stop_on_alarm,
            },
            "attributes": {"alarm_state": self.alarm_state},
        }  # fmt: skip


CANDIDATES_FILE = "lar_candidates.pt"  # in each checkpoint folder: the candidates' weights


class LAREarlyStopping(LARCallback):
    """Early stopping without an evaluation dataset: LAR of the watched layer (logged as
    `LARCallback` logs it) feeds `OverfittingStop(**rule)` (grokking.lar.select); training stops
    (`control.should_training_stop`) `patience` steps after the rule does, and at the end of
    training the weights of the step the rule selected are loaded into the model, as
    `load_best_model_at_end` does with an evaluation metric. The candidates' weights are kept in
    CPU memory (a bounded few) and written to each checkpoint folder (lar_candidates.pt); the
    rule's state is in trainer_state.json (`ExportableState`), so a training resumed with
    `TrainingArguments(restore_callback_states_from_checkpoint=True)` goes on where it was.

        LAREarlyStopping().attach(trainer)"""

    def __init__(self, module: str | None = None, patience: int = 0, **rule):
        self.stopper = Stopper(patience, **rule)
        super().__init__(module, alarm=False)
        self.checkpoints = ""  # the trainer's output folder, where its checkpoints go
        self.step = 0  # the last step checked
        self.candidates_file = ""  # set by a restored state: the checkpoint's candidates

    def lar(self, step: int, values: dict[str, float]) -> float:
        """The value fed to the rule at `step` (tests override it to script a curve)."""
        return values[LAR_KEY]

    @property
    def rule(self) -> OverfittingStop:
        return self.stopper.rule

    @property
    def stopper_state(self) -> dict:
        return self.stopper.state_dict()

    @stopper_state.setter
    def stopper_state(self, state: dict) -> None:  # the Trainer restores attributes by setattr
        self.stopper.load_state_dict(state)

    def _candidates_file(self, step: int) -> str:
        """Where the checkpoint of `step` keeps the candidates' weights (the Trainer's own
        checkpoint folder: removed with it by `save_total_limit`)."""
        folder = f"{PREFIX_CHECKPOINT_DIR}-{step}"
        return os.path.join(self.checkpoints, folder, CANDIDATES_FILE)

    def state(self) -> dict:
        """What the Trainer writes to a checkpoint's trainer_state.json."""
        return {
            "args": {
                "module": self.watch.module_name, "patience": self.stopper.patience,
                **self.rule.args,
            },
            "attributes": {
                "stopper_state": self.stopper_state, "step": self.step,
                "candidates_file": self._candidates_file(self.step),
            },
        }  # fmt: skip

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        super().on_train_begin(args, state, control, model=model, **kwargs)
        self.checkpoints = args.output_dir
        if self.candidates_file:  # resumed: the candidates the checkpoint kept
            self.stopper.kept = torch.load(self.candidates_file, weights_only=True)

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        super().on_pre_optimizer_step(args, state, control, **kwargs)
        self.step = state.global_step + 1  # the step LARCallback logs the values at
        if self.stopper.check(self.step, self.lar(self.step, self.pending[-1]), model):
            control.should_training_stop = True
            control.should_log = True  # the last step's values reach the logs

    def on_save(self, args, state, control, **kwargs):
        if not args.should_save:  # a process that wrote no checkpoint
            return
        torch.save(self.stopper.kept, self._candidates_file(state.global_step))

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.stopper.restore(model)
        super().on_train_end(args, state, control, **kwargs)
