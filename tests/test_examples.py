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
    rows = {line.split()[0]: line.split() for line in lines[1:5]}
    assert set(rows) == {"0", "2.linear1", "2.linear2", "4"}
    for name, row in rows.items():
        assert abs(float(row[5]) - 0.5) < 0.05, name  # ≈ 1/2 at initialisation
    assert float(rows["4"][4]) > 0.7  # the trained head aligns with its inputs
    assert lines[5].startswith("head: LAR ")
