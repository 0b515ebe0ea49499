"""A family's command line, `python -m grokking.<command> [key=value ...]`: one run, or a sweep
(`+sweeps=NAME`, `-m`), with the family's config folder conf/<family>/ (its top config, its
groups and its sweep files) and the groups every family shares in conf/shared/.

A bad value is refused with one line, `error: <field>: <what is allowed>`, and exit code 2,
before Hydra writes or submits anything. Every launcher runs its jobs with `train_jobs` and
`job_exits`: one job runner, for single runs and packs."""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from grokking.runs.config import ConfigError, RunConfig, check_device_here, from_hydra
from grokking.runs.family import Family
from grokking.runs.hydra_errors import COMPOSITION_ERRORS, explain
from grokking.runs.loop import Interrupted, RunFailed, train_pack
from grokking.runs.rundir import FAILED, DamagedFile, DiskFull, RunLocked

log = logging.getLogger("grokking")

# conf/ and sweeps/ sit at the top of a source checkout; a wheel carries them inside the package
# (pyproject.toml maps them there), so neither layout needs a second copy.
PACKAGE = Path(__file__).resolve().parents[1]
ROOT = PACKAGE if (PACKAGE / "conf").is_dir() else PACKAGE.parent
CONF_DIR, SWEEPS_DIR = ROOT / "conf", ROOT / "sweeps"
CONFIG_NAME = "config"  # each family's top config: conf/<family>/config.yaml
# Overrides that choose how a sweep runs, not what a run computes: not in a run folder's name.
LAUNCH_KEYS = ("sweeps", "+sweeps", "hydra/launcher")

MAX_NAME_BYTES = 200  # file systems allow 255 bytes in a name
# Where a command's config names its family, for the pre-launch check and the packed launcher.
FAMILY_KEY = "hydra.callbacks.check.family"


