"""The analysis on damaged, partial, read-only and mixed results: which runs are pooled, which
are left out, and that every output agrees on it."""

import errno
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY_OVERRIDES, run_cli, tiny_lm

from grokking.analysis.algorithmic import collect, figures, measure_all
from grokking.analysis.algorithmic.measure import MEASURES
from grokking.analyze import analyze, main
from grokking.runs.rundir import MATRIX_LAR, METRICS, RunDir

ADD0, SUB0, ADD1, SUB1 = "seed=0,task=add", "seed=0,task=sub", "seed=1,task=add", "seed=1,task=sub"


@pytest.fixture
def smoke_copy(smoke_sweep, tmp_path) -> Path:
    """A private copy of the smoke sweep (4 runs), its measure caches removed so that every
    checkpoint is loaded again."""
    cwd, _ = smoke_sweep
    copy = tmp_path / "smoke"
    shutil.copytree(cwd / "outputs" / "sweeps" / "smoke", copy)
    for cache in copy.rglob(MEASURES):
        cache.unlink()
    return copy


def edit_summary(folder: Path, **fields) -> None:
    """Change top-level summary fields; `config__a__b=v` sets summary["config"]["a"]["b"]."""
    run = RunDir(folder)
    summary = run.read_summary()
    for key, value in fields.items():
        *parents, leaf = key.split("__")
        node = summary
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    run.write_summary(summary)


def outputs(out: Path) -> dict[str, set[str]]:
    """The runs each output file names."""
    return {
        name: set(pd.read_parquet(out / f"{name}.parquet")["run"])
        for name in ("runs", "metrics", "matrix_lar", "checkpoint_measures")
    }


# --- 1. runs are pooled across seeds only ----------------------------------------------------


def test_runs_that_differ_beyond_their_seeds_are_not_pooled(smoke_copy, tmp_path, capsys):
    for source, seed in ((ADD0, 5), (ADD1, 6)):  # two more add runs, at another weight decay
        target = smoke_copy / f"wd=0.5,seed={seed},task=add"
        shutil.copytree(smoke_copy / source, target)
        edit_summary(target, seed=seed, config__seed=seed, config__optim__weight_decay=0.5)
    # runtime-only values differ too, and must not split anything
    edit_summary(smoke_copy / SUB1, config__threads=7, config__device="cuda")
    edit_summary(smoke_copy / SUB0, config__eval_batch_size=64)
    analyze([smoke_copy], tmp_path / "out")

    per_task = pd.read_csv(tmp_path / "out" / "per_task.csv")
    seeds = {
        (task, decay): count
        for task, decay, count in per_task[["task", "optim.weight_decay", "seeds"]].values
    }
    assert seeds == {("add", 1.0): 2, ("add", 0.5): 2, ("sub", 1.0): 2}
    assert "optim.weight_decay" in (tmp_path / "out" / "per_task.md").read_text()
    table1 = pd.read_csv(tmp_path / "out" / "table1.csv")
    assert set(table1["group"]) == {
        "smoke (optim.weight_decay=1.0)",
        "smoke (optim.weight_decay=0.5)",
    }
    assert set(table1["optim.weight_decay"]) == {0.5, 1.0}
    assert "| smoke (optim.weight_decay=0.5) |" in capsys.readouterr().out

    results = collect(smoke_copy)
    fig = figures.figure1(results.runs, results.metrics, "smoke")
    titles = {ax.get_title() for ax in fig.axes if ax.get_title()}
    assert titles == {
        "add, p=17, frac=0.7, optim.weight_decay=1.0 (2 seeds)",
        "add, p=17, frac=0.7, optim.weight_decay=0.5 (2 seeds)",
        "sub, p=17, frac=0.7, optim.weight_decay=1.0 (2 seeds)",
    }


