"""The command line: install, --help, and refusals in one line before anything is written."""

import ast
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import REPO, run_cli, tiny_config

from grokking.algorithmic.config import LarLayers, TrainConfig, from_dict
from grokking.algorithmic.tasks import TASK_NAMES
from grokking.runs.config import ConfigError, to_dict

# each command's options, as its config folder (conf/<family>/) holds them
# each family's config groups are in conf/<family>/, its sweep files in sweeps/<family>/
GROUP_FOLDERS = {"model": "conf/{}/model", "optim": "conf/{}/optim", "sweeps": "sweeps/{}"}
OPTIONS = {
    (family, group): sorted(p.stem for p in (REPO / folder.format(family)).glob("*.yaml"))
    for family in ("algorithmic", "lm")
    for group, folder in GROUP_FOLDERS.items()
}
SWEEP_FILES = OPTIONS["algorithmic", "sweeps"]
# where --help lists each group's options
HELP_LINES = {
    "model": "Models (model=NAME): ",
    "optim": "Optimizers (optim=NAME): ",
    "sweeps": "Sweep files (+sweeps=NAME): ",
}


def help_options(module: str, cwd) -> dict[str, list[str]]:
    """{group: its options} as `python -m <module> --help` lists them."""
    lines = run_cli("--help", cwd=cwd, module=module, check=True).stdout.splitlines()
    listed = {}
    for group, start in HELP_LINES.items():
        (line,) = [line for line in lines if line.startswith(start)]
        listed[group] = line.removeprefix(start).split(", ")
    return listed


def test_help_lists_the_tasks_and_the_config(tmp_path):
    result = run_cli("--help", cwd=tmp_path, check=True)
    lines = result.stdout.splitlines()
    (tasks,) = [line for line in lines if line.startswith("Tasks (task=NAME): ")]
    assert tasks.split(": ", 1)[1].split(", ") == sorted(TASK_NAMES)
    assert "train_fraction: 0.5" in result.stdout  # the config, with its defaults
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("family", "module"), [("algorithmic", "grokking.train"), ("lm", "grokking.lm")]
)
def test_help_lists_only_the_options_of_its_family(tmp_path, family, module):
    listed = help_options(module, tmp_path)
    assert listed == {group: OPTIONS[family, group] for group in HELP_LINES}
    other = "lm" if family == "algorithmic" else "algorithmic"
    assert all(not set(listed[group]) & set(OPTIONS[other, group]) for group in HELP_LINES)


@pytest.mark.parametrize(
    ("family", "arguments", "message"),
    [
        ("algorithmic", ["optim=adam"], "optim: no option 'adam'; allowed: adamw"),
        ("algorithmic", ["model=gemma2"], "model: no option 'gemma2'; allowed: transformer"),
        ("algorithmic", ["+sweeps=lm_lr"], "sweeps: no option 'lm_lr'; allowed: alarm_grokking,"),
        ("lm", ["optim=adamw"], "optim: no option 'adamw'; allowed: adam, muon"),
        ("lm", ["model=transformer"], "model: no option 'transformer'; allowed: gemma2"),
        ("lm", ["+sweeps=smoke"], "sweeps: no option 'smoke'; allowed: lm_lr, lm_lr_256,"),
    ],
)
def test_an_option_of_the_other_family_is_refused_in_one_line(
    refusal, tmp_path, family, arguments, message
):
    code, stderr = refusal(*arguments, family=family)
    assert code == 2
    assert stderr.startswith(f"error: {message}") and stderr.count("\n") == 1
    assert list(tmp_path.rglob("*")) == [tmp_path / "work"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            ["task=nosuch"],
            "task: no option 'nosuch'; allowed: add, div, div_or_sub, s5_compose, s5_conjugate, "
            "s5_xyx, sub, x2_plus_y2, x2_xy_y2, x2_xy_y2_x, x3_xy, x3_xy2_y",
        ),
        (
            ["lr=0.1"],
            "lr: not a config key (did you mean optim.lr?); allowed: task, model, optim, "
            "regularize, train_fraction, split_seed,",
        ),
        (["optim.lrr=1"], "optim.lrr: not a config key; allowed: lr, weight_decay, beta1,"),
        (["train_fraction=abc"], "train_fraction: must be a number, got 'abc'"),
        (["task.p=abc"], "task.p: must be an integer or null, got 'abc'"),
        (["lar_layers=some"], "lar_layers: must be one of unembed, all, got 'some'"),
        (["+sweeps=nosuch"], "sweeps: no option 'nosuch'; allowed: " + ", ".join(SWEEP_FILES)),
        (["hydra/launcher=nosuch"], "hydra/launcher: no option 'nosuch'; allowed: basic,"),
        (["seed==1"], "seed==1: not an override; write key=value, +key=value or ~key"),
        (["seed=0,1"], "seed: several values need a sweep (-m, or +sweeps=NAME);"),
        (
            ["sweep_name=x/../../../escaped"],
            "sweep_name: must be a plain folder name (letters, digits, _ . -, not starting with . "
            "or -), got 'x/../../../escaped'",
        ),
        (["-m", "seed=0,1", "lr=3"], "lr: not a config key (did you mean optim.lr?);"),
    ],
)
def test_a_bad_command_line_is_refused_in_one_line(refusal, tmp_path, arguments, message):
    code, stderr = refusal(*arguments)
    assert code == 2
    assert stderr.startswith(f"error: {message}") and stderr.count("\n") == 1
    assert list(tmp_path.rglob("*")) == [tmp_path / "work"]  # nothing written (../escaped)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        # the pre-launch check, as the command calls it
        (["task=nosuch", "seed=1"], "task: no option 'nosuch'; allowed: add, div,"),
        # Hydra's sweep callback, which checks every job of a sweep before launching any
        (
            ["+sweeps=smoke", "seed=0,abc"],
            "sweep job 1 (task=add seed=abc +sweeps=smoke): seed: must be an integer, got 'abc'; "
            "nothing submitted",
        ),
    ],
)
def test_the_command_refuses_in_one_line_and_writes_nothing(tmp_path, arguments, message):
    cwd = tmp_path / "work"
    cwd.mkdir()
    result = run_cli(*arguments, cwd=cwd)
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {message}") and result.stderr.count("\n") == 1
    assert list(tmp_path.rglob("*")) == [cwd]


