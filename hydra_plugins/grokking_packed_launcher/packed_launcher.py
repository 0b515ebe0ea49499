"""Hydra's plugin entry for `hydra/launcher=packed` and `hydra/launcher=packed_slurm`.

Hydra only loads launchers from the `hydra_plugins` namespace; the work is in
`grokking.algorithmic.packed_launch`, imported when a sweep is launched (Hydra imports this module
in every run of any app that scans plugins, so it stays light)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher


class PackedLauncher(Launcher):
    def __init__(self, max_pack_size: int = 64, slurm: Any = None, submitit_folder: str = ""):
        self.max_pack_size = max_pack_size
        self.slurm = slurm
        self.submitit_folder = submitit_folder

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.hydra_context, self.config = hydra_context, config

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        from grokking.algorithmic.packed_launch import launch

        return launch(self, job_overrides, initial_job_idx)
