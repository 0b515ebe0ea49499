"""What every experiment family's config shares: the settings of the run machinery (`RunConfig`,
which a family's schema extends), the one error a refused value raises, and the conversions
between a schema dataclass, the plain dict stored in summary.json, and Hydra's DictConfig.

A family's schema is a dataclass that inherits `RunConfig`; its `RUNTIME_FIELDS` name the fields
that change how fast a run goes but not what it computes (a resumed run may differ there, and
they stay out of a run folder's name)."""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass, field, fields, is_dataclass
from typing import ClassVar, Optional, get_args, get_origin, get_type_hints

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    OmegaConfBaseException,
    ValidationError,
)

from grokking.runs.loggers import LoggerConfig, validate_logger
from grokking.runs.stopping import StopKind

MAX_SEED = 2**63 - 1  # torch.manual_seed and torch.Generator take up to 64 bits

# How the refusals describe each field type of a schema.
_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


class ConfigError(ValueError):
    """A configuration value that is not allowed; the message starts with the field's name."""


@dataclass
class RunConfig:
    """The run machinery's settings, at the end of every family's schema."""

    seed: int = 0
    # what ends a run before its budget (docs/method.md §5): validation (each family says how),
    # lar (a validation-free rule, grokking.lar.select) or none; a family sets its default
    stop: StopKind = StopKind.none
    eval_every: int = 20  # units (epochs, steps) between evaluations
    checkpoint_every: int = 0  # keep checkpoints/<unit>_N.pt every N units; 0: off
    save_every_s: float = 60.0  # seconds between resume points (last.pt, tables); 0: each eval
    device: str = "auto"  # auto: cuda when available, else cpu
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    sweep_name: Optional[str] = None  # noqa: UP045 — the sweep file that made this run
    logger: LoggerConfig = field(default_factory=LoggerConfig)  # TensorBoard, W&B or none

    # Fields that change how fast a run goes but not what it computes (dotted for nested ones).
    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = (
        "device",
        "threads",
        "checkpoint_every",
        "save_every_s",
        "logger",
    )


def require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate_run(cfg: RunConfig) -> None:
    """Refuse a bad value of the run machinery's settings (ConfigError naming the field)."""
    require(0 <= cfg.seed <= MAX_SEED, f"seed: must be an integer in [0, 2^63), got {cfg.seed}")
    require(
        isinstance(cfg.stop, StopKind),
        f"stop: must be one of {', '.join(kind.name for kind in StopKind)}, got {cfg.stop!r}",
    )
    require(cfg.eval_every >= 1, f"eval_every: must be an integer ≥ 1, got {cfg.eval_every}")
    require(
        cfg.checkpoint_every >= 0,
        f"checkpoint_every: must be ≥ 0 (0 = off), got {cfg.checkpoint_every}",
    )
    require(
        math.isfinite(cfg.save_every_s) and cfg.save_every_s >= 0,
        f"save_every_s: must be ≥ 0, got {cfg.save_every_s}",
    )
    require(cfg.threads >= 0, f"threads: must be ≥ 0 (0 = torch's default), got {cfg.threads}")
    require(
        cfg.device == "auto" or cfg.device.split(":")[0] in ("cpu", "cuda", "mps"),
        f"device: must be auto, cpu, cuda[:N] or mps, got {cfg.device!r}",
    )
    # The sweep name becomes a folder name (outputs/sweeps/NAME, the analysis's groups).
    require(
        cfg.sweep_name is None or re.fullmatch(r"\w[\w.-]*", cfg.sweep_name) is not None,
        "sweep_name: must be a plain folder name (letters, digits, _ . -, not starting with . "
        f"or -), got {cfg.sweep_name!r}",
    )
    try:
        validate_logger(cfg.logger)
    except (ValueError, ImportError) as error:
        raise ConfigError(str(error)) from None


def devices_here() -> list[str]:
    """The values of `device` this machine can run."""
    devices = ["auto", "cpu"]
    if torch.cuda.is_available():
        devices += ["cuda", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]
    if torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def check_device_here(cfg: RunConfig) -> None:
    """Raise ConfigError when this machine has no `cfg.device`."""
    allowed = devices_here()
    require(
        cfg.device in allowed,
        f"device: {cfg.device!r} is not available on this machine; allowed here: "
        + ", ".join(allowed),
    )


