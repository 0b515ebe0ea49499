"""Damaged, hostile and linked files of a run folder, refused processes, full disks and bounds:
each is one line naming the file (or the holder, or the field) and changes nothing."""

import os
import random
import subprocess

import pytest
import torch
from conftest import TINY_OVERRIDES, run_cli, tiny_config

from grokking.algorithmic import train
from grokking.algorithmic.model import ModelConfig
from grokking.runs.rundir import (
    DAMAGED,
    DamagedCheckpoint,
    DamagedFile,
    RunDir,
)
from grokking.runs.sweep import progress_line

# A run whose files are small, so that every truncation point of each can be tried.
MICRO = dict(task__p=5, model=ModelConfig(n_layers=1, d_model=8, n_heads=1, d_ff=8))
MICRO_CFG = tiny_config(max_epochs=4, eval_every=2, **MICRO)


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory) -> RunDir:
    """A completed micro run; tests copy its files, never change them."""
    run = RunDir(tmp_path_factory.mktemp("micro") / "run")
    train(MICRO_CFG, run.path)
    return run


def snapshot(folder) -> dict:
    """Every file under `folder` (links as links) and its bytes."""
    return {
        path: (os.readlink(path) if path.is_symlink() else path.read_bytes())
        for path in sorted(folder.rglob("*"))
        if path.is_symlink() or path.is_file()
    }


# --- one reader per file: every way a file can be wrong is one DamagedFile ------------------
READERS = {
    "checkpoints/last.pt": lambda run: run.load_checkpoint("last"),
    "summary.json": RunDir.read_summary,
    "metrics.parquet": RunDir.read_metrics,
}


def assert_damaged_file_for_every(run: RunDir, name: str, contents) -> int:
    """Write each of `contents` at `name` and read it: DamagedFile naming the file, each time."""
    path = run.path / name
    read = READERS[name]
    count = 0
    for data in contents:
        path.write_bytes(data)
        with pytest.raises(DamagedFile) as damaged:
            read(run)
        assert str(path) in str(damaged.value) and "\n" not in str(damaged.value), data[:40]
        count += 1
    return count


@pytest.mark.slow
@pytest.mark.parametrize("name", READERS)
def test_every_truncation_and_random_bytes_of_a_real_file_are_one_typed_error(
    micro_run, tmp_path, name
):
    run = RunDir(tmp_path / "run")
    (run.path / "checkpoints").mkdir(parents=True)
    real = (micro_run.path / name).read_bytes()
    rng = random.Random(0)
    garbage = [rng.randbytes(rng.randrange(1, 4096)) for _ in range(50)]
    content = len(real.rstrip(b"\n"))  # summary.json without its last newline is still whole
    tried = assert_damaged_file_for_every(run, name, [real[:cut] for cut in range(content)])
    tried += assert_damaged_file_for_every(run, name, garbage)
    assert tried == content + 50 > 1000


WRONG_RESUME_POINTS = {
    "a list": [1, 2, 3],
    "a bare tensor": torch.ones(3),
    "a dict without config": {"model": {}},
    "another model's state_dict": {"model": {"unembed.weight": torch.ones(2, 2)}},
}


@pytest.mark.parametrize("content", WRONG_RESUME_POINTS.values(), ids=WRONG_RESUME_POINTS)
def test_a_last_pt_of_the_wrong_shape_is_refused_naming_it(micro_run, tmp_path, content):
    run = RunDir(tmp_path / "run")
    run.save_checkpoint("last", content)
    with pytest.raises(DamagedCheckpoint, match=r"last\.pt .*move it aside to restart"):
        train(MICRO_CFG, run.path)


