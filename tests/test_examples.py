import math
import subprocess
import sys

import pytest
from conftest import REPO


def test_lar_on_your_model_example_runs_and_shows_lar_rising_from_one_half():
    result = subprocess.run(  # 50 steps of its 200: the head's LAR is past 0.79 after 40
        [sys.executable, str(REPO / "examples" / "lar_on_your_model.py"), "50"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["name", "in_features", "out_features", "rows", "lar", "lar_at_init"]
    rows = {line.split()[0]: line.split() for line in lines[1:6]}
    assert list(rows) == ["0", "2.self_attn.out_proj", "2.linear1", "2.linear2", "4"]
    silent = rows.pop("2.self_attn.out_proj")  # MultiheadAttention never calls it
    assert silent[3] == "0" and math.isnan(float(silent[4]))
    assert lines[6].startswith("2.self_attn.out_proj: forward never called")
    for name, row in rows.items():
        assert abs(float(row[5]) - 0.5) < 0.05, name  # ≈ 1/2 at initialisation
    assert float(rows["4"][4]) > 0.7  # the trained head aligns with its inputs
    assert lines[7].startswith("head: LAR ")


def run_example(name: str, *arguments) -> list[str]:
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / name), *map(str, arguments)],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    return result.stdout.splitlines()


def test_huggingface_trainer_example_logs_lar_at_each_logging_step(tmp_path):
    lines = [
        line for line in run_example("huggingface_trainer.py", tmp_path) if line[:5] == "step "
    ]
    assert [line.split()[1] for line in lines] == ["5", "10", "15", "20"]
    assert all(0.3 < float(line.split()[5]) < 1 and line.endswith("alarm 0") for line in lines)
    assert list(tmp_path.rglob("events.out.tfevents.*"))  # the TensorBoard reporter wrote


def test_lightning_example_logs_every_dense_layer(tmp_path):
    lines = run_example("lightning_module.py", tmp_path)
    assert lines[-7].split() == ["step", "lar", "lar/body.0", "lar/body.2", "lar_alarm"]
    assert [line.split()[0] for line in lines[-6:]] == ["0", "8", "16", "24", "32", "40"]
    assert (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").is_file()


@pytest.mark.parametrize("name", ["early_stopping_huggingface.py", "early_stopping_lightning.py"])
def test_early_stopping_examples_stop_before_the_budget_and_keep_an_earlier_step(name, tmp_path):
    stopped, why = run_example(name, tmp_path)[-2:]
    words = stopped.split()  # stopped at step S of 200 ..., kept step K
    step, kept = int(words[3]), int(words[-1])
    assert 0 < kept <= 0.6 * step < 0.6 * 200
    assert why.startswith("why: LAR's 10-value mean")