def to_dict(cfg: RunConfig) -> dict:
    """Plain nested dict of `cfg` (enums as their names), as stored in summary.json."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True)


def from_dict(schema: type[RunConfig], stored: dict | DictConfig) -> RunConfig:
    """The `schema` config of a nested dict or DictConfig (a summary's `config`, a composed Hydra
    config without its `hydra` node): fields it lacks keep their defaults; an unknown key or a
    value of the wrong type raises ConfigError naming the field and what is allowed."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), stored))
    except (ConfigKeyError, ConfigAttributeError, ValidationError) as error:
        raise schema_error(schema, error) from None


def from_hydra(schema: type[RunConfig], cfg: DictConfig) -> RunConfig:
    """The plain config of a composed Hydra config (its `hydra` node dropped)."""
    return from_dict(schema, OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]))


def schema_error(schema: type, error: OmegaConfBaseException) -> ConfigError:
    """OmegaConf's complaint about a key or a value of `schema`, told as ConfigError."""
    key = error.full_key
    try:
        if isinstance(error, ConfigKeyError | ConfigAttributeError):
            parent, _, leaf = key.rpartition(".")
            keys = ", ".join(_field_names(_schema_at(schema, parent)))
            near = [path for path in _leaf_paths(schema) if path.rpartition(".")[2] == leaf]
            hint = f" (did you mean {' or '.join(near)}?)" if near else ""
            return ConfigError(f"{key}: not a config key{hint}; allowed: {keys}")
        if isinstance(error, ValidationError):
            allowed = _allowed_values(schema, key)
            return ConfigError(f"{key}: must be {allowed}, got {error.value!r}")
    except (KeyError, TypeError):  # a key outside this schema (hydra.*): OmegaConf's words
        pass
    return ConfigError(f"{key}: {str(error.msg).splitlines()[0]}")


def _field_names(schema: type) -> list[str]:
    """The schema's fields, the family's own before the run machinery's (RunConfig's)."""
    names = [f.name for f in fields(schema)]
    shared = {f.name for f in fields(RunConfig)} if issubclass(schema, RunConfig) else set()
    return [n for n in names if n not in shared] + [n for n in names if n in shared]


def _schema_at(schema: type, path: str) -> type:
    """The dataclass at a dotted path of `schema` ("" is the schema itself)."""
    for part in filter(None, path.split(".")):
        schema = get_type_hints(schema)[part]
    return schema


def _leaf_paths(schema: type, prefix: str = "") -> list[str]:
    paths = []
    for name, hint in get_type_hints(schema).items():
        if get_origin(hint) is ClassVar:
            continue
        nested = is_dataclass(hint)
        paths += _leaf_paths(hint, f"{prefix}{name}.") if nested else [f"{prefix}{name}"]
    return paths


def _allowed_values(schema: type, key: str) -> str:
    parent, _, leaf = key.rpartition(".")
    hint = get_type_hints(_schema_at(schema, parent))[leaf]
    if get_origin(hint) is list:
        return "a list such as [a,b]"
    types = [t for t in get_args(hint) or (hint,) if t is not type(None)]  # Optional[X] -> X
    if isinstance(types[0], type) and issubclass(types[0], enum.Enum):
        words = f"one of {', '.join(member.name for member in types[0])}"
    else:
        words = _TYPE_WORDS.get(types[0], types[0].__name__)
    return words + (" or null" if len(types) < len(get_args(hint)) else "")


def config_differences(stored: dict, cfg: RunConfig) -> list[str]:
    """'field: stored -> current' for every field that changes what a run computes. A field the
    stored config lacks (a run of a version before the field existed) ran as its default does, so
    it differs only where the current value is not the default."""
    defaults = _flat(OmegaConf.to_container(OmegaConf.structured(type(cfg)), enum_to_str=True))
    old, new = defaults | _flat(stored), _flat(to_dict(cfg))
    return [
        f"{key}: {old.get(key)!r} -> {new.get(key)!r}"
        for key in sorted(old.keys() | new.keys())
        if not is_runtime_field(key, cfg.RUNTIME_FIELDS) and old.get(key) != new.get(key)
    ]


def is_runtime_field(key: str, runtime_fields: tuple[str, ...]) -> bool:
    """Whether the dotted `key` is one of `runtime_fields` or lies under one."""
    return any(key == name or key.startswith(name + ".") for name in runtime_fields)


def _flat(tree: dict) -> dict:
    """{"optim.lr": 0.001, ...} of a nested dict."""
    return pd.json_normalize(tree, sep=".").to_dict("records")[0]
