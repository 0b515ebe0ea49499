"""The log-alignment ratio (LAR) of a linear map, its spectral forms, and probes for any model.

Notation (docs/method.md §1): `weight` W is [m, n] (an `nn.Linear(n, m).weight`), `inputs` X is
[..., n] (every leading index is one row x_b), outputs Y = X Wᵀ.

    LAR = log( rms(Y) / (rms(W) · rms(X)) ) / log(n)                                 (Eq. 1)
        = 1 + log(Σ p_i q_i) / (2 log n)                                             (Eq. 3)
        = 1/2 + log(1 + n² Cov(p, q)) / (2 log n)                                    (Eq. 4)
        = 1/2 + log(1 + n² ρ σ_p σ_q) / (2 log n)                                    (Eq. 5)

Everything accumulates in float32 or wider whatever the model's dtype (sums in float64); results
are Python floats or float64 tensors.
"""

from __future__ import annotations

import fnmatch
import math
import sys

import pandas as pd
import torch
from torch import nn


def _rows(inputs: torch.Tensor) -> torch.Tensor:
    return inputs.reshape(-1, inputs.shape[-1]).double()


def lar_from_sums(sum_y2, sum_x2, rows: int, weight: torch.Tensor):
    """Eq. 1 from forward-pass sums of squares over `rows` input rows: Σy², Σx² and the weight.
    A stack of R weights [R, m, n] with sums of shape [R] gives the R values at once (a float64
    tensor, where the weights are); one weight [m, n] gives a float."""
    m, n = weight.shape[-2:]
    mean_w2 = weight.double().square().mean(dim=(-2, -1))
    ratio_sq = (sum_y2 / (rows * m)) / (mean_w2 * sum_x2 / (rows * n))
    value = 0.5 * torch.log(ratio_sq) / math.log(n)
    return value.item() if weight.dim() == 2 else value


def lar(weight: torch.Tensor, inputs: torch.Tensor) -> float:
    """Eq. 1: the LAR of `weight` [m, n] = [out, in] on `inputs` [..., n], the rows it multiplies
    (y = x Wᵀ). A weight stored [in, out] (y = x W, as in GPT-2's Conv1D) goes in transposed."""
    x = _rows(inputs)
    y = x @ weight.double().T
    return lar_from_sums(y.square().sum().item(), x.square().sum().item(), len(x), weight)


def gram(inputs: torch.Tensor) -> torch.Tensor:
    """XᵀX [n, n] in float64 — all that the spectra need of the inputs."""
    x = _rows(inputs)
    return x.T @ x


def spectra_from_gram(weight: torch.Tensor, input_gram: torch.Tensor):
    """(p, q, s) of Eq. 2: p and q have length n (p zero past the rank); s are the singular
    values of W, largest first."""
    w = weight.double()
    n = w.shape[1]
    _, s, vh = torch.linalg.svd(w, full_matrices=True)  # rows of vh: v_1 … v_n, a basis of Rⁿ
    p = torch.zeros(n, dtype=torch.float64, device=w.device)
    p[: len(s)] = s.square() / s.square().sum()
    projected = (vh @ input_gram.to(vh) * vh).sum(dim=1)  # v_iᵀ G v_i = Σ_b (v_iᵀ x_b)²
    q = projected / input_gram.trace()
    return p, q, s


