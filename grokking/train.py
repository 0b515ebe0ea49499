"""`python -m grokking.train [key=value ...]`: train one run (or a `-m` sweep) with Hydra.

Configs live in the top-level `conf/`; the typed schema and the checks are in grokking/config.py,
the loop in grokking/training.py. A bad value is refused before Hydra writes anything.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError

from grokking.config import ConfigError, TrainConfig, validate
from grokking.training import Interrupted, RunFailed, check_same_config, train

log = logging.getLogger("grokking")

ConfigStore.instance().store(name="train_schema", node=TrainConfig)
# An empty override list (the default command) still gets a readable folder name.
OmegaConf.register_new_resolver("run_name", lambda overrides: overrides or "default", replace=True)


def to_train_config(cfg: DictConfig) -> TrainConfig:
    """The plain TrainConfig of a composed Hydra config (its `hydra` node dropped)."""
    plain = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainConfig), plain))
    except ConfigKeyError as error:  # e.g. `+foo=1`, which Hydra lets through
        raise ConfigError(f"{error.full_key}: not a config key (see conf/config.yaml)") from None


CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def load_config(overrides: list[str] = ()) -> TrainConfig:
    """The TrainConfig that `python -m grokking.train *overrides` would run, for notebooks,
    benchmarks and tests; checked by `validate`."""
    with hydra.initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = to_train_config(hydra.compose("config", list(overrides)))
    validate(cfg)
    return cfg


def refuse(message: str, code: int = 2):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


class ValidateConfig(Callback):
    """Checks the config before Hydra creates or writes into an output directory."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        try:
            train_cfg = to_train_config(config)
            validate(train_cfg)
            check_same_config(train_cfg, config.hydra.run.dir)
        except ConfigError as error:  # exit here: Hydra turns a callback's exception into a warning
            refuse(str(error))


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    train_cfg = to_train_config(cfg)
    try:
        validate(train_cfg)
        train(train_cfg, Path(HydraConfig.get().runtime.output_dir))
    except ConfigError as error:
        refuse(str(error))
    except RunFailed as error:
        refuse(f"run failed: {error}", code=1)
    except Interrupted as error:
        log.warning("%s; rerun the same command to resume", error)
        sys.exit(128 + error.signum)


if __name__ == "__main__":
    main()
