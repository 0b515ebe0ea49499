import math

import pandas as pd
import pytest
import torch

from grokking.analysis.algorithmic import forecast
from grokking.analysis.algorithmic.baselines import weight_norm


def test_trajectory_features_equal_a_hand_computation():
    epochs = [0, 10, 20, 30, 40, 50]
    lar = [0.50, 0.55, 0.60, 0.62, 0.66, 0.70]
    # since memorization (epoch 20): 0.60, 0.62 (earlier half), 0.66, 0.70 (later half)
    got = forecast.trajectory_features(epochs, lar, memorized=20)
    assert got["level"] == pytest.approx(0.60)
    assert got["rise"] == pytest.approx((0.66 + 0.70) / 2 - (0.60 + 0.62) / 2)
    assert got["late_slope"] == pytest.approx(0.004)  # 0.04 over 10 epochs
    assert got["curvature"] == pytest.approx(0.004 - 0.002)


def test_a_point_on_the_midpoint_is_in_both_halves():
    got = forecast.trajectory_features([0, 10, 20], [1.0, 2.0, 6.0], memorized=None)
    assert got["rise"] == pytest.approx(4.0 - 1.5)
    assert got["late_slope"] == pytest.approx(0.4) and got["curvature"] == pytest.approx(0.3)


def test_oscillation_energy_and_high_frequency_share_of_a_hand_computed_spectrum():
    # [0, 1, 0, 1] less its least-squares line (0.2 + 0.2 t) is [-0.2, 0.6, -0.6, 0.2]: mean
    # square 0.2; its squared Fourier magnitudes at k = 1, 2, 3 are 0.32, 2.56, 0.32, and only
    # k = 2 (half a cycle per evaluation) lies above a quarter cycle
    energy, share = forecast.oscillation_spectrum([0.0, 1.0, 0.0, 1.0])
    assert energy == pytest.approx(0.2) and share == pytest.approx(2.56 / 3.2)
    assert all(math.isnan(v) for v in forecast.oscillation_spectrum([3.0, 2.0, 1.0, 0.0]))


def test_loss_features_read_the_log_loss_since_memorization():
    log_loss = [2.0, 1.0, 0.0, 1.0, 0.0, 1.0]  # memorized at epoch 20: [0, 1, 0, 1]
    got = forecast.loss_features([0, 10, 20, 30, 40, 50], log_loss, memorized=20)
    assert got["loss_late"] == pytest.approx(0.5)  # the median of 0 and 1 (epochs 40, 50)
    assert got["loss_slope"] == pytest.approx(0.1)
    assert got["oscillation"] == pytest.approx(math.log10(0.2))
    assert got["high_frequency"] == pytest.approx(0.8)


def test_weight_norm_is_the_norm_of_every_parameter_together():
    layer = torch.nn.Linear(2, 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[3.0, 4.0]]))
        layer.bias.fill_(12.0)
    assert weight_norm(layer) == pytest.approx(13.0)


def tiny_sweep():
    """Six runs of budget 100 in three conditions: the grokking ones' LAR and weight norm rise
    after memorization (epoch 10) and their loss falls; the others' stay flat. An evaluation
    after the window at 50 % (epoch 50) would swap them."""
    outcomes = {"a0": ("A", 90), "a1": ("A", 80), "b0": ("B", None), "b1": ("B", None)}
    outcomes |= {"c0": ("C", 70), "c1": ("C", None)}
    runs, metrics, checkpoints = [], [], []
    for i, (run, (condition, grokking)) in enumerate(outcomes.items()):
        grokked = grokking is not None
        runs.append(
            {
                "run": run,
                "condition": condition,
                "grokked": grokked,
                "grokking_epoch": grokking,
                "memorization_epoch": 10,
                "max_epochs": 100,
            }
        )
        step = (0.01 if grokked else 0.0) + 0.0001 * i  # a little spread between runs
        for epoch in range(0, 70, 10):
            after = max(epoch - 10, 0) / 10 if epoch <= 50 else (-5.0 if grokked else 5.0)
            metrics.append(
                {
                    "run": run,
                    "epoch": epoch,
                    "lar": 0.5 + step * after,
                    "train_loss": 10.0 ** -(1 + step * after),
                }
            )
            checkpoints.append(
                {
                    "run": run,
                    "epoch": epoch,
                    "rankme": 20.0 - step * after,
                    "weight_norm": 30.0 + step * after,
                }
            )
    return pd.DataFrame(runs), pd.DataFrame(metrics), pd.DataFrame(checkpoints)


def matrices_of(metrics: pd.DataFrame) -> pd.DataFrame:
    """Two matrices per evaluation: the unembedding and one whose LAR does not move."""
    unembed = metrics[["run", "epoch", "lar"]].assign(name="unembed")
    return pd.concat([unembed, unembed.assign(name="blocks.0.attn.q", lar=0.7)])


