"""The training configuration: typed dataclasses (Hydra's schema, plain objects for the trainer)
and `validate`, which refuses a bad value with one line naming the field and what is allowed."""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Optional, get_args, get_origin, get_type_hints

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    OmegaConfBaseException,
    ValidationError,
)

from grokking.loggers import LoggerConfig, validate_logger
from grokking.model import ModelConfig
from grokking.tasks import TaskError, check_task, make_dataset, train_size


class LarLayers(enum.Enum):
    unembed = "unembed"  # only the unembedding
    all = "all"  # every nn.Linear of the model


class Precision(enum.Enum):
    fp32 = "fp32"  # float32 everywhere
    tf32 = "tf32"  # float32 storage, TensorFloat-32 matmuls (CUDA; the same as fp32 on a CPU)
    bf16 = "bf16"  # bfloat16 autocast of the forward pass, float32 weights and optimizer


@dataclass
class TaskConfig:
    name: str = "add"
    p: Optional[int] = 97  # noqa: UP045 — OmegaConf reads Optional, not `int | None`
    # the modulus; the S5 task files set it to null


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 1.0
    beta1: float = 0.9
    beta2: float = 0.98
    warmup_steps: int = 10


@dataclass
class TrainConfig:
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train_fraction: float = 0.5
    seed: int = 0  # model initialisation and batch order
    split_seed: Optional[int] = None  # noqa: UP045 — which examples train; None: same as seed
    batch_size: int = 512
    eval_every: int = 20  # epochs between evaluations
    eval_batch_size: int = 512  # rows per no-grad forward pass (512 measured fastest on CPU)
    max_epochs: int = 50_000
    stop_factor: float = 3.0  # stop at stop_factor × grokking epoch
    memorization_threshold: float = 0.99  # train accuracy that counts as memorized
    grokking_threshold: float = 0.99  # validation accuracy that counts as grokked
    lar_layers: LarLayers = LarLayers.all
    precision: Precision = Precision.fp32  # LAR sums are float64 whatever this says
    checkpoint_every: int = 0  # keep checkpoints/epoch_N.pt every N epochs; 0: off
    save_every_s: float = 60.0  # seconds between resume points (last.pt, tables); 0: each eval
    device: str = "auto"  # auto: cuda when available, else cpu
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    sweep_name: Optional[str] = None  # noqa: UP045 — the sweep file that made this run
    logger: LoggerConfig = field(default_factory=LoggerConfig)  # TensorBoard, W&B or none

    def __post_init__(self):
        if self.split_seed is None:
            self.split_seed = self.seed


# Fields that change how fast a run goes but not what it computes: a resumed run may differ here.
RUNTIME_FIELDS = (
    "device",
    "threads",
    "eval_batch_size",
    "checkpoint_every",
    "save_every_s",
    "logger",
)

MAX_SEED = 2**63 - 1  # torch.manual_seed and torch.Generator take up to 64 bits

# Where each argument of grokking/tasks.py sits in this config.
_TASK_ARGUMENTS = {"task": "task", "p": "task.p", "train_fraction": "train_fraction"}

# How the refusals describe each field type of the schema.
_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