def test_a_real_last_pt_with_a_wrong_state_is_refused(micro_run, tmp_path):
    saved = micro_run.load_checkpoint("last")
    saved["step"], saved["epoch"] = 8, 2  # a resume point, not a finished run
    for damage in (
        lambda s: s["model"].pop("unembed.weight"),
        lambda s: s["optimizer"]["unembed.weight"].update(exp_avg=torch.ones(1)),
        lambda s: s["optimizer"]["unembed.weight"].clear(),  # as before the first step
        lambda s: s.update(batch_order=torch.ones(3)),
        lambda s: s.update(events={"grokking_epoch": "soon"}),
    ):
        state = {**saved, "model": dict(saved["model"])}
        state["optimizer"] = {k: dict(v) for k, v in saved["optimizer"].items()}
        damage(state)
        run = RunDir(tmp_path / f"run{id(damage)}")
        run.save_checkpoint("last", state)
        with pytest.raises(DamagedCheckpoint, match="is not a resume point of this run"):
            train(MICRO_CFG, run.path)


def test_a_directory_named_last_pt_is_refused_not_restarted(tmp_path):
    run = RunDir(tmp_path / "run")
    run.checkpoint_path("last").mkdir(parents=True)
    with pytest.raises(DamagedCheckpoint, match=r"last\.pt is a directory: move it aside"):
        train(MICRO_CFG, run.path)
    assert not run.exists()  # nothing was started


def test_a_damaged_summary_is_a_status_and_the_progress_line_counts_it(micro_run, tmp_path):
    damaged = RunDir(tmp_path / "damaged")
    damaged.path.mkdir()
    (damaged.path / "summary.json").write_text('{"status": "runn')
    assert damaged.status() == DAMAGED
    line = progress_line([micro_run.path, damaged.path, tmp_path / "not_started"])
    assert line == "sweep: 1/3 completed, 0 running, 0 failed, 1 damaged"


