"""LAR in Lightning: `LARCallback` measures the unembedding's LAR (and optionally every dense
layer's) at every optimizer step, logs it with `LightningModule.log` so that it reaches the
trainer's loggers (TensorBoard, W&B, CSV, …), and raises the validation-free alarm
(grokking.lar.alarm) once.

    trainer = lightning.Trainer(callbacks=[LARCallback()], logger=CSVLogger("logs"))

Logged at every optimizer step (and written by the loggers every `log_every_n_steps`, 50 by
default: set it to 1 to keep every step): `lar` (NaN from the step the weights turn NaN on),
`lar_alarm` (1 from the step the alarm fires on), and `lar/<layer>` for each dense layer the step
reached with `every_linear=True`. A module without a dense layer is refused at `setup`.
"""

from __future__ import annotations

import torch
from lightning.pytorch import Callback
from lightning.pytorch.utilities.model_helpers import is_overridden

from grokking.integrations.watch import (
    LAR_KEY,
    LARWatch,
    find_layer,
    finite_mean,
    keep_candidates,
    log,
    restore_selected,
)
from grokking.lar.alarm import Alarm
from grokking.lar.select import OverfittingStop


class LARCallback(Callback):
    """`module`: the qualified name (in the LightningModule) of the layer to watch (default: the
    module's `get_output_embeddings()` if it has one, else its last nn.Linear or Conv1D);
    `every_linear`: log every dense layer's LAR too; `alarm`: True (the overfitting alarm at its
    defaults), False, or an alarm fed LAR alone; `stop_on_alarm`: end training when it fires."""

    def __init__(
        self,
        module: str | None = None,
        every_linear: bool = False,
        alarm: Alarm | bool = True,
        stop_on_alarm: bool = False,
    ):
        self.watch = LARWatch(module, every_linear, alarm)
        self.stop_on_alarm = stop_on_alarm
        self.step_open = False  # a step's first batch has reset the probes

    def setup(self, trainer, pl_module, stage):
        # a module without a layer to watch is refused before anything is set up or trained;
        # one that builds its layers in configure_model (called after setup) at fit start
        if stage == "fit" and not is_overridden("configure_model", pl_module):
            find_layer(pl_module, self.watch.module_name)

    def on_fit_start(self, trainer, pl_module):
        self.watch.attach(pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if not self.step_open:  # the first micro-batch of an optimizer step
            self.watch.begin_step()
            self.step_open = True

    def _measure(self, trainer, pl_module) -> dict[str, float]:
        """The step's values, logged: call after its last backward pass, before the optimizer
        moves the weights."""
        self.step_open = False
        values = self.watch.end_step(trainer.global_step)  # the step Lightning logs it at
        # every value, NaN too: a key left out of a step is written with its last value
        pl_module.log_dict(values, on_step=True, on_epoch=False)
        return values

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self._measure(trainer, pl_module)
        if self.stop_on_alarm and self.watch.alarm is not None and self.watch.alarm.fired:
            trainer.should_stop = True

    def on_fit_end(self, trainer, pl_module):
        self.watch.remove()


class LAREarlyStopping(LARCallback):
    """Early stopping without validation data, after Lightning's `EarlyStopping`: LAR of the
    watched layer (as `LARCallback` logs it) feeds `OverfittingStop(**rule)`
    (grokking.lar.select); it stops `patience` checks after the rule does, and at the end of fit
    restores the weights of the step the rule selected. The candidates' weights are kept in CPU
    memory (a bounded few; `OverfittingStop` says how many) and in the callback's checkpointed
    state, so a fit resumed from a checkpoint goes on with the rule where it was.

    Checked at every optimizer step, the rule's step is `trainer.global_step`; with
    `check_on_train_epoch_end=True`, it is fed each epoch's mean LAR at the epoch's end and its
    step is the epoch (then `window`, `every` count epochs). `stopped_epoch`: the epoch it stopped
    in (0 if it did not)."""

    def __init__(
        self,
        module: str | None = None,
        patience: int = 0,
        check_on_train_epoch_end: bool = False,
        **rule,
    ):
        if not (isinstance(patience, int) and patience >= 0):
            raise ValueError(f"patience: must be an int ≥ 0 checks, got {patience!r}")
        super().__init__(module, alarm=False)
        self.rule = OverfittingStop(**rule)
        self.patience = patience
        self.check_on_train_epoch_end = check_on_train_epoch_end
        self.wait = 0  # checks since the rule stopped
        self.stopped_epoch = 0
        self.kept: dict[int, dict[str, torch.Tensor]] = {}  # candidate step → weights on CPU
        self.epoch_lars: list[float] = []

    def lar(self, step: int, values: dict[str, float]) -> float:
        """The value fed to the rule at `step` (tests override it to script a curve)."""
        return values[LAR_KEY]

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        value = self.lar(trainer.global_step, self._measure(trainer, pl_module))
        if self.check_on_train_epoch_end:
            self.epoch_lars.append(value)
        else:
            self._check(trainer, pl_module, trainer.global_step, value)

    def on_train_epoch_end(self, trainer, pl_module):
        if self.check_on_train_epoch_end and self.epoch_lars:
            value = finite_mean(self.epoch_lars)
            self.epoch_lars.clear()
            self._check(trainer, pl_module, trainer.current_epoch, value)

    def _check(self, trainer, pl_module, step: int, value: float) -> None:
        decision = keep_candidates(self.rule.update(step, value), self.kept, step, pl_module)
        if decision.stop:
            log.warning("LAR early stopping at %s %d: %s", self._unit, step, self.rule.reason)
        if not self.rule.stopped:
            return
        if self.wait >= self.patience:
            trainer.should_stop = True
            self.stopped_epoch = trainer.current_epoch
        self.wait += 1

    @property
    def _unit(self) -> str:
        return "epoch" if self.check_on_train_epoch_end else "step"

    def on_fit_end(self, trainer, pl_module):
        restore_selected(self.rule, self.kept, pl_module)
        super().on_fit_end(trainer, pl_module)

    def state_dict(self) -> dict:
        return {
            "rule": self.rule.state_dict(), "wait": self.wait, "stopped_epoch": self.stopped_epoch,
            "kept": self.kept, "epoch_lars": list(self.epoch_lars),
        }  # fmt: skip

    def load_state_dict(self, state_dict: dict) -> None:
        self.rule.load_state_dict(state_dict["rule"])
        self.wait, self.stopped_epoch = state_dict["wait"], state_dict["stopped_epoch"]
        self.kept, self.epoch_lars = dict(state_dict["kept"]), list(state_dict["epoch_lars"])
