import os
import subprocess
import sys
from pathlib import Path

import pytest

from grokking.config import TrainConfig
from grokking.model import ModelConfig

REPO = Path(__file__).resolve().parents[1]

# A run that trains in a second or two: p = 11, a narrow model, small batches.
TINY_OVERRIDES = [
    "task.p=11",
    "model.d_model=32",
    "model.n_heads=2",
    "model.d_ff=64",
    "batch_size=16",
    "eval_every=5",
    "max_epochs=20",
    "threads=1",
]


def tiny_config(**fields) -> TrainConfig:
    """TrainConfig for a tiny run; `fields` override it, nested ones as "task__p"."""
    top = {k: v for k, v in fields.items() if "__" not in k}
    cfg = TrainConfig(
        **{
            "model": ModelConfig(d_model=32, n_heads=2, d_ff=64),
            "batch_size": 16,
            "eval_every": 5,
            "max_epochs": 20,
            "threads": 1,
        }
        | top
    )
    cfg.task.p = 11
    for key, value in fields.items():
        if "__" in key:
            parent, leaf = key.split("__")
            setattr(getattr(cfg, parent), leaf, value)
    return cfg


def run_cli(*args, cwd, module="grokking.train", timeout=300, check=False):
    """Run `python -m <module> args...` in `cwd`; returns the CompletedProcess (text)."""
    env = os.environ | {"HYDRA_FULL_ERROR": "0"}
    result = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture
def tiny_overrides():
    return list(TINY_OVERRIDES)
