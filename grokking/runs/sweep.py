"""Hydra callbacks for sweeps: every job's config is checked before anything is written or
submitted, and the driver prints how many of the sweep's runs are done, running and failed.

Both are switched on in conf/shared/runs/machinery.yaml (`hydra.callbacks`; the command names
its family to the check: `command.FAMILY_KEY`), so they work with every launcher: basic (one run
after another), joblib (local processes), submitit (SLURM) and packed.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from grokking.runs.command import refuse, refuse_packs
from grokking.runs.config import ConfigError, RunConfig, check_device_here, from_hydra
from grokking.runs.family import Family, load_family
from grokking.runs.hydra_errors import COMPOSITION_ERRORS, explain
from grokking.runs.record import check_same_config
from grokking.runs.rundir import (
    COMPLETED,
    DAMAGED,
    FAILED,
    DamagedFile,
    DiskFull,
    RunDir,
    RunLocked,
    open_regular,
)

MULTIRUN_RECORD = "multirun.yaml"  # what Hydra writes into a sweep folder


def sweep_jobs(config: DictConfig) -> list[list[str]]:
    """Each job's overrides, expanded as Hydra's basic sweeper does: the sweep file's
    `hydra.sweeper.params`, then the command line (which wins for a key given in both), and
    every combination of their values."""
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    arguments = [f"{key}={value}" for key, value in params.items()]
    arguments += list(config.hydra.overrides.task)
    choices = {}  # key -> its overrides, one per value; a later key replaces an earlier one
    for override in OverridesParser.create().parse_overrides(arguments):
        key = override.get_key_element()
        values = (
            list(override.sweep_string_iterator())
            if override.is_sweep_override()
            else [override.get_value_element_as_str()]
        )
        choices[key] = [f"{key}={value}" for value in values]
    return [list(job) for job in itertools.product(*choices.values())]


def compose_job(config: DictConfig, overrides: list[str]) -> DictConfig:
    """One job's config, composed as the launchers compose it."""
    return GlobalHydra.instance().config_loader().load_sweep_config(config, overrides)


def job_dir(job_config: DictConfig) -> Path:
    """The run folder of one composed job: hydra.sweep.dir / hydra.sweep.subdir."""
    HydraConfig.instance().set_config(job_config)  # `${hydra:...}` resolves against this job
    return Path(job_config.hydra.sweep.dir) / job_config.hydra.sweep.subdir


def runs_elsewhere(config: DictConfig) -> bool:
    """Whether the launcher runs the jobs on SLURM nodes, whose devices may differ from here's
    (hydra/launcher=slurm, or packed_slurm's `slurm` section)."""
    launcher = OmegaConf.select(config, "hydra.launcher") or {}
    target = str(launcher.get("_target_", ""))
    return target.endswith("SlurmLauncher") or launcher.get("slurm") is not None


