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

from lightning.pytorch import Callback
from lightning.pytorch.utilities.model_helpers import is_overridden

from grokking.integrations.watch import LARWatch, find_layer
from grokking.lar.alarm import Alarm


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

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        # after the step's last backward pass, before the optimizer moves the weights
        self.step_open = False
        values = self.watch.end_step(trainer.global_step)  # the step Lightning logs it at
        # every value, NaN too: a key left out of a step is written with its last value
        pl_module.log_dict(values, on_step=True, on_epoch=False)
        if self.stop_on_alarm and self.watch.alarm is not None and self.watch.alarm.fired:
            trainer.should_stop = True

    def on_fit_end(self, trainer, pl_module):
        self.watch.remove()
