"""LAR in the training loops people use: the HuggingFace Trainer callback (its values reach the
log history and TensorBoard, equal to lar() on the step's inputs) and the Lightning callback
(its values reach a CSVLogger's metrics.csv); the layer each one watches; the alarm's flag,
warning and stop; LAR early stopping in both: it stops, restores the selected weights, and keeps
its state across a resume."""

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from grokking.integrations.watch import LARWatch, find_layer
from grokking.lar import Alarm, GeneralizationAlarm, OverfittingStop, lar, run_rule

transformers = pytest.importorskip("transformers")
lightning = pytest.importorskip("lightning")

VOCAB, CONTEXT = 64, 16


class FiresAt(Alarm):
    """An alarm fed LAR alone that fires at a given step."""

    rule = "test"

    def __init__(self, step: int):
        super().__init__()
        self.at = step

    def update(self, step, lar):
        return step == self.at and self._fire(step, "the test's step")


class InputsOf:
    """Every input (and the weight [out, in] it met) of a layer's forward passes with grad."""

    def __init__(self, layer: nn.Module, transpose: bool = False):
        self.calls = []
        self.transpose = transpose
        layer.register_forward_hook(self.keep)

    def keep(self, module, args, output):
        if torch.is_grad_enabled():
            weight = module.weight.detach().clone()
            self.calls.append((weight.T if self.transpose else weight, args[0].detach().clone()))


def tiny_gpt2():
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=CONTEXT, n_embd=32, n_layer=1, n_head=2
    )
    return transformers.GPT2LMHeadModel(config)


def token_data(rows: int = 32):
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (rows, CONTEXT), generator=generator)
    return [{"input_ids": row, "labels": row} for row in ids]


def hf_trainer(tmp_path, model, callback, attach=True, **arguments):
    """A Trainer reporting to TensorBoard with `callback` attached (LARCallback.attach), or, with
    attach=False, given in `callbacks=[...]`."""
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"),
        per_device_train_batch_size=4,
        save_strategy="no",
        use_cpu=True,
        report_to="tensorboard",
        disable_tqdm=True,
        **({"max_steps": 4, "logging_steps": 1} | arguments),
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=token_data(),
                                   callbacks=None if attach else [callback])  # fmt: skip
    if attach:
        callback.attach(trainer)
    return trainer


def tensorboard_events(folder) -> EventAccumulator:
    (events,) = folder.rglob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    return accumulator


def tensorboard_scalars(folder, tag: str) -> dict[int, float]:
    return {event.step: event.value for event in tensorboard_events(folder).Scalars(tag)}


def test_hf_lar_reaches_the_log_history_and_tensorboard_equal_to_lar_of_the_step(tmp_path):
    from grokking.integrations.huggingface import LARCallback

    model = tiny_gpt2()
    seen = InputsOf(model.lm_head)
    trainer = hf_trainer(tmp_path, model, LARCallback())
    trainer.train()
    # the probe reads the model's float32 outputs, lar() recomputes them in float64: 1e-6 apart
    expected = {step + 1: lar(weight, inputs) for step, (weight, inputs) in enumerate(seen.calls)}
    assert len(expected) == 4
    history = {row["step"]: row for row in trainer.state.log_history if "lar" in row}
    assert {step: row["lar"] for step, row in history.items()} == pytest.approx(expected, rel=1e-6)
    assert all(row["lar_alarm"] == 0.0 for row in history.values())
    logged = tensorboard_scalars(tmp_path / "hf", "train/lar")
    assert logged == pytest.approx(expected, rel=1e-6)  # TensorBoard stores float32 too


def test_hf_attach_puts_the_callback_first_once_and_it_does_not_warn(tmp_path):
    from grokking.integrations.huggingface import LARCallback

    callback = LARCallback()
    trainer = hf_trainer(tmp_path, tiny_gpt2(), callback, attach=False)
    assert callback.attach(trainer) is callback
    callbacks = trainer.callback_handler.callbacks
    assert callbacks[0] is callback and callbacks.count(callback) == 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    assert not [w for w in caught if "LARCallback" in str(w.message)]
    assert set(tensorboard_scalars(tmp_path / "hf", "train/lar")) == {1, 2, 3, 4}


