"""The language-model family on the shared run machinery: a tiny run through the command line,
kill and resume, the probe on the HF model's unembedding, the Muon split, Muon's float32
orthogonalisation, the schedule, and the refusals."""

import dataclasses
import subprocess
import sys
import time
import typing
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import REPO, run_cli, tiny_lm
from omegaconf import OmegaConf
from torch.optim._muon import _zeropower_via_newtonschulz

from grokking.lar import LARProbe, lar
from grokking.lm import optim
from grokking.lm.config import (
    FLOAT_RANGES,
    LMConfig,
    OptimConfig,
    OptimizerName,
    OrthogonalizeDtype,
)
from grokking.lm.model import build_model, matrix_role
from grokking.lm.optim import (
    ORTHOGONALIZE_DTYPE,
    Muon,
    lr_factor,
    make_optimizers,
    newton_schulz_float32,
    resolve_orthogonalize_dtype,
    split_parameters,
)
from grokking.runs.config import RunConfig
from grokking.runs.rundir import RunDir, find_runs


def _tiny_run(cwd: Path, corpus_dir, *overrides) -> tuple[RunDir, subprocess.CompletedProcess]:
    result = run_cli(
        *tiny_lm(corpus_dir, cwd / "cache"), *overrides, "hydra.run.dir=run",
        cwd=cwd, module="grokking.lm",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return RunDir(cwd / "run"), result


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, corpus_dir):
    return _tiny_run(tmp_path_factory.mktemp("lm_run"), corpus_dir)


@pytest.fixture(scope="module")
def tiny_muon_run(tmp_path_factory, corpus_dir):
    return _tiny_run(tmp_path_factory.mktemp("lm_muon_run"), corpus_dir, "optim=muon")


def test_a_tiny_run_through_the_command_line_writes_its_folder(tiny_run):
    run, result = tiny_run
    summary = run.read_summary()
    assert summary["status"] == "completed" and summary["family"] == "lm"
    assert summary["final_step"] == summary["max_steps"] == 60
    assert summary["data"]["python_version"] == sys.version.split()[0]
    assert len(summary["data"]["corpus_hash"]) == 64 and summary["data"]["n_documents"] == 40
    assert summary["train_tokens"] == 8000
    assert summary["epochs"] == pytest.approx(60 * 8 * 32 / 8000)
    metrics = run.read_metrics()
    assert list(metrics["step"]) == list(range(61))  # step 0 (initialisation) and every step
    assert metrics["lar"].iloc[1:].notna().all() and metrics["train_loss"].iloc[1:].notna().all()
    evaluated = metrics.dropna(subset=["val_loss"])
    assert list(evaluated["step"]) == [0, 10, 20, 30, 40, 50, 60]
    for column in ("probe_lar", "p1", "q1", "rho", "effective_rank"):
        assert evaluated[column].notna().all(), column
    assert metrics[["eb", "gradient_disparity", "ww_alpha"]].isna().all().all()  # not asked for
    matrices = run.read_matrix_lar()
    assert set(matrices["step"]) == set(evaluated["step"])
    assert len(matrices) == 7 * (2 * 7 + 1)  # evaluations x (2 layers x 7 matrices + lm_head)
    assert {(".hydra/config.yaml"), ".hydra/overrides.yaml"} <= {
        str(p.relative_to(run.path)) for p in run.path.glob(".hydra/*")
    }
    assert run.has_checkpoint("final") and run.has_checkpoint("last")
    assert "stopping at step 60: reached the token budget" in (run.path / "train.log").read_text()


def test_a_run_resumes_only_on_the_data_it_started_on(tiny_run):
    from grokking.lm import load_config
    from grokking.lm.record import LMRecord

    run, _ = tiny_run
    saved = run.load_checkpoint("last")
    cfg = load_config([f"{key}={value}" for key, value in _flat_config(run).items()])
    record = LMRecord(cfg, run.path, torch.device("cpu"))
    assert record.family_problem(saved) is None
    problem = record.family_problem(saved | {"train_hash": "0123"})
    assert problem.startswith("it trained on other data (training-set hash 0123, now ")
    problem = record.family_problem(saved | {"val_hash": "0123"})
    assert problem.startswith("it was validated on other data (validation-set hash 0123, now ")


