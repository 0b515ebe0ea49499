import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import REPO, TINY_OVERRIDES, copies_after_each_evaluation, run_cli, tiny_config

from grokking.algorithmic import train, train_pack
from grokking.algorithmic.model import Transformer
from grokking.algorithmic.record import Events, GrokkingRecord, stop_reason
from grokking.algorithmic.tasks import make_dataset, split
from grokking.lar import lar
from grokking.runs.config import ConfigError, config_differences, to_dict
from grokking.runs.rundir import RunDir


def events_of(sequence, **fields):
    """Feed (epoch, train_acc, val_acc) evaluations to Events; return it and what fired when."""
    cfg, events, fired = tiny_config(**fields), Events(), []
    for epoch, train_acc, val_acc in sequence:
        fired += [(kind, epoch) for kind in events.update(epoch, train_acc, val_acc, cfg)]
    return events, fired


def test_events_memorization_then_grokking():
    events, fired = events_of(
        [(0, 0.1, 0.0), (20, 0.98, 0.1), (40, 0.995, 0.2), (60, 1.0, 0.5), (80, 1.0, 0.991)]
        + [(100, 1.0, 0.995), (120, 0.5, 0.2), (140, 1.0, 0.3)]
    )
    assert (events.memorization_epoch, events.grokking_epoch) == (40, 80)
    assert fired == [("memorization", 40), ("grokking", 80)]  # each fires once, in order


def test_events_grokking_at_once_has_no_memorization():
    events, fired = events_of([(0, 0.1, 0.1), (20, 1.0, 1.0), (40, 1.0, 0.5)])
    assert (events.memorization_epoch, events.grokking_epoch) == (None, 20)
    assert fired == [("grokking", 20)]


def test_events_follow_the_configured_thresholds():
    events, _ = events_of(
        [(20, 0.9, 0.1), (40, 0.9, 0.8)], memorization_threshold=0.9, grokking_threshold=0.8
    )
    assert (events.memorization_epoch, events.grokking_epoch) == (20, 40)


def test_stop_rule_three_times_grokking_or_budget():
    cfg = tiny_config(max_epochs=1000, stop_factor=3.0)
    grokked = Events(memorization_epoch=20, grokking_epoch=100)
    assert stop_reason(280, grokked, cfg) is None
    assert stop_reason(300, grokked, cfg) == "reached 3 x the grokking epoch"
    assert stop_reason(980, Events(), cfg) is None
    assert stop_reason(1000, Events(), cfg) == "reached max_epochs"


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    summary = train(tiny_config(max_epochs=120, eval_every=10), run_dir)
    return RunDir(run_dir), summary


