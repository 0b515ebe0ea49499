import json
import shutil
import sys

import jupytext
import nbclient
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, completed_summaries, run_cli

from grokking import signals
from grokking.analysis.algorithmic import baselines, collect, measure_run, pc95, table1
from grokking.analysis.algorithmic.baselines import BASELINES, costs, rankme
from grokking.analysis.algorithmic.measure import MEASURES
from grokking.analysis.algorithmic.tables import table1_wide
from grokking.analysis.tables import write_table
from grokking.analyze import main
from grokking.lar import GeneralizationAlarm, first_firing
from grokking.runs.rundir import RunDir


def activations_with_variances(variances, n=128, rows=400, seed=0):
    """Rows whose sample covariance has exactly these eigenvalues, in a random basis of Rⁿ."""
    g = torch.Generator().manual_seed(seed)
    k = len(variances)
    noise = torch.randn(rows, k, generator=g, dtype=torch.float64)
    noise -= noise.mean(0)
    orthonormal, _ = torch.linalg.qr(noise)  # centred, orthonormal columns
    basis, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    scaled = orthonormal * torch.tensor(variances, dtype=torch.float64).sqrt()
    return (scaled * (rows - 1) ** 0.5) @ basis[:, :k].T + 3.0  # an offset PCA must remove


def test_pc95_counts_components_of_known_variances():
    x = activations_with_variances([50, 30, 15, 4, 1])  # cumulative 0.50, 0.80, 0.95, 0.99, 1
    assert pc95(x, 0.95) == 3
    assert pc95(x, 0.96) == 4
    assert pc95(x, 0.5) == 1
    assert pc95(x.numpy(), 0.999) == 5


@pytest.mark.parametrize("rank", [1, 7, 40])
def test_pc95_of_equal_variances_in_rank_k(rank):
    x = activations_with_variances([1.0] * rank)
    assert pc95(x) == int(np.ceil(0.95 * rank - 1e-9))


def hand_built():
    """Runs and measures with known RMSEs."""
    runs = pd.DataFrame(
        {
            "run": ["a", "b", "c", "d"],
            "group": ["table1_ops", "table1_ops", "table1_ops", "mine"],
            "setting": ["", "", "", ""],
            "grokked": [True, True, False, True],
        }
    )
    rows = [  # run, kind, k_lar, pc95
        ("a", "memorization", 10, 13),
        ("b", "memorization", 20, 16),
        ("a", "grokking", 5, 5),
        ("b", "grokking", 8, 6),
        ("a", "final", 30, 30),
        ("b", "final", 31, 30),
        ("c", "memorization", 40, 10),
        ("c", "final", 12, 9),
        ("d", "final", 2, 1),
    ]
    measures = pd.DataFrame(rows, columns=["run", "kind", "k_lar", "pc95"])
    return runs, measures.merge(runs[["run", "grokked"]], on="run")


def test_table1_rmse_on_hand_built_runs():
    runs, measures = hand_built()
    tidy = table1(measures, runs).set_index(["group", "column"])
    ops = "12 binary operations"
    rmse_memorized = np.sqrt((3**2 + 4**2 + 30**2) / 3)
    assert tidy.loc[(ops, "Memorized"), "rmse"] == pytest.approx(rmse_memorized)
    assert tidy.loc[(ops, "Memorized"), "n"] == 3
    assert tidy.loc[(ops, "Grokked"), "rmse"] == pytest.approx(np.sqrt(2))
    assert tidy.loc[(ops, "Final (grokked)"), "rmse"] == pytest.approx(np.sqrt(0.5))
    assert tidy.loc[(ops, "Final (no grok)"), "rmse"] == pytest.approx(3.0)
    assert tidy.loc[("mine", "Final (grokked)"), ["rmse", "n"]].tolist() == [1.0, 1]
    assert tidy.loc[("mine", "Memorized"), "n"] == 0 and np.isnan(
        tidy.loc[("mine", "Memorized"), "rmse"]
    )
    wide = table1_wide(table1(measures, runs))
    assert list(wide.index) == [ops, "mine"]
    assert wide.loc[ops, "Grokked"] == "1.41 (n=2)" and wide.loc["mine", "Memorized"] == "–"


