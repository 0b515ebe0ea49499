"""LAR as a training signal, and the validation-free regularizers it is compared with
(docs/method.md §6): the unembedding's LAR of the current batch with gradients (Eq. 1 on the
step's own forward pass) or its top direction's share p₁q₁ of Eq. 3, Grokfast's gradient
filter, the squared weight norm, and the switch that turns a regularizer on — from the start, at
memorization or when the generalization alarm fires.

Every function takes an optional leading member dimension, so a stacked pack of R runs gets R
values (or R filters) at once and a single model gets one.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from grokking.lar.alarm import GeneralizationAlarm
from grokking.lar.metric import probed_matrix


# Members are named, not valued (Hydra and summary.json read the names): auto values.
class Regularizer(enum.Enum):
    none = enum.auto()
    lar = enum.auto()  # a term on the unembedding's LAR of each training batch
    p1q1 = enum.auto()  # the same term on its top direction's contribution p₁q₁ (Eq. 3)
    grokfast = enum.auto()  # Grokfast-EMA (Lee et al. 2024): an EMA of gradients added to them
    weight_norm = enum.auto()  # strength · ‖θ‖² added to the loss ("delayed compression")


class Trigger(enum.Enum):
    start = enum.auto()  # from the first step
    memorization = enum.auto()  # from the evaluation where training accuracy ≥ the threshold
    alarm = enum.auto()  # from the evaluation where the generalization alarm fires


@dataclass
class RegularizeConfig:
    name: Regularizer = Regularizer.none
    strength: float = 0.0  # λ: the term's weight, or Grokfast's amplification
    trigger: Trigger = Trigger.start
    alpha: float = 0.98  # Grokfast's EMA momentum


# What each float field may hold: (the refusal's words, the test of a finite value).
FLOAT_RANGES = {
    "strength": ("a finite number ≥ 0", lambda v: v >= 0),
    "alpha": ("a number in [0, 1)", lambda v: 0 <= v < 1),
}


def check_regularize(cfg: RegularizeConfig) -> None:
    """ValueError naming the field (under `regularize.`) for a value that is not allowed."""
    for name, (allowed, ok) in FLOAT_RANGES.items():
        value = getattr(cfg, name)
        if not (math.isfinite(value) and ok(value)):
            raise ValueError(f"regularize.{name}: must be {allowed}, got {value}")


def _mean_square(t: torch.Tensor) -> torch.Tensor:
    """mean(t²) over the last two dimensions, in float32 or wider."""
    return t.to(torch.promote_types(t.dtype, torch.float32)).square().mean(dim=(-2, -1))


def lar_term(inputs: torch.Tensor, outputs: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Eq. 1 with gradients: log(rms(Y) / (rms(W) · rms(X))) / log n, for inputs X [..., B, n],
    outputs Y = X Wᵀ [..., B, m] and W [..., m, n]; one value per leading index."""
    n = weight.shape[-1]
    log_ratio_sq = _mean_square(outputs).log() - _mean_square(weight).log()
    return 0.5 * (log_ratio_sq - _mean_square(inputs).log()) / math.log(n)


