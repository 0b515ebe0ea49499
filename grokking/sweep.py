"""Hydra callbacks for sweeps: every job's config is checked before anything is written or
submitted, and the driver prints how many runs are done, running and failed.

Both are switched on in conf/config.yaml (`hydra.callbacks`), so they work with every launcher:
basic (one run after another), joblib (local processes) and submitit (SLURM).
"""

from __future__ import annotations

import os
import sys
import threading
from collections import Counter
from pathlib import Path

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError

from grokking.config import ConfigError, TrainConfig, validate
from grokking.record import check_same_config
from grokking.rundir import COMPLETED, FAILED, find_runs


def to_train_config(cfg: DictConfig) -> TrainConfig:
    """The plain TrainConfig of a composed Hydra config (its `hydra` node dropped)."""
    plain = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainConfig), plain))
    except ConfigKeyError as error:  # e.g. `+foo=1`, which Hydra lets through
        raise ConfigError(f"{error.full_key}: not a config key (see conf/config.yaml)") from None


def refuse(message: str, code: int = 2):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def sweep_jobs(config: DictConfig) -> list[list[str]]:
    """Each job's overrides, expanded as Hydra's basic sweeper does: the sweep file's
    `hydra.sweeper.params`, then the command line (which wins for a key given in both)."""
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    arguments = [f"{key}={value}" for key, value in params.items()]
    arguments += list(config.hydra.overrides.task)
    overrides = OverridesParser.create().parse_overrides(arguments)
    (jobs,) = BasicSweeper.split_arguments(overrides, max_batch_size=None)
    return jobs


def default_threads(hydra_cfg: DictConfig) -> int:
    """Torch threads for one job when the config says 0: the CPUs SLURM gave the job, or
    cores / n_jobs under a local parallel launcher (processes beat threads on this small
    model), else torch's default."""
    if "SLURM_CPUS_PER_TASK" in os.environ:  # SLURM need not pin the job to its CPUs
        return int(os.environ["SLURM_CPUS_PER_TASK"])
    n_jobs = OmegaConf.select(hydra_cfg, "launcher.n_jobs")
    if n_jobs is None:
        return 0
    cores = len(os.sched_getaffinity(0))
    return max(1, cores // (cores if n_jobs < 0 else n_jobs))


class CheckBeforeLaunch(Callback):
    """Refuse a bad config (or a folder holding another run) before Hydra writes or submits
    anything. Exits itself: Hydra turns a callback's exception into a mere warning."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        try:
            train_cfg = to_train_config(config)
            validate(train_cfg)
            HydraConfig.instance().set_config(config)  # lets hydra.run.dir's ${hydra:...} resolve
            check_same_config(train_cfg, config.hydra.run.dir)
        except ConfigError as error:
            refuse(str(error))

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        jobs = sweep_jobs(config)
        loader = GlobalHydra.instance().config_loader()
        for number, overrides in enumerate(jobs):
            try:  # composed as the launchers compose each job
                validate(to_train_config(loader.load_sweep_config(config, list(overrides))))
            except Exception as error:  # ours, or Hydra's composition errors (unknown task, typo)
                refuse(f"sweep job {number} ({' '.join(overrides)}): {error}; nothing submitted")
        print(f"sweep: {len(jobs)} runs into {config.hydra.sweep.dir}", flush=True)


class SweepProgress(Callback):
    """While a sweep runs, print `sweep: N/M completed, R running, F failed` whenever those
    counts change, from the run directories themselves (so any launcher works)."""

    def __init__(self, interval_s: float = 5.0):
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # Launchers pickle the callbacks along with each job; the watcher stays with the driver.
    def __getstate__(self) -> dict:
        return {"interval_s": self.interval_s}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        root, total = Path(config.hydra.sweep.dir), len(sweep_jobs(config))
        self._report = lambda: progress_line(root, total)
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        last = None
        while not self._stop.wait(self.interval_s):
            line = self._report()
            if line != last:
                print(line, flush=True)
                last = line

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            print(self._report(), flush=True)


def progress_line(root: Path, total: int) -> str:
    statuses = Counter(run.status() for run in find_runs(root)) if root.exists() else Counter()
    done, failed = statuses[COMPLETED], statuses[FAILED]
    running = sum(statuses.values()) - done - failed
    return f"sweep: {done}/{total} completed, {running} running, {failed} failed"
