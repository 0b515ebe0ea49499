"""The language-model family's configuration: the corpus and its subsets, the Gemma-2 model, the
optimizers and schedule of the paper's App. A.2 (values its text lost are choices, stated in
docs/method.md), and `validate`, which refuses a bad value with one line naming the field."""

from __future__ import annotations

import enum
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Optional

from omegaconf import DictConfig

from grokking.lar import regularize
from grokking.lar.regularize import RegularizeConfig, Trigger
from grokking.lm.corpus import MAX_VOCAB_SIZE, MIN_VOCAB_SIZE
from grokking.runs import config as run_config
from grokking.runs.config import MAX_SEED, RunConfig, require, validate_run


class OptimizerName(enum.Enum):
    adam = "adam"  # Adam on every parameter (no weight decay by default)
    muon = "muon"  # Muon on the 2-D hidden matrices, Adam on embeddings, unembedding and gains


class OrthogonalizeDtype(enum.Enum):
    """The dtype of Muon's Newton–Schulz iterations (grokking.lm.optim.Muon)."""

    auto = "auto"  # float32 on a CPU without native bfloat16 (slow there), bfloat16 elsewhere
    bfloat16 = "bfloat16"  # torch.optim.Muon's own orthogonalisation
    float32 = "float32"  # the same iterations in float32


class Signal(enum.Enum):
    """A baseline signal an evaluation can record besides LAR (grokking/signals.py)."""

    eb = "eb"  # the EB criterion, from the probe batch's per-sample gradients
    gradient_disparity = "gradient_disparity"  # between the probe batch's two halves
    ww_alpha = "ww_alpha"  # WeightWatcher's α: the unembedding's and the dense layers' mean


class LarLayers(enum.Enum):
    unembed = "unembed"  # only lm_head
    all = "all"  # every nn.Linear of the model


@dataclass
class DataConfig:
    source: Optional[str] = None  # noqa: UP045 — a folder of text files; None: Python's stdlib
    vocab_size: int = 1024  # byte-level BPE vocabulary, trained on the whole corpus
    val_fraction: float = 0.1  # documents held out, the same for every training-set size
    split_seed: int = 0  # which documents are held out
    subset_seed: int = 0  # the order the nested training subsets are cut from
    train_tokens: Optional[int] = 100_000  # noqa: UP045 — training-set size; None: all
    cache_dir: str = "outputs/lm/cache"  # tokenized corpora, one folder per corpus × vocabulary


@dataclass
class ModelConfig:
    """A Gemma-2 decoder (HF transformers' Gemma2ForCausalLM), untied unembedding."""

    n_layers: int = 2
    hidden_size: int = 128
    n_heads: int = 4
    head_dim: int = 32
    intermediate_size: int = 512  # of the gated-GeLU MLP
    context: int = 128  # tokens per sequence
    # Gemma-2 soft-caps attention logits at 50; the paper does not say (a choice: kept).
    attn_logit_softcapping: Optional[float] = 50.0  # noqa: UP045 — None: off

    @property
    def size(self) -> str:
        return size_name(self.hidden_size, self.n_layers)


def size_name(hidden_size: int, n_layers: int) -> str:
    """How summaries, tables and figures name a model's size: 'hidden 256 × 4 layers'. The two
    sizes of conf/lm/model/ differ in both; a run that overrides another dimension is told apart
    by its config (the analysis's condition), not by this name."""
    return f"hidden {hidden_size} × {n_layers} layers"


@dataclass
class OptimConfig:
    name: OptimizerName = OptimizerName.adam
    # peak rate of the optimizer named (Adam's; muon.yaml sets Muon's): the best final validation
    # loss of sweeps/lm/lm_lr.yaml on the largest set (docs/method.md §4)
    lr: float = 8e-3
    adam_lr: float = 8e-3  # under muon: the peak rate of the Adam-side parameters
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.0  # decoupled; on 2-D parameters only (never on norm gains)
    momentum: float = 0.95  # Muon's (Nesterov)
    ns_steps: int = 5  # Muon's Newton–Schulz iterations
    orthogonalize_dtype: OrthogonalizeDtype = OrthogonalizeDtype.auto  # and their dtype
    warmup_fraction: float = 0.05  # of the steps, linear from 0 to the peak
    final_lr_fraction: float = 0.1  # the cosine ends at this fraction of the peak
    grad_clip: float = 1.0  # global norm; 0: off


@dataclass
class LMRegularizeConfig(RegularizeConfig):
    window: int = 100  # steps of the trailing mean the LAR term holds LAR up to


