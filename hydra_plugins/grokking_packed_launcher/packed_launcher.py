"""Hydra's plugin entry for `hydra/launcher=packed` and `hydra/launcher=packed_slurm`: the launcher
and its options, typed (`PackedLauncherConf`, stored in Hydra's ConfigStore as
`hydra/launcher=grokking_packed`, which conf/shared/hydra/launcher/packed.yaml extends), so a
bad option (`hydra.launcher.max_pack_size=many`) is refused when the config is composed.

Hydra only loads launchers from the `hydra_plugins` namespace; the work is in
`grokking.runs.packs`, imported when a sweep is launched (Hydra imports this module
in every run of any app that scans plugins, so it stays light). No `from __future__ import
annotations` here: Hydra imports plugins without registering them in sys.modules, where
dataclasses look string annotations up."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher


@dataclass
class PackedLauncherConf:
    _target_: str = "hydra_plugins.grokking_packed_launcher.packed_launcher.PackedLauncher"
    max_pack_size: int = 64  # runs per pack at most (packs of one shape are split evenly)
    # packed_slurm.yaml sets this: one SLURM job per pack, with these submitit/SLURM options
    slurm: Optional[dict[str, Any]] = None  # noqa: UP045 — OmegaConf reads Optional
    submitit_folder: str = "${hydra.sweep.dir}/.submitit/%j"


ConfigStore.instance().store(
    group="hydra/launcher", name="grokking_packed", node=PackedLauncherConf, provider="grokking"
)


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
        from grokking.runs.packs import launch

        return launch(self, job_overrides, initial_job_idx)