def test_a_validation_document_edited_in_place_is_no_resume(tmp_path, corpus_dir):
    """Killed, a validation document edited, rerun: refused, as for the training set."""
    import shutil

    from grokking.lm import load_config, train
    from grokking.lm.corpus import corpus_files, split_documents
    from grokking.lm.data import _dataset, dataset
    from grokking.runs.rundir import DamagedCheckpoint

    source = tmp_path / "corpus"
    shutil.copytree(corpus_dir, source)
    overrides = tiny_lm(source, tmp_path / "cache") + ["token_budget=512", "eval_every=1"]
    cfg = load_config(overrides)
    run = RunDir(tmp_path / "run")
    first = train(cfg, run.path)
    summary = run.read_summary()
    run.write_summary(summary | {"status": "running"})  # what a kill -9 leaves
    # Swap two validation documents: the same texts, so the same BPE and training tokens. The
    # documents as the corpus numbers them (not the folder's listing, which may hold more).
    _, documents = corpus_files(source)
    _, (a, b, *_) = split_documents(len(documents), cfg.data.val_fraction, cfg.data.split_seed)
    text_a, text_b = documents[a].read_text(), documents[b].read_text()
    documents[a].write_text(text_b)
    documents[b].write_text(text_a)
    _dataset.cache_clear()  # as a new process would
    # What the refusal must see, checked first so that a test whose edit missed the data fails
    # here rather than as the refusal missing: only the validation batch changed.
    now = dataset(cfg).meta
    assert now["train_hash"] == first["data"]["train_hash"]
    assert now["val_hash"] != first["data"]["val_hash"], "the same validation batch"
    with pytest.raises(DamagedCheckpoint) as refused:
        train(cfg, run.path)
    assert f"{run.checkpoint_path('last')} is not a resume point of this run (it was validated" in (
        str(refused.value)
    )


def _flat_config(run: RunDir) -> dict:
    config = pd.json_normalize(run.read_summary()["config"], sep=".").iloc[0].to_dict()
    keep = ("data.", "model.", "token_budget", "batch_size", "val_batches", "eval_every")
    return {k: ("null" if v is None else v) for k, v in config.items() if k.startswith(keep)}


def test_lar_starts_near_one_half_at_initialisation(tiny_run):
    run, _ = tiny_run
    first = run.read_metrics().iloc[0]
    assert first["probe_lar"] == pytest.approx(0.5, abs=0.05)


def test_help_lists_the_language_model_sweeps_and_the_config(tmp_path):
    result = run_cli("--help", cwd=tmp_path, module="grokking.lm", check=True)
    (sweeps,) = [line for line in result.stdout.splitlines() if line.startswith("Sweep files")]
    listed = sweeps.split(": ", 1)[1].split(", ")
    assert listed == sorted(path.stem for path in (REPO / "sweeps" / "lm").glob("*.yaml"))
    assert "Models (model=NAME): gemma2, gemma2_256" in result.stdout
    assert "token_budget: 1000000" in result.stdout and "vocab_size: 1024" in result.stdout
    assert not any(tmp_path.iterdir())


def test_the_default_folder_is_named_by_the_overrides(tmp_path, corpus_dir):
    from grokking.runs.command import run_name

    overrides = [*tiny_lm(corpus_dir, tmp_path / "cache"), "token_budget=256"]
    overrides.remove("token_budget=15360")
    result = run_cli(*overrides, cwd=tmp_path, module="grokking.lm")
    assert result.returncode == 0, result.stderr
    (folder,) = (tmp_path / "outputs" / "lm" / "runs").iterdir()
    # Hydra's sorted overrides without the runtime fields, one folder however long the path
    runtime = ("data.cache_dir", "threads", "save_every_s")
    named = sorted(o for o in overrides if o.split("=")[0] not in runtime)
    assert folder.name == run_name(",".join(named))
    assert "cache_dir" not in folder.name and "/" not in folder.name


