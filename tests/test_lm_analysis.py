"""The language-model analysis: the overfitting rule on synthetic curves, the differential and
Table 2 on synthetic runs, and every output of `python -m grokking.analyze` on a tiny sweep."""

import jupytext
import nbclient
import numpy as np
import pandas as pd
import pytest
from conftest import REPO, run_cli, tiny_lm

from grokking.analysis.lm.overfitting import (
    decline_rates,
    differential,
    overfitting_index,
    run_facts,
)


# --- the overfitting rule -----------------------------------------------------------------------
def test_fires_where_the_window_mean_rises_two_percent_above_the_best_window():
    losses = [5.0, 4.0, 3.5, 3.2, 3.0, 2.9, 2.85, 2.9, 3.0, 3.1, 3.3, 3.6]
    means = np.convolve(losses, np.ones(5) / 5, mode="valid")
    expected = next(i for i in range(len(means)) if means[i] >= 1.02 * means[: i + 1].min())
    assert overfitting_index(np.array(losses)) == expected + 4


@pytest.mark.parametrize(
    "curve",
    [
        np.full(40, 3.0),  # flat
        np.linspace(6.0, 2.0, 40),  # falling
        6.0 * np.exp(-np.arange(40) / 3) + 2.0,  # falling steeply, then flat
        3.0 + 0.01 * np.sin(np.arange(40)),  # noise below 2 %
    ],
    ids=["flat", "falling", "steep then flat", "small noise"],
)
def test_never_fires_on_a_curve_that_does_not_rise(curve):
    assert overfitting_index(curve) is None


def test_the_two_percent_edge_on_both_sides():
    base = [3.0] * 5
    just_below = base + [3.0 * (1 + 0.0199 * 5)]  # the last window's mean: +1.99 %
    just_above = base + [3.0 * (1 + 0.0201 * 5)]  # +2.01 %
    assert overfitting_index(np.array(just_below)) is None
    assert overfitting_index(np.array(just_above)) == 5


def test_no_window_before_the_fifth_evaluation():
    assert overfitting_index(np.array([1.0, 5.0, 9.0, 20.0])) is None  # rising, but no window
    assert overfitting_index(np.array([1.0, 1.0, 1.0, 1.0, 1.0, 2.0])) == 5


# --- facts, differential, Table 2 ----------------------------------------------------------------
def synthetic_run(steps: int, eval_every: int, lar_peak_at: int, rise_at: int | None):
    """Per-step rows (train_loss, lar) and evaluation rows (val_loss) of a made-up run: LAR
    rises linearly to 0.7 at `lar_peak_at`, then falls by 1e-4 a step; the validation loss
    turns upwards after `rise_at` (None: never)."""
    step = np.arange(steps + 1)
    rising, falling = 0.5 + 0.2 * step / lar_peak_at, 0.7 - 1e-4 * (step - lar_peak_at)
    lar = np.where(step < lar_peak_at, rising, falling)
    train = 5.0 * np.exp(-step / 50) + 1.0
    val = train + 0.1
    if rise_at is not None:
        val = val + np.where(step > rise_at, 0.01 * (step - rise_at), 0.0)
    frame = pd.DataFrame({"step": step, "lar": lar, "train_loss": train})
    frame["val_loss"] = np.where(step % eval_every == 0, val, np.nan)
    frame.loc[0, ["lar", "train_loss"]] = np.nan  # step 0 is an evaluation only
    return frame


def test_run_facts_find_the_peak_and_the_overfitting_step():
    facts = run_facts(synthetic_run(400, 10, lar_peak_at=60, rise_at=200))
    assert facts["peak_lar_step"] == 60 and facts["peak_lar"] == pytest.approx(0.7)
    assert 200 < facts["overfitting_step"] <= 300 and facts["min_val_loss_step"] <= 210
    assert run_facts(synthetic_run(400, 10, 60, None))["overfitting_step"] is None


def test_differential_lines_up_runs_whose_evaluations_differ():
    base = synthetic_run(400, 7, lar_peak_at=60, rise_at=None)
    run = synthetic_run(400, 10, lar_peak_at=60, rise_at=None)
    run["lar"] -= 0.05  # the run sits 0.05 below the baseline everywhere
    frame = differential(run, base, window=5)
    assert list(frame["step"]) == list(range(10, 401, 10))  # the run's evaluations
    assert frame["lar_differential"].iloc[5:-5].to_numpy() == pytest.approx(0.05, abs=1e-9)
    assert frame["generalization_gap"].iloc[5:-5].to_numpy() == pytest.approx(0.1, abs=0.01)


def test_table2_windows_start_at_the_peak_and_measure_the_decline():
    rates = decline_rates(synthetic_run(400, 10, lar_peak_at=60, rise_at=None), 400)
    assert rates["start"].iloc[0] == 60
    assert (rates["end"] - rates["start"]).eq(40).all()
    assert rates["decline_per_step"].to_numpy() == pytest.approx(1e-4, rel=1e-6)


def _windows(run: str, rates: list[float], overfits_in: int | None) -> list[dict]:
    return [
        {
            "run": run,
            "label": run,
            "window": number,
            "decline_per_step": rate,
            "holds_overfitting_step": number == overfits_in,
        }
        for number, rate in enumerate(rates, start=1)
    ]


