"""The regularizers of issue 30 (regularize=lar|p1q1|grokfast|weight_norm): the differentiable LAR
and p₁q₁ terms,
Grokfast's filter, the switches (start, memorization, alarm), packs, resume, and refusals."""

import pandas as pd
import pytest
import torch
from conftest import copies_after_each_evaluation, run_cli, tiny_config, tiny_lm
from test_packing import assert_same_tables
from test_training import same_metrics

from grokking.algorithmic import train, train_pack
from grokking.algorithmic.engine import Engine
from grokking.algorithmic.packing import pack_key
from grokking.lar import GeneralizationAlarm, lar, spectral_summary
from grokking.lar.regularize import (
    ForwardCapture,
    RegularizeConfig,
    Regularizer,
    Switch,
    Trigger,
    grokfast_,
    lar_term,
    top_contribution,
)
from grokking.runs.rundir import RunDir

# --- the differentiable LAR term ---------------------------------------------------------------


def test_the_lar_term_equals_lar_on_a_matrix_and_on_each_member_of_a_stack():
    generator = torch.Generator().manual_seed(0)
    weights = torch.randn(3, 7, 5, generator=generator)
    inputs = torch.randn(3, 11, 5, generator=generator) + torch.arange(5.0)
    outputs = inputs @ weights.mT
    values = lar_term(inputs, outputs, weights)
    for r in range(3):
        assert values[r].item() == pytest.approx(lar(weights[r], inputs[r]), abs=1e-6)
        assert lar_term(inputs[r], outputs[r], weights[r]).item() == pytest.approx(values[r].item())


