import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY_OVERRIDES, completed_summaries, run_cli
from omegaconf import OmegaConf

from grokking.runs.rundir import RunDir
from grokking.runs.sweep import sweep_jobs

SMOKE_RUNS = {"seed=0,task=add", "seed=1,task=add", "seed=0,task=sub", "seed=1,task=sub"}
# The launcher tests need runs, not grokking: a short budget (which names the folders too)
SHORT = "max_epochs=60"
SHORT_SMOKE_RUNS = {f"{SHORT},{name}" for name in SMOKE_RUNS}


def test_smoke_sweep_on_the_basic_launcher(smoke_sweep):
    cwd, result = smoke_sweep
    summaries = completed_summaries(cwd / "outputs" / "sweeps" / "smoke")
    assert set(summaries) == SMOKE_RUNS  # stable folder names, one per run
    for name, summary in summaries.items():
        assert summary["status"] == "completed" and summary["sweep_name"] == "smoke"
        assert summary["p"] == 17
        assert f"seed={summary['seed']}" in name and f"task={summary['task']}" in name
        grokked = summary["grokking_epoch"]
        expected_stop = min(600, 3 * grokked) if grokked else 600
        assert summary["final_epoch"] == expected_stop  # 3 x its own grokking epoch, or budget
    for seed in (0, 1):  # what sweeps/algorithmic/smoke.yaml says of addition, on any CPU
        summary = summaries[f"seed={seed},task=add"]
        assert summary["memorization_epoch"] < summary["grokking_epoch"] <= 600
    assert "sweep: 4 runs into outputs/sweeps/smoke" in result.stdout
    assert "sweep: 4/4 completed, 0 running, 0 failed" in result.stdout


def test_rerunning_a_completed_sweep_trains_nothing(smoke_sweep):
    cwd, _ = smoke_sweep
    sweep = cwd / "outputs" / "sweeps" / "smoke"
    tracked = [p for p in sweep.rglob("*") if p.suffix in (".pt", ".parquet", ".json")]
    before = {p: p.stat().st_mtime_ns for p in tracked}
    result = run_cli("+sweeps=smoke", cwd=cwd, check=True)
    assert result.stdout.count("already completed at epoch") == 4
    assert "epoch 0  train_acc" not in result.stdout
    assert {p: p.stat().st_mtime_ns for p in tracked} == before


def test_command_line_overrides_win_over_the_sweep_file(tmp_path):
    run_cli("+sweeps=smoke", "seed=7", "max_epochs=10", "task=sub", cwd=tmp_path, check=True)
    summaries = completed_summaries(tmp_path / "outputs" / "sweeps" / "smoke")
    assert set(summaries) == {"max_epochs=10,seed=7,task=sub"}  # every override names the run
    assert summaries["max_epochs=10,seed=7,task=sub"]["final_epoch"] == 10


def test_progress_counts_only_this_sweeps_runs(tmp_path):
    run_cli("+sweeps=smoke", "task=add", "seed=0", "max_epochs=10", cwd=tmp_path, check=True)
    result = run_cli("+sweeps=smoke", "task=add", "seed=5,6", "max_epochs=10", cwd=tmp_path)
    assert len(completed_summaries(tmp_path / "outputs" / "sweeps" / "smoke")) == 3  # one folder
    assert result.stdout.splitlines()[-1] == "sweep: 2/2 completed, 0 running, 0 failed"


def test_sweep_jobs_are_every_combination_and_the_command_line_wins():
    config = OmegaConf.create(
        {
            "hydra": {
                "sweeper": {"params": {"task": "add,sub", "seed": "0,1"}},
                "overrides": {"task": ["seed=5,6", "+sweeps=smoke", "train_fraction=range(1,3)"]},
            }
        }
    )
    assert sweep_jobs(config) == [
        [f"task={task}", f"seed={seed}", "+sweeps=smoke", f"train_fraction={fraction}"]
        for task in ("add", "sub")
        for seed in (5, 6)
        for fraction in (1, 2)
    ]