def test_table2_trend_reads_the_windows_from_the_second_to_the_overfitting_one():
    from grokking.analysis.lm.tables import table2_trend

    tidy = pd.DataFrame(
        _windows("steepens", [9.0, 1.0, 2.0, 3.0, 5.0, 0.5], overfits_in=5)
        + _windows("slows", [9.0, 4.0, 3.0, 1.0, 0.1], overfits_in=4)
        + _windows("too early", [9.0, 1.0, 2.0], overfits_in=2)
        + _windows("never", [9.0, 1.0, 2.0], overfits_in=None)
    )
    trend = table2_trend(tidy).set_index("run")
    assert list(trend.index) == ["steepens", "slows"]
    assert trend.loc["steepens", "windows"] == "w2–w5"
    assert trend.loc["steepens", "spearman"] == pytest.approx(1.0)
    assert trend.loc["steepens", "last_over_earlier"] == pytest.approx(5.0 / 2.0)
    assert trend.loc["slows", "spearman"] == pytest.approx(-1.0)
    assert trend.loc["slows", "last_over_earlier"] == pytest.approx(1.0 / 3.5)


# --- the command on a tiny sweep ------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory, corpus_dir):
    cwd = tmp_path_factory.mktemp("lm_sweep")
    sweep = [
        *tiny_lm(corpus_dir, cwd / "cache"),
        "token_budget=7680",  # 30 steps: the 2000-token set is seen ~4 times
        "eval_every=5",
        "sweep_name=tiny",
        "optim=adam,muon",
        "data.train_tokens=2000,8000",
    ]
    result = run_cli("-m", *sweep, "hydra.sweep.dir=sweep", cwd=cwd, module="grokking.lm")
    assert result.returncode == 0, result.stderr
    return cwd


def test_analyze_writes_every_table_and_figure_for_both_optimizers(tiny_sweep):
    result = run_cli("sweep", "--out", "analysis", cwd=tiny_sweep, module="grokking.analyze")
    assert result.returncode == 0, result.stderr
    out = tiny_sweep / "analysis"
    for name in ("lm_overfitting", "lm_correlations", "table2", "stops_lm", "stops_lm_summary"):
        assert all((out / f"{name}.{suffix}").exists() for suffix in ("md", "tex", "csv")), name
    for name in ("figure4", "figure5", "figure6", "figure7", "figure8", "lm_ranks"):
        assert (out / f"{name}.png").exists() and (out / f"{name}.pdf").exists(), name
    runs = pd.read_parquet(out / "lm_runs.parquet")
    assert sorted(runs["optimizer"]) == ["adam", "adam", "muon", "muon"]
    assert runs.groupby("optimizer")["baseline"].sum().eq(1).all()  # the 8000-token run
    assert set(runs.loc[runs["baseline"], "train_tokens"]) == {8000}
    correlations = pd.read_csv(out / "lm_correlations.csv")
    assert len(correlations) == 2  # a run per optimizer beside its baseline
    assert "4 language-model runs analysed" in result.stdout
    assert not (out / "table1.csv").exists()  # no grokking run: no Table 1


def test_the_notebook_executes_on_the_tiny_sweep(tiny_sweep, monkeypatch, tmp_path):
    monkeypatch.setenv("GROKKING_RESULTS", str(tiny_sweep / "sweep"))
    notebook = jupytext.read(REPO / "notebooks" / "lm_overfitting.py")
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3").execute(cwd=str(tmp_path))
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o["data"]["image/png"] for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 6 and len(set(images)) == 6  # Figures 4-8 and the ranks, each once
    assert any("overfitting_step" in str(o.get("data", {})) for o in outputs)


def test_runs_of_two_model_sizes_are_told_apart(tiny_sweep, tmp_path):
    """The tiny sweep's Adam runs copied as a wider, deeper model's: each size its own baseline,
    the labels, Table 2's rows and the figures' panels named by size; one size alone is not."""
    import json
    import shutil

    from grokking.analysis.lm import collect
    from grokking.analysis.lm.figures import figure4
    from grokking.analysis.lm.tables import table2
    from grokking.runs.rundir import find_runs

    wider = tmp_path / "wider"
    for run in find_runs(tiny_sweep / "sweep"):
        summary = run.read_summary()
        if summary["optimizer"] == "adam":
            shutil.copytree(run.path, wider / run.path.name)
            summary["config"]["model"] |= {"hidden_size": 64, "n_layers": 4}
            (wider / run.path.name / "summary.json").write_text(json.dumps(summary))
    assert not collect(tiny_sweep / "sweep").runs["label"].str.contains("hidden").any()

    results = collect(tiny_sweep / "sweep", wider)
    runs = results.runs
    small, large = "hidden 32 × 2 layers", "hidden 64 × 4 layers"
    assert list(runs["model"].unique()) == [small, large]  # the smaller first
    assert runs.groupby("model")["baseline"].sum().to_dict() == {small: 2, large: 1}
    assert set(runs.loc[runs["model"] == large, "label"]) == {
        f"{large}: adam, 2k",
        f"{large}: adam, 8k",
    }
    wide, _ = table2(results)
    assert sorted(wide.index) == sorted(runs["label"])  # 6 distinct rows, named by size
    titles = [ax.get_title() for ax in figure4(results).axes[::3]]  # 3 panels a row
    assert titles == [
        f"tiny, {small}: adam: training loss",
        f"tiny, {small}: muon: training loss",
        f"tiny, {large}: adam: training loss",
    ]