def test_hf_callback_given_in_callbacks_warns_once_with_the_fix_and_reaches_the_history(tmp_path):
    from grokking.integrations.huggingface import LARCallback

    trainer = hf_trainer(tmp_path, tiny_gpt2(), LARCallback(), attach=False)
    with pytest.warns(UserWarning, match=r"LARCallback\(\.\.\.\)\.attach\(trainer\)") as caught:
        trainer.train()
    assert sum("LARCallback" in str(w.message) for w in caught) == 1
    assert [row["step"] for row in trainer.state.log_history if "lar" in row] == [1, 2, 3, 4]
    # the reporter wrote each step's logs before the callback added LAR to them
    tags = tensorboard_events(tmp_path / "hf").Tags()["scalars"]
    assert "train/loss" in tags and "train/lar" not in tags


def test_hf_lar_of_a_step_spans_its_accumulated_micro_batches(tmp_path):
    from grokking.integrations.huggingface import LARCallback

    model = tiny_gpt2()
    seen = InputsOf(model.lm_head)
    trainer = hf_trainer(tmp_path, model, LARCallback(), max_steps=2,
                         gradient_accumulation_steps=2)  # fmt: skip
    trainer.train()
    (weight, first), (_, second) = seen.calls[:2]  # step 1's two micro-batches, same weight
    history = [row for row in trainer.state.log_history if "lar" in row]
    assert history[0]["step"] == 1
    assert history[0]["lar"] == pytest.approx(lar(weight, torch.cat([first, second])), rel=1e-6)


def test_hf_every_linear_logs_each_conv1d_and_the_mean_over_logging_steps(tmp_path):
    from grokking.integrations.huggingface import LARCallback

    model = tiny_gpt2()
    seen = InputsOf(model.transformer.h[0].mlp.c_fc, transpose=True)  # Conv1D: W stored [in, out]
    trainer = hf_trainer(tmp_path, model, LARCallback(every_linear=True), logging_steps=2)
    trainer.train()
    rows = [row for row in trainer.state.log_history if "lar" in row]
    assert [row["step"] for row in rows] == [2, 4]
    name = "lar/transformer.h.0.mlp.c_fc"
    first_two = [lar(weight, inputs) for weight, inputs in seen.calls[:2]]
    assert rows[0][name] == pytest.approx(sum(first_two) / 2, rel=1e-6)
    assert {key for key in rows[0] if key.startswith("lar/")} == {
        f"lar/{n}" for n, m in model.named_modules()
        if isinstance(m, (nn.Linear, transformers.pytorch_utils.Conv1D))
    }  # fmt: skip


def test_hf_alarm_flags_the_logs_warns_once_and_can_stop_training(tmp_path):
    from grokking.integrations.huggingface import LARCallback

    callback = LARCallback(alarm=FiresAt(2), stop_on_alarm=True)
    trainer = hf_trainer(tmp_path, tiny_gpt2(), callback, max_steps=6, logging_steps=4)
    with pytest.warns(UserWarning, match="LAR alarm at step 2 \\(test\\)") as caught:
        trainer.train()
    assert sum("LAR alarm" in str(w.message) for w in caught) == 1
    # stopped at the step it fired on, which is logged although logging_steps=4; the flag is the
    # last step's (1), not the mean over the window's two steps
    flags = {row["step"]: row["lar_alarm"] for row in trainer.state.log_history if "lar" in row}
    assert flags == {2: 1.0}
    assert trainer.state.global_step == 2
    assert tensorboard_scalars(tmp_path / "hf", "train/lar_alarm") == {2: 1.0}


class FiresAfter(Alarm):
    """An alarm fed LAR alone that fires at the `values`-th value it is fed: what it has seen is
    its state, which a resumed training must keep to fire at the same step."""

    rule = "count"

    def __init__(self, values: int):
        super().__init__()
        self.values, self.seen = values, 0

    def update(self, step, lar):
        if self.fired:  # as every alarm of grokking.lar.alarm: what it has seen stops there
            return False
        self.seen += 1
        return self.seen == self.values and self._fire(step, f"{self.values} values")


def resumable_args(tmp_path, max_steps: int, save_steps: int | None):
    """TrainingArguments of a Trainer with no eval_dataset and a constant learning rate (a
    resumed run's schedule does not depend on max_steps) that saves every `save_steps` steps
    (None: never) and restores its callbacks' states from the checkpoint it resumes from."""
    return transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"), per_device_train_batch_size=4, max_steps=max_steps,
        lr_scheduler_type="constant", use_cpu=True, report_to="none", disable_tqdm=True,
        save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500,
        restore_callback_states_from_checkpoint=True,
    )  # fmt: skip