class ConfigError(ValueError):
    """A configuration value that is not allowed; the message starts with the field's name."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(cfg: TrainConfig) -> None:
    """Raise ConfigError for the first value that is not allowed (on any machine: whether this
    one has the device is `check_device_here`'s question)."""
    try:
        check_task(cfg.task.name, cfg.task.p)
        train_size(len(make_dataset(cfg.task.name, cfg.task.p)), cfg.train_fraction)
    except TaskError as error:
        raise ConfigError(f"{_TASK_ARGUMENTS[error.argument]}: {error.reason}") from None
    for name in ("seed", "split_seed"):  # what torch's generators accept
        value = getattr(cfg, name)
        _require(0 <= value <= MAX_SEED, f"{name}: must be an integer in [0, 2^63), got {value}")
    for name in ("batch_size", "eval_every", "eval_batch_size", "max_epochs"):
        value = getattr(cfg, name)
        _require(value >= 1, f"{name}: must be an integer ≥ 1, got {value}")
    _require(cfg.stop_factor >= 1, f"stop_factor: must be ≥ 1, got {cfg.stop_factor}")
    for name in ("memorization_threshold", "grokking_threshold"):
        value = getattr(cfg, name)
        _require(0 < value <= 1, f"{name}: must lie in (0, 1], got {value}")
    _require(
        cfg.checkpoint_every >= 0,
        f"checkpoint_every: must be ≥ 0 (0 = off), got {cfg.checkpoint_every}",
    )
    _require(cfg.save_every_s >= 0, f"save_every_s: must be ≥ 0, got {cfg.save_every_s}")
    _require(cfg.threads >= 0, f"threads: must be ≥ 0 (0 = torch's default), got {cfg.threads}")
    _require(
        cfg.device == "auto" or cfg.device.split(":")[0] in ("cpu", "cuda", "mps"),
        f"device: must be auto, cpu, cuda[:N] or mps, got {cfg.device!r}",
    )
    # The sweep name becomes a folder name (outputs/sweeps/NAME, the analysis's groups).
    _require(
        cfg.sweep_name is None or re.fullmatch(r"\w[\w.-]*", cfg.sweep_name) is not None,
        "sweep_name: must be a plain folder name (letters, digits, _ . -, not starting with . "
        f"or -), got {cfg.sweep_name!r}",
    )
    for name in ("n_layers", "d_model", "n_heads", "d_ff"):
        value = getattr(cfg.model, name)
        _require(value >= 1, f"model.{name}: must be an integer ≥ 1, got {value}")
    _require(
        cfg.model.d_model % cfg.model.n_heads == 0,
        f"model.n_heads: must divide model.d_model={cfg.model.d_model}, got {cfg.model.n_heads}",
    )
    _require(
        math.isfinite(cfg.optim.lr) and cfg.optim.lr > 0,
        f"optim.lr: must be a finite number > 0, got {cfg.optim.lr}",
    )
    _require(
        math.isfinite(cfg.optim.weight_decay) and cfg.optim.weight_decay >= 0,
        f"optim.weight_decay: must be a finite number ≥ 0, got {cfg.optim.weight_decay}",
    )
    for name in ("beta1", "beta2"):
        value = getattr(cfg.optim, name)
        _require(0 <= value < 1, f"optim.{name}: must lie in [0, 1), got {value}")
    _require(cfg.optim.warmup_steps >= 0, "optim.warmup_steps: must be ≥ 0")
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


def check_device_here(cfg: TrainConfig) -> None:
    """Raise ConfigError when this machine has no `cfg.device`."""
    allowed = devices_here()
    _require(
        cfg.device in allowed,
        f"device: {cfg.device!r} is not available on this machine; allowed here: "
        + ", ".join(allowed),
    )


def to_dict(cfg: TrainConfig) -> dict:
    """Plain nested dict of `cfg` (enums as their names), as stored in summary.json."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True)


def from_dict(stored: dict | DictConfig) -> TrainConfig:
    """The TrainConfig of a nested dict or DictConfig (a summary's `config`, a composed Hydra
    config): fields it lacks keep their defaults; an unknown key or a value of the wrong type
    raises ConfigError naming the field and what is allowed."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainConfig), stored))
    except (ConfigKeyError, ConfigAttributeError, ValidationError) as error:
        raise schema_error(error) from None


def schema_error(error: OmegaConfBaseException) -> ConfigError:
    """OmegaConf's complaint about a key or a value of the schema, told as ConfigError."""
    key = error.full_key
    try:
        if isinstance(error, ConfigKeyError | ConfigAttributeError):
            parent, _, leaf = key.rpartition(".")
            keys = ", ".join(f.name for f in fields(_schema_at(parent)))
            near = [path for path in _leaf_paths(TrainConfig) if path.rpartition(".")[2] == leaf]
            hint = f" (did you mean {' or '.join(near)}?)" if near else ""
            return ConfigError(f"{key}: not a config key{hint}; allowed: {keys}")
        if isinstance(error, ValidationError):
            return ConfigError(f"{key}: must be {_allowed_values(key)}, got {error.value!r}")
    except (KeyError, TypeError):  # a key outside this schema (hydra.*): OmegaConf's words
        pass
    return ConfigError(f"{key}: {str(error.msg).splitlines()[0]}")


def _schema_at(path: str) -> type:
    """The dataclass at a dotted path of the schema ("" is TrainConfig itself)."""
    schema = TrainConfig
    for part in filter(None, path.split(".")):
        schema = get_type_hints(schema)[part]
    return schema


def _leaf_paths(schema: type, prefix: str = "") -> list[str]:
    paths = []
    for name, hint in get_type_hints(schema).items():
        nested = is_dataclass(hint)
        paths += _leaf_paths(hint, f"{prefix}{name}.") if nested else [f"{prefix}{name}"]
    return paths


def _allowed_values(key: str) -> str:
    parent, _, leaf = key.rpartition(".")
    hint = get_type_hints(_schema_at(parent))[leaf]
    if get_origin(hint) is list:
        return "a list such as [a,b]"
    types = [t for t in get_args(hint) or (hint,) if t is not type(None)]  # Optional[X] -> X
    if isinstance(types[0], type) and issubclass(types[0], enum.Enum):
        words = f"one of {', '.join(member.name for member in types[0])}"
    else:
        words = _TYPE_WORDS.get(types[0], types[0].__name__)
    return words + (" or null" if len(types) < len(get_args(hint)) else "")


def config_differences(stored: dict, current: dict) -> list[str]:
    """'field: stored -> current' for every field that changes what a run computes."""
    old, new = _flat(stored), _flat(current)
    return [
        f"{key}: {old.get(key)!r} -> {new.get(key)!r}"
        for key in sorted(old.keys() | new.keys())
        if key.split(".")[0] not in RUNTIME_FIELDS and old.get(key) != new.get(key)
    ]


def _flat(tree: dict) -> dict:
    """{"optim.lr": 0.001, ...} of a nested dict."""
    return pd.json_normalize(tree, sep=".").to_dict("records")[0]