def test_forecast_separates_runs_that_grok_from_runs_that_do_not():
    runs, metrics, checkpoints = tiny_sweep()
    scored = forecast.forecast(runs, metrics, checkpoints, matrices_of(metrics), fractions=[0.5])
    table = forecast.summary(scored).set_index("signal")
    assert list(table.index) == list(forecast.FAMILIES)
    assert (table["runs"] == 6).all() and (table["grokking"] == 3).all()
    for family in ["LAR", "LAR, every matrix", "RankMe", "weight norm"]:
        assert table.loc[family, "auroc"] == 1.0, family
    # each score comes from a model that never saw the run's condition: A's runs (both grok)
    # are scored by a model of B and C, B's by one of A and C
    lar = scored[scored["family"] == "LAR"].set_index("run")
    assert (lar.loc[["a0", "a1", "c0"], "score"] > 0.5).all()
    assert (lar.loc[["b0", "b1", "c1"], "score"] < 0.5).all()
    # A's grokking epoch is estimated from C's only grokking run (70); C's from A's runs
    assert list(lar.loc[["a0", "a1"], "predicted_epoch"]) == pytest.approx([70, 70])
    assert lar.loc["c0", "predicted_epoch"] > 0
    wide = forecast.per_run(scored)
    assert list(wide.index) == list(runs["run"])
    assert list(wide["grokking epoch"]) == ["90", "80", "–", "–", "70", "–"]
    assert "weight norm @ 50%" in wide.columns


def test_the_reference_scores_each_run_by_the_grokking_rate_of_the_other_conditions():
    runs, metrics, checkpoints = tiny_sweep()
    scored = forecast.forecast(runs, metrics, checkpoints, pd.DataFrame(), fractions=[0.5])
    reference = scored[scored["family"] == "no signal"].set_index("run")
    # A held out: B and C grok 1 in 4; B held out: A and C, 3 in 4; C held out: A and B, 2 in 4
    assert list(reference["score"]) == [0.25, 0.25, 0.75, 0.75, 0.5, 0.5]
    # grokking a0, a1 (0.25), c0 (0.5) against b0, b1 (0.75), c1 (0.5): one tie in 9 pairs
    table = forecast.summary(scored).set_index("signal")
    assert table.loc["no signal", "auroc"] == pytest.approx(0.5 / 9)
    # the epoch: C's one grokking run (70) for A's; A's geometric mean for C's
    epochs = reference.loc[["a0", "c0"], "predicted_epoch"]
    assert list(epochs) == pytest.approx([70, math.sqrt(90 * 80)])


def test_a_run_that_grokked_within_the_window_is_not_forecast():
    runs, metrics, checkpoints = tiny_sweep()
    runs.loc[runs["run"] == "c0", "grokking_epoch"] = 40
    measured = forecast.features(runs, metrics, checkpoints, matrices_of(metrics), 0.5)
    assert set(measured["run"]) == {"a0", "a1", "b0", "b1", "c1"}


def test_a_family_without_its_signal_is_not_forecast():
    runs, metrics, _ = tiny_sweep()
    no_checkpoints = pd.DataFrame(columns=["run", "epoch"])
    scored = forecast.forecast(runs, metrics, no_checkpoints, pd.DataFrame(), fractions=[0.5])
    assert set(scored["family"]) == {"LAR", "training loss", "no signal"}


def test_a_fraction_outside_the_budget_is_refused_by_name():
    runs, metrics, checkpoints = tiny_sweep()
    with pytest.raises(ValueError, match=r"^fraction: 1.5 is not a share of the budget"):
        forecast.features(runs, metrics, checkpoints, pd.DataFrame(), 1.5)


def test_auroc_of_known_rankings():
    grokked = [True, False, True, False]
    # of the 4 (grokked, not) pairs, 3 rank the grokked run higher
    assert forecast.auroc(grokked, [0.9, 0.1, 0.4, 0.6]) == pytest.approx(0.75)
    assert forecast.auroc(grokked, [0.1, 0.9, 0.2, 0.8]) == 0.0
    assert forecast.auroc(grokked, [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert math.isnan(forecast.auroc([True, True], [0.1, 0.2]))


def test_written_tables(tmp_path):
    runs, metrics, checkpoints = tiny_sweep()
    matrices = matrices_of(metrics)
    written = forecast.write(runs, metrics, checkpoints, matrices, tmp_path, fractions=[0.5])
    assert written == {name: tmp_path / f"{name}.csv" for name in ["forecast", "forecast_runs"]}
    table = pd.read_csv(tmp_path / "forecast.csv")
    assert list(table["signal"]) == list(forecast.FAMILIES) and (table["fraction"] == 0.5).all()
    assert list(table.columns) == ["signal", "fraction", "auroc", "runs", "grokking", "epoch error"]
    scores = pd.read_csv(tmp_path / "forecast_runs.csv")
    assert len(scores) == 6 * len(forecast.FAMILIES) and {"rise", "oscillation"} <= set(scores)
    assert (tmp_path / "forecast_runs.md").read_text().startswith("| run ")