def hf_alarm_train(tmp_path, max_steps=10, resume=None, save_steps=None):
    """A Trainer (`resumable_args`) whose LARCallback stops at its alarm, `FiresAfter(6)`."""
    from grokking.integrations.huggingface import LARCallback

    model = tiny_gpt2()
    args = resumable_args(tmp_path, max_steps, save_steps)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=token_data())
    LARCallback(alarm=FiresAfter(6), stop_on_alarm=True).attach(trainer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the alarm's warning
        trainer.train(resume_from_checkpoint=resume)
    (callback,) = [c for c in trainer.callback_handler.callbacks if isinstance(c, LARCallback)]
    return trainer, callback


def test_hf_alarm_keeps_its_state_in_the_checkpoints_and_a_resumed_run_stops_where_it_did(
    tmp_path,
):
    whole, _ = hf_alarm_train(tmp_path / "whole")
    assert whole.state.global_step == 6
    hf_alarm_train(tmp_path, max_steps=4, save_steps=4)
    checkpoint = tmp_path / "hf" / "checkpoint-4"
    stored = json.loads((checkpoint / "trainer_state.json").read_text())
    saved = stored["stateful_callbacks"]["LARCallback"]
    assert saved["args"]["alarm"] == {"class": f"{__name__}:FiresAfter", "args": {"values": 6}}
    assert saved["attributes"]["alarm_state"]["seen"] == 4
    trainer, callback = hf_alarm_train(tmp_path, resume=str(checkpoint))
    assert isinstance(callback.watch.alarm, FiresAfter) and callback.watch.alarm.seen == 6
    assert trainer.state.global_step == 6  # not 10: the alarm was not re-armed
    # a checkpoint taken once it fired: the resumed training stops at its first step
    hf_alarm_train(tmp_path / "late", max_steps=6, save_steps=6)
    late = tmp_path / "late" / "hf" / "checkpoint-6"
    trainer, callback = hf_alarm_train(tmp_path / "late", resume=str(late))
    assert callback.watch.alarm.fired_at == 6 and trainer.state.global_step == 7


def test_every_linear_hooks_the_watched_layer_once():
    model = tiny_gpt2()
    watch = LARWatch(every_linear=True, alarm=False)
    watch.attach(model)
    assert len(model.lm_head._forward_hooks) == 1
    assert watch.probe is watch.others["lm_head"]
    watch.remove()
    assert all(not module._forward_hooks for module in model.modules())


def test_an_alarm_that_needs_more_than_lar_is_refused():
    with pytest.raises(ValueError, match="alarm: must be True, False or an alarm fed LAR alone"):
        LARWatch(alarm=GeneralizationAlarm())


class Headless(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16))
        self.head = nn.Linear(16, 4)
        self.side = nn.Linear(4, 4)  # registered last, never the output

    def forward(self, x):
        return self.head(self.body(x))


def test_the_watched_layer_is_the_output_embedding_a_named_one_or_the_last_linear():
    assert find_layer(tiny_gpt2())[0] == "lm_head"
    assert find_layer(Headless(), "head")[0] == "head"
    assert find_layer(Headless())[0] == "side"  # no get_output_embeddings: the last nn.Linear
    with pytest.raises(ValueError, match="module: 'heads' is not an nn.Linear or Conv1D.*'head'"):
        find_layer(Headless(), "heads")
    with pytest.raises(ValueError, match="has no nn.Linear or Conv1D"):
        find_layer(nn.Sequential(nn.ReLU()))


class Classifier(lightning.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = Headless()

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Diverges(Classifier):
    """Its weights turn NaN at step 2, as a diverging run's do."""

    def training_step(self, batch, batch_idx):
        if self.global_step == 2:
            with torch.no_grad():
                for parameter in self.parameters():
                    parameter.fill_(float("nan"))
        return super().training_step(batch, batch_idx)


def lightning_fit(tmp_path, callback, max_steps=5, module_class=Classifier):
    from lightning.pytorch.loggers import CSVLogger

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 8), torch.randint(0, 4, (64,)))
    module = module_class()
    seen = InputsOf(module.net.head)
    trainer = lightning.Trainer(
        max_steps=max_steps, logger=CSVLogger(tmp_path), callbacks=[callback],
        log_every_n_steps=1, accelerator="cpu", enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=8))
    (csv,) = tmp_path.rglob("metrics.csv")
    return trainer, seen, pd.read_csv(csv)