def test_only_values_that_change_what_a_run_computes_are_conditions():
    from grokking.analysis.algorithmic.conditions import condition_columns

    config = {
        "task": {"name": "add", "p": 97},
        "optim": {"lr": 1e-3},
        "seed": 1,
        "split_seed": 2,
        "train_fraction": 0.5,
        "device": "cuda",
        "threads": 4,
        "eval_batch_size": 512,
        "checkpoint_every": 100,
        "logger": {"name": "wandb", "project": "x"},
        "precision": "bf16",
        "sweep_name": "smoke",
        "lar_layers": ["unembed", "blocks.0.q"],
    }
    assert condition_columns(config) == {
        "config.optim.lr": 1e-3,
        "config.precision": "bf16",
        "config.lar_layers": "['unembed', 'blocks.0.q']",
    }


def test_a_lone_seed_is_one_seed(smoke_copy):
    shutil.rmtree(smoke_copy / SUB1)
    results = collect(smoke_copy)
    fig = figures.figure1(results.runs, results.metrics, "smoke")
    titles = {ax.get_title() for ax in fig.axes if ax.get_title()}
    assert titles == {"add, p=17, frac=0.7 (2 seeds)", "sub, p=17, frac=0.7 (1 seed)"}


# --- 2. reliability ----------------------------------------------------------------------------


def test_a_run_with_a_truncated_or_missing_checkpoint_is_in_no_output(smoke_copy, tmp_path, capsys):
    final = smoke_copy / ADD0 / "checkpoints" / "final.pt"
    final.write_bytes(final.read_bytes()[:200])
    (smoke_copy / SUB1 / "checkpoints" / "final.pt").unlink()
    analyze([smoke_copy], tmp_path / "out")

    kept = {f"smoke/{SUB0}", f"smoke/{ADD1}"}
    assert outputs(tmp_path / "out") == dict.fromkeys(outputs(tmp_path / "out"), kept)
    per_task = pd.read_csv(tmp_path / "out" / "per_task.csv").set_index("task")
    assert per_task["seeds"].to_dict() == {"add": 1, "sub": 1}
    assert pd.read_csv(tmp_path / "out" / "table1.csv")["n"].max() <= 2
    stdout = capsys.readouterr().out
    assert "2 runs analysed; left out: skipped: " in stdout
    # each reason names the file
    assert f"smoke/{ADD0} (cannot measure its checkpoints: {final} is damaged (" in stdout
    missing = smoke_copy / SUB1 / "checkpoints" / "final.pt"
    assert f"smoke/{SUB1} (FileNotFoundError: {missing} missing)" in stdout


def test_no_measurable_run_is_a_clear_error_that_writes_nothing(smoke_copy, tmp_path):
    for final in smoke_copy.rglob("final.pt"):
        final.write_bytes(final.read_bytes()[:200])
    out = tmp_path / "out"
    result = run_cli(str(smoke_copy), "--out", str(out), cwd=tmp_path, module="grokking.analyze")
    assert result.returncode == 1, result.stderr  # damaged files
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: all 4 runs under {smoke_copy} were skipped as damaged: smoke/")
    assert all(f"smoke/{run} (cannot measure" in error for run in (ADD0, SUB0, ADD1, SUB1))
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_read_only_run_folders_are_analysed_without_a_cache(
    smoke_copy, tmp_path, monkeypatch, caplog
):
    def refuse(self, name, frame):
        raise PermissionError(13, "Permission denied", str(self.path / name))

    # a read-only folder, even for root (who may write to any folder chmod makes read-only)
    monkeypatch.setattr(RunDir, "write_cache", refuse)
    with caplog.at_level(logging.WARNING, logger="grokking.analysis"):
        analyze([smoke_copy], tmp_path / "out")
    assert len(pd.read_parquet(tmp_path / "out" / "runs.parquet")) == 4
    assert len(pd.read_parquet(tmp_path / "out" / "checkpoint_measures.parquet")) >= 4
    assert "not caching the measures of" in caplog.text and "PermissionError" in caplog.text
    assert not list(smoke_copy.rglob(MEASURES))


