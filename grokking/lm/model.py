"""The language model: a Gemma-2 decoder from HF transformers (`Gemma2ForCausalLM`, built from a
config: nothing is downloaded), as the paper's §5 — pre- and post-norm RMSNorm around attention
and the gated-GeLU MLP, every layer global attention, no soft-cap on the final logits, untied
input and output embeddings."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import torch

from grokking.lm.config import ModelConfig

if TYPE_CHECKING:
    from transformers import Gemma2ForCausalLM

UNEMBED = "lm_head"  # the unembedding: its input is the post-norm hidden state
_LAYER_MATRIX = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)_proj$")


def build_model(cfg: ModelConfig, vocab_size: int, seed: int) -> Gemma2ForCausalLM:
    """A freshly initialised model (HF's initialisation, seeded by `seed`)."""
    # imported here: transformers takes seconds to import, and the analysis, which reads the
    # family's name and schema, builds no model
    from transformers import Gemma2Config, Gemma2ForCausalLM

    config = Gemma2Config(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_heads,
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.context,
        tie_word_embeddings=False,
        final_logit_softcapping=None,
        attn_logit_softcapping=cfg.attn_logit_softcapping,
        layer_types=["full_attention"] * cfg.n_layers,
        attn_implementation="eager",  # the one Gemma-2 attention that soft-caps its logits
    )
    torch.manual_seed(seed)
    return Gemma2ForCausalLM(config)


def matrix_role(name: str) -> tuple[int | None, str]:
    """(layer, role) of a dense matrix by its module name: 'model.layers.1.self_attn.q_proj' ->
    (1, 'q'), 'model.layers.0.mlp.down_proj' -> (0, 'down'), 'lm_head' -> (None, 'unembed')."""
    match = _LAYER_MATRIX.search(name)
    if match:
        return int(match.group(1)), match.group(2)
    return None, "unembed" if name == UNEMBED else name.rsplit(".", 1)[-1]