def refuse(message: str, code: int = 2):
    """The command's one-line refusal: `error: <message>` on stderr, and exit `code`."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def run_name(overrides: str) -> str:
    """A run folder's name from its overrides: "default" for none, a path value
    (data.source=/my/texts) as one folder, not nested ones, and a name too long for a file
    system cut short and made unique by a hash of the whole (the same command, the same name)."""
    name = overrides.replace("/", "_") or "default"
    if len(name.encode()) <= MAX_NAME_BYTES:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:16]
    return name.encode()[: MAX_NAME_BYTES - 17].decode(errors="ignore") + "-" + digest


OmegaConf.register_new_resolver("run_name", run_name, replace=True)
# A family's config puts conf/shared on Hydra's search path, for the groups every family shares;
# its own groups are found in its folder only, so a wrong family's option is refused up front.
OmegaConf.register_new_resolver("grokking_shared", lambda: str(CONF_DIR / "shared"), replace=True)
# --help lists the options of a config group (conf/algorithmic/task, sweeps/lm) from the files.
OmegaConf.register_new_resolver(
    "grokking_options",
    lambda group: ", ".join(sorted(path.stem for path in (ROOT / group).glob("*.yaml"))),
    replace=True,
)


class Command:
    """The command of `family`, whose config folder is conf/<family name>/."""

    def __init__(self, family: Family):
        self.family, self.config_dir = family, str(CONF_DIR / family.name)

    def load_config(self, overrides: list[str] = ()) -> RunConfig:
        """The config the command would run with `overrides`, for notebooks, benchmarks and
        tests; checked by the family's `validate`."""
        cfg = from_hydra(self.family.schema, self._compose(overrides))
        self.family.validate(cfg)
        return cfg

    def _compose(self, overrides, hydra_node: bool = False) -> DictConfig:
        self.register()
        with hydra.initialize_config_dir(self.config_dir, version_base="1.3"):
            return hydra.compose(CONFIG_NAME, list(overrides), return_hydra_config=hydra_node)

    def register(self) -> None:
        """Store what the top config takes from the command, so no config file names its family:
        `schema` (the typed schema: unknown keys and bad types fail), `family` (its name at
        FAMILY_KEY, and the keys left out of a run folder's name) and, as the options of the
        group `sweeps` (`+sweeps=NAME`), its sweep files sweeps/<family>/NAME.yaml and only those
        (not a search path: Hydra names a group after its folder). The store is one per process
        (a notebook may compose both families): stored again before each use."""
        store, family = ConfigStore.instance(), OmegaConf.create()
        store.store(name="schema", node=self.family.schema)
        OmegaConf.update(family, FAMILY_KEY, self.family.name)
        unnamed = [*self.family.schema.RUNTIME_FIELDS, *LAUNCH_KEYS]
        OmegaConf.update(family, "hydra.job.config.override_dirname.exclude_keys", unnamed)
        store.store(name="family", node=family, package="_global_")
        store.repo.pop("sweeps", None)
        for path in sorted((SWEEPS_DIR / self.family.name).glob("*.yaml")):
            sweep = OmegaConf.load(path)  # each file is `# @package _global_`: top-level keys
            store.store(group="sweeps", name=path.stem, node=sweep, package="_global_")

    def check_command_line(self, arguments: list[str]) -> None:
        """Refuse, in the project's words, a command line whose config Hydra cannot compose or
        `validate` refuses. A sweep is checked with the first value of each swept key here; the
        sweep callback checks every job. Hydra's other flags (--cfg, --info ...) are left to it."""
        if any(arg.startswith("-") and arg not in ("-m", "--multirun") for arg in arguments):
            return
        try:
            parsed = OverridesParser.create().parse_overrides(
                [arg for arg in arguments if not arg.startswith("-")]
            )
            cfg = self._compose([_first_value(override) for override in parsed], hydra_node=True)
            multirun = (
                bool({"-m", "--multirun"} & set(arguments)) or cfg.hydra.mode == RunMode.MULTIRUN
            )
            swept = [o.get_key_element() for o in parsed if o.is_sweep_override()]
            if swept and not multirun:
                raise ConfigError(
                    f"{swept[0]}: several values need a sweep (-m, or +sweeps=NAME); "
                    "a list is written key=[a,b]"
                )
            refuse_packs(self.family, cfg)  # before `check`, which may tokenize a corpus
            self.family.check(from_hydra(self.family.schema, cfg))
        except COMPOSITION_ERRORS as error:
            refuse(explain(error, self.family.schema))
        except (DamagedFile, DiskFull) as error:  # the data `prepare` reads or writes
            refuse(str(error), code=1)

    def run_job(self, cfg: DictConfig) -> None:
        """One job (a single run, or one run of a sweep, wherever the launcher runs it)."""
        hydra_cfg, files = HydraConfig.get(), hydra_files(cfg, HydraConfig.instance().cfg)
        job = Job(from_hydra(self.family.schema, cfg), Path(hydra_cfg.runtime.output_dir), files)
        with job_exits():
            (summary,) = train_jobs(self.family, [job], hydra_cfg.launcher.get("n_jobs"))
            if summary["status"] == FAILED:  # alone, a run's failure is its command's
                raise RunFailed(summary["failure"])

    def main(self) -> None:
        self.check_command_line(sys.argv[1:])
        self.register()
        hydra.main(version_base="1.3", config_path=self.config_dir, config_name=CONFIG_NAME)(
            self.run_job
        )()


def refuse_packs(family: Family, config: DictConfig) -> None:
    """Refuse a launcher that trains packs (one with `max_pack_size`: hydra/launcher=packed,
    packed_slurm) when the family's runs train alone (no `pack_key`)."""
    if family.pack_key is None and "max_pack_size" in config.hydra.launcher:
        what = f"{family.name} runs cannot train in packs; use basic, parallel or slurm"
        refuse(f"hydra/launcher: {what}")


# --- the job runner of every launcher ---------------------------------------------------------
@dataclass
class Job:
    """One run to train: its config, its run folder, and the .hydra/ files written into it."""

    cfg: RunConfig
    run_dir: Path
    files: dict[str, str]


