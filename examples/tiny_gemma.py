"""What the Gemma-2 examples share: a small Gemma-2 built from a config (nothing downloaded) and
token data for it. Imported by the examples beside it (`python examples/<name>.py` puts this
folder on the import path)."""

import torch
from transformers import Gemma2Config, Gemma2ForCausalLM

VOCAB = 256  # token ids 0..255
LENGTH = 32  # tokens per sequence


def tiny_gemma(hidden_size: int = 32, layers: int = 1) -> Gemma2ForCausalLM:
    """A Gemma-2 of `layers` decoder layers, `hidden_size` wide, with 2 attention heads sharing
    one key-value head; its weights come from torch's global seed."""
    config = Gemma2Config(
        vocab_size=VOCAB, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1,
        head_dim=hidden_size // 2, max_position_embeddings=2 * LENGTH,
    )  # fmt: skip
    return Gemma2ForCausalLM(config)


def noisy_pattern(rows: int, seed: int = 0) -> torch.Tensor:
    """`rows` sequences of a fixed token pattern plus noise: few enough rows, a model memorizes
    them, and LAR peaks and declines as it does."""
    noise = torch.randint(0, 8, (rows, LENGTH), generator=torch.Generator().manual_seed(seed))
    return (torch.arange(LENGTH) * 7 + noise) % VOCAB