def test_smoke_sweep_on_the_local_parallel_launcher(tmp_path):
    # threads=0 (the sweep file says 1): each job gets cores / n_jobs threads
    result = run_cli("+sweeps=smoke", SHORT, "hydra/launcher=parallel", "threads=0", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summaries = completed_summaries(tmp_path / "outputs" / "sweeps" / "smoke")
    assert set(summaries) == SHORT_SMOKE_RUNS
    for summary in summaries.values():
        assert summary["status"] == "completed"
        assert summary["threads"] == 1  # cores / n_jobs with n_jobs = cores
    assert "Joblib.Parallel(n_jobs=-1" in result.stdout and "is launching 4 jobs" in result.stdout


PARALLEL_SWEEP = [
    *TINY_OVERRIDES,
    "max_epochs=80",
    "seed=0,1",
    "hydra/launcher=parallel",
    "hydra.launcher.n_jobs=2",
    "hydra.sweep.dir=sweep",
    "hydra.sweep.subdir=seed_${seed}",
    "-m",
]


def alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie that no one reaps does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_killing_a_parallel_sweep_stops_its_workers_and_the_rerun_resumes_both(tmp_path, signum):
    driver = subprocess.Popen(
        [sys.executable, "-m", "grokking.train", *PARALLEL_SWEEP],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    runs = [RunDir(tmp_path / "sweep" / f"seed_{seed}") for seed in (0, 1)]
    deadline = time.monotonic() + 120
    while not all(run.has_checkpoint("last") and run.is_locked() for run in runs):
        assert driver.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    workers = [json.loads((run.path / ".lock").read_text())["pid"] for run in runs]
    driver.send_signal(signum)
    driver.wait()
    deadline = time.monotonic() + 5
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in workers)
    for run in runs:  # stopped as SIGTERM stops a run
        assert run.read_summary()["status"] == "interrupted"
        assert "SIGTERM at epoch" in (run.path / "train.log").read_text()
    run_cli(*PARALLEL_SWEEP, cwd=tmp_path, check=True)
    for run in runs:
        assert run.status() == "completed" and run.read_summary()["final_epoch"] == 80
        assert "resuming" in (run.path / "train.log").read_text()


def test_a_bad_value_in_a_sweep_fails_before_any_job(tmp_path):
    result = run_cli("+sweeps=smoke", "train_fraction=0.5,1.5", cwd=tmp_path)
    assert result.returncode == 2
    assert "error: sweep job 1 (task=add seed=0 +sweeps=smoke train_fraction=1.5)" in result.stderr
    assert "train_fraction: must lie in (0, 1), got 1.5; nothing submitted" in result.stderr
    assert not (tmp_path / "outputs").exists()


def test_a_bad_sweep_file_fails_before_any_job(tmp_path):
    (tmp_path / "mine" / "sweeps").mkdir(parents=True)
    (tmp_path / "mine" / "sweeps" / "bad.yaml").write_text(
        "# @package _global_\nhydra:\n  mode: MULTIRUN\n  sweeper:\n    params:\n"
        "      task: add,mul\n"
    )
    result = run_cli("--config-dir", str(tmp_path / "mine"), "+sweeps=bad", cwd=tmp_path)
    assert result.returncode == 2
    assert "error: sweep job 1 (task=mul +sweeps=bad)" in result.stderr
    assert "task: no option 'mul'; allowed: add, div," in result.stderr
    assert not (tmp_path / "outputs").exists()


# --- SLURM -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_smoke_sweep_on_a_real_slurm_cluster(tmp_path, slurm_cluster):
    result = run_cli(
        "+sweeps=smoke", SHORT, "hydra/launcher=slurm", cwd=tmp_path, check=True, timeout=600
    )
    sweep = tmp_path / "outputs" / "sweeps" / "smoke"
    summaries = completed_summaries(sweep)
    assert set(summaries) == SHORT_SMOKE_RUNS
    assert all(s["status"] == "completed" and s["threads"] == 1 for s in summaries.values())
    assert "Submitit 'slurm' sweep output dir" in result.stdout + result.stderr
    job_ids = {p.name.split("_")[0] for p in (sweep / ".submitit").glob("[0-9]*")}
    states = final_states(job_ids)
    assert len(states) == 4 and set(states) == {"COMPLETED"}


def final_states(job_ids, *history, timeout=60) -> list[str]:
    """The jobs' states from SLURM accounting, once it has caught up (it lags the jobs)."""
    deadline = time.monotonic() + timeout
    while True:
        states = subprocess.run(
            ["sacct", "-n", "-X", *history, "-o", "State", "-j", ",".join(sorted(job_ids))],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        settled = states and not {"PENDING", "RUNNING"} & set(states) and states[-1] != "REQUEUED"
        if settled or time.monotonic() > deadline:
            return states
        time.sleep(0.5)


def wait_for_epoch(sweep: Path, epoch: int, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for summary in sweep.glob("*/summary.json"):
            try:
                if json.loads(summary.read_text())["final_epoch"] >= epoch:
                    return summary.parent
            except (OSError, ValueError):
                pass
        time.sleep(0.2)
    raise TimeoutError(f"no run under {sweep} reached epoch {epoch}")


@pytest.mark.slow
def test_a_preempted_slurm_job_is_requeued_and_ends_as_if_uninterrupted(tmp_path, slurm_cluster):
    run = ["+sweeps=smoke", "task=add", "seed=0", "max_epochs=120", "threads=1", "save_every_s=0"]
    driver = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "grokking.train",
            *run,
            "hydra/launcher=slurm",
            "hydra.sweep.dir=slurm",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    run_dir = wait_for_epoch(tmp_path / "slurm", 40)
    (job,) = [p.name for p in (tmp_path / "slurm" / ".submitit").glob("[0-9]*")]
    subprocess.run(["scancel", "--signal=USR2", job], check=True)  # what preemption sends
    output, _ = driver.communicate(timeout=600)
    assert driver.returncode == 0, output
    log = (run_dir / "train.log").read_text()
    assert "SIGUSR2 at epoch" in log and "saved last.pt" in log
    assert f"resuming {run_dir}" in log
    history = final_states([job], "-D")  # -D: every record of a requeued job
    assert "REQUEUED" in history and history[-1] == "COMPLETED"

    run_cli(*run, "hydra.sweep.dir=local", cwd=tmp_path, check=True)  # the same run, unbroken
    slurm, local = RunDir(run_dir), RunDir(tmp_path / "local" / run_dir.name)
    assert slurm.read_summary()["status"] == local.read_summary()["status"] == "completed"
    pd.testing.assert_frame_equal(
        slurm.read_metrics().drop(columns="wall_s"),
        local.read_metrics().drop(columns="wall_s"),
        check_exact=True,
    )
    pd.testing.assert_frame_equal(
        slurm.read_matrix_lar(), local.read_matrix_lar(), check_exact=True
    )
