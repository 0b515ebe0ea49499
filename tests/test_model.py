import pytest
import torch
from torch import nn

from grokking.algorithmic.model import ModelConfig, Transformer, matrix_role
from grokking.algorithmic.tasks import make_dataset
from grokking.lar import attach_probes


def test_shapes_and_activations_feed_the_unembedding():
    cfg = ModelConfig(n_layers=3, d_model=32, n_heads=4, d_ff=64)
    model = Transformer(vocab_size=13, n_classes=11, cfg=cfg)
    tokens = torch.randint(0, 13, (9, 4))
    logits, hidden = model(tokens, return_activations=True)
    assert logits.shape == (9, 11) and hidden.shape == (9, 32)
    assert torch.allclose(logits, hidden @ model.unembed.weight.T)
    assert torch.equal(model(tokens), logits)
    assert model.unembed.weight.shape == (11, 32) and model.unembed.bias is None
    assert len(model.blocks) == 3


def test_attention_is_causal():
    model = Transformer(13, 11, ModelConfig(d_model=16, n_heads=2, d_ff=32)).eval()
    tokens = torch.randint(0, 13, (1, 4))
    changed = tokens.clone()
    changed[0, 3] = (tokens[0, 3] + 1) % 13
    block = model.blocks[0]
    x = model.token_embed(tokens) + model.position_embed.weight
    x2 = model.token_embed(changed) + model.position_embed.weight
    # changing the last token leaves the earlier positions' outputs alone
    assert torch.allclose(block(x)[0, :3], block(x2)[0, :3])
    assert not torch.allclose(block(x)[0, 3], block(x2)[0, 3])


def test_heads_must_divide_width():
    with pytest.raises(ValueError, match="model.n_heads: 3 must divide model.d_model=128"):
        Transformer(10, 8, ModelConfig(n_heads=3))


def test_every_dense_map_is_its_own_linear():
    model = Transformer(99, 97)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    per_layer = ["attn.q", "attn.k", "attn.v", "attn.o", "mlp.fc_in", "mlp.fc_out"]
    expected = [f"blocks.{i}.{r}" for i in range(2) for r in per_layer] + ["unembed"]
    assert names == expected
    assert [matrix_role(n) for n in names[:6]] == [(0, r) for r in ["q", "k", "v", "o"]] + [
        (0, "fc_in"),
        (0, "fc_out"),
    ]
    assert matrix_role("blocks.1.mlp.fc_out") == (1, "fc_out")
    assert matrix_role("unembed") == (None, "unembed")


def test_every_matrix_starts_near_one_half_on_a_real_task():
    torch.manual_seed(0)
    data = make_dataset("add", 97)
    model = Transformer(data.vocab_size, data.n_classes)
    probes = attach_probes(model)
    with torch.no_grad():
        for chunk in data.inputs.split(2048):
            model(chunk)
    table = probes.table()
    assert len(table) == 13
    assert table["lar"].between(0.4, 0.6).all(), table