@dataclass
class LMConfig(RunConfig):
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    regularize: LMRegularizeConfig = field(default_factory=LMRegularizeConfig)
    batch_size: int = 32  # sequences per step
    token_budget: int = 1_000_000  # tokens trained on; steps = budget / (batch × context)
    val_batches: int = 13  # the validation batch, in training batches (the paper's ≈ 13)
    eval_every: int = 20  # steps between evaluations
    lar_layers: LarLayers = LarLayers.all
    # baselines recorded at each evaluation (metrics columns eb, gradient_disparity, ww_alpha and
    # ww_alpha_mean); none by default: each costs a share of a step (benchmarks/lm_cost.py)
    signals: list[Signal] = field(default_factory=list)

    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = (*RunConfig.RUNTIME_FIELDS, "data.cache_dir")

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.model.context

    @property
    def max_steps(self) -> int:
        return self.token_budget // self.tokens_per_step


# What every float field of the schema (RunConfig's aside: validate_run checks them) may hold, in
# one table: (the refusal's words, the test of a finite value). inf and nan are refused before
# the test: both slip through comparisons such as `eps > 0` or `grad_clip >= 0`.
FLOAT_RANGES: dict[str, tuple[str, Callable[[float], bool]]] = {
    "data.val_fraction": ("a number in (0, 1)", lambda v: 0 < v < 1),
    "model.attn_logit_softcapping": ("a finite number > 0, or null (off)", lambda v: v > 0),
    "optim.lr": ("a finite number > 0", lambda v: v > 0),
    "optim.adam_lr": ("a finite number > 0", lambda v: v > 0),
    "optim.beta1": ("a number in [0, 1)", lambda v: 0 <= v < 1),
    "optim.beta2": ("a number in [0, 1)", lambda v: 0 <= v < 1),
    "optim.eps": ("a finite number > 0", lambda v: v > 0),
    "optim.weight_decay": ("a finite number ≥ 0", lambda v: v >= 0),
    "optim.momentum": ("a number in [0, 1)", lambda v: 0 <= v < 1),
    "optim.warmup_fraction": ("a number in [0, 1)", lambda v: 0 <= v < 1),
    "optim.final_lr_fraction": ("a number in [0, 1]", lambda v: 0 <= v <= 1),
    "optim.grad_clip": ("a finite number ≥ 0 (0: off)", lambda v: v >= 0),
    **{f"regularize.{name}": words for name, words in regularize.FLOAT_RANGES.items()},
}


def check_floats(cfg: LMConfig) -> None:
    """ConfigError for the first float field outside its FLOAT_RANGES entry."""
    for name, (allowed, ok) in FLOAT_RANGES.items():
        value = functools.reduce(getattr, name.split("."), cfg)
        if value is None:  # the schema lets only Optional[float] fields be null
            continue
        require(math.isfinite(value) and ok(value), f"{name}: must be {allowed}, got {value}")


def validate(cfg: LMConfig) -> None:
    """Raise ConfigError for the first value that is not allowed. Whether the corpus holds
    `data.train_tokens` is checked once it is tokenized (`lm.data.check_sizes`)."""
    validate_run(cfg)
    d, m, o = cfg.data, cfg.model, cfg.optim
    require(
        MIN_VOCAB_SIZE <= d.vocab_size <= MAX_VOCAB_SIZE,
        f"data.vocab_size: must be an integer in [{MIN_VOCAB_SIZE}, {MAX_VOCAB_SIZE}], "
        f"got {d.vocab_size}",
    )
    for name in ("split_seed", "subset_seed"):
        value = getattr(d, name)
        require(
            0 <= value <= MAX_SEED, f"data.{name}: must be an integer in [0, 2^63), got {value}"
        )
    require(
        d.train_tokens is None or d.train_tokens >= 1,
        f"data.train_tokens: must be an integer ≥ 1 or null (all), got {d.train_tokens}",
    )
    for name in ("n_layers", "hidden_size", "n_heads", "head_dim", "intermediate_size", "context"):
        value = getattr(m, name)
        require(value >= 1, f"model.{name}: must be an integer ≥ 1, got {value}")
    require(o.ns_steps >= 1, f"optim.ns_steps: must be an integer ≥ 1, got {o.ns_steps}")
    check_floats(cfg)
    check_regularizer(cfg.regularize)
    for name in ("batch_size", "val_batches"):
        value = getattr(cfg, name)
        require(value >= 1, f"{name}: must be an integer ≥ 1, got {value}")
    require(
        cfg.token_budget >= cfg.tokens_per_step,
        f"token_budget: must hold at least one step of batch_size × model.context = "
        f"{cfg.tokens_per_step} tokens, got {cfg.token_budget}",
    )


def check_regularizer(cfg: LMRegularizeConfig) -> None:
    """The fields `check_floats` does not check."""
    require(cfg.window >= 1, f"regularize.window: must be an integer ≥ 1, got {cfg.window}")
    # no training accuracy: nothing marks memorization or feeds the generalization alarm
    require(
        cfg.trigger == Trigger.start,
        "regularize.trigger: language models measure no training accuracy, so only start is "
        f"allowed, got {cfg.trigger.name}",
    )


def from_dict(stored: dict | DictConfig) -> LMConfig:
    """The LMConfig of a summary's `config` or a composed config (runs.config.from_dict)."""
    return run_config.from_dict(LMConfig, stored)
