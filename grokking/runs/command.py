"""A family's command line, `python -m grokking.<command> [key=value ...]`: one run, or a sweep
(`+sweeps=NAME`, `-m`), with the family's config file in conf/ and the sweep files in sweeps/.

A bad value is refused with one line, `error: <field>: <what is allowed>`, and exit code 2,
before Hydra writes or submits anything."""

from __future__ import annotations

import hashlib
import logging
import sys
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

# conf/ and sweeps/ sit at the top of a source checkout; a wheel carries them inside the
# package (pyproject.toml maps them there), so neither layout needs a second copy.
PACKAGE = Path(__file__).resolve().parents[1]
ROOT = PACKAGE if (PACKAGE / "conf").is_dir() else PACKAGE.parent
CONF_DIR = ROOT / "conf"
SWEEPS_DIR = ROOT / "sweeps"
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
# A config file puts ROOT on Hydra's search path, so `sweeps/` is a config group.
OmegaConf.register_new_resolver("grokking_root", lambda: str(ROOT), replace=True)
# --help lists the options of a config group (conf/task, sweeps) from the files themselves: those
# whose names start with `prefix` and not with `other` (the language models' sweeps are lm_*).
OmegaConf.register_new_resolver(
    "grokking_options",
    lambda group, prefix="", other=None: ", ".join(
        sorted(
            path.stem
            for path in (ROOT / group).glob(f"{prefix}*.yaml")
            if not (other and path.stem.startswith(other))
        )
    ),
    replace=True,
)
# The keys left out of a run folder's name: the family schema's RUNTIME_FIELDS and LAUNCH_KEYS.
OmegaConf.register_new_resolver(
    "unnamed_keys",
    lambda family: [*load_family(family).schema.RUNTIME_FIELDS, *LAUNCH_KEYS],
    replace=True,
)


class Command:
    """The command of `family`, whose config file is conf/<config_name>.yaml."""

    def __init__(self, family: Family, config_name: str):
        self.family, self.config_name = family, config_name
        # the config file's first default: the typed schema, so unknown keys and bad types fail
        ConfigStore.instance().store(name=f"{family.name}_schema", node=family.schema)

    def load_config(self, overrides: list[str] = ()) -> RunConfig:
        """The config the command would run with `overrides`, for notebooks, benchmarks and
        tests; checked by the family's `validate`."""
        cfg = from_hydra(self.family.schema, self._compose(overrides))
        self.family.validate(cfg)
        return cfg

    def _compose(self, overrides, hydra_node: bool = False) -> DictConfig:
        with hydra.initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            return hydra.compose(self.config_name, list(overrides), return_hydra_config=hydra_node)

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
        hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=self.config_name)(
            self.run_job
        )()


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
