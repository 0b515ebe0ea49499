"""The 2-layer decoder-only transformer of the grokking experiments.

Every dense map is its own bias-free `nn.Linear` (query, key, value and output projections of each
attention layer, both MLP matrices, and the unembedding), so a `LARProbe` can attach to any of
them and its output is exactly y = W x of Eq. 1 (the LayerNorms keep their biases).

Initialisation is PyTorch's default for each part: `nn.Linear` weights are Kaiming-uniform
(bound 1/sqrt(fan_in)), `nn.Embedding` rows are N(0, 1), LayerNorm starts at weight 1, bias 0.
With these, LAR of every matrix is ≈ 0.5 at initialisation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ModelConfig:
    n_layers: int = 2
    d_model: int = 128
    n_heads: int = 4
    d_ff: int = 512
    seq_len: int = 4  # x, op, y, '='


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"model.n_heads: {n_heads} must divide model.d_model={d_model}")
        self.n_heads = n_heads
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.k = nn.Linear(d_model, d_model, bias=False)
        self.v = nn.Linear(d_model, d_model, bias=False)
        self.o = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, d_model = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, seq, self.n_heads, d_model // self.n_heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            heads(self.q(x)), heads(self.k(x)), heads(self.v(x)), is_causal=True
        )
        return self.o(out.transpose(1, 2).reshape(batch, seq, d_model))


class MLP(nn.Module):
    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.fc_in = nn.Linear(d_model, d_ff, bias=False)
        self.fc_out = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(F.relu(self.fc_in(x)))  # ReLU, as in Power et al.'s code


class Block(nn.Module):
    """Pre-norm residual block: attention, then MLP."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_attn = nn.LayerNorm(cfg.d_model)
        self.attn = Attention(cfg.d_model, cfg.n_heads)
        self.ln_mlp = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg.d_model, cfg.d_ff)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_attn(x))
        return x + self.mlp(self.ln_mlp(x))


class Transformer(nn.Module):
    def __init__(self, vocab_size: int, n_classes: int, cfg: ModelConfig | None = None):
        super().__init__()
        cfg = cfg or ModelConfig()
        self.cfg = cfg
        self.token_embed = nn.Embedding(vocab_size, cfg.d_model)
        self.position_embed = nn.Embedding(cfg.seq_len, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_final = nn.LayerNorm(cfg.d_model)
        self.unembed = nn.Linear(cfg.d_model, n_classes, bias=False)

    def forward(
        self, tokens: torch.Tensor, return_activations: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits [B, n_classes] at the last ('=') position; with `return_activations`, also the
        unembedding's input [B, d_model], so LAR and PCA need no second pass."""
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.token_embed(tokens) + self.position_embed(positions)
        for block in self.blocks:
            x = block(x)
        hidden = self.ln_final(x[:, -1])  # only the '=' position is read out
        logits = self.unembed(hidden)
        return (logits, hidden) if return_activations else logits


_BLOCK_MATRIX = re.compile(r"blocks\.(\d+)\.(?:attn|mlp)\.(\w+)$")


def matrix_role(name: str) -> tuple[int | None, str]:
    """(layer index, role) of a dense matrix from its qualified name in `Transformer`:
    'blocks.1.attn.q' -> (1, 'q'), 'unembed' -> (None, 'unembed')."""
    match = _BLOCK_MATRIX.search(name)
    if match:
        return int(match.group(1)), match.group(2)
    return None, name.rsplit(".", 1)[-1]