def test_written_tables_have_no_row_numbers_or_stray_headers(tmp_path):
    runs, measures = hand_built()
    wide = table1_wide(table1(measures, runs))
    write_table(wide, tmp_path, "table1")
    write_table(wide.reset_index(names="group"), tmp_path, "per_task")
    tex = (tmp_path / "table1.tex").read_text().splitlines()
    assert tex[2].split("&")[1:] == [
        " Memorized ",
        " Grokked ",
        " Final (grokked) ",
        " Final (no grok) \\\\",
    ]
    assert not any(line.startswith("column") for line in tex)
    assert tex[4].startswith("12 binary operations & ")  # the groups stay: they name the rows
    per_task = (tmp_path / "per_task.md").read_text().splitlines()
    assert per_task[0].startswith("| group ") and per_task[2].startswith("| 12 binary operations ")


# --- the command on real sweeps ---------------------------------------------------------------

DENSE = ["-m", "task.p=11", "model.d_model=32", "model.n_heads=2", "model.d_ff=64"]
DENSE += ["eval_every=1", "max_epochs=6", "batch_size=8,32,128", "threads=1"]
DENSE += ["checkpoint_every=2"]  # the baselines of the alarms are measured at these


@pytest.fixture(scope="module")
def analysed(smoke_sweep, tmp_path_factory):
    """The smoke sweep and a tiny every-epoch batch-size sweep, analysed together."""
    cwd, _ = smoke_sweep
    run_cli(*DENSE, "hydra.sweep.dir=outputs/sweeps/dense", cwd=cwd, check=True)
    result = run_cli(
        "outputs/sweeps/smoke", "outputs/sweeps/dense", cwd=cwd, module="grokking.analyze"
    )
    assert result.returncode == 0, result.stderr
    return cwd, result


FILES = [
    "runs.parquet",
    "metrics.parquet",
    "matrix_lar.parquet",
    "checkpoint_measures.parquet",
    "baseline_measures.parquet",
    *[
        f"{table}.{suffix}"
        for table in ("table1", "per_task", "alarm_grokking", "alarm_grokking_summary")
        + ("forecast", "forecast_runs")
        + ("stops_grokking", "stops_grokking_summary")
        for suffix in ("md", "tex", "csv")
    ],
    *[
        f"{figure}.{suffix}"
        for figure in ["figure1_smoke", "figure1_single_runs", "figure2", "figure3", "figure9"]
        + ["curves_smoke", "curves_single_runs", "ranks_smoke", "matrices_smoke"]
        + ["matrices_single_runs", "matrices_aligned_smoke"]
        for suffix in ("png", "pdf")
    ],
]


def test_analyze_writes_every_table_and_figure(analysed):
    cwd, result = analysed
    out = cwd / "outputs" / "sweeps" / "smoke-analysis"  # beside the first input, by default
    assert f"wrote tables, figures and parquet files to {out.relative_to(cwd)}" in result.stdout
    for name in FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert "Table 1 — RMSE(k_LAR, PC95)" in result.stdout and "| smoke" in result.stdout
    tidy = pd.read_csv(out / "table1.csv")
    assert set(tidy["column"]) == {"Memorized", "Grokked", "Final (grokked)", "Final (no grok)"}
    assert tidy.loc[tidy["group"] == "smoke", "n"].sum() >= 4  # every run has a final checkpoint
    runs = pd.read_parquet(out / "runs.parquet")
    assert len(runs) == 7 and set(runs["group"]) == {"smoke", "single_runs"}
    assert "7 runs analysed" in result.stdout


