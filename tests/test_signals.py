"""The baselines' signals (grokking/signals.py): the EB criterion and gradient disparity against
hand computations from per-sample gradients taken one by one, and a tiny language-model run with
`signals` set recording them at its evaluations."""

import numpy as np
import pytest
import torch
from conftest import tiny_lm
from torch import nn

from grokking import lm
from grokking.runs.loop import train
from grokking.runs.rundir import RunDir
from grokking.signals import eb_criterion, gradient_disparity, gradient_moments


@pytest.fixture
def linear_batch():
    """A tiny linear regression whose input's last feature is 0 for every sample: its weight's
    gradient is 0 on every sample (σ̂² = 0), so EB must leave it out."""
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    x = torch.randn(6, 4)
    x[:, -1] = 0
    y = torch.randn(6, 2)
    return model, x, y


def _loss(model, x, y):
    return lambda index: ((model(x[index]) - y[index]) ** 2).mean()


def _per_sample_gradients(model, x, y) -> np.ndarray:
    """[samples, parameters]: each sample's gradient, one backward pass at a time."""
    rows = []
    for b in range(len(x)):
        model.zero_grad()
        ((model(x[b : b + 1]) - y[b : b + 1]) ** 2).mean().backward()
        rows.append(np.concatenate([p.grad.flatten().numpy() for p in model.parameters()]))
    return np.array(rows, dtype=float)


def _moments(model, x, y):
    indices = torch.arange(len(x))
    return gradient_moments(list(model.parameters()), _loss(model, x, y), indices)


def test_eb_equals_its_definition_over_the_parameters_that_vary(linear_batch):
    model, x, y = linear_batch
    grads = _per_sample_gradients(model, x, y)
    mean, variance = grads.mean(0), grads.var(0, ddof=1)
    varies = variance > 1e-30
    assert (~varies).sum() == 2  # the last feature's weight, in each of the two outputs
    expected = 1 - len(x) / varies.sum() * (mean[varies] ** 2 / variance[varies]).sum()
    assert eb_criterion(_moments(model, x, y)) == pytest.approx(expected, rel=1e-9)


def test_gradient_disparity_is_the_distance_between_the_halves_mean_gradients(linear_batch):
    model, x, y = linear_batch
    grads = _per_sample_gradients(model, x, y)
    expected = np.linalg.norm(grads[:3].mean(0) - grads[3:].mean(0))
    assert gradient_disparity(_moments(model, x, y)) == pytest.approx(expected, rel=1e-9)


def test_the_moments_leave_the_gradients_of_the_model_alone(linear_batch):
    model, x, y = linear_batch
    _moments(model, x, y)
    assert all(p.grad is None for p in model.parameters())


def test_a_batch_of_one_has_no_variance():
    model = nn.Linear(2, 1)
    with pytest.raises(ValueError, match="a batch of ≥ 2 samples, got 1"):
        gradient_moments(list(model.parameters()), lambda i: model(i).sum(), torch.ones(1, 2))


def test_a_language_model_run_records_the_signals_it_is_asked_for(tmp_path, corpus_dir):
    overrides = [*tiny_lm(corpus_dir, tmp_path / "cache"), "token_budget=2560"]  # 10 steps
    cfg = lm.load_config([*overrides, "signals=[eb,gradient_disparity,ww_alpha]"])
    train(lm.FAMILY, cfg, tmp_path / "run")
    metrics = RunDir(tmp_path / "run").read_metrics()
    evaluations = metrics.dropna(subset=["val_loss"])
    assert list(evaluations["step"]) == [0, 10]
    signals = ["eb", "gradient_disparity", "ww_alpha", "ww_alpha_mean"]
    assert evaluations[signals].notna().all().all()
    assert metrics.loc[metrics["val_loss"].isna(), signals].isna().all().all()  # steps between
    assert (evaluations["gradient_disparity"] > 0).all() and (evaluations["eb"] < 1).all()