class WritesAFolder:
    """Unpickling this calls os.mkdir(path): what a crafted checkpoint could do."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_a_crafted_checkpoint_is_refused_and_runs_no_code(smoke_copy, tmp_path):
    marker = tmp_path / "written-by-the-checkpoint"
    torch.save(
        {"model": WritesAFolder(marker), "epoch": 1}, smoke_copy / ADD0 / "checkpoints/final.pt"
    )
    results = collect(smoke_copy)
    measures = measure_all(results)
    assert not marker.exists()
    assert [run for run, _ in results.skipped] == [f"smoke/{ADD0}"]
    assert str(smoke_copy / ADD0 / "checkpoints/final.pt") in results.skipped[0][1]
    assert "not a checkpoint this project wrote" in results.skipped[0][1]
    assert f"smoke/{ADD0}" not in set(results.runs["run"]) | set(measures["run"])


def test_interrupted_runs_are_reported_as_interrupted(smoke_copy, tmp_path, capsys):
    edit_summary(smoke_copy / ADD0, status="interrupted")
    edit_summary(smoke_copy / SUB0, status="running")  # but its process is gone
    edit_summary(smoke_copy / SUB1, status="running")
    with RunDir(smoke_copy / SUB1).lock():  # as its trainer holds it
        analyze([smoke_copy], tmp_path / "out")
    interrupted = ", ".join(sorted(f"smoke/{run}" for run in (ADD0, SUB0)))
    left_out = f"left out: interrupted: {interrupted}; in progress: smoke/{SUB1}"
    assert f"1 run analysed; {left_out}\n" in capsys.readouterr().out


def test_an_output_folder_that_cannot_be_made_is_a_clear_error(smoke_copy, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    out = blocker / "analysis"
    result = run_cli(str(smoke_copy), "--out", str(out), cwd=tmp_path, module="grokking.analyze")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: --out: cannot create {out} (Not a directory); choose another"
    )


# --- 3. tables of another schema, unknown families, a full disk -------------------------------


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory, corpus_dir) -> dict[str, Path]:
    """A completed grokking run and a completed language-model run, trained in seconds. Neither
    folder is named `grokking`: `python -m` puts its working folder first on sys.path, where a
    folder of that name would be imported as the package."""
    cwd = tmp_path_factory.mktemp("tiny_runs")
    run_cli("task=add", *TINY_OVERRIDES, "hydra.run.dir=grokking_run", cwd=cwd, check=True)
    lm = [*tiny_lm(corpus_dir, cwd / "cache"), "hydra.run.dir=lm_run"]
    run_cli(*lm, cwd=cwd, module="grokking.lm", check=True)
    return {"grokking": cwd / "grokking_run", "lm": cwd / "lm_run"}


def copy_run(tiny_runs, family: str, results: Path, name: str) -> Path:
    shutil.copytree(tiny_runs[family], results / name)
    return results / name


def rewrite(table: Path, edit) -> None:
    """A valid parquet file, of another schema than the trainer writes."""
    edit(pd.read_parquet(table)).to_parquet(table, index=False)


def analyze_cli(results: Path, out: Path, capsys, caplog) -> tuple[int, str, list[str], list[str]]:
    """(exit status, stdout, the lines on stderr, the warnings) of `python -m grokking.analyze`."""
    with caplog.at_level(logging.WARNING, logger="grokking.analysis"):
        try:
            main([str(results), "--out", str(out)])
            status = 0
        except SystemExit as exit:
            status = exit.code
    printed = capsys.readouterr()
    return status, printed.out, printed.err.splitlines(), caplog.messages


def _as_text(column: str):
    return lambda frame: frame.assign(**{column: frame[column].astype(str)})


# (family, table, its edit, what the line says is wrong)
WRONG_SCHEMAS = {
    "only step and lar": ("grokking", METRICS, lambda f: f[["step", "lar"]], "no epoch column"),
    "lar as text": ("grokking", METRICS, _as_text("lar"), "its lar column holds str, not numbers"),
    "epoch as text": ("grokking", METRICS, _as_text("epoch"), "its epoch column holds str"),
    "val_acc as flags": (
        "grokking", METRICS, lambda f: f.assign(val_acc=f["val_acc"] > 0.5),
        "its val_acc column holds bool, not numbers",
    ),
    "no row": ("grokking", METRICS, lambda f: f.iloc[:0], "it holds no row"),
    "matrix lar as text": ("grokking", MATRIX_LAR, _as_text("lar"), "its lar column holds str"),
    "lm lar all NaN": ("lm", METRICS, lambda f: f.assign(lar=np.nan), "its lar column holds no"),
    "lm lar as text": ("lm", METRICS, _as_text("lar"), "its lar column holds str, not numbers"),
}  # fmt: skip


@pytest.mark.parametrize("case", WRONG_SCHEMAS)
def test_a_table_of_another_schema_skips_its_run_in_one_line(
    case, tiny_runs, tmp_path, capsys, caplog
):
    family, table, edit, wrong = WRONG_SCHEMAS[case]
    results = tmp_path / "results"
    run = copy_run(tiny_runs, family, results, "run")
    rewrite(run / table, edit)
    out = tmp_path / "out"
    status, _, errors, warnings = analyze_cli(results, out, capsys, caplog)

    assert status == 1
    (warning,) = warnings  # one line, naming the run, the file and what is wrong
    why = warning.removeprefix("skipping results/run: ")
    assert why.startswith(f"{run / table} is damaged (ValueError: {wrong}")
    assert errors == [
        f"error: the only run under {results} was skipped as damaged: results/run ({why})"
    ]
    assert not out.exists()


def test_damaged_and_unknown_runs_are_named_once_and_the_rest_analysed(
    tiny_runs, tmp_path, capsys, caplog
):
    results = tmp_path / "results"
    copy_run(tiny_runs, "grokking", results, "good")
    rewrite(copy_run(tiny_runs, "grokking", results, "bad") / METRICS, _as_text("lar"))
    edit_summary(copy_run(tiny_runs, "grokking", results, "future"), family="vision")
    status, printed, errors, warnings = analyze_cli(results, tmp_path / "out", capsys, caplog)

    assert (status, errors) == (0, [])
    assert [line.split(":")[0] for line in warnings] == [
        f"skipping {results / 'future'}",
        "skipping results/bad",
    ]
    assert f"{results / 'future' / 'summary.json'} names the family 'vision'" in warnings[0]
    assert set(pd.read_parquet(tmp_path / "out" / "runs.parquet")["run"]) == {"results/good"}
    assert "1 run analysed; left out: skipped: results/bad (" in printed


def test_all_runs_skipped_is_said_so(tiny_runs, tmp_path, capsys, caplog):
    results = tmp_path / "results"
    rewrite(copy_run(tiny_runs, "lm", results, "lm") / METRICS, lambda f: f.iloc[:0])
    edit_summary(copy_run(tiny_runs, "grokking", results, "future"), family="vision")
    status, _, errors, _ = analyze_cli(results, tmp_path / "out", capsys, caplog)
    assert status == 1
    (error,) = errors
    assert error.startswith(f"error: all 2 runs under {results} were skipped as damaged: ")
    assert not (tmp_path / "out").exists()


def test_a_full_disk_leaves_nothing_of_the_outputs(
    tiny_runs, tmp_path, capsys, caplog, monkeypatch
):
    copy_run(tiny_runs, "grokking", tmp_path / "results", "run")
    out = tmp_path / "out"
    out.mkdir()
    (out / "table1.md").write_text("an earlier analysis")
    save = figures.save

    def save_then_fill_the_disk(fig, folder, name):
        if name.startswith("curves"):  # tables, parquet files and a figure are written by then
            raise OSError(errno.ENOSPC, "No space left on device", str(folder / f"{name}.png"))
        return save(fig, folder, name)

    monkeypatch.setattr(figures, "save", save_then_fill_the_disk)
    status, _, errors, _ = analyze_cli(tmp_path / "results", out, capsys, caplog)
    assert status == 1
    assert errors == [
        f"error: --out: cannot write the analysis to {out} (No space left on device); nothing of "
        "it was written: free some space or choose another"
    ]
    assert [path.name for path in out.iterdir()] == ["table1.md"]
    assert (out / "table1.md").read_text() == "an earlier analysis"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out", "results"]  # no staging