def test_alarms_are_scored_on_runs_that_grok_and_runs_that_do_not(analysed):
    cwd, result = analysed
    out = cwd / "outputs" / "sweeps" / "smoke-analysis"
    scores = pd.read_csv(out / "alarm_grokking.csv")
    lar_alarm = scores[scores["detector"] == "LAR: generalization alarm"].set_index("run")
    smoke = completed_summaries(cwd / "outputs" / "sweeps" / "smoke")
    assert len(smoke) == 4
    for name, summary in smoke.items():
        row = lar_alarm.loc[f"smoke/{name}"]
        metrics = RunDir(cwd / "outputs" / "sweeps" / "smoke" / name).read_metrics()
        fired = first_firing(GeneralizationAlarm(), metrics["epoch"], metrics["lar"],
                             train_acc=metrics["train_acc"].to_numpy())  # fmt: skip
        assert (None if pd.isna(row["fired"]) else row["fired"]) == fired
        if summary["grokking_epoch"] is None:  # subtraction: never groks
            assert pd.isna(row["truth"]) and row["outcome"] in {"silent", "false alarm"}
        else:
            assert row["truth"] == summary["grokking_epoch"]
            assert row["outcome"] in {"within 10 %", "early", "late", "missed"}
    assert "The alarms against the grokking epoch:" in result.stdout
    # the runs with periodic checkpoints have their baselines measured at each one
    measured = pd.read_parquet(out / "baseline_measures.parquet")
    dense = measured[measured["run"].str.startswith("dense/")]
    assert sorted(dense.groupby("run")["epoch"].apply(tuple)) == [(2, 4, 6)] * 3
    assert dense["rankme"].between(1, 32).all() and dense["ww_alpha"].notna().all()
    assert dense.loc[dense["epoch"] == 4, "ww_alpha_mean"].notna().all()  # every 2nd checkpoint
    detectors = set(scores.loc[scores["run"].str.startswith("dense/"), "detector"])
    assert {"RankMe of the inputs (falls)", "WeightWatcher mean α < 2"} <= detectors


def test_rankme_is_the_exponential_of_the_singular_values_entropy():
    g = torch.Generator().manual_seed(0)
    orthonormal, _ = torch.linalg.qr(torch.randn(200, 7, generator=g, dtype=torch.float64))
    assert rankme((2.5 * orthonormal).T @ (2.5 * orthonormal)) == pytest.approx(7, rel=1e-9)
    x = orthonormal[:, :2] * torch.tensor([3.0, 1.0], dtype=torch.float64)  # σ shares 3/4, 1/4
    entropy = -(0.75 * np.log(0.75) + 0.25 * np.log(0.25))
    assert rankme(x.T @ x) == pytest.approx(np.exp(entropy), rel=1e-9)


def test_signal_costs_time_every_signal_of_a_checkpointed_run(analysed):
    cwd, _ = analysed
    run = next((cwd / "outputs" / "sweeps" / "dense").glob("*/summary.json")).parent
    table = costs(RunDir(run), repeats=1)
    assert len(table) == 6 and table["signal"].str.contains("WeightWatcher").sum() == 2
    assert (table["seconds"] > 0).all()


def test_baselines_are_measured_without_weightwatcher_and_not_cached(
    analysed, tmp_path, monkeypatch, caplog
):
    cwd, _ = analysed
    run = next((cwd / "outputs" / "sweeps" / "dense").glob("*/summary.json")).parent
    copy = shutil.copytree(run, tmp_path / "run")
    (copy / BASELINES).unlink()
    monkeypatch.setitem(sys.modules, "weightwatcher", None)  # `import weightwatcher` fails
    signals.weightwatcher_module.cache_clear()
    try:
        frame = baselines.measure_run(RunDir(copy))
    finally:
        signals.weightwatcher_module.cache_clear()
    assert list(frame["epoch"]) == [2, 4, 6] and frame["rankme"].between(1, 32).all()
    assert frame[["ww_alpha", "ww_alpha_mean"]].isna().all().all()
    assert not (copy / BASELINES).exists()
    assert "pip install 'grokking[baselines]'" in caplog.text


def test_checkpoint_measures_agree_with_the_trainer(analysed):
    cwd, _ = analysed
    for summary in (cwd / "outputs" / "sweeps" / "smoke").glob("*/summary.json"):
        run = RunDir(summary.parent)
        measures = run.read_cache(MEASURES, "kind").set_index("kind")
        last = run.read_metrics().iloc[-1]
        assert measures.loc["final", "epoch"] == last["epoch"]
        assert measures.loc["final", "lar"] == pytest.approx(last["lar"], abs=1e-6)
        assert measures.loc["final", "k_lar"] == pytest.approx(last["k_lar"], rel=1e-5)
        assert 1 <= measures.loc["final", "pc95"] <= 32
        assert len(measures.loc["final", "p"]) == 32 and sum(
            measures.loc["final", "q"]
        ) == pytest.approx(1)
        stamp = (run.path / "checkpoint_measures.parquet").stat().st_mtime_ns
        measure_run(run)  # cached: not recomputed, not rewritten
        assert (run.path / "checkpoint_measures.parquet").stat().st_mtime_ns == stamp