def test_a_name_too_long_for_a_file_system_is_cut_and_made_unique():
    from grokking.runs.command import MAX_NAME_BYTES, run_name

    long = ",".join(f"model.hidden_size={i}" for i in range(40))
    name = run_name(long)
    assert len(name.encode()) <= MAX_NAME_BYTES and name == run_name(long)
    assert name != run_name(long + "0") and name.startswith("model.hidden_size=0,")
    assert run_name("seed=1") == "seed=1" and run_name("") == "default"


def same_run(a: RunDir, b: RunDir) -> None:
    pd.testing.assert_frame_equal(
        a.read_metrics().drop(columns="wall_s"), b.read_metrics().drop(columns="wall_s"),
        check_exact=True,
    )  # fmt: skip
    pd.testing.assert_frame_equal(a.read_matrix_lar(), b.read_matrix_lar(), check_exact=True)
    final_a, final_b = a.load_checkpoint("final")["model"], b.load_checkpoint("final")["model"]
    assert all(torch.equal(final_a[name], final_b[name]) for name in final_a)


@pytest.mark.slow
@pytest.mark.parametrize(
    "uninterrupted, optimizer", [("tiny_run", []), ("tiny_muon_run", ["optim=muon"])]
)
def test_kill_9_then_resume_equals_uninterrupted(
    tmp_path, corpus_dir, request, uninterrupted, optimizer
):
    uninterrupted, _ = request.getfixturevalue(uninterrupted)
    overrides = [*tiny_lm(corpus_dir, tmp_path / "cache"), *optimizer, "hydra.run.dir=run"]
    process = subprocess.Popen(
        [sys.executable, "-m", "grokking.lm", *overrides],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    run = RunDir(tmp_path / "run")
    deadline = time.monotonic() + 120
    while not (run.has_checkpoint("last") and run.read_summary()["final_step"] >= 20):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    process.kill()
    process.wait()
    assert run.read_summary()["final_step"] < 60
    resumed = run_cli(*overrides, cwd=tmp_path, module="grokking.lm", check=True)
    assert "resuming" in resumed.stderr + resumed.stdout
    same_run(run, uninterrupted)
    dtype = run.read_summary()["orthogonalize_dtype"]  # Muon's, None under Adam
    assert dtype == uninterrupted.read_summary()["orthogonalize_dtype"]


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim=muon optim.lr=-1", "optim.lr: must be a finite number > 0, got -1"),
        ("data.vocab_size=100", "data.vocab_size: must be an integer in [258, 65535], got 100"),
        ("token_budget=10", "token_budget: must hold at least one step"),
        ("optim=adamx", "optim: no option 'adamx'; allowed: adam, muon"),
        (
            "optim=muon optim.orthogonalize_dtype=fp16",
            "optim.orthogonalize_dtype: must be one of auto, bfloat16, float32, got 'fp16'",
        ),
        ("model.width=3", "model.width: not a config key"),
        (
            "model.attn_logit_softcapping=inf",
            "model.attn_logit_softcapping: must be a finite number > 0, or null (off), got inf",
        ),
        ("optim.eps=inf", "optim.eps: must be a finite number > 0, got inf"),
        ("optim.eps=0", "optim.eps: must be a finite number > 0, got 0.0"),
        ("optim.grad_clip=inf", "optim.grad_clip: must be a finite number ≥ 0 (0: off), got inf"),
        ("optim.weight_decay=nan", "optim.weight_decay: must be a finite number ≥ 0, got nan"),
        ("optim.beta2=-0.5", "optim.beta2: must be a number in [0, 1), got -0.5"),
        ("data.val_fraction=nan", "data.val_fraction: must be a number in (0, 1), got nan"),
        (
            "signals=[eb,accuracy]",
            "signals[1]: Invalid value 'accuracy', expected one of [eb, gradient_disparity, "
            "ww_alpha]",
        ),
    ],
)
def test_bad_values_are_refused_before_anything_is_written(refusal, override, message):
    code, stderr = refusal(*override.split(), family="lm")
    assert code == 2 and message in stderr, stderr
    assert not any(Path.cwd().iterdir())


def test_every_float_field_has_its_range():
    """A float field added to the schema without a range in FLOAT_RANGES would accept inf."""

    def float_fields(schema: type, prefix: str = "") -> set[str]:
        found = set()
        for name, hint in typing.get_type_hints(schema).items():
            if dataclasses.is_dataclass(hint):
                found |= float_fields(hint, f"{prefix}{name}.")
            elif float in (hint, *typing.get_args(hint)):
                found.add(prefix + name)
        return found

    run_fields = float_fields(RunConfig)  # validate_run checks those
    assert set(FLOAT_RANGES) == float_fields(LMConfig) - run_fields


def test_the_command_line_refuses_in_one_line(tmp_path):
    result = run_cli("optim.lr=-1", cwd=tmp_path, module="grokking.lm")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: optim.lr: must be a finite number > 0, got -1.0"
    assert not (tmp_path / "outputs").exists()


PACKED_REFUSAL = (
    "error: hydra/launcher: lm runs cannot train in packs; use basic, parallel or slurm"
)


def test_a_pack_of_language_models_is_refused_before_anything_is_written(tmp_path):
    arguments = ["-m", "seed=0,1", "hydra/launcher=packed", "hydra.sweep.dir=sweep"]
    result = run_cli(*arguments, cwd=tmp_path, module="grokking.lm")
    assert result.returncode == 2
    assert result.stderr.strip() == PACKED_REFUSAL
    assert not any(tmp_path.iterdir())


def test_the_sweep_check_refuses_a_pack_of_language_models_too(tmp_path, monkeypatch, capsys):
    """The pre-launch check refuses it too, for a command line the command leaves to Hydra."""
    from grokking.lm import COMMAND
    from grokking.runs.sweep import CheckBeforeLaunch

    monkeypatch.chdir(tmp_path)
    config = COMMAND._compose(["hydra/launcher=packed"], hydra_node=True)
    with pytest.raises(SystemExit) as exited:
        CheckBeforeLaunch("lm").on_multirun_start(config)
    assert exited.value.code == 2
    assert capsys.readouterr().err.strip() == PACKED_REFUSAL
    assert not any(tmp_path.iterdir())


def test_more_training_tokens_than_the_corpus_holds_is_refused(tmp_path, corpus_dir):
    overrides = [*tiny_lm(corpus_dir, tmp_path / "cache"), "data.train_tokens=10000000"]
    result = run_cli(*overrides, cwd=tmp_path, module="grokking.lm")
    assert result.returncode == 2, result.stderr
    assert "data.train_tokens:" in result.stderr and "10000000" in result.stderr
    assert not (tmp_path / "outputs" / "lm" / "runs").exists()


# --- the second, larger size (conf/lm/model/gemma2_256.yaml) -------------------------------
LARGER_SWEEPS = ("lm_overfitting_256", "lm_lr_256", "lm_lr_muon_256")


def larger_size_parameters(vocab_size: int) -> int:
    """Gemma-2 at hidden 256, 4 layers of 8 heads of 32 and an MLP of 1024, counted by hand:
    per layer q, k, v, o (256 x 256 each), gate, up, down (256 x 1024 each) and 4 norm gains;
    the untied embedding and unembedding; the final norm."""
    layer = 4 * 256 * 256 + 3 * 256 * 1024 + 4 * 256
    return 4 * layer + 2 * vocab_size * 256 + 256


@pytest.fixture(scope="module")
def corpus_cache(tmp_path_factory):
    """One tokenization of the corpus for the tests that train in this process."""
    return tmp_path_factory.mktemp("lm_cache")


