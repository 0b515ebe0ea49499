import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from grokking.lar import (
    LARProbe,
    attach_probes,
    k_lar,
    lar,
    lar_from_correlation,
    lar_from_covariance,
    lar_from_spectra,
    pearson,
    spectra,
    spectral_summary,
    sum_of_squares,
)


def structured_inputs(batch, n, generator):
    """Anisotropic inputs: a few strong directions plus noise."""
    basis = torch.randn(n, n, generator=generator, dtype=torch.float64)
    scales = torch.logspace(0, -3, n, dtype=torch.float64)
    return torch.randn(batch, n, generator=generator, dtype=torch.float64) * scales @ basis


@pytest.mark.parametrize("m, n", [(7, 32), (32, 7), (97, 128), (128, 128)])
@pytest.mark.parametrize("kind", ["random", "structured"])
def test_equations_1_3_4_5_agree(m, n, kind):
    g = torch.Generator().manual_seed(m * n)
    weight = torch.randn(m, n, generator=g, dtype=torch.float64)
    if kind == "structured":
        weight = weight * torch.logspace(0, -2, n, dtype=torch.float64)  # uneven spectrum
        inputs = structured_inputs(300, n, g)
    else:
        inputs = torch.randn(300, n, generator=g, dtype=torch.float64)
    p, q = spectra(weight, inputs)
    assert p.shape == q.shape == (n,)
    assert p.sum().item() == pytest.approx(1) and q.sum().item() == pytest.approx(1)
    if m < n:
        assert (p[m:] == 0).all()  # zero past the rank
    eq1 = lar(weight, inputs)
    for other in (lar_from_spectra(p, q), lar_from_covariance(p, q), lar_from_correlation(p, q)):
        assert other == pytest.approx(eq1, abs=1e-6)


def test_inputs_with_leading_dimensions_are_rows():
    g = torch.Generator().manual_seed(0)
    weight, inputs = torch.randn(5, 8, generator=g), torch.randn(3, 4, 8, generator=g)
    assert lar(weight, inputs) == pytest.approx(lar(weight, inputs.reshape(12, 8)), abs=1e-12)


def test_rank_one_weight_with_inputs_on_top_direction_gives_one():
    n = 16
    u, v = torch.randn(10, dtype=torch.float64), torch.randn(n, dtype=torch.float64)
    weight = torch.outer(u, v)
    inputs = torch.randn(50, 1, dtype=torch.float64) * v
    assert lar(weight, inputs) == pytest.approx(1.0, abs=1e-9)
    p, q = spectra(weight, inputs)
    assert lar_from_spectra(p, q) == pytest.approx(1.0, abs=1e-9)


def test_inputs_in_null_space_send_lar_towards_minus_infinity():
    n = 16
    weight = torch.zeros(4, n, dtype=torch.float64)
    weight[:, :4] = torch.eye(4, dtype=torch.float64)
    inputs = torch.zeros(20, n, dtype=torch.float64)
    inputs[:, 4:] = torch.randn(20, n - 4, dtype=torch.float64)
    inputs[:, 0] = 1e-6  # a sliver in the row space keeps the log finite
    assert lar(weight, inputs) < -1.0


@pytest.mark.parametrize("k", [1, 3, 10, 64])
def test_uniform_k_construction_gives_k_lar_equal_to_k(k):
    n, m = 128, 97
    rotation, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))
    weight = torch.zeros(m, n, dtype=torch.float64)
    weight[:k, :k] = 2.5 * torch.eye(k, dtype=torch.float64)
    weight = weight @ rotation.T  # energy spread evenly over k directions of a random basis
    inputs = torch.randn(200, k, dtype=torch.float64) @ rotation[:, :k].T
    value = lar(weight, inputs)
    assert value == pytest.approx(1 - math.log(k) / (2 * math.log(n)), abs=1e-9)
    assert k_lar(value, n) == pytest.approx(k, rel=1e-9)


def test_isotropic_inputs_give_one_half():
    g = torch.Generator().manual_seed(1)
    weight = torch.randn(97, 128, generator=g, dtype=torch.float64) * torch.linspace(0.1, 3, 128)
    inputs = torch.randn(200_000, 128, generator=g, dtype=torch.float64)
    assert lar(weight, inputs) == pytest.approx(0.5, abs=0.005)


