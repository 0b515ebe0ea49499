"""Validation-free signals other than LAR, the published baselines LAR's stopping rules are scored
beside (docs/method.md §5). Each reads the model and training data only.

- The EB criterion (Mahsereci et al. 2017, "Early stopping without a validation set"): from the
  per-sample gradients g_b of one training batch of B samples, with ĝ their mean and σ̂² their
  unbiased variance per parameter, EB = 1 − (B / D) Σ_k ĝ_k² / σ̂_k² over the D parameters. It
  turns positive once the batch's mean gradient is no larger than its sampling noise: the
  remaining descent directions are indistinguishable from noise. Parameters whose gradient is
  the same for every sample (σ̂² = 0: the embedding rows of tokens no sample holds) carry no
  information and are left out of the sum and of D.
- Gradient disparity (Forouzesh and Thiran 2021, "Disparity between batches as a signal for
  early stopping"): ‖g₁ − g₂‖₂, the ℓ2 distance between the mean-loss gradients of two disjoint
  training batches, over every parameter, without rescaling (their plain definition, not the
  variant with each batch's loss standardised). It grows as the model fits each batch's own
  samples rather than what they share.
- WeightWatcher's power-law exponent α (Martin and Mahoney) of each dense layer: α < 2 reads
  "over-trained" in its documentation.

The per-sample gradients come from a loop of one backward pass per sample, summed as it goes
(memory of two gradients, not B): `torch.func.vmap` over the Gemma-2 model was 4× slower than the
loop on the CPU.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

log = logging.getLogger("grokking")


@dataclass(frozen=True)
class GradientMoments:
    """Sums over a batch's per-sample gradients, per parameter tensor, in float64."""

    count: int  # samples
    total: list[torch.Tensor]  # Σ_b g_b
    squares: list[torch.Tensor]  # Σ_b g_b²
    first_half: list[torch.Tensor]  # Σ_b g_b over the first count // 2 samples


def gradient_moments(
    parameters: Sequence[nn.Parameter], sample_loss: Callable[[torch.Tensor], torch.Tensor],
    samples: torch.Tensor,
) -> GradientMoments:  # fmt: skip
    """The gradient sums of `sample_loss(sample)` (a sample keeps its leading axis, of length 1)
    over the samples, one backward pass each; the parameters' `.grad` are left untouched."""
    if len(samples) < 2:
        raise ValueError(f"gradient_moments: needs a batch of ≥ 2 samples, got {len(samples)}")
    zeros = [torch.zeros_like(p, dtype=torch.float64) for p in parameters]
    total, squares = [z.clone() for z in zeros], [z.clone() for z in zeros]
    first_half = zeros
    for index in range(len(samples)):
        grads = torch.autograd.grad(sample_loss(samples[index : index + 1]), parameters,
                                    allow_unused=True)  # fmt: skip
        for k, grad in enumerate(grads):
            if grad is None:  # a parameter this loss does not reach has a zero gradient
                continue
            grad = grad.double()
            total[k] += grad
            squares[k] += grad * grad
            if index < len(samples) // 2:
                first_half[k] += grad
    return GradientMoments(len(samples), total, squares, first_half)


def eb_criterion(moments: GradientMoments) -> float:
    """EB = 1 − (B / D) Σ_k ĝ_k² / σ̂_k², over the D parameters whose σ̂² > 0."""
    count = moments.count
    ratio, informative = 0.0, 0
    for total, squares in zip(moments.total, moments.squares, strict=True):
        mean = total / count
        variance = (squares - count * mean * mean) / (count - 1)
        kept = variance > 0
        ratio += (mean[kept] ** 2 / variance[kept]).sum().item()
        informative += int(kept.sum())
    return 1 - count * ratio / informative if informative else math.nan


def gradient_disparity(moments: GradientMoments) -> float:
    """‖g₁ − g₂‖₂: g₁ the mean gradient of the first half of the samples, g₂ of the rest."""
    first = moments.count // 2
    rest = moments.count - first
    squared = sum(
        ((half / first - (total - half) / rest) ** 2).sum().item()
        for total, half in zip(moments.total, moments.first_half, strict=True)
    )
    return math.sqrt(squared)


# --- WeightWatcher -------------------------------------------------------------------------------
@functools.cache
def weightwatcher_module():
    """The weightwatcher module, or None (with a warning, once) when it is not installed: the
    other signals are measured without it."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints which SVD it uses on import
            import weightwatcher  # here: only α needs it, and it is slow to import
    except ImportError:
        log.warning(
            "weightwatcher is not installed (pip install 'grokking[baselines]'): its α is left "
            "out (NaN)"
        )
        return None
    logging.getLogger("weightwatcher").setLevel(logging.ERROR)  # a line per layer otherwise
    return weightwatcher


def ww_alphas(model: nn.Module) -> pd.Series:
    """WeightWatcher's α of each dense layer of `model` it fits (NaN where its fit fails), by
    name; all NaN without weightwatcher."""
    weightwatcher = weightwatcher_module()
    if weightwatcher is None:
        return pd.Series([math.nan])
    details = weightwatcher.WeightWatcher(model=model).analyze()
    dense = details[details["layer_type"].astype(str).str.contains("dense", case=False)]
    return pd.to_numeric(dense.set_index("name")["alpha"], errors="coerce")


# --- at an evaluation ----------------------------------------------------------------------------
# The metrics columns each signal fills.
COLUMNS = {
    "eb": ("eb",),
    "gradient_disparity": ("gradient_disparity",),
    "ww_alpha": ("ww_alpha", "ww_alpha_mean"),  # the unembedding's α, the dense layers' mean α
}


def measure(
    model: nn.Module, sample_loss: Callable[[torch.Tensor], torch.Tensor], samples: torch.Tensor,
    names: Collection[str], unembedding: str,
) -> dict[str, float]:  # fmt: skip
    """The signals `names` (keys of COLUMNS) of `model`, as {column: value}: the EB criterion
    and gradient disparity from the per-sample gradients of `samples` (its two halves are the
    disparity's two batches), α of the layer named `unembedding` and the dense layers' mean."""
    row = {}
    if {"eb", "gradient_disparity"} & set(names):
        parameters = [p for p in model.parameters() if p.requires_grad]
        with torch.enable_grad():
            moments = gradient_moments(parameters, sample_loss, samples)
        if "eb" in names:
            row["eb"] = eb_criterion(moments)
        if "gradient_disparity" in names:
            row["gradient_disparity"] = gradient_disparity(moments)
    if "ww_alpha" in names:
        alphas = ww_alphas(model)
        row["ww_alpha"] = float(alphas.get(unembedding, math.nan))
        row["ww_alpha_mean"] = float(alphas.mean())
    return row
