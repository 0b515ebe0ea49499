"""LAR in Lightning: `LARCallback` measures the unembedding's LAR (and optionally every dense
layer's) at every optimizer step, logs it with `LightningModule.log` so that it reaches the
trainer's loggers (TensorBoard, W&B, CSV, …), and raises the validation-free alarm
(grokking.lar.alarm) once.

    trainer = lightning.Trainer(callbacks=[LARCallback()], logger=CSVLogger("logs"))

Logged at every optimizer step (and written by the loggers every `log_every_n_steps`, 50 by
default: set it to 1 to keep every step): `lar` (NaN from the step the weights turn NaN on),
`lar_alarm` (1 from the step the alarm fires on), and `lar/<layer>` for each dense layer the step
reached with `every_linear=True`. A module without a dense layer is refused at `setup`.

The alarm's state is in each checkpoint (`state_dict`): a fit resumed with
`trainer.fit(..., ckpt_path=...)` and the same callback goes on with the alarm where it was (one
that fired stays fired) rather than re-arming it.
"""

from __future__ import annotations

from lightning.pytorch import Callback
from lightning.pytorch.utilities.model_helpers import is_overridden

from grokking.integrations.watch import (
    LAR_KEY,
    LARWatch,
    Stopper,
    find_layer,
    finite_mean,
)
from grokking.lar.alarm import Alarm, describe_alarm
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

    @property
    def state_key(self) -> str:
        """Where the checkpoint keeps this callback's state: the layer and the alarm name it, so
        that two callbacks in one trainer (two layers, two alarms) keep their own. A callback
        given another alarm on resuming finds no state: its alarm starts afresh, and Lightning
        warns that the checkpoint's callback is missing."""
        alarm = self.watch.alarm
        # an alarm describe_alarm cannot describe is named by its class alone
        named = None if alarm is None else describe_alarm(alarm) or type(alarm).__qualname__
        return self._generate_state_key(module=self.watch.module_name, alarm=named)

    def state_dict(self) -> dict:
        """What the alarm has seen (nothing without an alarm: Lightning stores no empty state)."""
        alarm = self.watch.alarm
        return {} if alarm is None else {"alarm": alarm.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        if "alarm" in state_dict:  # the key matched: the same alarm, so the same state fits
            self.watch.alarm.load_state_dict(state_dict["alarm"])


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
        self.stopper = Stopper(patience, **rule)
        super().__init__(module, alarm=False)
        self.check_on_train_epoch_end = check_on_train_epoch_end
        self.stopped_epoch = 0
        self.epoch_lars: list[float] = []

    @property
    def rule(self) -> OverfittingStop:
        return self.stopper.rule

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
        unit = "epoch" if self.check_on_train_epoch_end else "step"
        if self.stopper.check(step, value, pl_module, unit):
            trainer.should_stop = True
            self.stopped_epoch = trainer.current_epoch

    def on_fit_end(self, trainer, pl_module):
        self.stopper.restore(pl_module)
        super().on_fit_end(trainer, pl_module)

    def state_dict(self) -> dict:
        """The rule's state and the candidates' weights: the checkpoint holds tensors."""
        return super().state_dict() | self.stopper.state_dict() | {
            "kept": self.stopper.kept, "stopped_epoch": self.stopped_epoch,
            "epoch_lars": list(self.epoch_lars),
        }  # fmt: skip

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self.stopper.load_state_dict(state_dict)
        self.stopper.kept = dict(state_dict["kept"])
        self.stopped_epoch, self.epoch_lars = state_dict["stopped_epoch"], state_dict["epoch_lars"]
