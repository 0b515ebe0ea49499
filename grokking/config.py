"""The training configuration: typed dataclasses (Hydra's schema, plain objects for the trainer)
and `validate`, which refuses a bad value with one line naming the field and what is allowed."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Optional

from grokking.loggers import LoggerConfig, validate_logger
from grokking.model import ModelConfig
from grokking.tasks import check_task, make_dataset, train_size


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


_TASK_ERROR_FIELDS = {"task": "task", "p": "task.p", "train_fraction": "train_fraction"}


class ConfigError(ValueError):
    """A configuration value that is not allowed; the message starts with the field's name."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(cfg: TrainConfig) -> None:
    """Raise ConfigError for the first value that is not allowed."""
    try:
        check_task(cfg.task.name, cfg.task.p)
        train_size(len(make_dataset(cfg.task.name, cfg.task.p)), cfg.train_fraction)
    except ValueError as error:  # tasks.py names its own fields; say where they sit here
        field_name, message = str(error).split(": ", 1)
        raise ConfigError(f"{_TASK_ERROR_FIELDS[field_name]}: {message}") from None
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
    for name in ("n_layers", "d_model", "n_heads", "d_ff"):
        value = getattr(cfg.model, name)
        _require(value >= 1, f"model.{name}: must be an integer ≥ 1, got {value}")
    _require(
        cfg.model.d_model % cfg.model.n_heads == 0,
        f"model.n_heads: must divide model.d_model={cfg.model.d_model}, got {cfg.model.n_heads}",
    )
    _require(cfg.optim.lr > 0, f"optim.lr: must be > 0, got {cfg.optim.lr}")
    _require(cfg.optim.weight_decay >= 0, "optim.weight_decay: must be ≥ 0")
    for name in ("beta1", "beta2"):
        value = getattr(cfg.optim, name)
        _require(0 <= value < 1, f"optim.{name}: must lie in [0, 1), got {value}")
    _require(cfg.optim.warmup_steps >= 0, "optim.warmup_steps: must be ≥ 0")
    try:
        validate_logger(cfg.logger)
    except (ValueError, ImportError) as error:
        raise ConfigError(str(error)) from None


def to_dict(cfg: TrainConfig) -> dict:
    """Plain nested dict of `cfg` (enums as their values), as stored in summary.json."""
    return asdict(cfg, dict_factory=lambda items: {k: _plain(v) for k, v in items})


def from_dict(stored: dict) -> TrainConfig:
    """The TrainConfig of `to_dict`'s output (as stored in summary.json)."""
    fields = dict(stored)
    fields["task"] = TaskConfig(**stored["task"])
    fields["model"] = ModelConfig(**stored["model"])
    fields["optim"] = OptimConfig(**stored["optim"])
    fields["logger"] = LoggerConfig(**stored.get("logger", {}))
    fields["lar_layers"] = LarLayers(stored["lar_layers"])
    fields["precision"] = Precision(stored.get("precision", "fp32"))
    return TrainConfig(**fields)


def _plain(value):
    return value.value if isinstance(value, enum.Enum) else value


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_differences(stored: dict, current: dict) -> list[str]:
    """'field: stored -> current' for every field that changes what a run computes."""
    old, new = _flatten(stored), _flatten(current)
    return [
        f"{key}: {old.get(key)!r} -> {new.get(key)!r}"
        for key in sorted(old.keys() | new.keys())
        if key.split(".")[0] not in RUNTIME_FIELDS and old.get(key) != new.get(key)
    ]
