"""A family's command line, `python -m grokking.<command> [key=value ...]`: one run, or a sweep
(`+sweeps=NAME`, `-m`), with the family's config folder conf/<family>/ (its top config, its
groups and its sweep files) and the groups every family shares in conf/shared/.

A bad value is refused with one line, `error: <field>: <what is allowed>`, and exit code 2,
before Hydra writes or submits anything."""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from grokking.runs.config import ConfigError, RunConfig, check_device_here, from_hydra
from grokking.runs.family import Family, load_family
from grokking.runs.hydra_errors import COMPOSITION_ERRORS, explain
from grokking.runs.loop import Interrupted, RunFailed, train
from grokking.runs.rundir import DamagedFile, DiskFull, RunLocked
from grokking.runs.sweep import default_threads, refuse

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
# The keys left out of a run folder's name: the family schema's RUNTIME_FIELDS and LAUNCH_KEYS.
OmegaConf.register_new_resolver(
    "unnamed_keys",
    lambda family: [*load_family(family).schema.RUNTIME_FIELDS, *LAUNCH_KEYS],
    replace=True,
)


class Command:
    """The command of `family`, whose config folder is conf/<family name>/."""

    def __init__(self, family: Family):
        self.family, self.config_dir = family, str(CONF_DIR / family.name)
        # the config file's first default: the typed schema, so unknown keys and bad types fail
        ConfigStore.instance().store(name=f"{family.name}_schema", node=family.schema)

    def load_config(self, overrides: list[str] = ()) -> RunConfig:
        """The config the command would run with `overrides`, for notebooks, benchmarks and
        tests; checked by the family's `validate`."""
        cfg = from_hydra(self.family.schema, self._compose(overrides))
        self.family.validate(cfg)
        return cfg

    def _compose(self, overrides, hydra_node: bool = False) -> DictConfig:
        register_sweeps(self.family.name)
        with hydra.initialize_config_dir(self.config_dir, version_base="1.3"):
            return hydra.compose(CONFIG_NAME, list(overrides), return_hydra_config=hydra_node)

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
            self.family.check(from_hydra(self.family.schema, cfg))
        except COMPOSITION_ERRORS as error:
            refuse(explain(error, self.family.schema))
        except (DamagedFile, DiskFull) as error:  # the data `prepare` reads or writes
            refuse(str(error), code=1)

    def run_job(self, cfg: DictConfig) -> None:
        """One job (a single run, or one run of a sweep, wherever the launcher runs it)."""
        run_cfg = from_hydra(self.family.schema, cfg)
        hydra_cfg = HydraConfig.get()
        if run_cfg.threads == 0:
            run_cfg.threads = default_threads(hydra_cfg)
        with stopped_with_its_driver():
            try:
                self.family.check(run_cfg)
                check_device_here(run_cfg)  # on the machine that trains, e.g. a SLURM node
                output_dir = Path(hydra_cfg.runtime.output_dir)
                train(self.family, run_cfg, output_dir, hydra_files(cfg))
            except ConfigError as error:
                refuse(str(error))
            except RunFailed as error:
                refuse(f"run failed: {error}", code=1)
            except (RunLocked, DamagedFile, DiskFull) as error:  # each says what to do
                refuse(str(error), code=1)
            except Interrupted as error:
                log.warning("%s; rerun the same command to resume", error)
                sys.exit(128 + error.signum)

    def main(self) -> None:
        self.check_command_line(sys.argv[1:])
        register_sweeps(self.family.name)
        hydra.main(version_base="1.3", config_path=self.config_dir, config_name=CONFIG_NAME)(
            self.run_job
        )()


def register_sweeps(family_name: str) -> None:
    """Make the sweep files of the family (sweeps/<family>/NAME.yaml), and only those, the options
    of the config group `sweeps`, so `+sweeps=NAME` picks one. Why not a search path: Hydra names
    a group after its folder, and sweeps/ stays at the repository's top with a folder per family.
    The store is one per process (a notebook may compose both families' configs): the group is
    emptied first."""
    ConfigStore.instance().repo.pop("sweeps", None)
    for path in sorted((SWEEPS_DIR / family_name).glob("*.yaml")):
        node = OmegaConf.load(path)  # each file is `# @package _global_`: it sets top-level keys
        ConfigStore.instance().store(group="sweeps", name=path.stem, node=node, package="_global_")


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


def hydra_files(cfg: DictConfig) -> dict[str, str]:
    """The job's .hydra/ files, as Hydra writes them (the config files turn Hydra's own writing
    off, so that they are written only under the run folder's lock: runs/record.py)."""
    hydra_cfg = HydraConfig.instance().cfg
    return {
        ".hydra/config.yaml": OmegaConf.to_yaml(cfg),
        ".hydra/hydra.yaml": OmegaConf.to_yaml(hydra_cfg),
        ".hydra/overrides.yaml": OmegaConf.to_yaml(hydra_cfg.hydra.overrides.task),
    }
