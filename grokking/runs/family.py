"""What an experiment family gives the run machinery: its config schema and checks, its record
(what a result means for its runs) and its engine (what trains). The loop, the launchers and the
pre-launch checks take a `Family`; they never import one. A family is named by its package
(`grokking.<name>` exposes `FAMILY`), so a Hydra config can say which one a command runs."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from grokking.runs.config import RunConfig
from grokking.runs.record import RunRecord


class Engine(Protocol):
    """What the loop asks of a family's engine, for R ≥ 1 runs trained together (members are
    addressed by their index in the current pack)."""

    step: int  # optimizer steps taken
    size: int  # members

    def advance(self) -> list[dict]:
        """Train one unit (an epoch, a step); per member a dict holding at least `loss`."""

    def evaluate(self) -> list[dict]:
        """Per member: the evaluation's values and `matrix_lar` {name: {"lar": ..., ...}}."""

    def after_evaluation(self, member: int, result: dict) -> dict:
        """The member's record is about to note `result` (its entry of `evaluate`): update what
        training depends on (a regularizer's switch); the fields to add to its row. Only the
        evaluations a member's record notes count, so it trains in a pack as it would alone."""

    def model_state(self, member: int) -> dict[str, torch.Tensor]: ...

    def member_state(self, member: int) -> dict:
        """All a member needs to go on (weights, optimizer state, data order)."""

    def load_member_states(self, states: Sequence[dict]) -> None: ...

    def keep(self, members: Sequence[int]) -> None:
        """Go on with `members` only."""


@dataclass(frozen=True)
class Family:
    name: str  # its package under grokking/, and summary.json's "family"
    schema: type[RunConfig]
    validate: Callable[[RunConfig], None]  # ConfigError for the first bad value
    record: type[RunRecord]
    engine: Callable[[Sequence[RunConfig], torch.device], Engine]
    # Runs with equal keys can train as one pack; None: every run trains alone.
    pack_key: Callable[[RunConfig], tuple] | None = None
    # Checks that need the run's data (ConfigError), before anything is written; what it builds
    # is cached, so a sweep's driver prepares the data its jobs then reuse. None: nothing to do.
    prepare: Callable[[RunConfig], None] | None = None

    def check(self, cfg: RunConfig) -> None:
        """Every check a run's config gets before the run starts."""
        self.validate(cfg)
        if self.prepare is not None:
            self.prepare(cfg)


def load_family(name: str) -> Family:
    """The family `grokking.<name>` defines."""
    return importlib.import_module(f"grokking.{name}").FAMILY