def test_the_lar_terms_gradient_matches_finite_differences():
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(4, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    inputs = torch.randn(6, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: lar_term(x, x @ w.T, w), (inputs, weight))


# --- the differentiable p₁q₁ term ----------------------------------------------------------------


@pytest.mark.parametrize("shape", [(3, 7, 5), (3, 4, 6)], ids=["tall", "wide"])
def test_the_p1q1_term_equals_the_spectral_p1q1_on_each_member_of_a_stack(shape):
    """Eq. 2's p₁q₁ as `spectral_summary` computes it (float64, from the inputs' Gram), for W
    taller than wide and wider than tall (rank below n: p is zero past it)."""
    generator = torch.Generator().manual_seed(2)
    weights = torch.randn(*shape, generator=generator)
    inputs = torch.randn(3, 11, shape[-1], generator=generator) + torch.arange(shape[-1] * 1.0)
    values = top_contribution(inputs, weights)
    for r in range(3):
        expected = spectral_summary(weights[r], inputs[r])["p1q1"]
        assert values[r].item() == pytest.approx(expected, rel=1e-5)
        assert top_contribution(inputs[r], weights[r]).item() == pytest.approx(values[r].item())


def test_the_p1q1_terms_gradient_matches_finite_differences():
    generator = torch.Generator().manual_seed(3)
    weight = torch.randn(4, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    inputs = torch.randn(6, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(top_contribution, (inputs, weight))


STEERED = {
    Regularizer.lar: lambda w, x: lar(w, x),
    Regularizer.p1q1: lambda w, x: spectral_summary(w, x)["p1q1"],
}


@pytest.mark.parametrize("name", list(STEERED), ids=lambda n: n.name)
def test_the_engines_term_is_each_members_quantity_on_its_batch(name):
    cfgs = [tiny_config(seed=seed, regularize=RegularizeConfig(name, 0.5)) for seed in (0, 1)]
    engine = Engine(cfgs, torch.device("cpu"))
    tokens, labels = engine.train_x[:, :16], engine.train_y[:, :16]
    features = engine.model.features(tokens)
    losses, term = engine._loss(tokens, labels)
    term.sum().backward()  # gradients reach the weights through the term
    assert engine.model.param("unembed.weight").grad.abs().sum() > 0
    for r in range(2):
        weight = engine.model.param("unembed.weight")[r].detach()
        expected = -0.5 * STEERED[name](weight, features[r].detach())
        assert term[r].item() == pytest.approx(expected, abs=1e-5)


def test_a_forward_capture_subtracts_the_bias_and_keeps_the_graph():
    layer = torch.nn.Linear(5, 4)
    inputs = torch.randn(2, 3, 5)
    capture = ForwardCapture(layer)
    layer(inputs)
    value = lar_term(capture.inputs, capture.outputs, capture.weight)
    assert value.item() == pytest.approx(lar(layer.weight.detach(), inputs), abs=1e-6)
    value.backward()
    assert layer.weight.grad is not None
    with torch.no_grad():
        layer(torch.zeros(1, 5))  # an evaluation's pass is not kept
    assert capture.inputs.shape == (6, 5)
    capture.remove()


# --- Grokfast --------------------------------------------------------------------------------


def test_grokfast_follows_its_formula_by_hand_and_only_where_switched_on():
    """alpha 0.5, lambda 2; member 0 on, member 1 off. Step 1: h = g = 1 (the EMA starts from
    the first gradient), g = 1 + 2·1 = 3. Step 2 (g = 3): h = 0.5·1 + 0.5·3 = 2, g = 3 + 2·2 = 7."""
    ema = torch.zeros(2, 1)
    on, started = torch.tensor([True, False]), torch.tensor([False, False])
    grad = torch.tensor([[1.0], [1.0]])
    grokfast_([grad], [ema], on, started, alpha=0.5, strength=2.0)
    assert grad.tolist() == [[3.0], [1.0]] and ema.tolist() == [[1.0], [0.0]]
    assert started.tolist() == [True, False]
    grad = torch.tensor([[3.0], [3.0]])
    grokfast_([grad], [ema], on, started, alpha=0.5, strength=2.0)
    assert grad.tolist() == [[7.0], [3.0]] and ema.tolist() == [[2.0], [0.0]]


# --- the switches ------------------------------------------------------------------------------

EVALUATIONS = [(0, 0.1, 0.50), (10, 0.6, 0.40), (20, 0.995, 0.41), (30, 1.0, 0.44), (40, 1.0, 0.5)]


@pytest.mark.parametrize(
    "trigger, on_at", [(Trigger.start, 0), (Trigger.memorization, 20), (Trigger.alarm, 40)]
)
def test_each_trigger_switches_on_at_its_evaluation(trigger, on_at):
    switch = Switch(trigger, memorized=0.99)
    fired = [step for step, acc, value in EVALUATIONS if switch.update(step, value, acc)]
    assert switch.on_at == on_at and fired == ([] if trigger == Trigger.start else [on_at])


def switched_run(tmp_path, trigger, **fields):
    regularize = RegularizeConfig(Regularizer.lar, 0.3, trigger)
    cfg = tiny_config(max_epochs=30, memorization_threshold=0.16, regularize=regularize, **fields)
    summary = train(cfg, tmp_path / trigger.name)
    return summary, RunDir(tmp_path / trigger.name)


def expected_switch(trigger: Trigger, metrics: pd.DataFrame) -> int | None:
    """The epoch each trigger names, read off the recorded evaluations."""
    if trigger == Trigger.start:
        return 0
    if trigger == Trigger.memorization:
        return int(metrics.epoch[metrics.train_acc >= 0.16].iloc[0])
    alarm = GeneralizationAlarm(memorized=0.16)
    for row in metrics.itertuples():
        if alarm.update(int(row.epoch), row.lar, train_acc=row.train_acc):
            return int(row.epoch)
    return None


@pytest.mark.parametrize("trigger", list(Trigger), ids=lambda t: t.name)
def test_a_run_switches_its_term_on_at_its_triggers_evaluation_and_says_so(tmp_path, trigger):
    summary, run = switched_run(tmp_path, trigger)
    metrics = run.read_metrics()
    on_at = expected_switch(trigger, metrics)
    assert on_at is not None and 0 < on_at < 30 or trigger == Trigger.start
    assert summary["regularized_from_epoch"] == on_at
    assert metrics.regularizing.tolist() == [float(e >= on_at) for e in metrics.epoch]
    assert f"regularizer on from epoch {on_at}\n" in (run.path / "train.log").read_text()


def test_a_plain_run_records_no_switch(tmp_path):
    summary = train(tiny_config(max_epochs=5), tmp_path / "plain")
    assert summary["regularized_from_epoch"] is None
    assert not RunDir(tmp_path / "plain").read_metrics().regularizing.any()


@pytest.mark.parametrize("name", list(Regularizer)[1:], ids=lambda n: n.name)
def test_a_pack_with_a_regularizer_equals_its_members_run_alone(tmp_path, name):
    """Members switch on at their own evaluations (seeds 0 and 1 memorize at other epochs)."""
    regularize = RegularizeConfig(name, 0.5, Trigger.memorization)
    cfgs = [
        tiny_config(max_epochs=30, memorization_threshold=0.16, regularize=regularize, seed=seed)
        for seed in (0, 1)
    ]
    packed = train_pack([(cfg, tmp_path / f"pack{i}") for i, cfg in enumerate(cfgs)])
    for i, cfg in enumerate(cfgs):
        single = train(cfg, tmp_path / f"single{i}")
        assert packed[i]["regularized_from_epoch"] == single["regularized_from_epoch"]
        assert_same_tables(RunDir(tmp_path / f"pack{i}"), RunDir(tmp_path / f"single{i}"), 1e-4)
    assert {summary["regularized_from_epoch"] for summary in packed} != {None}


# --- resume --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [Regularizer.lar, Regularizer.grokfast], ids=lambda n: n.name)
def test_a_kill_9_after_any_evaluation_resumes_identically_with_a_term_on(
    tmp_path, monkeypatch, name
):
    """As tests/test_training.py's kill -9 test, for a pack of two whose terms switch on at
    memorization mid-run (the switch, and Grokfast's EMA, come back from last.pt)."""
    regularize = RegularizeConfig(name, 0.5, Trigger.memorization)
    cfgs = [
        tiny_config(max_epochs=25, memorization_threshold=0.16, regularize=regularize, seed=seed)
        for seed in (0, 1)
    ]
    with copies_after_each_evaluation(monkeypatch, tmp_path / "whole") as killed:
        whole = train_pack([(cfg, tmp_path / "whole" / str(i)) for i, cfg in enumerate(cfgs)])
    assert all(0 < summary["regularized_from_epoch"] < 25 for summary in whole)
    for folder in killed:
        resumed = train_pack([(cfg, folder / str(i)) for i, cfg in enumerate(cfgs)])
        for i in range(2):
            assert resumed[i]["regularized_from_epoch"] == whole[i]["regularized_from_epoch"]
            same_metrics(RunDir(folder / str(i)), RunDir(tmp_path / "whole" / str(i)))


# --- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, message",
    [
        ("regularize=lar regularize.strength=-1", "regularize.strength: must be a finite number"),
        ("regularize=grokfast regularize.alpha=1", "regularize.alpha: must be a number in [0, 1)"),
        ("regularize.trigger=soon", "regularize.trigger: must be one of start, memorization, al"),
        ("regularize.name=l2", "regularize.name: must be one of none, lar, p1q1, grokfast, weig"),
        ("regularize=l2", "regularize: no option 'l2'; allowed: grokfast, lar, none, p1q1, weigh"),
    ],
)
def test_bad_regularizer_values_are_refused_in_one_line(refusal, override, message):
    code, stderr = refusal(*override.split())
    assert code == 2 and stderr.startswith(f"error: {message}"), stderr
    assert len(stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "regularize=lar regularize.trigger=memorization",
            "regularize.trigger: language models measure no training accuracy, so only start is "
            "allowed, got memorization",
        ),
        ("regularize=lar regularize.window=0", "regularize.window: must be an integer ≥ 1, got 0"),
    ],
)
def test_a_language_models_bad_regularizer_is_refused_in_one_line(refusal, override, message):
    code, stderr = refusal(*override.split(), family="lm")
    assert code == 2 and stderr.startswith(f"error: {message}"), stderr


