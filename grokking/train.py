"""`python -m grokking.train [key=value ...]`: train one run, or a sweep (`+sweeps=NAME`, `-m`).

Configs live in `conf/` (sweep files in `sweeps/`); the typed schema and the checks are in
grokking/config.py, the loop in grokking/training.py, the sweep callbacks in grokking/sweep.py.
A bad value is refused with one line, `error: <field>: <what is allowed>`, and exit code 2,
before Hydra writes or submits anything.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from grokking.config import ConfigError, TrainConfig, check_device_here, validate
from grokking.hydra_errors import COMPOSITION_ERRORS, explain
from grokking.rundir import DamagedFile, DiskFull, RunLocked
from grokking.sweep import default_threads, refuse, to_train_config
from grokking.training import Interrupted, RunFailed, train

log = logging.getLogger("grokking")

# conf/ and sweeps/ sit at the top of a source checkout; a wheel carries them inside the
# package (pyproject.toml maps them there), so neither layout needs a second copy.
PACKAGE = Path(__file__).resolve().parent
ROOT = PACKAGE if (PACKAGE / "conf").is_dir() else PACKAGE.parent
CONF_DIR = ROOT / "conf"
SWEEPS_DIR = ROOT / "sweeps"

ConfigStore.instance().store(name="train_schema", node=TrainConfig)
# An empty override list (the default command) still gets a readable folder name.
OmegaConf.register_new_resolver("run_name", lambda overrides: overrides or "default", replace=True)
# conf/config.yaml puts ROOT on Hydra's search path, so `sweeps/` is a config group.
OmegaConf.register_new_resolver("grokking_root", lambda: str(ROOT), replace=True)
# --help lists the options of a config group (conf/task, sweeps) from the files themselves.
OmegaConf.register_new_resolver(
    "grokking_options",
    lambda group: ", ".join(sorted(p.stem for p in (ROOT / group).glob("*.yaml"))),
    replace=True,
)


def load_config(overrides: list[str] = ()) -> TrainConfig:
    """The TrainConfig that `python -m grokking.train *overrides` would run, for notebooks,
    benchmarks and tests; checked by `validate`."""
    cfg = to_train_config(_compose(overrides))
    validate(cfg)
    return cfg


def _compose(overrides, hydra_node: bool = False) -> DictConfig:
    with hydra.initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return hydra.compose("config", list(overrides), return_hydra_config=hydra_node)


def check_command_line(arguments: list[str]) -> None:
    """Refuse, in the project's words, a command line whose config Hydra cannot compose or
    `validate` refuses. A sweep is checked with the first value of each swept key here; the
    sweep callback checks every job. Hydra's other flags (--cfg, --info ...) are left to it."""
    if any(arg.startswith("-") and arg not in ("-m", "--multirun") for arg in arguments):
        return
    try:
        parsed = OverridesParser.create().parse_overrides(
            [arg for arg in arguments if not arg.startswith("-")]
        )
        cfg = _compose([_first_value(override) for override in parsed], hydra_node=True)
        multirun = bool({"-m", "--multirun"} & set(arguments)) or cfg.hydra.mode == RunMode.MULTIRUN
        swept = [override.get_key_element() for override in parsed if override.is_sweep_override()]
        if swept and not multirun:
            raise ConfigError(
                f"{swept[0]}: several values need a sweep (-m, or +sweeps=NAME); "
                "a list is written key=[a,b]"
            )
        validate(to_train_config(cfg))
    except COMPOSITION_ERRORS as error:
        refuse(explain(error))


def _first_value(override) -> str:
    if not override.is_sweep_override():
        return override.input_line
    return f"{override.get_key_element()}={next(override.sweep_string_iterator())}"


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def run(cfg: DictConfig) -> None:
    """One job (a single run, or one run of a sweep, wherever the launcher runs it)."""
    train_cfg = to_train_config(cfg)
    hydra_cfg = HydraConfig.get()
    if train_cfg.threads == 0:
        train_cfg.threads = default_threads(hydra_cfg)
    try:
        validate(train_cfg)
        check_device_here(train_cfg)  # on the machine that trains, e.g. a SLURM node
        train(train_cfg, Path(hydra_cfg.runtime.output_dir), hydra_files(cfg))
    except ConfigError as error:
        refuse(str(error))
    except RunFailed as error:
        refuse(f"run failed: {error}", code=1)
    except (RunLocked, DamagedFile, DiskFull) as error:  # each says what to do
        refuse(str(error), code=1)
    except Interrupted as error:
        log.warning("%s; rerun the same command to resume", error)
        sys.exit(128 + error.signum)


def hydra_files(cfg: DictConfig) -> dict[str, str]:
    """The job's .hydra/ files, as Hydra writes them (conf/config.yaml turns Hydra's own writing
    off, so that they are written only under the run folder's lock: record.py)."""
    hydra_cfg = HydraConfig.instance().cfg
    return {
        ".hydra/config.yaml": OmegaConf.to_yaml(cfg),
        ".hydra/hydra.yaml": OmegaConf.to_yaml(hydra_cfg),
        ".hydra/overrides.yaml": OmegaConf.to_yaml(hydra_cfg.hydra.overrides.task),
    }


def main() -> None:
    check_command_line(sys.argv[1:])
    run()


if __name__ == "__main__":
    main()
