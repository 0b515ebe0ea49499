"""A language-model run's regularizer (`regularize=lar|p1q1|grokfast|weight_norm`, docs/method.md
§6), on from the first step: language models measure no training accuracy, so neither
memorization nor the generalization alarm can switch it on. The LAR term holds the unembedding's
LAR up against its decline: λ·max(0, m − LAR), with LAR the step's own batch's (with gradients)
and m the mean of the `window` steps before it (no term until `window` steps have passed); the
p₁q₁ term does the same to the top direction's contribution p₁q₁."""

from __future__ import annotations

from collections import deque

import torch
from torch import nn

from grokking.lar.regularize import (
    STEERING,
    ForwardCapture,
    RegularizeConfig,
    Regularizer,
    grokfast_,
    squared_norm,
    steered,
)


class RunRegularizer:
    def __init__(self, cfg: RegularizeConfig, model: nn.Module, window: int):
        self.cfg = cfg
        self.params = dict(model.named_parameters())
        self.trailing: deque[float] = deque(maxlen=window)  # the last steps' LAR (or p₁q₁)
        self.capture = None
        if cfg.name in STEERING:
            self.capture = ForwardCapture(model.get_output_embeddings())
        self.grokfast = cfg.name == Regularizer.grokfast
        if self.grokfast:
            device = next(iter(self.params.values())).device
            self.emas = [torch.zeros_like(p) for p in self.params.values()]
            self.on = torch.tensor(True, device=device)
            self.started = torch.tensor(False, device=device)

    def term(self, step_lar: float) -> torch.Tensor | float:
        """The term added to this step's loss; `step_lar` is the step's LAR (the probe's)."""
        name, strength = self.cfg.name, self.cfg.strength
        if name == Regularizer.weight_norm:
            return strength * squared_norm(self.params.values())
        if name not in STEERING:
            return 0.0
        full = len(self.trailing) == self.trailing.maxlen
        mean = sum(self.trailing) / len(self.trailing) if full else None
        capture = self.capture
        value = steered(name, capture.inputs, capture.outputs, capture.weight)
        # The LAR term's trailing values are the probe's LAR of the step, as when it was the only
        # term (its committed runs replay so); p₁q₁'s are the term's own values.
        self.trailing.append(step_lar if name == Regularizer.lar else value.item())
        if mean is None:
            return 0.0
        return strength * torch.relu(mean - value)

    def filter_gradients(self) -> None:
        if self.grokfast:
            grads = [p.grad for p in self.params.values()]
            grokfast_(grads, self.emas, self.on, self.started, self.cfg.alpha, self.cfg.strength)

    @property
    def regularizing(self) -> bool:
        return self.cfg.name != Regularizer.none

    def state(self) -> dict:
        state = {"trailing": list(self.trailing)}
        if self.grokfast:
            emas = zip(self.params, self.emas, strict=True)
            state |= {"started": bool(self.started), "ema": {n: h.cpu().clone() for n, h in emas}}
        return state

    def load(self, state: dict | None) -> None:
        """Restore `state` (None: a resume point saved without a regularizer's state)."""
        if state is None:
            return
        self.trailing.clear()
        self.trailing.extend(state["trailing"])
        if self.grokfast:
            self.started.fill_(state["started"])
            for name, h in zip(self.params, self.emas, strict=True):
                h.copy_(state["ema"][name])
