"""Packed training: R runs as one stacked model end exactly as R single runs would."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import completed_summaries, run_cli, tiny_config

from grokking.algorithmic import train, train_pack
from grokking.algorithmic.build import build, load_model, run_config
from grokking.algorithmic.config import Precision, TaskConfig, TrainConfig
from grokking.algorithmic.engine import Engine
from grokking.algorithmic.model import ModelConfig, Transformer
from grokking.algorithmic.packing import pack_key
from grokking.algorithmic.stacked import MatrixSums, StackedTransformer
from grokking.lar import lar
from grokking.runs.packs import plan_packs
from grokking.runs.rundir import RunDir

# Small runs (p = 11, 90 % train data); addition with seed 0 groks near epoch 150-200 (where
# exactly depends on the CPU), well within its budget of 600. The members differ in task, seed,
# budget and stop rule, so they stop at different epochs.
SMALL = dict(task__p=11, train_fraction=0.9, optim__lr=3e-3, eval_every=10)
MEMBERS = [
    tiny_config(task__name="add", seed=0, max_epochs=600, stop_factor=1.5, **SMALL),
    tiny_config(task__name="add", seed=1, max_epochs=60, **SMALL),
    tiny_config(task__name="sub", seed=2, max_epochs=100, **SMALL),
]


def assert_same_tables(a: RunDir, b: RunDir, atol: float) -> None:
    for read in (RunDir.read_metrics, RunDir.read_matrix_lar):
        ta, tb = read(a), read(b)
        ta, tb = (t.drop(columns=["wall_s"], errors="ignore") for t in (ta, tb))
        numeric = ta.select_dtypes("number").columns
        pd.testing.assert_frame_equal(ta.drop(columns=numeric), tb.drop(columns=numeric))
        np.testing.assert_allclose(ta[numeric], tb[numeric], rtol=0, atol=atol)


@pytest.fixture(scope="module")
def pack_and_singles(tmp_path_factory):
    root = tmp_path_factory.mktemp("pack")
    packed = train_pack([(cfg, root / f"pack{i}") for i, cfg in enumerate(MEMBERS)])
    singles = [train(cfg, root / f"single{i}") for i, cfg in enumerate(MEMBERS)]
    runs = [(RunDir(root / f"pack{i}"), RunDir(root / f"single{i}")) for i in range(len(MEMBERS))]
    return packed, singles, runs


def test_a_pack_equals_its_members_run_alone(pack_and_singles):
    packed, singles, runs = pack_and_singles
    assert any(s["grokking_epoch"] for s in singles), "the comparison needs a run that groks"
    for pack_summary, single_summary, (pack_run, single_run) in zip(
        packed, singles, runs, strict=True
    ):
        for key in ("status", "memorization_epoch", "grokking_epoch", "final_epoch"):
            assert pack_summary[key] == single_summary[key], key
        # every metric of every evaluation, per-matrix LAR included: absolute tolerance 1e-4
        assert_same_tables(pack_run, single_run, atol=1e-4)


def test_members_stop_at_their_own_epochs(pack_and_singles):
    packed, _, runs = pack_and_singles
    # which epoch a run groks at depends on the CPU's floating-point kernels; that the first
    # member groks well within its budget (its stop rule, 1.5 x its own grokking epoch, then
    # decides where it ends) and that each member ends by its own rule do not
    assert packed[0]["grokking_epoch"] is not None
    for summary, (run, _) in zip(packed, runs, strict=True):
        assert run.read_metrics()["epoch"].iloc[-1] == summary["final_epoch"]
        assert run.load_checkpoint("final")["epoch"] == summary["final_epoch"]
        assert summary["status"] == "completed"
        grokked = summary["grokking_epoch"]
        factor = summary["config"]["stop_factor"]
        expected = min(summary["config"]["max_epochs"], factor * grokked if grokked else 10**9)
        assert summary["final_epoch"] == expected


def test_a_members_checkpoint_loads_into_transformer_and_gives_the_recorded_lar(
    pack_and_singles,
):
    packed, _, runs = pack_and_singles
    run = runs[2][0]
    model = load_model(run, "final")
    (train_x, *_), _ = build(run_config(run))
    inputs = {}
    hooks = [
        module.register_forward_hook(lambda m, args, out, name=name: inputs.update({name: args[0]}))
        for name, module in model.named_modules()
        if name in ("unembed", "blocks.1.mlp.fc_in")
    ]
    with torch.no_grad():
        model(train_x)
    for hook in hooks:
        hook.remove()
    final = packed[2]["final_epoch"]
    recorded = run.read_metrics().set_index("epoch").loc[final, "lar"]
    assert lar(model.unembed.weight, inputs["unembed"]) == pytest.approx(recorded, abs=1e-6)
    matrices = run.read_matrix_lar().query("epoch == @final").set_index("name")["lar"]
    weight = model.blocks[1].mlp.fc_in.weight
    assert lar(weight, inputs["blocks.1.mlp.fc_in"]) == pytest.approx(
        matrices["blocks.1.mlp.fc_in"], abs=1e-6
    )


def test_rerunning_a_pack_skips_completed_members(pack_and_singles, caplog):
    packed, _, runs = pack_and_singles
    stamps = {p: p.stat().st_mtime_ns for run, _ in runs for p in run.path.rglob("*.p*")}
    again = train_pack([(cfg, run.path) for cfg, (run, _) in zip(MEMBERS, runs, strict=True)])
    assert again == packed
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


@pytest.mark.parametrize("n_layers", [1, 2, 3])
def test_training_computes_the_last_layer_at_the_last_position_only_the_same_function(n_layers):
    """Training's forward (last layer at the '=' position only) gives the logits and gradients
    of the full forward (every position of every layer, which an evaluation recording LAR runs)
    and of `Transformer` itself."""
    torch.manual_seed(0)
    members = [Transformer(13, 11, ModelConfig(n_layers=n_layers)) for _ in range(2)]
    tokens = torch.randint(0, 13, (2, 64, 4))
    results = []
    for full in (False, True):
        stacked = StackedTransformer(members)
        logits = stacked(tokens, MatrixSums(()) if full else None)
        logits.square().sum().backward()
        results.append((logits.detach(), [p.grad for p in stacked.parameters()]))
    (trimmed, trimmed_grads), (full, full_grads) = results
    alone = torch.stack([member(tokens[i]) for i, member in enumerate(members)])
    torch.testing.assert_close(trimmed, full, rtol=0, atol=1e-5)
    torch.testing.assert_close(trimmed, alone.detach(), rtol=0, atol=1e-5)
    for grad, full_grad in zip(trimmed_grads, full_grads, strict=True):
        torch.testing.assert_close(grad, full_grad, rtol=1e-4, atol=1e-5)


def test_runs_of_other_shapes_are_not_packed_together():
    cfgs = [
        TrainConfig(task=TaskConfig(name, p), seed=seed)
        for name, p in (("add", 97), ("x3_xy", 97), ("div", 97), ("s5_xyx", None))
        for seed in range(3)
    ]
    packs = plan_packs(list(range(len(cfgs))), cfgs, pack_key, max_size=4)
    # add and x3_xy share every shape; div has 97·96 examples; S5 another vocabulary
    assert packs == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]
    assert plan_packs(list(range(6)), cfgs[:6], pack_key, max_size=5) == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(ValueError, match="agree in shapes"):
        train_pack([(cfgs[0], "a"), (cfgs[6], "b")])


# --- precision ---------------------------------------------------------------------------------


def test_lar_sums_stay_float64_whatever_the_precision():
    rows = (torch.randn(1, 64, 32) * 100).to(
        torch.float16
    )  # row norms ~ 800: fp16 squares overflow
    weight = torch.randn(1, 8, 32).to(torch.float16)
    sums = MatrixSums(["m"], grams=["m"])
    sums.add("m", rows, rows.float() @ weight.float().mT)
    exact = rows.double().square().sum()
    assert sums.sum_x2["m"].dtype == torch.float64
    assert sums.sum_x2["m"].item() == pytest.approx(exact.item(), rel=1e-6)
    assert sums.grams["m"].dtype == torch.float64


def test_bf16_trains_on_the_cpu_and_measures_lar_close_to_fp32():
    results = {}
    for precision in (Precision.fp32, Precision.bf16):
        engine = Engine([tiny_config(precision=precision)], torch.device("cpu"))
        for _ in range(3):
            engine.advance()
        results[precision] = engine.evaluate()[0]
    fp32, bf16 = results[Precision.fp32], results[Precision.bf16]
    assert all(np.isfinite(v["lar"]) for v in bf16["matrix_lar"].values())
    assert bf16["lar"] == pytest.approx(fp32["lar"], abs=0.02)
    assert bf16["lar"] != fp32["lar"]  # it really ran in bfloat16


# --- through Hydra ---------------------------------------------------------------------------

PACKED_SWEEP = [
    "+sweeps=smoke",
    "hydra/launcher=packed",
    "max_epochs=60",
    "threads=1",
    "save_every_s=0",
]


@pytest.fixture(scope="module")
def packed_sweep(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("packed_sweep")
    result = run_cli(*PACKED_SWEEP, "hydra.sweep.dir=whole", cwd=cwd, check=True)
    return cwd / "whole", result


def test_the_packed_launcher_trains_a_sweep_in_one_pack(packed_sweep):
    sweep, result = packed_sweep
    summaries = completed_summaries(sweep)
    assert len(summaries) == 4 and all(s["status"] == "completed" for s in summaries.values())
    output = result.stdout + result.stderr
    assert "packed launcher: 4 runs in 1 packs" in output
    assert "sweep: 4/4 completed" in output
    for run_dir in sweep.glob("*=*"):
        assert (run_dir / ".hydra" / "config.yaml").is_file()
        assert f"{run_dir.name}: epoch 60" in output  # every progress line names its run


def test_the_packed_launcher_refuses_a_bad_job_before_training(tmp_path):
    result = run_cli(*PACKED_SWEEP, "batch_size=16,0", "hydra.sweep.dir=bad", cwd=tmp_path)
    assert result.returncode == 2
    assert "batch_size: must be an integer ≥ 1, got 0" in result.stderr
    assert not list(tmp_path.rglob("summary.json"))


def wait_for_epoch(sweep, epoch, process, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = [RunDir(p.parent) for p in sweep.glob("*/summary.json")]
        if len(runs) == 4 and all(
            r.read_summary()["final_epoch"] >= epoch and r.has_checkpoint("last") for r in runs
        ):
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    raise TimeoutError(f"{sweep} did not reach epoch {epoch}")


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_pack_resumes_to_what_an_uninterrupted_pack_gives(tmp_path, packed_sweep, signum):
    uninterrupted, _ = packed_sweep
    command = [sys.executable, "-m", "grokking.train", *PACKED_SWEEP, "hydra.sweep.dir=killed"]
    process = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    wait_for_epoch(tmp_path / "killed", 20, process)
    process.send_signal(signum)
    process.communicate(timeout=60)
    expected = -signum if signum == signal.SIGKILL else 128 + signum
    assert process.returncode == expected
    resumed = run_cli(*PACKED_SWEEP, "hydra.sweep.dir=killed", cwd=tmp_path, check=True)
    assert "resuming" in resumed.stdout + resumed.stderr
    for run_dir in uninterrupted.glob("*=*"):
        killed = RunDir(tmp_path / "killed" / run_dir.name)
        assert killed.status() == "completed"
        assert_same_tables(killed, RunDir(run_dir), atol=0)  # bit for bit
        a, b = (r.load_checkpoint("final")["model"] for r in (killed, RunDir(run_dir)))
        assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_the_packed_launcher_on_a_real_slurm_cluster(tmp_path, slurm_cluster, packed_sweep):
    from test_sweeps import final_states

    slurm_options = ["gpus_per_node=0", "cpus_per_task=1", "mem_gb=1", "timeout_min=10"]
    run_cli(
        *PACKED_SWEEP,
        "hydra/launcher=packed_slurm",
        *(f"hydra.launcher.slurm.{option}" for option in slurm_options),
        "hydra.sweep.dir=slurm",
        cwd=tmp_path,
        check=True,
        timeout=600,
    )
    summaries = completed_summaries(tmp_path / "slurm")
    assert len(summaries) == 4
    assert all(s["status"] == "completed" and s["threads"] == 1 for s in summaries.values())
    job_ids = {p.name.split("_")[0] for p in (tmp_path / "slurm" / ".submitit").glob("[0-9]*")}
    assert len(job_ids) == 1 and final_states(job_ids) == ["COMPLETED"]  # one job: one pack
    local, _ = packed_sweep
    for run_dir in local.glob("*=*"):
        assert_same_tables(RunDir(tmp_path / "slurm" / run_dir.name), RunDir(run_dir), atol=0)


@pytest.mark.slow
def test_a_preempted_pack_job_is_requeued_and_ends_as_if_uninterrupted(tmp_path, slurm_cluster):
    from test_sweeps import final_states
    from test_sweeps import wait_for_epoch as wait_for_any_run

    sweep = [*PACKED_SWEEP, "task=add", "seed=0,1", "max_epochs=120"]
    slurm = ["hydra/launcher=packed_slurm", "hydra.launcher.slurm.gpus_per_node=0"]
    slurm += ["hydra.launcher.slurm.mem_gb=1", "hydra.launcher.slurm.cpus_per_task=1"]
    driver = subprocess.Popen(
        [sys.executable, "-m", "grokking.train", *sweep, *slurm, "hydra.sweep.dir=slurm"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    wait_for_any_run(tmp_path / "slurm", 40)
    (job,) = [p.name for p in (tmp_path / "slurm" / ".submitit").glob("[0-9]*")]
    subprocess.run(["scancel", "--signal=USR2", job], check=True)  # what preemption sends
    output, _ = driver.communicate(timeout=600)
    assert driver.returncode == 0, output
    history = final_states([job], "-D")  # -D: every record of a requeued job
    assert "REQUEUED" in history and history[-1] == "COMPLETED"

    run_cli(*sweep, "hydra.sweep.dir=local", cwd=tmp_path, check=True)  # the same pack, unbroken
    for run_dir in (tmp_path / "local").glob("*=*"):
        preempted = RunDir(tmp_path / "slurm" / run_dir.name)
        log = (preempted.path / "train.log").read_text()
        assert "SIGUSR2 at epoch" in log and f"resuming slurm/{run_dir.name} from epoch" in log
        assert preempted.status() == "completed"
        assert_same_tables(preempted, RunDir(run_dir), atol=0)


def test_a_pack_whose_run_folder_is_in_use_is_refused_in_one_line(tmp_path):
    busy = RunDir(tmp_path / "sweep" / "max_epochs=60,seed=0,task=add")
    with busy.lock():
        result = run_cli(*PACKED_SWEEP, "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert result.returncode == 1
    assert f"error: sweep/{busy.path.name} is in use by pid {os.getpid()}" in result.stderr
    assert "Traceback" not in result.stderr