class CheckBeforeLaunch(Callback):
    """Refuse a bad config, a folder holding another run, a folder another process holds or a
    damaged one, before Hydra writes or submits anything. A sweep holds its sweep folder (its
    .lock) from the check to its end, so a second command into the same sweep folder is refused
    before Hydra rewrites multirun.yaml. Exits itself: Hydra turns a callback's exception into a
    mere warning."""

    def __init__(self, family: str):
        self.family_name = family
        self.family: Family = load_family(family)
        self._held = ExitStack()  # the sweep folder's lock, while the sweep runs

    # Launchers pickle the callbacks along with each job; the lock stays with the driver.
    def __getstate__(self) -> dict:
        return {"family": self.family_name}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def _checked(self, config: DictConfig) -> RunConfig:
        cfg = from_hydra(self.family.schema, config)
        self.family.check(cfg)
        return cfg

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        try:
            train_cfg = self._checked(config)
            check_device_here(train_cfg)
            HydraConfig.instance().set_config(config)  # lets hydra.run.dir's ${hydra:...} resolve
            check_folder(train_cfg, Path(os.path.abspath(config.hydra.run.dir)))
        except ConfigError as error:
            refuse(str(error))
        except (RunLocked, DamagedFile, DiskFull) as error:
            refuse(str(error), code=1)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        refuse_packs(self.family, config)
        jobs = sweep_jobs(config)
        first_job_of: dict[Path, int] = {}  # run folder -> the first job writing it
        for number, overrides in enumerate(jobs):
            try:
                job_config = compose_job(config, overrides)
                train_cfg = self._checked(job_config)
                if not runs_elsewhere(config):  # SLURM nodes have devices this machine lacks
                    check_device_here(train_cfg)
                folder = job_dir(job_config)
                first = first_job_of.setdefault(folder, number)
                if first != number:  # it would be refused mid-sweep, or resume the first's run
                    raise ConfigError(
                        f"hydra.sweep.subdir: {folder} is sweep job {first}'s folder too "
                        f"({' '.join(jobs[first])}); give each job its own (the default names "
                        "it by the job's overrides)"
                    )
                check_folder(train_cfg, folder)
            except COMPOSITION_ERRORS as error:  # ours, or Hydra's (unknown task, typo)
                job = " ".join(overrides)
                reason = explain(error, self.family.schema)
                refuse(f"sweep job {number} ({job}): {reason}; nothing submitted")
            except (RunLocked, DamagedFile, DiskFull) as error:  # each names its folder
                refuse(f"{error}; nothing submitted", code=1)
        HydraConfig.instance().set_config(config)  # back to the sweep's own config
        sweep = RunDir(config.hydra.sweep.dir)
        try:  # every job checked: only now is anything written (the folder and its .lock)
            check_sweep_record(sweep.path)
            self._held.enter_context(sweep.lock("sweep folder"))
        except (RunLocked, DamagedFile, DiskFull) as error:
            refuse(f"{error}; nothing submitted", code=1)
        print(f"sweep: {len(jobs)} runs into {config.hydra.sweep.dir}", flush=True)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        self._held.close()


def check_folder(cfg: RunConfig, run_dir: Path) -> None:
    """RunLocked naming the holder when another process holds `run_dir`; ConfigError when it
    holds a run of another config; DamagedFile when its summary cannot be read back."""
    RunDir(run_dir).check_free()
    check_same_config(cfg, run_dir)


def check_sweep_record(sweep_dir: Path) -> None:
    """DamagedFile when anything but a regular file stands at <sweep>/multirun.yaml, which Hydra
    then rewrites: it would write through a link, and fail on a directory with a traceback."""
    todo = "remove it; the sweep writes a new one"
    try:
        os.close(open_regular(sweep_dir / MULTIRUN_RECORD, os.O_RDONLY, todo))
    except FileNotFoundError:  # a new sweep folder
        pass


class SweepProgress(Callback):
    """While a sweep runs, print `sweep: N/M completed, R running, F failed` whenever those
    counts change, from the run folders of this sweep's jobs (so any launcher works, and runs
    of another sweep in the same folder do not count)."""

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
        run_dirs = [job_dir(compose_job(config, job)) for job in sweep_jobs(config)]
        HydraConfig.instance().set_config(config)  # back to the sweep's own config
        self._report = lambda: progress_line(run_dirs)
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


def progress_line(run_dirs: list[Path]) -> str:
    """`sweep: N/M completed, R running, F failed` over these run folders (M = how many), and
    `, D damaged` when some summary cannot be read back."""
    statuses = Counter(RunDir(path).status() for path in run_dirs)
    done, failed, damaged = statuses[COMPLETED], statuses[FAILED], statuses[DAMAGED]
    running = len(run_dirs) - statuses[None] - done - failed - damaged  # started, not finished
    line = f"sweep: {done}/{len(run_dirs)} completed, {running} running, {failed} failed"
    return line + (f", {damaged} damaged" if damaged else "")