def test_short_run_writes_every_documented_file(short_run):
    run, summary = short_run
    metrics = run.read_metrics()
    assert list(metrics.columns) == GrokkingRecord.METRIC_COLUMNS
    assert metrics["epoch"].tolist() == list(range(0, 121, 10))
    assert metrics["step"].tolist() == [4 * e for e in range(0, 121, 10)]  # 61 rows / 16
    matrices = run.read_matrix_lar()
    assert list(matrices.columns) == GrokkingRecord.MATRIX_COLUMNS
    assert len(matrices) == 13 * len(metrics)
    assert set(matrices["role"]) == {"q", "k", "v", "o", "fc_in", "fc_out", "unembed"}
    for kind in ("memorization", "final", "last"):
        assert run.has_checkpoint(kind)
    assert not run.has_checkpoint("grokking")  # p = 11 at this size memorizes only
    on_disk = json.loads((run.path / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert summary["status"] == "completed"
    assert summary["final_epoch"] == 120 and summary["grokking_epoch"] is None
    assert (summary["task"], summary["p"], summary["n_train"], summary["n_val"]) == (
        "add",
        11,
        60,
        61,
    )
    assert summary["config"] == to_dict(tiny_config(max_epochs=120, eval_every=10))
    assert run.load_checkpoint("memorization")["epoch"] == summary["memorization_epoch"]


def test_tiny_addition_run_reaches_full_train_accuracy(short_run):
    run, summary = short_run
    assert summary["final"]["train_acc"] == 1.0
    memorized = run.read_metrics().query("epoch == @summary['memorization_epoch']")
    assert memorized["train_acc"].item() >= 0.99


def test_lar_starts_near_one_half_and_rises(short_run):
    metrics = short_run[0].read_metrics()
    assert 0.4 < metrics["lar"].iloc[0] < 0.6
    assert metrics["lar"].iloc[-1] > 0.6


def test_recorded_lar_equals_lar_recomputed_from_checkpoint(short_run):
    run, summary = short_run
    cfg = tiny_config(max_epochs=120, eval_every=10)
    data = make_dataset("add", 11)
    train_idx, _ = split(data, cfg.train_fraction, cfg.split_seed)
    model = Transformer(data.vocab_size, data.n_classes, cfg.model)
    model.load_state_dict(run.load_checkpoint("final")["model"])
    inputs = {}

    def keep_input(name):
        def hook(module, args, output):
            inputs[name] = args[0]

        return hook

    hooks = [
        module.register_forward_hook(keep_input(name))
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
    ]
    with torch.no_grad():
        model(data.inputs[train_idx])
    for hook in hooks:
        hook.remove()
    final_metrics = run.read_metrics().iloc[-1]
    assert final_metrics["lar"] == pytest.approx(
        lar(model.unembed.weight, inputs["unembed"]), abs=1e-6
    )
    per_matrix = run.read_matrix_lar().query("epoch == 120").set_index("name")["lar"]
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            assert per_matrix[name] == pytest.approx(lar(module.weight, inputs[name]), abs=1e-6)


def test_nan_loss_marks_the_run_failed(tmp_path):
    from grokking.runs.loop import RunFailed

    with pytest.raises(RunFailed, match=r"loss is (nan|inf) at epoch (\d+)") as error:
        train(tiny_config(optim__lr=1e30), tmp_path)  # parameters blow up at once
    summary = RunDir(tmp_path).read_summary()
    assert summary["status"] == "failed" and summary["failure"] == str(error.value)
    assert summary["final_epoch"] <= 2
    assert RunDir(tmp_path).read_metrics()["epoch"].tolist() == [0]  # what was written is kept


def test_a_run_with_another_config_is_refused_untouched(short_run):
    run, _ = short_run
    before = (run.path / "summary.json").read_text()
    with pytest.raises(ConfigError, match=r"another config \(seed: 0 -> 1; split_seed: 0 -> 1\)"):
        train(tiny_config(max_epochs=120, eval_every=10, seed=1), run.path)
    assert (run.path / "summary.json").read_text() == before


def test_runtime_fields_do_not_count_as_config_changes():
    stored = to_dict(tiny_config())
    assert config_differences(stored, tiny_config(threads=2, device="cpu")) == []
    assert config_differences(stored, tiny_config(seed=3)) == ["seed: 0 -> 3", "split_seed: 0 -> 3"]
    # A run of a version without `stop` (or `regularize`) ran as their defaults do.
    older = {k: v for k, v in stored.items() if k not in ("stop", "regularize")}
    assert config_differences(older, tiny_config()) == []
    assert config_differences(older, tiny_config(stop="none")) == ["stop: 'validation' -> 'none'"]


# --- the command line -------------------------------------------------------------------------


def same_metrics(a: RunDir, b: RunDir):
    ma, mb = a.read_metrics().drop(columns="wall_s"), b.read_metrics().drop(columns="wall_s")
    pd.testing.assert_frame_equal(ma, mb, check_exact=True)
    pd.testing.assert_frame_equal(a.read_matrix_lar(), b.read_matrix_lar(), check_exact=True)


def wait_for_epoch(run: RunDir, epoch: int, process, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (
            run.exists()
            and run.read_summary()["final_epoch"] >= epoch
            and run.has_checkpoint("last")
        ):
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    raise TimeoutError(f"{run} did not reach epoch {epoch}")


LONG = [*TINY_OVERRIDES, "max_epochs=150"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("uninterrupted")
    run_cli(*LONG, "hydra.run.dir=run", cwd=cwd, check=True)
    return RunDir(cwd / "run")


def start(cwd):
    return subprocess.Popen(
        [sys.executable, "-m", "grokking.train", *LONG, "hydra.run.dir=run"],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_kill_9_then_resume_equals_uninterrupted(tmp_path, uninterrupted):
    process = start(tmp_path)
    run = RunDir(tmp_path / "run")
    wait_for_epoch(run, 30, process)
    process.kill()
    process.wait()
    assert run.status() == "interrupted" and run.read_summary()["final_epoch"] < 150
    resumed = run_cli(*LONG, "hydra.run.dir=run", cwd=tmp_path, check=True)
    assert "resuming" in resumed.stdout + resumed.stderr
    assert run.status() == "completed"
    same_metrics(run, uninterrupted)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR2])
def test_stop_signal_saves_and_exits_then_resumes(tmp_path, uninterrupted, signum):
    process = start(tmp_path)
    run = RunDir(tmp_path / "run")
    wait_for_epoch(run, 20, process)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signum, stderr
    assert "saved last.pt; rerun the same command to resume" in stdout + stderr
    stopped = run.read_summary()
    assert stopped["status"] == "interrupted"
    assert run.load_checkpoint("last")["epoch"] == stopped["final_epoch"] < 150
    run_cli(*LONG, "hydra.run.dir=run", cwd=tmp_path, check=True)
    same_metrics(run, uninterrupted)


def test_rerunning_a_completed_run_does_nothing_and_says_so(uninterrupted):
    def stamps():  # what the trainer writes (Hydra rewrites .hydra/ and appends to train.log)
        files = [*uninterrupted.path.glob("*.parquet"), *uninterrupted.path.glob("checkpoints/*")]
        return {p: p.stat().st_mtime_ns for p in [*files, uninterrupted.path / "summary.json"]}

    before = stamps()
    assert len(before) == 6  # 2 tables, summary; final, last and memorization checkpoints
    result = run_cli(*LONG, "hydra.run.dir=run", cwd=uninterrupted.path.parent, check=True)
    assert "already completed at epoch 150; nothing to do" in result.stdout + result.stderr
    assert stamps() == before


def test_default_run_directory_is_named_by_the_overrides(tmp_path):
    result = run_cli(*TINY_OVERRIDES, "max_epochs=5", "seed=2", cwd=tmp_path, check=True)
    assert "Callback" not in result.stderr  # the pre-run check resolved the folder name itself
    (run_dir,) = (tmp_path / "outputs" / "runs").iterdir()
    assert "seed=2" in run_dir.name and "threads" not in run_dir.name
    assert RunDir(run_dir).read_summary()["seed"] == 2


@pytest.mark.parametrize(
    "override, message",
    [
        ("train_fraction=1.5", "error: train_fraction: must lie in (0, 1), got 1.5"),
        ("train_fraction=0", "error: train_fraction: must lie in (0, 1), got 0"),
        ("batch_size=0", "error: batch_size: must be an integer ≥ 1, got 0"),
        ("eval_every=0", "error: eval_every: must be an integer ≥ 1, got 0"),
        ("task=div task.p=12", "error: task.p: task 'div' divides modulo p, so p must be prime"),
        ("+foo=1", "error: foo: not a config key"),
        ("task=mul", "error: task: no option 'mul'; allowed: add, div,"),
        ("bogus=1", "error: bogus: not a config key; allowed: task,"),
    ],
)
def test_bad_config_fails_before_training_with_a_clear_message(refusal, override, message):
    code, stderr = refusal(*TINY_OVERRIDES, *override.split())
    assert code == 2 and stderr.startswith(message)
    assert not Path("outputs").exists()  # refused before Hydra wrote anything


def test_refused_command_leaves_an_existing_run_untouched(uninterrupted):
    cwd = uninterrupted.path.parent
    files = {p: p.read_bytes() for p in uninterrupted.path.rglob("*") if p.is_file()}
    result = run_cli(*LONG, "hydra.run.dir=run", "seed=5", cwd=cwd)
    assert result.returncode == 2
    assert "holds a run with another config (seed: 0 -> 5; split_seed: 0 -> 5)" in result.stderr
    assert {p: p.read_bytes() for p in uninterrupted.path.rglob("*") if p.is_file()} == files


# --- one process per folder, damaged and full disks (the trainer's side) -----------------------


def test_a_second_process_on_a_running_folder_is_refused_at_once(tmp_path):
    command = [*TINY_OVERRIDES, "max_epochs=100000", "hydra.run.dir=run"]
    process = subprocess.Popen([sys.executable, "-m", "grokking.train", *command], cwd=tmp_path)
    run = RunDir(tmp_path / "run")
    wait_for_epoch(run, 10, process)
    began = time.monotonic()
    other = run_cli(*command, cwd=tmp_path)
    assert time.monotonic() - began < 60  # refused, not waiting for the run
    process.kill()
    process.wait()
    assert other.returncode == 1
    assert f"error: {run.path} is in use by pid {process.pid}" in other.stderr


def test_a_last_checkpoint_of_another_config_is_refused_naming_the_fields(tmp_path):
    cfg = tiny_config(max_epochs=10)
    train(cfg, tmp_path)
    (tmp_path / "summary.json").unlink()  # as after a kill -9 before the first summary
    with pytest.raises(
        ConfigError, match=r"last.pt holds a run with another config \(seed: 0 -> 1"
    ):
        train(tiny_config(max_epochs=10, seed=1), tmp_path)


def test_a_damaged_last_checkpoint_says_which_file_and_what_to_do(tmp_path):
    run_cli(*TINY_OVERRIDES, "max_epochs=10", "hydra.run.dir=run", cwd=tmp_path, check=True)
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    (tmp_path / "run" / "summary.json").unlink()  # so the run is not "already completed"
    last.write_bytes(last.read_bytes()[:1000])
    result = run_cli(*TINY_OVERRIDES, "max_epochs=10", "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 1
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert str(last) in line and "move it aside" in line
    assert "Traceback" not in result.stderr


def test_leftover_temporary_files_are_removed_at_the_next_start(tmp_path):
    leftover = tmp_path / "checkpoints" / ".last.pt.x1y2.tmp"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half a checkpoint")
    train(tiny_config(max_epochs=5), tmp_path)
    assert not leftover.exists()


def test_a_full_disk_fails_the_run_keeps_the_last_checkpoint_and_resumes_later(
    tmp_path, monkeypatch
):
    from grokking.runs.rundir import DiskFull

    cfg = tiny_config(max_epochs=40)
    complete = train(cfg, tmp_path / "whole")
    real_save = RunDir.save_checkpoint

    def full_after_epoch_20(self, name, state):
        if state["epoch"] > 20:
            raise DiskFull(28, f"the disk is full: could not write {self.checkpoint_path(name)}")
        real_save(self, name, state)

    monkeypatch.setattr(RunDir, "save_checkpoint", full_after_epoch_20)
    with pytest.raises(DiskFull, match="the disk is full"):
        train(cfg, tmp_path / "run")
    run = RunDir(tmp_path / "run")
    assert run.status() == "failed" and "disk is full" in run.read_summary()["failure"]
    assert run.load_checkpoint("last")["epoch"] == 20  # the last good one, intact
    monkeypatch.setattr(RunDir, "save_checkpoint", real_save)  # space freed
    resumed = train(cfg, tmp_path / "run")
    assert resumed["status"] == "completed"
    same_metrics(run, RunDir(tmp_path / "whole"))
    assert resumed["final"] == complete["final"]


@pytest.mark.parametrize("size", [1, 2], ids=["single", "pack"])
def test_a_kill_9_after_any_evaluation_resumes_to_the_uninterrupted_result(
    tmp_path, monkeypatch, size
):
    """A kill -9 leaves the run folders as they were at that instant: a copy of them after each
    evaluation is what a kill there leaves. The first holds the last.pt of epoch 0, saved before
    the optimizer's first step: all a kill in a run's first minute finds (save_every_s=60)."""
    cfgs = [tiny_config(max_epochs=15, seed=seed) for seed in range(size)]
    with copies_after_each_evaluation(monkeypatch, tmp_path / "whole") as killed:
        train_pack([(cfg, tmp_path / "whole" / str(i)) for i, cfg in enumerate(cfgs)])
    assert len(killed) == 4  # epochs 0, 5, 10, 15
    for folder in killed:
        resumed = train_pack([(cfg, folder / str(i)) for i, cfg in enumerate(cfgs)])
        assert all(summary["status"] == "completed" for summary in resumed)
        for i in range(size):
            same_metrics(RunDir(folder / str(i)), RunDir(tmp_path / "whole" / str(i)))


# --- following a run ---------------------------------------------------------------------------


def test_train_log_has_one_line_per_evaluation(short_run):
    run, _ = short_run
    lines = (run.path / "train.log").read_text().splitlines()
    evaluations = [line for line in lines if " - epoch " in line]
    assert len(evaluations) == len(run.read_metrics())


def test_checkpoint_every_keeps_the_model_every_n_epochs(tmp_path):
    train(tiny_config(max_epochs=12, checkpoint_every=4), tmp_path)
    run = RunDir(tmp_path)
    kept = sorted(p.name for p in run.checkpoint_dir.glob("epoch_*.pt"))
    assert kept == ["epoch_12.pt", "epoch_4.pt", "epoch_8.pt"]
    assert run.load_checkpoint("epoch_8")["epoch"] == 8
    assert torch.equal(
        run.load_checkpoint("epoch_12")["model"]["unembed.weight"],
        run.load_checkpoint("final")["model"]["unembed.weight"],
    )


def test_resume_points_are_throttled_by_save_every_s(tmp_path):
    train(tiny_config(max_epochs=40, save_every_s=3600), tmp_path)
    run = RunDir(tmp_path)
    assert run.read_metrics()["epoch"].tolist() == list(range(0, 41, 5))  # all, at the end
    assert run.load_checkpoint("last")["epoch"] == 40


def test_a_tensorboard_logger_receives_every_evaluation(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_cli(
        *TINY_OVERRIDES, "max_epochs=10", "logger=tensorboard", "hydra.run.dir=run", cwd=tmp_path
    )
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    metrics = RunDir(tmp_path / "run").read_metrics()
    logged = {event.step: event.value for event in events.Scalars("lar")}
    assert sorted(logged) == metrics["epoch"].tolist()
    assert logged[10] == pytest.approx(metrics["lar"].iloc[-1], rel=1e-6)
    assert len(events.Scalars("matrix_lar/blocks.1.mlp.fc_out")) == len(metrics)


def test_train_from_a_notebook_shows_a_bar_and_the_log(tmp_path):
    import nbformat
    from nbclient import NotebookClient

    code = (
        "import sys; sys.path.insert(0, {tests!r})\n"
        "from conftest import tiny_config\n"
        "from grokking.algorithmic import train\n"
        "summary = train(tiny_config(max_epochs=10), {run!r})"
    ).format(tests=str(REPO / "tests"), run=str(tmp_path / "run"))
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    NotebookClient(notebook, timeout=120, kernel_name="python3").execute()
    shown = "".join(
        output.get("text", "") + str(output.get("data", "")) for output in notebook.cells[0].outputs
    )
    assert "run: stopping at epoch 10" in shown  # the log reaches the notebook
    assert "10/10" in shown  # and so does the progress bar