def test_uniform_p_gives_one_half_whatever_the_inputs():
    n = 32
    weight, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))  # all s_i equal
    inputs = structured_inputs(100, n, torch.Generator().manual_seed(2))
    assert lar(weight, inputs) == pytest.approx(0.5, abs=1e-9)


def test_spectral_summary_identities():
    g = torch.Generator().manual_seed(3)
    weight = torch.randn(20, 40, generator=g, dtype=torch.float64)
    inputs = structured_inputs(100, 40, g)
    summary = spectral_summary(weight, inputs)
    p, q = spectra(weight, inputs)
    s = torch.linalg.svdvals(weight)
    assert summary["lar"] == pytest.approx(lar(weight, inputs), abs=1e-9)
    assert summary["p1q1"] + summary["residual"] == pytest.approx((p * q).sum().item())
    assert summary["renyi2_p"] == pytest.approx(-math.log(summary["p_norm2"]))
    assert summary["stable_rank"] == pytest.approx((s**2).sum().item() / s[0].item() ** 2)
    assert 1 <= summary["effective_rank"] <= 20
    assert summary["rho"] == pytest.approx(torch.corrcoef(torch.stack([p, q]))[0, 1].item())
    assert summary["k_lar"] == pytest.approx(k_lar(summary["lar"], 40))


@pytest.mark.parametrize("bias", [False, True])
def test_streamed_probe_equals_one_shot_value(bias):
    torch.manual_seed(0)
    layer = nn.Linear(24, 10, bias=bias)
    probe = LARProbe(layer, keep_gram=True, keep_inputs=True)
    inputs = structured_inputs(130, 24, torch.Generator().manual_seed(5)).float()
    layer(inputs[:7]).sum().backward()  # a training pass with grad: not recorded
    assert probe.rows == 0
    with torch.no_grad():
        for chunk in inputs.split(32):
            layer(chunk)
    assert probe.rows == 130
    assert probe.value() == pytest.approx(lar(layer.weight, inputs), abs=1e-6)  # float32 forward
    assert torch.allclose(probe.inputs, inputs)
    p, q, _ = probe.spectra()
    p1, q1 = spectra(layer.weight, inputs)
    assert torch.allclose(p, p1) and torch.allclose(q, q1)
    probe.reset()
    with pytest.raises(RuntimeError, match="recorded nothing"):
        probe.value()
    probe.remove()
    with torch.no_grad():
        layer(inputs)
    assert probe.rows == 0


def test_probe_refuses_a_module_that_is_not_linear():
    with pytest.raises(TypeError, match="needs an nn.Linear or a transformers Conv1D, got Conv1d"):
        LARProbe(nn.Conv1d(3, 3, 1))


def test_attach_probes_matches_qualified_names_on_a_plain_torch_model():
    model = nn.Sequential(
        nn.Linear(8, 16),
        nn.ReLU(),
        nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True),
        nn.Linear(16, 3),
    )
    with attach_probes(model, "2.linear*") as probes:
        assert [name for name, _ in probes] == ["2.linear1", "2.linear2"]
    everything = attach_probes(model, ["0", "3"])
    x = torch.randn(5, 6, 8)
    with torch.no_grad():
        model(x)
    table = everything.table()
    assert table["name"].tolist() == ["0", "3"]
    assert table["rows"].tolist() == [30, 30]
    assert table["in_features"].tolist() == [8, 16]
    assert table.loc[0, "lar"] == pytest.approx(lar(model[0].weight, x), abs=1e-6)
    with pytest.raises(ValueError, match="matches no nn.Linear or Conv1D; the model has"):
        attach_probes(model, "nothing*")


def test_probe_as_context_manager_removes_its_hook_on_exit():
    layer = nn.Linear(6, 4)
    inputs = torch.randn(10, 6)
    with LARProbe(layer) as probe, torch.no_grad():
        layer(inputs)
        assert probe.rows == 10
    with torch.no_grad():
        layer(inputs)
    assert probe.rows == 10
    assert probe.value() == pytest.approx(lar(layer.weight, inputs), abs=1e-6)