def test_per_task_table_counts_seeds_and_grokking(analysed):
    cwd, _ = analysed
    out = cwd / "outputs" / "sweeps" / "smoke-analysis"
    table = pd.read_csv(out / "per_task.csv")
    smoke = table[table["group"] == "smoke"].set_index("task")
    assert smoke.loc["add", "seeds"] == 2 and smoke.loc["sub", "seeds"] == 2
    summaries = [
        json.loads(p.read_text()) for p in (cwd / "outputs/sweeps/smoke").glob("*/summary.json")
    ]
    grokked = np.mean([s["grokking_epoch"] is not None for s in summaries if s["task"] == "add"])
    assert smoke.loc["add", "grokked"] == pytest.approx(grokked)


def test_broken_and_running_runs_are_reported_and_left_out(smoke_sweep, tmp_path):
    cwd, _ = smoke_sweep
    copy = tmp_path / "smoke"
    shutil.copytree(cwd / "outputs" / "sweeps" / "smoke", copy)
    (copy / "seed=0,task=add" / "metrics.parquet").write_bytes(b"not parquet")
    running = RunDir(copy / "seed=1,task=sub")
    running.write_summary(running.read_summary() | {"status": "running"})
    with running.lock():  # as its trainer holds it: the run is really going on
        result = run_cli(
            str(copy), "--out", str(tmp_path / "out"), cwd=tmp_path, module="grokking.analyze"
        )
    assert result.returncode == 0, result.stderr
    damaged = f"{copy / 'seed=0,task=add' / 'metrics.parquet'} is damaged (ArrowInvalid: "
    assert f"warning: skipping smoke/seed=0,task=add: {damaged}" in result.stderr
    assert "warning: smoke/seed=1,task=sub is in progress; left out" in result.stderr
    left_out = f"in progress: smoke/seed=1,task=sub; skipped: smoke/seed=0,task=add ({damaged}"
    assert f"2 runs analysed; left out: {left_out}" in result.stdout
    assert len(collect(copy).runs) == 2


def test_a_folder_without_runs_is_a_clear_error(tmp_path, capsys):
    # the command's main in this process: an interpreter importing the analysis costs seconds
    # (test_broken_and_running_runs_are_reported_and_left_out runs the command line itself)
    empty = f"error: no runs (folders with summary.json) under {tmp_path}"
    for folder, error in ((tmp_path, empty), (tmp_path / "nope", "DIR: no such directory")):
        with pytest.raises(SystemExit) as exited:
            main([str(folder)])
        assert exited.value.code == 2 and error in capsys.readouterr().err
    assert not (tmp_path.parent / f"{tmp_path.name}-analysis").exists()  # the default --out


# Images each notebook shows on the smoke sweep, each once. figures: Figure 1, curves, Figure 2,
# Figure 3, ranks, matrices (no Figure 9: the smoke runs are not evaluated every epoch).
# one_run: curves, p and q, matrices.
NOTEBOOK_IMAGES = {"table1": 0, "figures": 6, "one_run": 3}


@pytest.mark.parametrize("name", sorted(NOTEBOOK_IMAGES))
def test_notebooks_execute_on_the_smoke_sweep(analysed, name, monkeypatch, tmp_path):
    cwd, _ = analysed
    monkeypatch.setenv("GROKKING_RESULTS", str(cwd / "outputs" / "sweeps" / "smoke"))
    notebook = jupytext.read(REPO / "notebooks" / f"{name}.py")
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3")
    client.execute(cwd=str(tmp_path))
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    if name == "table1":
        assert any("Final (grokked)" in str(o.get("data", {})) for o in outputs)
    images = [o["data"]["image/png"] for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == NOTEBOOK_IMAGES[name]
    assert len(set(images)) == len(images)  # no figure shown twice


def test_every_notebook_is_tested():
    language_models = {"lm_overfitting"}  # tests/test_lm_analysis.py
    assert {path.stem for path in (REPO / "notebooks").glob("*.py")} == {
        *NOTEBOOK_IMAGES,
        *language_models,
    }
