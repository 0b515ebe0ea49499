"""R copies of `Transformer` as one model: every parameter gets a leading member dimension and every
dense map is one batched matmul, so R small runs cost about one launch each instead of R.

The stacked model is built from R `Transformer`s (each initialised from its own seed) and hands
each member's weights back under `Transformer`'s own state_dict names, so a member's checkpoint
loads into `Transformer` unchanged. Its forward computes exactly what `Transformer.forward` computes
for each member (the same operations in the same order; only LayerNorm's affine step is written out,
since `F.layer_norm` takes one weight for the whole batch).

A `MatrixSums` passed to `forward` accumulates, per member and per dense matrix, the sums of squares
of its inputs and outputs (and XᵀX for the unembedding) in float64: Eq. 1 of the LAR needs no more.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from grokking.algorithmic.model import Transformer
from grokking.lar import sums_of_squares


def dense_matrix_names(n_layers: int) -> list[str]:
    """The qualified names of every dense matrix of a `Transformer`, in forward order."""
    names = []
    for layer in range(n_layers):
        names += [f"blocks.{layer}.attn.{role}" for role in ("q", "k", "v", "o")]
        names += [f"blocks.{layer}.mlp.{role}" for role in ("fc_in", "fc_out")]
    return names + ["unembed"]


class MatrixSums:
    """Per-member Σx², Σy² and row counts of the named dense matrices over the passes it sees,
    and XᵀX of the matrices in `grams` — float64 tensors on the model's device."""

    def __init__(self, names: Iterable[str], grams: Iterable[str] = ()):
        self.names = set(names)
        self.gram_names = set(grams)
        self.sum_x2: dict[str, torch.Tensor] = {}
        self.sum_y2: dict[str, torch.Tensor] = {}
        self.rows: dict[str, int] = {}
        self.grams: dict[str, torch.Tensor] = {}

    def add(self, name: str, x: torch.Tensor, y: torch.Tensor) -> None:
        if name not in self.names:
            return
        x, y = x.detach(), y.detach()
        for sums, value in ((self.sum_x2, x), (self.sum_y2, y)):
            total = sums_of_squares(value)  # per member
            sums[name] = total if name not in sums else sums[name] + total
        self.rows[name] = self.rows.get(name, 0) + x.shape[1]
        if name in self.gram_names:
            x64 = x.double()
            gram = x64.mT @ x64
            self.grams[name] = gram if name not in self.grams else self.grams[name] + gram