def test_the_pack_key_keeps_differently_regularized_runs_apart():
    plain, steered = tiny_config(), tiny_config(regularize=RegularizeConfig(Regularizer.lar, 0.3))
    assert pack_key(plain) != pack_key(steered)
    assert pack_key(steered) == pack_key(tiny_config(seed=4, regularize=steered.regularize))


@pytest.mark.parametrize("name", ["lar", "p1q1", "grokfast"])
def test_a_language_model_killed_after_any_evaluation_resumes_identically_with_a_term_on(
    tmp_path, monkeypatch, corpus_dir, name
):
    """The hinge's trailing LAR (or p₁q₁) values and Grokfast's EMA come back from last.pt."""
    from grokking.lm import load_config
    from grokking.lm import train as train_lm

    overrides = [*tiny_lm(corpus_dir, tmp_path / "cache"), f"regularize={name}", "device=cpu"]
    cfg = load_config([*overrides, "regularize.window=5"] if name != "grokfast" else overrides)
    with copies_after_each_evaluation(monkeypatch, tmp_path / "whole") as killed:
        train_lm(cfg, tmp_path / "whole")
    assert len(killed) == 7  # steps 0, 10, ..., 60
    for folder in killed[1:-1]:
        assert train_lm(cfg, folder)["regularized_from_step"] == 0
        same_metrics(RunDir(folder), RunDir(tmp_path / "whole"))


@pytest.mark.parametrize("module", ["grokking.train", "grokking.lm"])
def test_help_lists_the_regularizers(tmp_path, module):
    lines = run_cli("--help", cwd=tmp_path, module=module, check=True).stdout.splitlines()
    (line,) = [line for line in lines if line.startswith("Regularizers (regularize=NAME): ")]
    assert line.split(": ", 1)[1].split(", ") == ["grokfast", "lar", "none", "p1q1", "weight_norm"]