@pytest.mark.parametrize("device", ["cuda", "mps"])
def test_a_device_this_machine_lacks_is_refused_before_anything_is_written(tmp_path, device):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    single = run_cli(f"device={device}", cwd=tmp_path)
    sweep = run_cli("+sweeps=smoke", "seed=0", f"device={device}", cwd=tmp_path)
    assert single.returncode == sweep.returncode == 2
    refusal = f"device: '{device}' is not available on this machine; allowed here: auto, cpu"
    assert single.stderr == f"error: {refusal}\n"
    job = f"sweep job 0 (task=add seed=0 +sweeps=smoke device={device})"
    assert sweep.stderr == f"error: {job}: {refusal}; nothing submitted\n"
    assert not any(tmp_path.iterdir())


def test_stored_configs_round_trip_and_older_ones_get_the_new_defaults():
    cfg = tiny_config(seed=3, lar_layers=LarLayers.unembed)
    stored = json.loads(json.dumps(to_dict(cfg)))  # as summary.json holds it
    assert stored["lar_layers"] == "unembed" and stored["model"]["d_model"] == 32
    assert from_dict(stored) == cfg
    del stored["stop_factor"]  # a summary written before the field existed
    assert from_dict(stored).stop_factor == TrainConfig().stop_factor


def test_a_stored_config_with_an_unknown_key_names_it():
    with pytest.raises(ConfigError, match=r"^model\.width: not a config key; allowed: n_layers,"):
        from_dict({"model": {"width": 3}})


def test_no_module_imports_hydra_internals():
    internal = []
    for path in sorted([*REPO.glob("grokking/**/*.py"), *REPO.glob("hydra_plugins/**/*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [alias.name for alias in getattr(node, "names", [])]
            module = getattr(node, "module", None) or ""
            if isinstance(node, ast.Import | ast.ImportFrom):
                internal += [f"{path.name}: {n}" for n in [module, *names] if "._internal" in n]
    assert internal == []


@pytest.mark.slow
def test_a_wheel_install_trains_from_any_folder(tmp_path):
    """`pip install .` (not editable) carries conf/ and sweeps/ inside the package."""
    source, site, work = tmp_path / "source", tmp_path / "site", tmp_path / "work"
    caches = shutil.ignore_patterns("__pycache__")
    for folder in ("grokking", "conf", "sweeps", "hydra_plugins"):
        shutil.copytree(REPO / folder, source / folder, ignore=caches)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source)
    install = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation"]
    subprocess.run([*install, "--target", str(site), str(source)], check=True, capture_output=True)
    assert (site / "grokking" / "conf" / "algorithmic" / "config.yaml").is_file()
    assert (site / "grokking" / "sweeps" / "algorithmic" / "smoke.yaml").is_file()
    assert (site / "grokking" / "conf" / "shared" / "logger" / "none.yaml").is_file()
    for folder in ("conf", "sweeps"):  # the checkout keeps one copy, at the top
        assert not (REPO / "grokking" / folder).exists()

    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(site)}

    def cli(*args):
        command = [sys.executable, "-m", "grokking.train", *args]
        return subprocess.run(command, cwd=work, env=env, capture_output=True, text=True)

    where = subprocess.run(
        [sys.executable, "-c", "import grokking; print(grokking.__file__)"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    assert where.stdout.startswith(str(site))  # the installed copy, not this checkout
    assert "smoke" in cli("--help").stdout
    sweep = cli("+sweeps=smoke", "task=add", "seed=0", "max_epochs=10", "threads=1")
    assert sweep.returncode == 0, sweep.stderr
    run = work / "outputs" / "sweeps" / "smoke" / "max_epochs=10,seed=0,task=add"
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"
