"""What both training-loop callbacks share: which layer to watch, the forward hooks that measure
LAR at every optimizer step, and the validation-free alarm fed those values."""

from __future__ import annotations

import logging
import math
import warnings

import torch
from torch import nn

from grokking.lar import LARProbe, ProbeSet, probed_matrix
from grokking.lar.alarm import Alarm, OverfittingAlarm, rebuild_alarm
from grokking.lar.select import OverfittingStop

log = logging.getLogger("grokking.integrations")

LAR_KEY = "lar"  # the watched layer's LAR
ALARM_KEY = "lar_alarm"  # 0 until the alarm fires, 1 from that step on


def find_layer(model: nn.Module, name: str | None = None) -> tuple[str, nn.Module]:
    """The layer to watch and its qualified name: `name` if given; else the layer the model calls
    its output embeddings (`get_output_embeddings()`, the unembedding of a HuggingFace model);
    else the model's last `nn.Linear` (or GPT-2 style `Conv1D`) in registration order."""
    layers = [(n, m) for n, m in model.named_modules() if probed_matrix(m) is not None]
    if name is not None:
        for layer_name, layer in layers:
            if layer_name == name:
                return layer_name, layer
        raise ValueError(
            f"module: {name!r} is not an nn.Linear or Conv1D of the model; it has "
            f"{[n for n, _ in layers]}"
        )
    getter = getattr(model, "get_output_embeddings", None)
    output = getter() if callable(getter) else None
    for layer_name, layer in layers:
        if layer is output:
            return layer_name, layer
    if not layers:
        raise ValueError(
            f"the model ({type(model).__name__}) has no nn.Linear or Conv1D for LAR to watch (LAR "
            "is measured on a dense layer's weight and inputs): remove the LAR callback from its "
            "trainer"
        )
    return layers[-1]


def _alarm(alarm: Alarm | bool | dict | None) -> Alarm | None:
    """True: the overfitting alarm at its defaults; False: none; an alarm: that one; a dict: the
    alarm `describe_alarm` described (in a trainer's checkpoint); None: one it could not describe.
    An alarm that needs more than LAR (the generalization alarm reads training accuracy, which a
    trainer does not hand its callbacks) is refused here, before training starts."""
    if alarm is True:
        return OverfittingAlarm()
    if alarm is False:
        return None
    if alarm is None:
        raise ValueError(
            "alarm: the checkpoint could not describe its callback's alarm (give an alarm's "
            "constructor arguments attributes of the same names to keep it across a resume)"
        )
    if isinstance(alarm, dict):
        alarm = rebuild_alarm(alarm)
    if not isinstance(alarm, Alarm) or alarm.needs:
        raise ValueError(
            f"alarm: must be True, False or an alarm fed LAR alone (OverfittingAlarm, "
            f"AcceleratingDeclineAlarm), got {alarm!r}"
        )
    return alarm


class LARWatch:
    """Probes on a model (the watched layer, and optionally every dense layer) that measure LAR
    over each optimizer step's forward passes (all its micro-batches), and the alarm they feed.

    Call `begin_step()` before a step's first forward pass and `end_step(step)` after its last
    backward pass, before the optimizer changes the weights (LAR pairs the forward pass's outputs
    with the weights that made them). Evaluation passes in between are dropped by the next
    `begin_step()`."""

    def __init__(
        self,
        module: str | None = None,
        every_linear: bool = False,
        alarm: Alarm | bool = True,
    ):
        self.module_name = module
        self.every_linear = every_linear
        self.alarm = _alarm(alarm)
        self.probe: LARProbe | None = None
        self.others: ProbeSet | None = None
        self.layer_name = ""

    def attach(self, model: nn.Module) -> None:
        if self.probe is not None:  # a second fit on the same callback: watch the model anew
            self.remove()
        self.layer_name, layer = find_layer(model, self.module_name)
        if self.every_linear:  # the watched layer's probe is one of them: one hook per layer
            self.others = ProbeSet(model, "*", record_with_grad=True)
            self.probe = self.others[self.layer_name]
        else:
            self.probe = LARProbe(layer, record_with_grad=True)
        log.info("LAR watches %s (%s)", self.layer_name, type(layer).__name__)

    def remove(self) -> None:
        if self._probes() is not None:
            self._probes().remove()
        self.probe = self.others = None

    def begin_step(self) -> None:
        self._probes().reset()

    def _probes(self) -> LARProbe | ProbeSet | None:
        """Every probe this watch holds: the set of dense layers (the watched layer's probe
        among them) or the watched layer's probe alone."""
        return self.others if self.others is not None else self.probe

    def end_step(self, step: int) -> dict[str, float]:
        """The step's values to log: LAR (NaN when the weights or inputs are: a diverged run),
        the alarm's flag, and the LAR of each dense layer the step's forward passes reached (a
        layer never called has no value, rather than a NaN); feeds the alarm (a warning once,
        when it fires)."""
        value = self.probe.value() if self.probe.rows else math.nan
        values = {LAR_KEY: value}
        if self.alarm is not None:
            if self.alarm.update(step, value):
                message = f"LAR alarm at step {step} ({self.alarm.rule}): {self.alarm.reason}"
                log.warning(message)
                warnings.warn(message, stacklevel=2)
            values[ALARM_KEY] = float(self.alarm.fired)
        if self.others is not None:
            for name, probe in self.others:
                if probe.rows:
                    values[f"{LAR_KEY}/{name}"] = probe.value()
        return values


class Stopper:
    """What both early-stopping callbacks share: `OverfittingStop(**rule)`, the candidates' weights
    it asks to keep (on CPU: `kept`, candidate step → state dict) and the `patience` count."""

    def __init__(self, patience: int = 0, **rule):
        if not (isinstance(patience, int) and patience >= 0):
            raise ValueError(f"patience: must be an int ≥ 0 checks, got {patience!r}")
        self.rule = OverfittingStop(**rule)
        self.patience = patience
        self.wait = 0  # checks since the rule stopped
        self.kept: dict[int, dict[str, torch.Tensor]] = {}

    def check(self, step: int, lar: float, model: nn.Module, unit: str = "step") -> bool:
        """Feed the rule; free the weights it drops, copy the ones it may select; True when
        training should stop here: `patience` checks after the rule stopped."""
        decision = self.rule.update(step, lar)
        for dropped in decision.drop:
            self.kept.pop(dropped, None)
        if decision.save:
            weights = model.state_dict().items()
            self.kept[step] = {k: v.detach().to("cpu", copy=True) for k, v in weights}
        if decision.stop:
            log.warning("LAR early stopping at %s %d: %s", unit, step, self.rule.reason)
        if not self.rule.stopped:
            return False
        self.wait += 1
        return self.wait > self.patience

    def restore(self, model: nn.Module) -> None:
        """Load the weights of the step the rule selected into `model`, as
        `load_best_model_at_end` does; nothing if the rule has not stopped or selected the current
        weights."""
        selected = self.rule.selected
        if selected is None or selected not in self.kept:
            return
        model.load_state_dict(self.kept[selected])
        log.warning("LAR early stopping restored the weights of step %d", selected)

    def state_dict(self) -> dict:
        """The rule's state and the patience count, JSON-able (the weights are not)."""
        return {"rule": self.rule.state_dict(), "wait": self.wait}

    def load_state_dict(self, state: dict) -> None:
        self.rule.load_state_dict(state["rule"])
        self.wait = state["wait"]


def finite_mean(values: list[float]) -> float:
    """The mean of the finite values (NaN if none): a step whose probe recorded nothing is NaN."""
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan
