"""The reproduction scripts run end to end (on a tiny configuration, on the CPU)."""

import os
import subprocess
import tarfile

import pytest
from conftest import REPO, completed_summaries

TINY = [
    "task.p=11",
    "model.d_model=32",
    "model.n_heads=2",
    "model.d_ff=64",
    "max_epochs=2",
    "eval_every=2",
    "threads=1",
    "save_every_s=0",
    "seed=0",  # one seed of each sweep: every sweep and every pack still runs
]


@pytest.mark.slow
def test_gpu_reproduction_script_runs_every_sweep_and_packs_the_page_inputs(tmp_path):
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu-reproduction.sh"), *TINY],
        env=os.environ | {"OUT": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    sizes = {"table1_ops": 12, "train_fraction": 4, "batch_size": 5, "batch_size_grid": 8}
    for sweep, runs in sizes.items():
        summaries = completed_summaries(tmp_path / "sweeps" / sweep)
        assert len(summaries) == runs and {s["status"] for s in summaries.values()} == {"completed"}
    assert "packed launcher: 12 runs in 3 packs" in result.stdout + result.stderr
    assert (tmp_path / "results" / "gpu_table1" / "table1.md").is_file()
    assert "wall time: the whole protocol" in result.stdout
    with tarfile.open(tmp_path / "gpu-reproduction.tar.gz") as archive:
        names = archive.getnames()
    assert not [name for name in names if name.endswith(".pt")]
    assert "results/gpu_table1/table1.md" in names
    assert sum(name.endswith("/summary.json") for name in names) == sum(sizes.values())