def test_lightning_lar_reaches_the_csv_logger_equal_to_lar_of_the_step(tmp_path):
    from grokking.integrations.lightning import LARCallback

    _, seen, metrics = lightning_fit(tmp_path, LARCallback(module="net.head"))
    assert list(metrics["step"]) == [0, 1, 2, 3, 4]
    expected = [lar(weight, inputs) for weight, inputs in seen.calls]
    assert list(metrics["lar"]) == pytest.approx(expected, rel=1e-6)
    assert (metrics["lar_alarm"] == 0).all()


def test_lightning_alarm_flags_the_log_and_stops(tmp_path):
    from grokking.integrations.lightning import LARCallback

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer, _, metrics = lightning_fit(
            tmp_path, LARCallback(every_linear=True, alarm=FiresAt(2), stop_on_alarm=True)
        )
    assert [str(w.message) for w in caught if "LAR alarm" in str(w.message)] == [
        "LAR alarm at step 2 (test): the test's step"
    ]
    assert list(metrics["lar_alarm"]) == [0, 0, 1]
    assert trainer.global_step == 3  # the step it fired on was the last
    assert {"lar/net.body.0", "lar/net.body.2", "lar/net.head"} <= set(metrics)
    assert "lar/net.side" not in metrics  # never called: no value, rather than a NaN column


def test_lightning_logs_nan_once_the_weights_are_nan(tmp_path):
    from grokking.integrations.lightning import LARCallback

    _, seen, metrics = lightning_fit(
        tmp_path, LARCallback(module="net.head"), module_class=Diverges
    )
    assert list(metrics["step"]) == [0, 1, 2, 3, 4]
    first_two = [lar(weight, inputs) for weight, inputs in seen.calls[:2]]
    assert list(metrics["lar"][:2]) == pytest.approx(first_two, rel=1e-6)
    assert metrics["lar"][2:].isna().all()  # not step 1's value again


def lightning_alarm_fit(tmp_path, alarms, max_steps, ckpt_path=None):
    """A fit with one LARCallback per alarm (`FiresAfter(n)` for each n), each stopping at its
    alarm, saved at its end to tmp_path/last.ckpt; resumed from `ckpt_path` if given. Returns
    the trainer, the callbacks and the alarm warnings."""
    from grokking.integrations.lightning import LARCallback

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 8), torch.randint(0, 4, (64,)))
    callbacks = [LARCallback(alarm=FiresAfter(n), stop_on_alarm=True) for n in alarms]
    trainer = lightning.Trainer(
        max_steps=max_steps, callbacks=callbacks, logger=False, accelerator="cpu",
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(Classifier(), torch.utils.data.DataLoader(data, batch_size=8),
                    ckpt_path=ckpt_path)  # fmt: skip
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    fired = [str(w.message) for w in caught if "LAR alarm" in str(w.message)]
    return trainer, callbacks, fired


def test_lightning_alarm_keeps_its_state_in_the_checkpoint_and_does_not_fire_again(tmp_path):
    first, (callback,), fired = lightning_alarm_fit(tmp_path, [3], max_steps=10)
    assert fired == ["LAR alarm at step 2 (count): 3 values"] and first.global_step == 3
    before = callback.watch.alarm.state_dict()
    resumed, (callback,), fired = lightning_alarm_fit(
        tmp_path, [3], max_steps=10, ckpt_path=tmp_path / "last.ckpt"
    )
    assert callback.watch.alarm.state_dict() == before  # fired at step 2 after 3 values
    assert fired == []  # not re-armed: it does not fire a second time
    assert resumed.global_step == 4  # stopped at the first step after the resume
    # a checkpoint taken half way to firing: the resumed fit fires where the whole one did
    lightning_alarm_fit(tmp_path / "half", [3], max_steps=2)
    resumed, (callback,), fired = lightning_alarm_fit(
        tmp_path, [3], max_steps=10, ckpt_path=tmp_path / "half" / "last.ckpt"
    )
    assert fired == ["LAR alarm at step 2 (count): 3 values"] and resumed.global_step == 3


def test_two_lightning_alarms_in_one_fit_keep_their_own_state(tmp_path):
    # the first fires at step 1 and stops the fit; the second has seen 2 of its 5 values
    _, callbacks, _ = lightning_alarm_fit(tmp_path, [2, 5], max_steps=10)
    before = [c.watch.alarm.state_dict() for c in callbacks]
    assert [(state["values"], state["fired_at"]) for state in before] == [(2, 1), (5, None)]
    # resumed at the checkpoint's own step: its state is loaded, and no step runs
    _, callbacks, _ = lightning_alarm_fit(tmp_path, [2, 5], max_steps=2,
                                          ckpt_path=tmp_path / "last.ckpt")  # fmt: skip
    assert [c.watch.alarm.state_dict() for c in callbacks] == before


class NoDenseLayer(lightning.LightningModule):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(8, 4))
        self.steps = 0

    def training_step(self, batch, batch_idx):
        self.steps += 1
        x, y = batch
        return nn.functional.cross_entropy(x @ self.weight, y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_refuses_a_module_without_a_dense_layer_at_setup(tmp_path):
    from grokking.integrations import lightning as integration

    module = NoDenseLayer()
    trainer = lightning.Trainer(
        max_steps=2, callbacks=[integration.LARCallback()], accelerator="cpu", logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    data = torch.utils.data.TensorDataset(torch.randn(16, 8), torch.randint(0, 4, (16,)))
    with pytest.raises(ValueError, match="no nn.Linear or Conv1D for LAR to watch") as refused:
        trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=8))
    assert str(refused.value).endswith("remove the LAR callback from its trainer")  # what to do
    # raised by the callback's setup hook: before anything is set up or trained
    callback_frames = [
        entry.name for entry in refused.traceback if entry.path == Path(integration.__file__)
    ]
    assert callback_frames == ["setup"]
    assert module.steps == 0