def train_jobs(family: Family, jobs: Sequence[Job], n_jobs: int | None = None) -> list[dict]:
    """Train `jobs` as one pack (a single run is a pack of one) wherever the launcher runs them:
    each config checked by its family and against this machine's devices, `threads=0` made the
    CPUs the job has, .hydra/ files written once the folder is held. Their summaries."""
    with stopped_with_its_driver():
        for job in jobs:
            family.check(job.cfg)
            check_device_here(job.cfg)
            if job.cfg.threads == 0:
                job.cfg.threads = default_threads(n_jobs)
        return train_pack(family, [(job.cfg, job.run_dir) for job in jobs], [j.files for j in jobs])


@contextmanager
def job_exits() -> Iterator[None]:
    """A job's errors as exit codes, for every launcher: 2 a refused config, 1 a failed run or a
    folder held, damaged or on a full disk, 128 + N the signal N that stopped it (it resumes)."""
    try:
        yield
    except ConfigError as error:
        refuse(str(error))
    except RunFailed as error:
        refuse(f"run failed: {error}", code=1)
    except (RunLocked, DamagedFile, DiskFull) as error:
        refuse(str(error), code=1)
    except Interrupted as error:
        log.warning("%s; rerun the same command to resume", error)
        sys.exit(128 + error.signum)


def default_threads(n_jobs: int | None) -> int:
    """Torch threads for one job when the config says 0: the CPUs SLURM gave the job, or
    cores / n_jobs under a local parallel launcher (processes beat threads on this small
    model), else torch's default."""
    if "SLURM_CPUS_PER_TASK" in os.environ:  # SLURM need not pin the job to its CPUs
        return int(os.environ["SLURM_CPUS_PER_TASK"])
    if n_jobs is None:
        return 0
    cores = len(os.sched_getaffinity(0))
    return max(1, cores // (cores if n_jobs < 0 else n_jobs))


def hydra_files(task_cfg: DictConfig, hydra_cfg: DictConfig) -> dict[str, str]:
    """A job's .hydra/ files as Hydra writes them, from its config without and with only `hydra`
    (Hydra's own writing is off: they are written under the run folder's lock, runs/record.py)."""
    return {
        ".hydra/config.yaml": OmegaConf.to_yaml(task_cfg),
        ".hydra/hydra.yaml": OmegaConf.to_yaml(hydra_cfg),
        ".hydra/overrides.yaml": OmegaConf.to_yaml(hydra_cfg.hydra.overrides.task),
    }


# How often a job in a worker process looks whether the sweep's driver is still there.
DRIVER_CHECK_S = 0.5


@contextmanager
def stopped_with_its_driver() -> Iterator[None]:
    """A job in a worker process of the sweep's driver (hydra/launcher=parallel: joblib's loky
    workers) stops when the driver dies, as SIGTERM stops a run (last.pt saved, status
    interrupted), and its worker ends: a driver killed (`kill -9`, or SIGTERM, which it does not
    catch) cannot stop its workers, which would train on, re-parented, and then wait for work
    forever. A job in the command's own process (the basic and packed launchers, SLURM) has no
    driver to lose: a closed terminal does not stop it."""
    driver = multiprocessing.parent_process()
    if driver is None:
        yield
        return
    done = threading.Event()
    threading.Thread(target=_stop_when_gone, args=(driver.pid, done), daemon=True).start()
    try:
        yield
    finally:
        done.set()
        if os.getppid() != driver.pid:  # no driver collects the result or sends another job
            os._exit(128 + signal.SIGTERM)


def _stop_when_gone(driver: int, done: threading.Event) -> None:
    """Send this process SIGTERM once it is re-parented (its driver died), unless `done`."""
    while not done.wait(DRIVER_CHECK_S):
        if os.getppid() != driver:
            os.kill(os.getpid(), signal.SIGTERM)  # the loop saves and stops between two units
            return


def _first_value(override) -> str:
    if not override.is_sweep_override():
        return override.input_line
    return f"{override.get_key_element()}={next(override.sweep_string_iterator())}"
