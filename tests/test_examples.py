import math
import subprocess
import sys

from conftest import REPO


def test_lar_on_your_model_example_runs_and_shows_lar_rising_from_one_half():
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / "lar_on_your_model.py")],
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