def top_contribution(inputs: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """p₁q₁ of Eq. 2 with gradients, for inputs X [..., B, n] and W [..., m, n]: W's top share of
    energy p₁ = s₁² / Σ s² times the inputs' share along its top right singular vector,
    q₁ = Σ_b (v₁ᵀ x_b)² / Σ_b ‖x_b‖²; one value per leading index. The gradient flows through the
    SVD, which defines it while s₁ > s₂ (ties have measure zero in training)."""
    accumulate = torch.promote_types(weight.dtype, torch.float32)
    _, s, vh = torch.linalg.svd(weight.to(accumulate), full_matrices=False)
    p1 = s[..., 0].square() / s.square().sum(dim=-1)
    x = inputs.to(accumulate)
    along = x @ vh[..., 0, :].unsqueeze(-1)  # [..., B, 1]: each input's coordinate on v₁
    return p1 * along.square().sum(dim=(-2, -1)) / x.square().sum(dim=(-2, -1))


def steered(name: Regularizer, inputs, outputs, weight) -> torch.Tensor:
    """The quantity a steering term pushes (`Regularizer.lar` or `.p1q1`) on the unembedding's
    inputs X, outputs Y = X Wᵀ and weight W, one value per leading index."""
    if name == Regularizer.lar:
        return lar_term(inputs, outputs, weight)
    return top_contribution(inputs, weight)


# The regularizers that steer a spectral quantity of the unembedding (the others act on all
# weights or gradients).
STEERING = (Regularizer.lar, Regularizer.p1q1)


def squared_norm(params: Iterable[torch.Tensor], members: int = 0) -> torch.Tensor:
    """‖θ‖² over every parameter: one value per member of a stacked model (`members` leading
    dimensions: 1 for a pack, 0 for a single model)."""
    return sum(p.square().flatten(members).sum(dim=-1) for p in params)


def _per_member(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.reshape(mask.shape + (1,) * (like.dim() - mask.dim()))


@torch.no_grad()
def grokfast_(
    grads: list[torch.Tensor],
    emas: list[torch.Tensor],
    on: torch.Tensor,
    started: torch.Tensor,
    alpha: float,
    strength: float,
) -> None:
    """Grokfast-EMA in place, for the members where `on` (bool, [R] or []): h ← α·h + (1−α)·g,
    then g ← g + λ·h. A member's first filtered step sets h ← g, as the published code does
    (its EMA starts from the first gradient); `started` records which members have begun. Every
    branch is a tensor operation, so a captured CUDA graph replays it as the switch changes."""
    for g, h in zip(grads, emas, strict=True):
        first = _per_member(on & ~started, g)
        running = alpha * h + (1 - alpha) * g
        h.copy_(torch.where(_per_member(on, g), torch.where(first, g, running), h))
        g.add_(torch.where(_per_member(on, g), strength * h, 0.0))
    started.logical_or_(on)


class Switch:
    """Whether one run's regularizer is on: from the start, or from the evaluation at which the
    trigger first holds (fed the whole training set's LAR and accuracy at each evaluation)."""

    def __init__(self, trigger: Trigger, memorized: float):
        self.trigger = trigger
        self.memorized = memorized
        self.on_at: int | None = 0 if trigger == Trigger.start else None  # optimizer step
        self.alarm = GeneralizationAlarm(memorized=memorized) if trigger == Trigger.alarm else None

    @property
    def on(self) -> bool:
        return self.on_at is not None

    def update(self, step: int, lar: float, train_acc: float) -> bool:
        """Feed an evaluation at optimizer step `step`; True when the switch turns on here."""
        if self.on:
            return False
        if self.alarm is not None:
            fires = self.alarm.update(step, lar, train_acc=train_acc)
        else:
            fires = train_acc >= self.memorized
        if fires:
            self.on_at = step
        return fires

    def state(self) -> dict:
        return {"on_at": self.on_at, "alarm": dict(vars(self.alarm)) if self.alarm else None}

    def load(self, state: dict) -> None:
        self.on_at = state["on_at"]
        if self.alarm is not None:
            vars(self.alarm).update(state["alarm"])


class ForwardCapture:
    """A forward hook on an `nn.Linear` (or GPT-2 style `Conv1D`) keeping the last training
    call's inputs X [rows, n] and outputs Y = X Wᵀ [rows, m] (the bias subtracted) with their
    graph, for `lar_term(capture.inputs, capture.outputs, capture.weight)`. Calls under
    `torch.no_grad()` (evaluations) are not kept."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.weight = probed_matrix(module)
        if self.weight is None:
            raise TypeError(f"ForwardCapture needs an nn.Linear or a Conv1D, got {module}")
        self.inputs = self.outputs = None
        self._handle = module.register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if not torch.is_grad_enabled():
            return
        m, n = self.weight.shape
        self.inputs = args[0].reshape(-1, n)
        bias = getattr(module, "bias", None)
        self.outputs = output.reshape(-1, m) - (bias if bias is not None else 0)

    def remove(self) -> None:
        self._handle.remove()