# LAR early stopping: a scripted LAR curve (the rule's test hook) makes the stop deterministic:
# a climb to 0.9 at step 4, then a fall of 0.03 per step. With a 2-value window the rule stops at
# step 13 and keeps step 6 (candidates 1, 2, 3, 4, 6, 8, 11: the last at or before 0.6 × 13).
CURVE = np.where(np.arange(64) <= 4, 0.5 + 0.1 * np.arange(64),
                 np.maximum(0.9 - 0.03 * (np.arange(64) - 4), 0.55))  # fmt: skip
RULE = {"keep": 0.6, "spacing": 1.3, "window": 2}
STOP, KEPT, RESUME_AT = 13, 6, 8


def test_the_scripted_curve_stops_where_the_tests_expect():
    rule = run_rule(OverfittingStop(**RULE), range(1, 64), CURVE[1:])
    assert (rule.stopped_at, rule.selected) == (STOP, KEPT)


def weights(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same_weights(module: nn.Module, expected: dict[str, torch.Tensor]) -> None:
    actual = module.state_dict()
    assert actual.keys() == expected.keys()
    assert all(torch.equal(actual[k], expected[k]) for k in expected)


def lightning_stopper():
    from grokking.integrations.lightning import LAREarlyStopping

    class Scripted(LAREarlyStopping):
        def lar(self, step, values):
            return float(CURVE[step])

    class Recorder(lightning.Callback):
        """The weights of each step, as the stopper would keep them (before the update)."""

        def __init__(self):
            self.at = {}

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            self.at[trainer.global_step] = weights(pl_module)

    return Scripted(module="net.head", **RULE), Recorder()


def lightning_stop_fit(tmp_path, max_steps=40, ckpt_path=None, checkpoint_every=None):
    """A fit with no validation data (8 batches an epoch, unshuffled) and a scripted stopper."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 8), torch.randint(0, 4, (64,)))
    stopper, recorder = lightning_stopper()
    callbacks = [stopper, recorder]
    if checkpoint_every:
        callbacks.append(ModelCheckpoint(tmp_path / "ckpt", every_n_train_steps=checkpoint_every,
                                         save_top_k=-1))  # fmt: skip
    module = Classifier()
    trainer = lightning.Trainer(
        max_steps=max_steps, callbacks=callbacks, logger=False, accelerator="cpu",
        enable_checkpointing=bool(checkpoint_every), enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=8), ckpt_path=ckpt_path)
    return trainer, module, stopper, recorder


def test_lightning_lar_early_stopping_stops_and_restores_the_selected_weights(tmp_path):
    trainer, module, stopper, recorder = lightning_stop_fit(tmp_path)
    assert stopper.rule.stopped_at == STOP and stopper.rule.selected == KEPT
    assert trainer.global_step == STOP + 1  # the step it stopped at completes
    assert stopper.stopped_epoch == STOP // 8
    assert list(stopper.stopper.kept) == [KEPT]
    assert_same_weights(module, recorder.at[KEPT])


def test_lightning_lar_early_stopping_resumes_with_its_state(tmp_path):
    _, whole, _, _ = lightning_stop_fit(tmp_path / "whole")
    first, _, before, _ = lightning_stop_fit(tmp_path, max_steps=RESUME_AT,
                                             checkpoint_every=RESUME_AT)  # fmt: skip
    assert not before.rule.stopped and KEPT in before.stopper.kept
    (checkpoint,) = (tmp_path / "ckpt").glob("*.ckpt")
    trainer, module, stopper, _ = lightning_stop_fit(tmp_path, ckpt_path=checkpoint)
    # the window, the peak and the candidate of step 6 came from the checkpoint
    assert (stopper.rule.stopped_at, stopper.rule.selected) == (STOP, KEPT)
    assert trainer.global_step == STOP + 1
    assert_same_weights(module, whole.state_dict())


def test_lightning_lar_early_stopping_waits_patience_checks(tmp_path):
    from grokking.integrations.lightning import LAREarlyStopping

    stopper, _ = lightning_stopper()
    stopper.stopper.patience = 2
    with pytest.raises(ValueError, match="patience: must be an int ≥ 0"):
        LAREarlyStopping(patience=-1)
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 8), torch.randint(0, 4, (64,)))
    trainer = lightning.Trainer(
        max_steps=40, callbacks=[stopper], logger=False, accelerator="cpu",
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(Classifier(), torch.utils.data.DataLoader(data, batch_size=8))
    assert trainer.global_step == STOP + 3


def hf_stopper():
    from grokking.integrations.huggingface import LAREarlyStopping

    class Scripted(LAREarlyStopping):
        def lar(self, step, values):
            return float(CURVE[step])

    class Recorder(transformers.TrainerCallback):
        def __init__(self):
            self.at = {}

        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            self.at[state.global_step + 1] = weights(model)

    return Scripted(**RULE), Recorder()


def hf_stop_train(tmp_path, max_steps=40, resume=None, save_steps=None):
    """A Trainer (`resumable_args`) with a scripted stopper."""
    model = tiny_gpt2()
    stopper, recorder = hf_stopper()
    args = resumable_args(tmp_path, max_steps, save_steps)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=token_data(),
                                   callbacks=[recorder])  # fmt: skip
    stopper.attach(trainer)
    trainer.train(resume_from_checkpoint=resume)
    # a resumed Trainer replaces the stopper by one built from the checkpoint's state
    (stopper,) = [c for c in trainer.callback_handler.callbacks if isinstance(c, type(stopper))]
    return trainer, model, stopper, recorder


def test_hf_lar_early_stopping_stops_and_restores_the_selected_weights(tmp_path):
    trainer, model, stopper, recorder = hf_stop_train(tmp_path)
    assert (stopper.rule.stopped_at, stopper.rule.selected) == (STOP, KEPT)
    assert trainer.state.global_step == STOP
    assert_same_weights(model, recorder.at[KEPT])


def test_hf_lar_early_stopping_resumes_with_its_state(tmp_path):
    _, whole, _, _ = hf_stop_train(tmp_path / "whole")
    _, _, before, _ = hf_stop_train(tmp_path, max_steps=RESUME_AT, save_steps=RESUME_AT)
    assert not before.rule.stopped and KEPT in before.stopper.kept
    checkpoint = tmp_path / "hf" / f"checkpoint-{RESUME_AT}"
    assert (checkpoint / "lar_candidates.pt").exists()
    trainer, model, stopper, _ = hf_stop_train(tmp_path, resume=str(checkpoint))
    assert stopper is not before  # rebuilt from the checkpoint's trainer_state.json
    assert (stopper.rule.stopped_at, stopper.rule.selected) == (STOP, KEPT)
    assert trainer.state.global_step == STOP
    assert_same_weights(model, whole.state_dict())


def test_lightning_lar_early_stopping_checks_per_train_epoch(tmp_path):
    # one batch an epoch: epoch e is step e, and the rule is fed CURVE[e] at the epoch's end
    stopper, _ = lightning_stopper()
    stopper.check_on_train_epoch_end = True
    at_epoch_end = {}

    class Recorder(lightning.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            at_epoch_end[trainer.current_epoch] = weights(pl_module)

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(8, 8), torch.randint(0, 4, (8,)))
    module = Classifier()
    trainer = lightning.Trainer(
        max_epochs=40, callbacks=[Recorder(), stopper], logger=False, accelerator="cpu",
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=8))
    assert (stopper.rule.stopped_at, stopper.rule.selected) == (STOP, KEPT)
    assert stopper.stopped_epoch == STOP and trainer.current_epoch == STOP + 1
    assert_same_weights(module, at_epoch_end[KEPT])
