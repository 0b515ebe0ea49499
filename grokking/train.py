"""`python -m grokking.train [key=value ...]`: train one run, or a sweep (`+sweeps=NAME`, `-m`).

Configs live in the top-level `conf/` (sweep files in `sweeps/`); the typed schema and the checks
are in grokking/config.py, the loop in grokking/training.py, the sweep callbacks in
grokking/sweep.py. A bad value is refused before Hydra writes or submits anything.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from grokking.config import ConfigError, TrainConfig, validate
from grokking.rundir import DamagedCheckpoint, DiskFull, RunLocked
from grokking.sweep import default_threads, refuse, to_train_config
from grokking.training import Interrupted, RunFailed, train

log = logging.getLogger("grokking")

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"

ConfigStore.instance().store(name="train_schema", node=TrainConfig)
# An empty override list (the default command) still gets a readable folder name.
OmegaConf.register_new_resolver("run_name", lambda overrides: overrides or "default", replace=True)
# conf/config.yaml puts the repository on Hydra's search path, so `sweeps/` is a config group.
OmegaConf.register_new_resolver("grokking_repo", lambda: str(REPO), replace=True)


def load_config(overrides: list[str] = ()) -> TrainConfig:
    """The TrainConfig that `python -m grokking.train *overrides` would run, for notebooks,
    benchmarks and tests; checked by `validate`."""
    with hydra.initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = to_train_config(hydra.compose("config", list(overrides)))
    validate(cfg)
    return cfg


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    train_cfg = to_train_config(cfg)
    hydra_cfg = HydraConfig.get()
    if train_cfg.threads == 0:
        train_cfg.threads = default_threads(hydra_cfg)
    try:
        validate(train_cfg)
        train(train_cfg, Path(hydra_cfg.runtime.output_dir))
    except ConfigError as error:
        refuse(str(error))
    except RunFailed as error:
        refuse(f"run failed: {error}", code=1)
    except (RunLocked, DamagedCheckpoint, DiskFull) as error:  # each says what to do
        refuse(str(error), code=1)
    except Interrupted as error:
        log.warning("%s; rerun the same command to resume", error)
        sys.exit(128 + error.signum)


if __name__ == "__main__":
    main()