@pytest.mark.parametrize("optimizer", ["adam", "muon"])
def test_the_larger_size_passes_the_check_and_trains_a_few_steps(
    tmp_path, corpus_dir, corpus_cache, optimizer
):
    from grokking.lm import load_config, train

    tiny = [o for o in tiny_lm(corpus_dir, corpus_cache) if not o.startswith("model.")]
    overrides = ["model=gemma2_256", f"optim={optimizer}", "batch_size=2", "val_batches=1"]
    cfg = load_config([*tiny, *overrides, "token_budget=768", "eval_every=2"])  # 3 steps
    m = cfg.model
    dimensions = (m.n_layers, m.hidden_size, m.n_heads, m.head_dim, m.intermediate_size)
    assert dimensions + (m.context,) == (4, 256, 8, 32, 1024, 128)
    train(cfg, tmp_path / "run")
    summary = RunDir(tmp_path / "run").read_summary()
    assert summary["status"] == "completed" and summary["final_step"] == 3
    assert summary["optimizer"] == optimizer
    parameters = larger_size_parameters(summary["data"]["vocab_size"])
    assert summary["model"] == {"size": "hidden 256 × 4 layers", "parameters": parameters}


def test_the_default_size_counts_its_parameters(tiny_run):
    summary = tiny_run[0].read_summary()
    layer = 4 * 32 * 32 + 3 * 32 * 64 + 4 * 32  # tiny_lm's hidden 32, MLP 64, 4 heads of 8
    vocab = summary["data"]["vocab_size"]
    expected = {"size": "hidden 32 × 2 layers", "parameters": 2 * layer + 2 * vocab * 32 + 32}
    assert summary["model"] == expected


@pytest.mark.parametrize("sweep", [*LARGER_SWEEPS, "lm_lr_muon"])
def test_every_run_of_the_size_sweeps_composes_at_its_size(sweep):
    """Every value of the sweep file composes and passes `validate` (the i-th run takes each
    key's i-th value, cycling), at the larger size in the _256 files and at the default size in
    lm_lr_muon."""
    from grokking.lm import load_config

    params = OmegaConf.load(REPO / "sweeps" / "lm" / f"{sweep}.yaml").hydra.sweeper.params
    values = [[f"{key}={v}" for v in str(value).split(",")] for key, value in params.items()]
    size = "hidden 256 × 4 layers" if sweep in LARGER_SWEEPS else "hidden 128 × 2 layers"
    for i in range(max(map(len, values))):
        overrides = [options[i % len(options)] for options in values]
        cfg = load_config([f"+sweeps={sweep}", *overrides])
        assert cfg.model.size == size and cfg.sweep_name == sweep, overrides


# --- the model, the probe and the optimizers ------------------------------------------------
def small_model():
    cfg = LMConfig()
    cfg.model.hidden_size, cfg.model.head_dim, cfg.model.intermediate_size = 32, 8, 64
    return build_model(cfg.model, 300, seed=0)


