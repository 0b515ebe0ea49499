"""A pack's regularizer (`regularize=lar|p1q1|grokfast|weight_norm`, docs/method.md §6): one config
for the whole pack (it is part of the pack key), one switch per member. The training step reads
the switches as an [R] mask on the device, so each member's term and filter start at its own
evaluation, and a captured CUDA graph needs no new capture when a switch turns on."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from grokking.algorithmic.config import TrainConfig
from grokking.lar.regularize import (
    STEERING,
    Regularizer,
    Switch,
    grokfast_,
    squared_norm,
    steered,
)


class PackRegularizer:
    def __init__(self, cfgs: Sequence[TrainConfig], params: list[torch.Tensor]):
        self.cfg = cfgs[0].regularize
        self.switches = [Switch(cfg.regularize.trigger, cfg.memorization_threshold) for cfg in cfgs]
        device = params[0].device
        self.on = torch.tensor([switch.on for switch in self.switches], device=device)
        self.grokfast = self.cfg.name == Regularizer.grokfast
        if self.grokfast:
            self.emas = [torch.zeros_like(p) for p in params]
            self.started = torch.zeros(len(cfgs), dtype=torch.bool, device=device)

    def term(self, features, logits, weight, params) -> torch.Tensor | float:
        """Each member's term [R] added to its loss (0 where its switch is off): −λ·LAR (or
        −λ·p₁q₁) of the unembedding on this batch, or λ·‖θ‖²."""
        name, strength = self.cfg.name, self.cfg.strength
        if name in STEERING:
            values = -strength * steered(name, features, logits, weight)
        elif name == Regularizer.weight_norm:
            values = strength * squared_norm(params, members=1)
        else:
            return 0.0
        return torch.where(self.on, values, 0.0)

    def filter_gradients(self, params: list[torch.Tensor]) -> None:
        if self.grokfast:
            grads = [p.grad for p in params]
            grokfast_(grads, self.emas, self.on, self.started, self.cfg.alpha, self.cfg.strength)

    def update(self, member: int, step: int, row: dict) -> dict:
        """Feed the member's evaluation to its switch; whether its regularizer is on from here."""
        switch = self.switches[member]
        if switch.update(step, row["lar"], row["train_acc"]):
            self.on[member] = True
        return {"regularizing": float(switch.on and self.cfg.name != Regularizer.none)}

    def member_state(self, member: int, names: list[str]) -> dict:
        state = {"switch": self.switches[member].state()}
        if self.grokfast:
            state["started"] = bool(self.started[member])
            emas = zip(names, self.emas, strict=True)
            state["ema"] = {name: h[member].cpu().clone() for name, h in emas}
        return state

    def load(self, states: Sequence[dict | None], names: list[str]) -> None:
        """Restore every member (None: a resume point saved without a regularizer's state)."""
        for member, state in enumerate(states):
            if state is None:
                continue
            self.switches[member].load(state["switch"])
            self.on[member] = self.switches[member].on
            if self.grokfast:
                self.started[member] = state["started"]
                for name, h in zip(names, self.emas, strict=True):
                    h[member].copy_(state["ema"][name])

    def keep(self, index: torch.Tensor) -> None:
        """Go on with the members `index` selects, in order."""
        self.switches = [self.switches[i] for i in index.tolist()]
        self.on = self.on.index_select(0, index)
        if self.grokfast:
            self.emas = [h.index_select(0, index) for h in self.emas]
            self.started = self.started.index_select(0, index)