class StackedTransformer(nn.Module):
    """R members of `Transformer`, parameters stacked along a leading dimension."""

    def __init__(self, members: Sequence[Transformer]):
        super().__init__()
        first = members[0]
        self.cfg = first.cfg
        self.names = list(first.state_dict())  # Transformer's own parameter names
        states = [member.state_dict() for member in members]
        self.stacked = nn.ParameterList(
            nn.Parameter(torch.stack([state[name] for state in states])) for name in self.names
        )
        self.vocab_size = first.token_embed.num_embeddings
        self.n_classes = first.unembed.out_features
        self.matrices = dense_matrix_names(self.cfg.n_layers)

    @property
    def size(self) -> int:
        return self.stacked[0].shape[0]

    def keep(self, members: Sequence[int]) -> None:
        """Keep only `members` (indices), in that order: stopped runs cost nothing more."""
        index = torch.tensor(members, dtype=torch.long, device=self.stacked[0].device)
        self.stacked = nn.ParameterList(
            nn.Parameter(tensor.detach().index_select(0, index)) for tensor in self.stacked
        )

    def param(self, name: str) -> nn.Parameter:
        return self.stacked[self.names.index(name)]

    def member_state_dict(self, member: int) -> dict[str, torch.Tensor]:
        """Member `member`'s weights under Transformer's names (copies, on the CPU)."""
        return {
            name: tensor[member].detach().cpu().clone()
            for name, tensor in zip(self.names, self.stacked, strict=True)
        }

    def load_member_state_dict(self, member: int, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, tensor in zip(self.names, self.stacked, strict=True):
                tensor[member].copy_(state[name])

    # --- forward ----------------------------------------------------------------------------
    def forward(self, tokens: torch.Tensor, sums: MatrixSums | None = None) -> torch.Tensor:
        """Logits [R, B, n_classes] at the last ('=') position of tokens [R, B, seq]."""
        return self.unembed(self.features(tokens, sums), sums)

    def unembed(self, features: torch.Tensor, sums: MatrixSums | None = None) -> torch.Tensor:
        """The logits of the unembedding's inputs [R, B, d_model] (no bias: Y = X Wᵀ)."""
        return self._linear("unembed", features, sums)

    def features(self, tokens: torch.Tensor, sums: MatrixSums | None = None) -> torch.Tensor:
        """The unembedding's inputs [R, B, d_model]: the final norm at the last position.

        Only the last position is read out, so without `sums` the last layer computes its keys
        and values at every position and everything else (queries, attention output, MLP) at the
        last position only: the same function, ~30 % fewer FLOPs at the default size. With
        `sums` (an evaluation recording LAR) every layer runs at every position, so each
        matrix's LAR is taken over all rows of all positions."""
        members, batch, seq = tokens.shape
        d_model = self.cfg.d_model
        offsets = torch.arange(members, device=tokens.device).view(-1, 1, 1) * self.vocab_size
        table = self.param("token_embed.weight").reshape(-1, d_model)
        x = F.embedding(tokens + offsets, table)  # each member reads its own rows of the table
        x = x + self.param("position_embed.weight")[:, None, :seq]
        x = x.reshape(members, batch * seq, d_model)
        full_layers = self.cfg.n_layers if sums is not None else self.cfg.n_layers - 1
        for layer in range(full_layers):
            prefix = f"blocks.{layer}"
            x = x + self._attention(self._norm(f"{prefix}.ln_attn", x), prefix, batch, sums)
            x = x + self._mlp(self._norm(f"{prefix}.ln_mlp", x), prefix, sums)
        if full_layers < self.cfg.n_layers:
            last = self._last_layer_at_last_position(x, batch)
        else:
            last = x.view(members, batch, seq, d_model)[:, :, -1]
        return self._norm("ln_final", last)

    def _last_layer_at_last_position(self, x: torch.Tensor, batch: int) -> torch.Tensor:
        """The last block's output, computed for the last position only (its query attends to
        the keys and values of every position)."""
        members, rows, d_model = x.shape
        prefix = f"blocks.{self.cfg.n_layers - 1}"
        last = x.view(members, batch, rows // batch, d_model)[:, :, -1]
        normed = self._norm(f"{prefix}.ln_attn", x)
        last = last + self._attention(normed, prefix, batch, None, last_query_only=True)
        return last + self._mlp(self._norm(f"{prefix}.ln_mlp", last), prefix, None)

    def _linear(self, name: str, x: torch.Tensor, sums: MatrixSums | None) -> torch.Tensor:
        y = torch.bmm(x, self.param(f"{name}.weight").mT)
        if sums is not None:
            sums.add(name, x, y)
        return y

    def _mlp(self, x: torch.Tensor, prefix: str, sums: MatrixSums | None) -> torch.Tensor:
        hidden = self._linear(f"{prefix}.mlp.fc_in", x, sums)
        return self._linear(f"{prefix}.mlp.fc_out", F.relu(hidden), sums)

    def _norm(self, name: str, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.param(f"{name}.weight"), self.param(f"{name}.bias")
        # one kernel for the affine step (and one for its backward): ~2x faster on a CPU
        return torch.addcmul(bias[:, None], F.layer_norm(x, x.shape[-1:]), weight[:, None])

    def _heads(self, t: torch.Tensor, batch: int) -> torch.Tensor:
        """[R, B·S, d] -> [R·B, heads, S, d/heads]."""
        members, rows, d_model = t.shape
        n_heads = self.cfg.n_heads
        return t.reshape(members * batch, rows // batch, n_heads, d_model // n_heads).transpose(
            1, 2
        )

    def _attention(
        self, x: torch.Tensor, prefix: str, batch: int, sums, last_query_only: bool = False
    ) -> torch.Tensor:
        """Causal self-attention over x [R, B·S, d]; with `last_query_only`, only the last
        position's query ([R, B, d] out), which attends to every position: no mask needed."""
        members, rows, d_model = x.shape
        queries = x.view(members, batch, rows // batch, d_model)[:, :, -1] if last_query_only else x
        k, v = (self._heads(self._linear(f"{prefix}.attn.{r}", x, sums), batch) for r in "kv")
        q = self._heads(self._linear(f"{prefix}.attn.q", queries, sums), batch)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=not last_query_only)
        out = out.transpose(1, 2).reshape(members, queries.shape[1], d_model)
        return self._linear(f"{prefix}.attn.o", out, sums)