@pytest.mark.parametrize("train_mode", [True, False])  # the slow and the fused attention paths
def test_table_reports_multihead_attention_out_proj_as_never_called(train_mode):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0, batch_first=True)
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).train(train_mode)
    inputs = torch.randn(4, 5, 16)
    with attach_probes(model, "*", keep_inputs=True) as probes, torch.no_grad():
        model(inputs)
        table = probes.table().set_index("name")
    silent = ["layers.0.self_attn.out_proj", "layers.1.self_attn.out_proj"]
    assert table.index.tolist() == [
        f"layers.{i}.{part}"
        for i in (0, 1)
        for part in ("self_attn.out_proj", "linear1", "linear2")
    ]
    assert table.loc[silent, "rows"].tolist() == [0, 0]
    assert table.loc[silent, "lar"].isna().all()
    assert table.loc[silent, "note"].str.startswith("forward never called").all()
    for name in table.index.drop(silent):
        probe = probes[name]
        assert table.loc[name, "rows"] == 20 and table.loc[name, "note"] == ""
        assert table.loc[name, "lar"] == pytest.approx(lar(probe.weight, probe.inputs), abs=1e-6)
    with pytest.raises(RuntimeError, match="recorded nothing: forward never called"):
        probes[silent[0]].value()


def test_note_says_when_every_call_ran_with_grad():
    model = nn.Sequential(nn.Linear(4, 3))
    with attach_probes(model) as probes:
        model(torch.randn(2, 4))
        table = probes.table()
    assert table.loc[0, "rows"] == 0 and math.isnan(table.loc[0, "lar"])
    assert table.loc[0, "note"].startswith("called only with grad enabled")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_sum_of_squares_of_low_precision_rows_is_exact_to_float32(dtype):
    rows = (torch.randn(100, 64, generator=torch.Generator().manual_seed(0)) * 60).to(dtype)
    exact = rows.double().square().sum().item()
    assert sum_of_squares(rows) == pytest.approx(exact, rel=1e-6)  # not 3 digits, nor inf


@pytest.mark.parametrize("dtype, tolerance", [(torch.float16, 1e-5), (torch.bfloat16, 5e-5)])
def test_low_precision_module_agrees_with_float64_lar(dtype, tolerance):
    torch.manual_seed(0)
    layer = nn.Linear(64, 32).to(dtype)
    rows = torch.randn(256, 64)
    inputs = (480 * rows / rows.norm(dim=1, keepdim=True)).to(dtype)  # 480² > 65504 = fp16 max
    probe = LARProbe(layer)
    with torch.no_grad():
        layer(inputs)
    assert probe.value() == pytest.approx(lar(layer.weight, inputs), abs=tolerance)


def test_constant_vector_has_zero_correlation_and_others_match_numpy():
    q = torch.rand(7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    constant = torch.full((7,), 1 / 7, dtype=torch.float64)  # its mean rounds off 1/7
    assert pearson(constant, q) == 0.0 and pearson(q, constant) == 0.0
    p = torch.rand(7, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert pearson(p, q) == pytest.approx(np.corrcoef(p.numpy(), q.numpy())[0, 1], abs=1e-12)


def test_probes_on_gpt2_conv1d_layers_equal_lar_on_their_captured_inputs():
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2, n_embd=32, n_head=2, n_positions=16, vocab_size=50, bos_token_id=0,
        eos_token_id=0,
    )  # fmt: skip
    model = GPT2LMHeadModel(config).eval()  # random weights: nothing is downloaded
    convs = {name: m for name, m in model.named_modules() if isinstance(m, Conv1D)}
    captured = {}
    for name, module in convs.items():
        module.register_forward_hook(
            lambda _, args, out, name=name: captured.update({name: (args[0], out)})
        )
    with attach_probes(model, "*") as probes, torch.no_grad():
        model(torch.randint(0, 50, (3, 16)))
        table = probes.table().set_index("name")
    assert len(convs) == 8 and sorted(table.index) == sorted([*convs, "lm_head"])
    for name, module in convs.items():
        x, y = captured[name]
        assert torch.allclose(y, x @ module.weight + module.bias, atol=1e-5)  # stored [in, out]
        row = table.loc[name]
        assert (row["rows"], row["in_features"], row["out_features"]) == (48, *module.weight.shape)
        assert row["lar"] == pytest.approx(lar(module.weight.T, x), abs=1e-6)


def test_importing_the_package_does_not_import_transformers():
    code = "import sys, grokking.lar; assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_spectral_summary_names_its_columns_in_order():
    from grokking.lar import SPECTRAL_SUMMARY, summary_from_spectra

    p = torch.tensor([0.8, 0.6], dtype=torch.float64)
    summary = summary_from_spectra(p, p.flip(0), torch.tensor([2.0, 1.0], dtype=torch.float64))
    assert tuple(summary) == SPECTRAL_SUMMARY
