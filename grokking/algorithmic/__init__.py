"""The algorithmic (grokking) family: the 12 tasks of Power et al., the small transformer, packs
of runs trained as one stacked model, epochs, memorization and grokking events and the stop rule.
`FAMILY` is what the run machinery (grokking.runs) trains; `train` and `train_pack` are the loop
bound to it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from grokking.algorithmic.config import TrainConfig, validate
from grokking.algorithmic.engine import Engine
from grokking.algorithmic.packing import pack_key
from grokking.algorithmic.record import GrokkingRecord
from grokking.runs import loop
from grokking.runs.family import Family

FAMILY = Family(
    name="algorithmic",
    schema=TrainConfig,
    validate=validate,
    record=GrokkingRecord,
    engine=Engine,
    pack_key=pack_key,
)


def train(cfg: TrainConfig, run_dir, files: dict[str, str] | None = None) -> dict:
    """Train (or resume) one grokking run into `run_dir`: `runs.loop.train` for this family."""
    return loop.train(FAMILY, cfg, run_dir, files)


def train_pack(
    members: Sequence[tuple[TrainConfig, str | Path]],
    files: Sequence[dict[str, str]] | None = None,
) -> list[dict]:
    """Train grokking runs of one shape as one stacked model (`runs.loop.train_pack`)."""
    return loop.train_pack(FAMILY, members, files)