def spectra(weight: torch.Tensor, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(p, q) of Eq. 2, each of length n."""
    p, q, _ = spectra_from_gram(weight, gram(inputs).to(weight.device))
    return p, q


def lar_from_spectra(p: torch.Tensor, q: torch.Tensor) -> float:
    """Eq. 3."""
    return 1.0 + math.log((p * q).sum().item()) / (2 * math.log(len(p)))


def lar_from_covariance(p: torch.Tensor, q: torch.Tensor) -> float:
    """Eq. 4, with Cov over the n points (p_i, q_i) equally weighted."""
    n = len(p)
    cov = ((p - p.mean()) * (q - q.mean())).mean().item()
    return 0.5 + math.log1p(n * n * cov) / (2 * math.log(n))


def lar_from_correlation(p: torch.Tensor, q: torch.Tensor) -> float:
    """Eq. 5, with ρ the Pearson correlation and σ the population standard deviations."""
    n = len(p)
    sigma_p, sigma_q = p.std(correction=0).item(), q.std(correction=0).item()
    rho = pearson(p, q)
    return 0.5 + math.log1p(n * n * rho * sigma_p * sigma_q) / (2 * math.log(n))


def pearson(p: torch.Tensor, q: torch.Tensor) -> float:
    """Pearson ρ of p and q; 0 when either is constant, where ρ is undefined (torch gives NaN)
    and Eq. 5's product ρ σ_p σ_q is 0 anyway."""
    if (p == p[0]).all() or (q == q[0]).all():
        return 0.0
    return torch.corrcoef(torch.stack([p, q]))[0, 1].item()


def k_lar(lar_value: float, n: int) -> float:
    """Eq. 6: the LAR-predicted dimension n^(2(1 − LAR))."""
    return float(n) ** (2.0 * (1.0 - lar_value))


# The keys of `summary_from_spectra`, in order: the columns both families' tables hold.
SPECTRAL_SUMMARY = (
    "lar",
    "k_lar",
    "p1q1",
    "residual",
    "p_norm2",
    "q_norm2",
    "renyi2_p",
    "renyi2_q",
    "rho",
    "stable_rank",
    "effective_rank",
)


def summary_from_spectra(p: torch.Tensor, q: torch.Tensor, s: torch.Tensor) -> dict[str, float]:
    """The spectral quantities the paper reads off p, q and s (docs/method.md §1)."""
    n = len(p)
    pq = p * q
    lar_value = lar_from_spectra(p, q)
    s_frac = s / s.sum()
    s_frac = s_frac[s_frac > 0]
    return {
        "lar": lar_value,
        "k_lar": k_lar(lar_value, n),
        "p1q1": pq[0].item(),
        "residual": pq[1:].sum().item(),
        "p_norm2": p.square().sum().item(),
        "q_norm2": q.square().sum().item(),
        "renyi2_p": -math.log(p.square().sum().item()),
        "renyi2_q": -math.log(q.square().sum().item()),
        "rho": pearson(p, q),
        "stable_rank": (s.square().sum() / s[0].square()).item(),
        "effective_rank": math.exp(-(s_frac * s_frac.log()).sum().item()),
    }


def spectral_summary(weight: torch.Tensor, inputs: torch.Tensor) -> dict[str, float]:
    """LAR, k_LAR, p₁q₁ and residual, ‖p‖², ‖q‖², Rényi-2 entropies, Pearson ρ, stable rank
    and effective rank of `weight` on `inputs`."""
    return summary_from_spectra(*spectra_from_gram(weight, gram(inputs).to(weight.device)))


def sums_of_squares(rows: torch.Tensor) -> torch.Tensor:
    """Σ of squared entries of each [B, d] block of a [..., B, d] tensor (float64, shape [...]):
    row norms in float32 or wider (one fused pass, no copy, exact to ~1e-8 relative), summed in
    float64 — ~10x faster than upcasting to float64. Never in float16 or bfloat16: float16 tops
    out at 65504, so a row norm of 256 squares to inf, and bfloat16 keeps 3 significant digits."""
    accumulate = torch.promote_types(rows.dtype, torch.float32)
    norms = torch.linalg.vector_norm(rows, dim=-1, dtype=accumulate)
    return norms.square().sum(dim=-1, dtype=torch.float64)


def sum_of_squares(rows: torch.Tensor) -> float:
    """Σ of squared entries of a [B, d] tensor (`sums_of_squares`, as a float)."""
    return sums_of_squares(rows).item()


def _is_transformers_conv1d(module: nn.Module) -> bool:
    # Looked up only when transformers is already imported (no Conv1D can exist otherwise), so
    # this package does not depend on it.
    utils = sys.modules.get("transformers.pytorch_utils")
    return utils is not None and isinstance(module, utils.Conv1D)


def probed_matrix(module: nn.Module) -> torch.Tensor | None:
    """`module`'s weight as Eq. 1's W [out, in], or None if a probe cannot read the module.

    Two layouts are known: `nn.Linear` (weight stored [out, in], y = x Wᵀ + b) and HuggingFace
    `transformers.pytorch_utils.Conv1D` of GPT-2 style models (weight stored [in, out],
    y = x W + b, so W here is its transpose). For any other layout call `lar(weight, inputs)`
    with the weight as [out, in]."""
    if isinstance(module, nn.Linear):
        return module.weight
    if _is_transformers_conv1d(module):
        return module.weight.T
    return None


class LARProbe:
    """A forward hook on an `nn.Linear` (or a GPT-2 style `Conv1D`, see `probed_matrix`) that
    accumulates Σx², Σy² and the row count.

    Only forward calls under `torch.no_grad()` are recorded (set `record_with_grad=True` to record
    training passes too), so a mini-batched no-grad pass over a dataset gives exactly that
    dataset's LAR, while the training steps in between leave the sums alone. The bias is
    subtracted from the module's output, so y = W x as in Eq. 1.

    `keep_gram=True` also accumulates XᵀX (for the spectra, at O(n²) memory);
    `keep_inputs=True` keeps every input row (for PCA). Call `reset()` between passes and
    `remove()` to detach the hook, or use the probe as a context manager
    (`with LARProbe(layer) as probe:`), which removes it on exit.
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        keep_gram: bool = False,
        keep_inputs: bool = False,
        record_with_grad: bool = False,
    ):
        matrix = probed_matrix(module)
        if matrix is None:
            raise TypeError(
                f"LARProbe needs an nn.Linear or a transformers Conv1D, got "
                f"{type(module).__name__}; for any other layout call lar(weight, inputs) "
                "with the weight as [out, in]"
            )
        self.module = module
        self.out_features, self.in_features = matrix.shape
        self.keep_gram = keep_gram
        self.keep_inputs = keep_inputs
        self.record_with_grad = record_with_grad
        self._handle = module.register_forward_hook(self._record)
        self.reset()

    def reset(self) -> None:
        self.sum_x2 = 0.0
        self.sum_y2 = 0.0
        self.rows = 0
        self.calls_skipped = 0  # forward calls with grad enabled, left out of the sums
        self._gram: torch.Tensor | None = None
        self._inputs: list[torch.Tensor] = []

    def remove(self) -> None:
        self._handle.remove()

    def __enter__(self) -> LARProbe:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def _record(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if torch.is_grad_enabled() and not self.record_with_grad:
            self.calls_skipped += 1
            return
        with torch.no_grad():
            self._accumulate(module, args[0], output)

    def _accumulate(self, module: nn.Module, inputs: torch.Tensor, output: torch.Tensor) -> None:
        x = inputs.detach().reshape(-1, self.in_features)
        y = output.detach().reshape(-1, self.out_features)
        if module.bias is not None:  # subtracted in float32 at least: one rounding fewer
            y = y - module.bias.to(torch.promote_types(module.bias.dtype, torch.float32))
        self.sum_x2 += sum_of_squares(x)
        self.sum_y2 += sum_of_squares(y)
        self.rows += len(x)
        if self.keep_gram:
            x64 = x.double()
            self._gram = x64.T @ x64 if self._gram is None else self._gram.addmm_(x64.T, x64)
        if self.keep_inputs:
            self._inputs.append(x.clone())

    @property
    def weight(self) -> torch.Tensor:
        """W [out, in] of Eq. 1, whatever the module's storage layout."""
        return probed_matrix(self.module).detach()

    def note(self) -> str:
        """Why nothing was recorded since the last reset; empty once a row is."""
        if self.rows:
            return ""
        if self.calls_skipped:
            return "called only with grad enabled: run under torch.no_grad() or record_with_grad"
        return (
            "forward never called: its parent reads the weight directly (as "
            "nn.MultiheadAttention does with out_proj); use lar(weight, inputs)"
        )

    def value(self) -> float:
        """LAR (Eq. 1) over every row recorded since the last reset."""
        if self.rows == 0:
            raise RuntimeError(f"LARProbe recorded nothing: {self.note()}")
        return lar_from_sums(self.sum_y2, self.sum_x2, self.rows, self.weight)

    @property
    def gram(self) -> torch.Tensor:
        if self._gram is None:
            raise RuntimeError("LARProbe(keep_gram=True) and a recorded pass are needed for XᵀX")
        return self._gram

    @property
    def inputs(self) -> torch.Tensor:
        if not self._inputs:
            raise RuntimeError("LARProbe(keep_inputs=True) and a recorded pass are needed")
        return torch.cat(self._inputs)

    def spectra(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(p, q, s) over the recorded rows (needs keep_gram)."""
        return spectra_from_gram(self.weight, self.gram)

    def summary(self) -> dict[str, float]:
        """`summary_from_spectra` over the recorded rows (needs keep_gram)."""
        return summary_from_spectra(*self.spectra())


class ProbeSet:
    """Probes on every `nn.Linear` (or GPT-2 style `Conv1D`) of a model whose qualified name
    matches a glob pattern.

    A matched module whose forward is never called records nothing: `nn.MultiheadAttention`
    (and so `nn.TransformerEncoderLayer`) holds `out_proj` as an `nn.Linear`, but its fused
    attention reads `out_proj.weight` directly and never calls `out_proj`. `table()` reports such
    a probe with rows 0, lar NaN and a note saying why, and still reads every other probe.
    """

    def __init__(self, model: nn.Module, pattern: str | list[str] = "*", **probe_options):
        patterns = [pattern] if isinstance(pattern, str) else list(pattern)
        probeable = [(n, m) for n, m in model.named_modules() if probed_matrix(m) is not None]
        self.probes: dict[str, LARProbe] = {
            name: LARProbe(module, **probe_options)
            for name, module in probeable
            if any(fnmatch.fnmatchcase(name, pat) for pat in patterns)
        }
        if not self.probes:
            raise ValueError(
                f"pattern {patterns} matches no nn.Linear or Conv1D; "
                f"the model has {[name for name, _ in probeable]}"
            )

    def __getitem__(self, name: str) -> LARProbe:
        return self.probes[name]

    def __iter__(self):
        return iter(self.probes.items())

    def reset(self) -> None:
        for probe in self.probes.values():
            probe.reset()

    def remove(self) -> None:
        for probe in self.probes.values():
            probe.remove()

    def __enter__(self) -> ProbeSet:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def table(self) -> pd.DataFrame:
        """One row per probed matrix: name, in_features (n), out_features (m), rows, lar, and a
        note on a probe that recorded nothing (its lar is NaN)."""
        return pd.DataFrame(
            [
                {
                    "name": name,
                    "in_features": probe.in_features,
                    "out_features": probe.out_features,
                    "rows": probe.rows,
                    "lar": probe.value() if probe.rows else math.nan,
                    "note": probe.note(),
                }
                for name, probe in self.probes.items()
            ]
        )


def attach_probes(model: nn.Module, pattern: str | list[str] = "*", **probe_options) -> ProbeSet:
    """Attach a `LARProbe` to every `nn.Linear` (or GPT-2 style `Conv1D`) whose qualified name
    (as in `model.named_modules()`) matches the glob `pattern` (or any of a list of them).
    See `ProbeSet` for modules whose forward their parent never calls."""
    return ProbeSet(model, pattern, **probe_options)
