"""The algorithmic (grokking) family's configuration: its typed schema (Hydra's, and plain objects
for the trainer) and `validate`, which refuses a bad value with one line naming the field and what
is allowed. The run machinery's own settings come from `grokking.runs.config.RunConfig`."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import ClassVar, Optional

from omegaconf import DictConfig

from grokking.algorithmic.model import ModelConfig
from grokking.algorithmic.tasks import TaskError, check_task, make_dataset, train_size
from grokking.lar.regularize import RegularizeConfig, check_regularize
from grokking.runs import config as run_config
from grokking.runs.config import MAX_SEED, RunConfig, require, validate_run
from grokking.runs.stopping import StopKind


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
class TrainConfig(RunConfig):
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    regularize: RegularizeConfig = field(default_factory=RegularizeConfig)  # lar, grokfast, ...
    train_fraction: float = 0.5
    split_seed: Optional[int] = None  # noqa: UP045 — which examples train; None: same as seed
    batch_size: int = 512
    eval_batch_size: int = 512  # rows per no-grad forward pass (512 measured fastest on CPU)
    max_epochs: int = 50_000
    # validation: at stop_factor × the grokking epoch; lar: GrokkingStop (no validation data);
    # none: at max_epochs. Validation is measured and recorded under each (docs/method.md §5)
    stop: StopKind = StopKind.validation
    stop_factor: float = 3.0  # stop at stop_factor × grokking epoch (stop=validation)
    memorization_threshold: float = 0.99  # train accuracy that counts as memorized
    grokking_threshold: float = 0.99  # validation accuracy that counts as grokked
    lar_layers: LarLayers = LarLayers.all
    precision: Precision = Precision.fp32  # LAR sums are float64 whatever this says

    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = (*RunConfig.RUNTIME_FIELDS, "eval_batch_size")

    def __post_init__(self):
        if self.split_seed is None:
            self.split_seed = self.seed


# Where each argument of grokking/algorithmic/tasks.py sits in this config.
_TASK_ARGUMENTS = {"task": "task", "p": "task.p", "train_fraction": "train_fraction"}


def validate(cfg: TrainConfig) -> None:
    """Raise ConfigError for the first value that is not allowed (on any machine: whether this
    one has the device is `runs.config.check_device_here`'s question)."""
    try:
        check_task(cfg.task.name, cfg.task.p)
        train_size(len(make_dataset(cfg.task.name, cfg.task.p)), cfg.train_fraction)
    except TaskError as error:
        raise run_config.ConfigError(f"{_TASK_ARGUMENTS[error.argument]}: {error.reason}") from None
    validate_run(cfg)
    require(
        0 <= cfg.split_seed <= MAX_SEED,
        f"split_seed: must be an integer in [0, 2^63), got {cfg.split_seed}",
    )
    for name in ("batch_size", "eval_batch_size", "max_epochs"):
        value = getattr(cfg, name)
        require(value >= 1, f"{name}: must be an integer ≥ 1, got {value}")
    require(cfg.stop_factor >= 1, f"stop_factor: must be ≥ 1, got {cfg.stop_factor}")
    for name in ("memorization_threshold", "grokking_threshold"):
        value = getattr(cfg, name)
        require(0 < value <= 1, f"{name}: must lie in (0, 1], got {value}")
    for name in ("n_layers", "d_model", "n_heads", "d_ff"):
        value = getattr(cfg.model, name)
        require(value >= 1, f"model.{name}: must be an integer ≥ 1, got {value}")
    require(
        cfg.model.d_model % cfg.model.n_heads == 0,
        f"model.n_heads: must divide model.d_model={cfg.model.d_model}, got {cfg.model.n_heads}",
    )
    require(
        math.isfinite(cfg.optim.lr) and cfg.optim.lr > 0,
        f"optim.lr: must be a finite number > 0, got {cfg.optim.lr}",
    )
    require(
        math.isfinite(cfg.optim.weight_decay) and cfg.optim.weight_decay >= 0,
        f"optim.weight_decay: must be a finite number ≥ 0, got {cfg.optim.weight_decay}",
    )
    for name in ("beta1", "beta2"):
        value = getattr(cfg.optim, name)
        require(0 <= value < 1, f"optim.{name}: must lie in [0, 1), got {value}")
    require(cfg.optim.warmup_steps >= 0, "optim.warmup_steps: must be ≥ 0")
    try:
        check_regularize(cfg.regularize)
    except ValueError as error:
        raise run_config.ConfigError(str(error)) from None


def from_dict(stored: dict | DictConfig) -> TrainConfig:
    """The TrainConfig of a summary's `config` or a composed config (runs.config.from_dict)."""
    return run_config.from_dict(TrainConfig, stored)
