"""The optimizers and the schedule of the paper's App. A.2: plain Adam on every parameter, or
Muon (`torch.optim.Muon`: Nesterov momentum, Newton–Schulz orthogonalisation, decoupled weight
decay) on the 2-D hidden matrices with Adam on the embeddings, the unembedding and the norm
gains ("the unembedding layer is optimized with Adam in both cases"). Linear warm-up, then a
cosine decay to `final_lr_fraction` of the peak. Weight decay never touches a 1-D gain.

torch's Muon orthogonalises in bfloat16, which a CPU without native bfloat16 multiplies an order
of magnitude slower than float32; `Muon` here can run the same iterations in float32
(`optim.orthogonalize_dtype`, by default where bfloat16 is slow)."""

from __future__ import annotations

import math

import torch
from torch import nn

# torch's own orthogonalisation and rate scaling: torch.optim.Muon offers no hook to replace
# the first, so `Muon.step` calls both itself
from torch.optim._muon import _adjust_lr, _zeropower_via_newtonschulz

from grokking.lm.config import OptimConfig, OptimizerName, OrthogonalizeDtype

PEAK = "peak_lr"  # each parameter group's peak rate, scaled by the schedule every step
# Muon's parameter-group key naming the dtype it orthogonalises in ("bfloat16" or "float32"):
# saved with the optimizer's state, so a resumed run keeps the path it started on
ORTHOGONALIZE_DTYPE = "orthogonalize_dtype"


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
        device = groups["muon"][0][1].device
        muon = Muon(
            [p for _, p in groups["muon"]],
            orthogonalize_dtype=resolve_orthogonalize_dtype(o.orthogonalize_dtype, device),
            lr=o.lr,
            weight_decay=o.weight_decay,
            momentum=o.momentum,
            nesterov=True,
            ns_steps=o.ns_steps,
        )
        muon.param_groups[0][PEAK] = o.lr
        optimizers.append(muon)
    return optimizers


def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware: AVX512-BF16 or AMX-BF16 on x86,
    BF16 on arm64, reached through oneDNN. torch's CPU capability string (AVX2, AVX512) cannot
    tell: AVX512 without BF16 only emulates it. Elsewhere a bfloat16 matmul falls back to a
    generic kernel far slower than float32 (1.25 s for torch's Muon step against Adam's 6 ms)."""
    if not torch.backends.mkldnn.is_available():
        return False
    capabilities = torch.cpu.get_capabilities()
    flags = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")
    return any(capabilities.get(flag, False) for flag in flags)


def resolve_orthogonalize_dtype(choice: OrthogonalizeDtype, device: torch.device) -> str:
    """The dtype Muon orthogonalises in, "bfloat16" (torch's own path) or "float32": `auto` is
    float32 on a CPU without native bfloat16, bfloat16 elsewhere."""
    if choice != OrthogonalizeDtype.auto:
        return choice.value
    slow_bfloat16 = device.type == "cpu" and not cpu_has_native_bfloat16()
    return "float32" if slow_bfloat16 else "bfloat16"


def newton_schulz_float32(
    matrix: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float
) -> torch.Tensor:
    """torch's Newton–Schulz orthogonalisation in float32: the same quintic iteration, steps and
    normalisation (Frobenius norm, so the spectral norm is at most 1), a tall matrix worked on
    transposed so that the Gram matrix is the smaller one."""
    a, b, c = coefficients
    tall = matrix.size(0) > matrix.size(1)
    x = matrix.float().T if tall else matrix.float()
    x = x / x.norm().clamp(min=eps)  # a new tensor: `matrix` may be the momentum buffer
    for _ in range(steps):
        gram = x @ x.T
        polynomial = torch.addmm(gram, gram, gram, beta=b, alpha=c)  # b G + c G²
        x = torch.addmm(x, polynomial, x, beta=a)  # a X + (b G + c G²) X
    return x.T if tall else x


ORTHOGONALIZE = {"bfloat16": _zeropower_via_newtonschulz, "float32": newton_schulz_float32}


class Muon(torch.optim.Muon):
    """torch.optim.Muon orthogonalising in the dtype its parameter groups name under
    ORTHOGONALIZE_DTYPE: "bfloat16" with torch's own function (the step then equals torch's
    bit for bit), "float32" with `newton_schulz_float32`."""

    def __init__(self, params, orthogonalize_dtype: str, **kwargs):
        super().__init__(params, **kwargs)
        for group in self.param_groups:
            group[ORTHOGONALIZE_DTYPE] = orthogonalize_dtype

    @torch.no_grad()
    def step(self) -> None:
        """torch's Muon step (`_single_tensor_muon`), its orthogonalisation chosen per group."""
        for group in self.param_groups:
            params, grads, buffers = [], [], []
            self._init_group(group, params, grads, buffers)
            orthogonalize = ORTHOGONALIZE[group[ORTHOGONALIZE_DTYPE]]
            lr, momentum = group["lr"], group["momentum"]
            for param, grad, buffer in zip(params, grads, buffers, strict=True):
                buffer.lerp_(grad, 1 - momentum)
                update = grad.lerp(buffer, momentum) if group["nesterov"] else buffer
                update = orthogonalize(
                    update, group["ns_coefficients"], group["ns_steps"], group["eps"]
                )
                param.mul_(1 - lr * group["weight_decay"])
                param.add_(update, alpha=-_adjust_lr(lr, group["adjust_lr_fn"], param.shape))


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
