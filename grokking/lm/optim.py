"""The optimizers and the schedule of the paper's App. A.2: plain Adam on every parameter, or
Muon (`torch.optim.Muon`: Nesterov momentum, Newton–Schulz orthogonalisation, decoupled weight
decay) on the 2-D hidden matrices with Adam on the embeddings, the unembedding and the norm
gains ("the unembedding layer is optimized with Adam in both cases"). Linear warm-up, then a
cosine decay to `final_lr_fraction` of the peak. Weight decay never touches a 1-D gain."""

from __future__ import annotations

import math

import torch
from torch import nn

from grokking.lm.config import OptimConfig, OptimizerName

PEAK = "peak_lr"  # each parameter group's peak rate, scaled by the schedule every step


def is_hidden_matrix(name: str, param: torch.Tensor) -> bool:
    """A 2-D matrix inside the decoder blocks: what Muon optimizes."""
    return param.ndim == 2 and ".layers." in f".{name}"


def split_parameters(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """{"muon": hidden matrices, "adam_decay": other 2-D (embeddings, unembedding),
    "adam_no_decay": 1-D gains}, each as (name, parameter)."""
    groups = {"muon": [], "adam_decay": [], "adam_no_decay": []}
    for name, param in model.named_parameters():
        if is_hidden_matrix(name, param):
            groups["muon"].append((name, param))
        else:
            groups["adam_decay" if param.ndim >= 2 else "adam_no_decay"].append((name, param))
    return groups


def make_optimizers(model: nn.Module, o: OptimConfig) -> list[torch.optim.Optimizer]:
    """The run's optimizers, each parameter group carrying its peak rate under PEAK."""
    groups = split_parameters(model)
    adam_side = groups["adam_decay"] + groups["adam_no_decay"]
    if o.name == OptimizerName.adam:
        adam_side = groups["muon"] + adam_side
    decay = [p for n, p in adam_side if p.ndim >= 2]
    adam_lr = o.lr if o.name == OptimizerName.adam else o.adam_lr
    optimizers = [
        torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": o.weight_decay, PEAK: adam_lr},
                {
                    "params": [p for n, p in adam_side if p.ndim < 2],
                    "weight_decay": 0.0,
                    PEAK: adam_lr,
                },
            ],  # fmt: skip
            lr=adam_lr,
            betas=(o.beta1, o.beta2),
            eps=o.eps,
            fused=True,  # one kernel for every parameter: the fastest step on a CPU
        )
    ]
    if o.name == OptimizerName.muon:
        muon = torch.optim.Muon(
            [p for _, p in groups["muon"]],
            lr=o.lr,
            weight_decay=o.weight_decay,
            momentum=o.momentum,
            nesterov=True,
            ns_steps=o.ns_steps,
        )
        muon.param_groups[0][PEAK] = o.lr
        optimizers.append(muon)
    return optimizers


def lr_factor(step: int, max_steps: int, o: OptimConfig) -> float:
    """The schedule at `step` (steps done so far): linear warm-up over warmup_fraction of the
    steps, then a cosine from 1 down to final_lr_fraction at the last step."""
    warmup = round(o.warmup_fraction * max_steps)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, max_steps - warmup)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return o.final_lr_fraction + (1 - o.final_lr_fraction) * cosine


def set_lr(optimizers: list[torch.optim.Optimizer], factor: float) -> None:
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["lr"] = group[PEAK] * factor