def test_a_damaged_summary_on_resume_is_one_line(micro_run, tmp_path):
    run = tmp_path / "run"
    overrides = [*TINY_OVERRIDES, "max_epochs=2", f"hydra.run.dir={run}"]
    run_cli(*overrides, cwd=tmp_path, check=True)
    (run / "summary.json").write_text('{"status": "runn')
    before = snapshot(run)
    result = run_cli(*overrides, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: {run / 'summary.json'} is damaged (")
    assert result.stderr.count("\n") == 1
    assert snapshot(run) == before


# --- links are never followed -------------------------------------------------------------
@pytest.mark.parametrize("name", [".lock", "train.log"])
def test_a_link_in_a_run_folder_is_refused_and_its_target_untouched(tmp_path, name):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    (run.path / name).symlink_to(victim)
    with pytest.raises(DamagedFile, match=f"{name} is a symbolic link; refused"):
        train(MICRO_CFG, run.path)
    assert victim.read_text() == "precious\n"
    written = {p.name for p in run.path.iterdir()} - {name}
    assert written <= {".lock"}  # nothing but the (empty) lock file was written


def test_a_linked_checkpoints_folder_is_not_written_through(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    (run.path / "checkpoints").symlink_to(elsewhere)
    with pytest.raises(DamagedFile, match="checkpoints is a symbolic link; refused"):
        run.save_checkpoint("final", {"model": {}})
    assert not any(elsewhere.iterdir())


# --- a refused process changes nothing ------------------------------------------------------
def test_a_process_refused_on_a_held_folder_changes_nothing_and_names_the_holder(tmp_path):
    run = tmp_path / "run"
    run_cli(*TINY_OVERRIDES, "max_epochs=2", "seed=1", f"hydra.run.dir={run}", cwd=tmp_path)
    before = snapshot(run)
    assert (run / ".hydra" / "config.yaml").read_text().count("seed: 1") == 1
    with RunDir(run).lock():  # another process trains it
        result = run_cli(
            *TINY_OVERRIDES, "max_epochs=2", "seed=2", f"hydra.run.dir={run}", cwd=tmp_path
        )
        during = snapshot(run)
    assert result.returncode == 1
    assert result.stderr == (
        f"error: {run} is in use by pid {os.getpid()} on {os.uname().nodename} since "
        + result.stderr.split(" since ", 1)[1]
    )
    during.pop(run / ".lock")  # the holder's own record
    assert during == {k: v for k, v in before.items() if k != run / ".lock"}
    assert snapshot(run) == before


PACKED = ["+sweeps=smoke", "hydra/launcher=packed", "max_epochs=2", "threads=1", "task=add"]


def test_a_second_sweep_into_a_held_sweep_folder_changes_nothing(tmp_path):
    run_cli(*PACKED, "seed=0", "hydra.sweep.dir=sweep", cwd=tmp_path, check=True)
    sweep = tmp_path / "sweep"
    before = snapshot(sweep)
    with RunDir(sweep).lock("sweep folder"):  # a first command still running
        second = run_cli(*PACKED, "seed=0", "max_epochs=4", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert second.returncode == 1
    assert second.stderr.startswith(f"error: sweep is in use by pid {os.getpid()}")
    assert second.stderr.endswith("; nothing submitted\n") and second.stderr.count("\n") == 1
    assert snapshot(sweep) == before  # multirun.yaml and the run's .hydra/ included


@pytest.mark.parametrize("kind", ["link", "directory"])
def test_a_multirun_yaml_that_is_not_a_file_is_refused_before_anything_is_written(tmp_path, kind):
    victim = tmp_path / "victim.yaml"
    victim.write_text("precious\n")
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    record = sweep / "multirun.yaml"
    record.symlink_to(victim) if kind == "link" else record.mkdir()
    result = run_cli(*PACKED, "seed=0", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert result.returncode == 1
    what = "is a symbolic link; refused" if kind == "link" else "is a directory"
    assert result.stderr.startswith(f"error: sweep/multirun.yaml {what}")
    assert result.stderr.endswith("; nothing submitted\n") and result.stderr.count("\n") == 1
    assert victim.read_text() == "precious\n"
    assert [path.name for path in sweep.iterdir()] == ["multirun.yaml"]


def test_two_jobs_of_a_sweep_in_one_folder_are_refused_before_launch(tmp_path):
    result = run_cli(
        *PACKED, "seed=0,1", "hydra.sweep.dir=sweep", "hydra.sweep.subdir=same", cwd=tmp_path
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: sweep job 1 (") and "seed=1" in result.stderr
    assert "hydra.sweep.subdir: sweep/same is sweep job 0's folder too (" in result.stderr
    assert result.stderr.endswith("; nothing submitted\n") and result.stderr.count("\n") == 1
    assert not (tmp_path / "sweep").exists()


def test_a_sweep_whose_run_folder_is_held_changes_nothing(tmp_path):
    run_cli(*PACKED, "seed=0", "hydra.sweep.dir=sweep", cwd=tmp_path, check=True)
    sweep = tmp_path / "sweep"
    (member,) = [p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")]
    before = snapshot(sweep)
    with RunDir(member).lock():
        second = run_cli(*PACKED, "seed=0", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert second.returncode == 1
    relative = member.relative_to(tmp_path)
    assert f"{relative} is in use by pid {os.getpid()}" in second.stderr
    assert second.stderr.count("\n") == 1
    assert snapshot(sweep) == before


# --- a full disk from the very first write --------------------------------------------------
@pytest.mark.parametrize("size", ["4k", "20k"])
def test_a_disk_full_from_the_start_is_one_line(tmp_path, size):
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        result = run_cli(*TINY_OVERRIDES, f"hydra.run.dir={disk / 'run'}", cwd=tmp_path)
    finally:
        subprocess.run(["umount", "--lazy", str(disk)], check=True)
    assert result.returncode == 1
    assert result.stderr.startswith("error: the disk is full: could not write ")
    assert result.stderr.count("\n") == 1
    assert "Logging error" not in result.stdout + result.stderr


# --- bounds, before anything is built -------------------------------------------------------
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("task.p=100000", "task.p: modulus must be an integer in [2, 1000], got 100000"),
        ("optim.lr=inf", "optim.lr: must be a finite number > 0, got inf"),
        ("optim.lr=nan", "optim.lr: must be a finite number > 0, got nan"),
        (
            "seed=99999999999999999999999",
            "seed: must be an integer in [0, 2^63), got 99999999999999999999999",
        ),
        ("seed=-1", "seed: must be an integer in [0, 2^63), got -1"),
    ],
)
def test_values_out_of_bounds_are_refused_before_anything_is_built(refusal, override, message):
    code, stderr = refusal(override)
    assert (code, stderr) == (2, f"error: {message}\n")