def test_probe_on_the_hf_unembedding_equals_lar_of_its_captured_inputs():
    model = small_model()
    captured = []
    head = model.get_output_embeddings()
    hook = head.register_forward_hook(lambda module, args, out: captured.append(args[0]))
    tokens = torch.randint(0, 300, (4, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), LARProbe(head) as probe:
        model(input_ids=tokens)
    hook.remove()
    # the probe sums row norms taken in float32 (lar.sums_of_squares): ~1e-8 relative
    assert probe.value() == pytest.approx(lar(head.weight, captured[0]), rel=1e-7)
    assert probe.value() == pytest.approx(0.5, abs=0.05)  # at initialisation


def test_muon_gets_the_hidden_matrices_only():
    model = small_model()
    adam, muon = make_optimizers(model, OptimConfig(name=OptimizerName.muon))
    on_muon = {id(p) for group in muon.param_groups for p in group["params"]}
    on_adam = {id(p) for group in adam.param_groups for p in group["params"]}
    names = {id(p): name for name, p in model.named_parameters()}
    assert on_muon.isdisjoint(on_adam) and on_muon | on_adam == set(names)
    assert all(model.get_parameter(names[i]).ndim == 2 for i in on_muon)
    assert id(model.get_output_embeddings().weight) in on_adam
    assert id(model.get_input_embeddings().weight) in on_adam
    assert {matrix_role(names[i].removesuffix(".weight"))[1] for i in on_muon} == {
        "q", "k", "v", "o", "gate", "up", "down"
    }  # fmt: skip
    assert not split_parameters(model)["adam_no_decay"] or all(
        p.ndim == 1 for _, p in split_parameters(model)["adam_no_decay"]
    )


def test_adam_puts_everything_on_adam_and_decays_no_gain():
    model = small_model()
    (adam,) = make_optimizers(model, OptimConfig(weight_decay=0.1))
    decayed, plain = adam.param_groups
    assert all(p.ndim == 2 for p in decayed["params"]) and decayed["weight_decay"] == 0.1
    assert all(p.ndim == 1 for p in plain["params"]) and plain["weight_decay"] == 0.0


# the default model's hidden matrices: q, k, v, o; gate, up (tall); down (wide)
MODEL_SHAPES = [(128, 128), (512, 128), (128, 512)]
NS = ((3.4445, -4.7750, 2.0315), 5, 1e-7)  # torch's coefficients, steps and eps


def test_float32_orthogonalisation_is_torchs_newton_schulz_in_float32(monkeypatch):
    torch.manual_seed(0)
    matrices = [torch.randn(shape) for shape in MODEL_SHAPES]
    in_bfloat16 = [_zeropower_via_newtonschulz(m, *NS) for m in matrices]
    # torch's own iteration with its cast to bfloat16 made a float32 copy: the very same numbers
    monkeypatch.setattr(torch.Tensor, "bfloat16", lambda tensor: tensor.clone())
    for matrix, bfloat16 in zip(matrices, in_bfloat16, strict=True):
        ours = newton_schulz_float32(matrix, *NS)
        assert ours.dtype == torch.float32 and ours.shape == matrix.shape
        assert torch.equal(ours, _zeropower_via_newtonschulz(matrix, *NS))
        # and torch's bfloat16 result to bfloat16's precision (8 bits, through 15 products)
        error = (ours - bfloat16.float()).norm() / ours.norm()
        assert error < 0.03, error


def _muon_after_steps(make, steps: int = 3) -> list[torch.Tensor]:
    """The model-shaped matrices after `steps` steps of `make(params)` on fixed gradients."""
    generator = torch.Generator().manual_seed(1)
    params = [torch.nn.Parameter(torch.randn(s, generator=generator)) for s in MODEL_SHAPES]
    optimizer = make(params)
    for _ in range(steps):
        for param in params:
            param.grad = torch.randn(param.shape, generator=generator)
        optimizer.step()
    return [param.detach() for param in params]


def test_muon_steps_equal_torchs_in_bfloat16_and_float32(monkeypatch):
    settings = {"lr": 0.02, "weight_decay": 0.1, "momentum": 0.95, "nesterov": True}
    torchs = _muon_after_steps(lambda params: torch.optim.Muon(params, **settings))
    in_bfloat16 = _muon_after_steps(lambda params: Muon(params, "bfloat16", **settings))
    in_float32 = _muon_after_steps(lambda params: Muon(params, "float32", **settings))
    assert all(torch.equal(a, b) for a, b in zip(torchs, in_bfloat16, strict=True))
    for a, b in zip(torchs, in_float32, strict=True):  # each step moves entries by ~1e-2
        torch.testing.assert_close(b, a, atol=1e-3, rtol=0)
    monkeypatch.setattr(torch.Tensor, "bfloat16", lambda tensor: tensor.clone())
    torchs_in_float32 = _muon_after_steps(lambda params: torch.optim.Muon(params, **settings))
    assert all(torch.equal(a, b) for a, b in zip(torchs_in_float32, in_float32, strict=True))


def test_auto_orthogonalises_in_float32_only_on_a_cpu_without_native_bfloat16(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    auto = OrthogonalizeDtype.auto
    for native, expected in ((False, "float32"), (True, "bfloat16")):
        monkeypatch.setattr(optim, "cpu_has_native_bfloat16", lambda native=native: native)
        assert resolve_orthogonalize_dtype(auto, cpu) == expected
        assert resolve_orthogonalize_dtype(auto, cuda) == "bfloat16"  # torch's own path
        for choice in ("bfloat16", "float32"):
            assert resolve_orthogonalize_dtype(OrthogonalizeDtype(choice), cpu) == choice
    o = OptimConfig(name=OptimizerName.muon, orthogonalize_dtype=OrthogonalizeDtype.float32)
    _, muon = make_optimizers(small_model(), o)
    assert muon.param_groups[0][ORTHOGONALIZE_DTYPE] == "float32"
    # a run resumed on a machine where `auto` means otherwise keeps the dtype it started with
    o.orthogonalize_dtype = OrthogonalizeDtype.bfloat16
    _, resumed = make_optimizers(small_model(), o)
    resumed.load_state_dict(muon.state_dict())
    assert resumed.param_groups[0][ORTHOGONALIZE_DTYPE] == "float32"


def test_a_muon_run_says_which_orthogonalisation_ran(tiny_muon_run, tiny_run):
    run, _ = tiny_muon_run
    dtype = resolve_orthogonalize_dtype(OrthogonalizeDtype.auto, torch.device("cpu"))
    assert run.read_summary()["orthogonalize_dtype"] == dtype
    log = (run.path / "train.log").read_text()
    assert f"Muon orthogonalises in {dtype} (optim.orthogonalize_dtype=auto)" in log
    assert tiny_run[0].read_summary()["orthogonalize_dtype"] is None  # Adam


def test_schedule_warms_up_linearly_then_decays_by_a_cosine():
    o = OptimConfig(warmup_fraction=0.1, final_lr_fraction=0.1)
    factors = [lr_factor(step, 100, o) for step in range(100)]
    assert factors[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert factors[10] == pytest.approx(1.0)
    assert factors[55] == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the cosine
    assert all(a >= b for a, b in zip(factors[10:], factors[11:], strict=False))
    assert lr_factor(100, 100, o) == pytest.approx(0.1)


def test_the_run_machinery_imports_no_family():
    code = (
        "import sys, grokking.runs.rundir, grokking.runs.loop, grokking.runs.record, "
        "grokking.runs.sweep, grokking.runs.command, grokking.lar; "
        "bad = [m for m in sys.modules if m.startswith(('grokking.algorithmic', 'grokking.lm'))]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tensorboard_receives_the_lar_of_every_step(tmp_path, corpus_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    overrides = [*tiny_lm(corpus_dir, tmp_path / "cache"), "token_budget=2560"]
    overrides.append("logger=tensorboard")
    result = run_cli(*overrides, "hydra.run.dir=run", cwd=tmp_path, module="grokking.lm")
    assert result.returncode == 0, result.stderr
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()
    metrics = RunDir(tmp_path / "run").read_metrics()
    lar = {event.step: event.value for event in events.Scalars("lar")}
    assert sorted(lar) == list(range(1, 11))  # 10 steps
    steps = metrics.set_index("step")["lar"].dropna()
    assert lar == pytest.approx(steps.to_dict(), rel=1e-6)  # float32 in the event file
    assert [event.step for event in events.Scalars("val_loss")] == [0, 10]
    assert "matrix_lar/lm_head" in events.Tags()["scalars"]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["parallel", "slurm"])
def test_a_sweep_of_both_optimizers_runs_on_the_launchers(tmp_path, corpus_dir, launcher, request):
    if launcher == "slurm":
        request.getfixturevalue("slurm_cluster")  # a real single-node cluster (conftest.py)
    cache = tmp_path / "cache"
    sweep = [*tiny_lm(corpus_dir, cache), "token_budget=2560", "optim=adam,muon"]
    result = run_cli(
        "-m", *sweep, f"hydra/launcher={launcher}", "hydra.sweep.dir=sweep",
        cwd=tmp_path, module="grokking.lm", timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summaries = {run.path.name: run.read_summary() for run in find_runs(tmp_path / "sweep")}
    assert sorted(s["optimizer"] for s in summaries.values()) == ["adam", "muon"]
    assert all(s["status"] == "completed" and s["final_step"] == 10 for s in summaries.values())
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 1  # tokenized once, then reused
